import CIsolation
import Isolation

#if canImport(Glibc)
    import Glibc
#endif

// Live change of a running VPS's identity (agent → berth-spawn configure):
//
//   agent                               berth-spawn configure
//     | new guest spec on stdin -------->| verify init (pid, start time), pidfd
//     |                                  | old spec = RUN/guest
//     |                                  | NetworkSetup.update(old → new) in the VPS netns
//     |                                  | write RUN/guest (the monitor's next boot uses it)
//     |                                  | setns(pidfd, mnt|uts[|user]): sethostname, /etc files
//     |<-- exit 0, or 1 + reason on stderr
//
// Addresses are changed before the spec file so that a failure leaves the file describing what
// the VPS really has; the agent saves its config only after this succeeded.
func runConfigure(_ args: [String]) -> Never {
    var runDir = "", initPid: Int32 = 0, initStart: UInt64 = 0
    var i = 0
    while i + 1 < args.count {
        switch args[i] {
        case "--run-dir": runDir = args[i + 1]
        case "--init-pid": initPid = Int32(args[i + 1]) ?? 0
        case "--init-start": initStart = UInt64(args[i + 1]) ?? 0
        default: fail("berth-spawn configure: unknown option \(args[i])", code: 2)
        }
        i += 2
    }
    guard !runDir.isEmpty, i == args.count else { fail("usage: berth-spawn configure --run-dir DIR --init-pid PID --init-start T < spec", code: 2) }
    _ = berth_set_nondumpable()
    do throws(IsolationError) {
        let new = try GuestSpec.decode(String(decoding: FileIO.readAll(fd: 0) ?? [], as: UTF8.self))
        let old = try GuestSpec.read(runDir: runDir) ?? GuestSpec(hostname: new.hostname)
        guard HostProcess.isAlive(pid: initPid, startTime: initStart) else { fail("the VPS is not running (its init process is gone)") }
        let pidfd = try check("pidfd_open of the VPS init") { berth_pidfd_open(initPid, 0) }
        switch (old.link, new.link) {
        case (let before?, let after?):
            let netns = try check("open the VPS network namespace") { open("/proc/\(initPid)/ns/net", O_RDONLY | O_CLOEXEC) }
            try NetworkSetup.update(from: before, to: after, vpsNetns: netns)
            close(netns)
        default:
            break  // an interface appears or goes at the next boot (the agent says so)
        }
        try FileIO.writeAtomically(runDir + "/" + GuestSpec.fileName, Array(new.encode().utf8), mode: 0o600)
        // In a VPS with its own user namespace, files on its idmapped root can only be written
        // by ids mapped there: enter it too and act as the VPS's root.
        let userns = HostProcess.inOtherUserNamespace(pid: initPid)
        try check("enter the VPS mount and UTS namespaces") {
            berth_setns(pidfd, Int32(NamespaceFlag.mount | NamespaceFlag.uts | (userns ? NamespaceFlag.user : 0)))
        }
        if userns { try check("become root of the VPS user namespace") { berth_become_root() } }
        if new.hostname != old.hostname {
            try check("sethostname") { sethostname(new.hostname, new.hostname.utf8.count) }
        }
        let root = try check("open the VPS root") { open("/", O_PATH | O_DIRECTORY | O_CLOEXEC) }
        try GuestFiles.write(new, rootFD: root)
        exit(0)
    } catch {
        fail(error.message, code: 1)
    }
}
