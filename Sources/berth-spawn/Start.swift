import CIsolation
import Isolation

#if canImport(Glibc)
    import Glibc
#endif

// Start handshake (agent ⇄ berth-spawn ⇄ VPS init). The descriptors, the report line, the
// hand-off arguments and the exit record are HelperProtocol (Sources/Isolation/HelperProtocol.swift);
// Docs/architecture.md §4 has the whole life of a VPS's monitor.
//
//   agent                      berth-spawn (monitor)                 child (becomes VPS init)
//     | spec on fd 3, EOF -------->|                                      |
//     |                            | open berth-monitor, check it is an   |
//     |                            |   executable ELF [not: fd 4 error]   |
//     | make the VPS cgroups       | unshare(NEWNS): its own mounts,      |
//     |   (beside the mounts)      |   never the host's (Monitor.swift)   |
//     |                            | attach loop, mount disk.img          |
//     |                            |   [pool: bind its subvolume instead] |
//     |                            |   [layered: at the disk mount; the   |
//     |                            |    overlay at the root if no userns] |
//     |                            | bind console.sock                    |
//     | fd 5: "cgroups=ready", EOF>| waits for it [EOF alone: undo, exit] |
//     |                            | I/O limits name the loop device      |
//     |                            | clone(NEWPID|NEWNS|NEWUTS|NEWIPC|NEWNET[|NEWUSER]) ->|
//     |                            |   [userns: owned by the VPS's root uid, cwd = its root]
//     |                            |                                      | waits on the setup socket
//     |                            | [userns] write uid_map, gid_map      |
//     |                            | move the child into the VPS cgroups  |
//     |                            | RLIMIT_NOFILE (prlimit)              |
//     |                            | [userns] idmapped copy of the root   |
//     |                            |   [layered: overlay of idmapped      |
//     |                            |    template and disk]                |
//     |                            | read-only copy of the beancounter dir|
//     |                            |-- setup socket: "i" [+ mount fd] --->| [userns] become root,
//     |                            |-- setup socket: "b" [+ mount fd] --->|   move_mount the idmapped root
//     |                            |                                      | unshare(NEWCGROUP), mounts, a
//     |                            |                                      |   console pty of its own devpts,
//     |                            |                                      |   pivot_root, hostname, /etc files
//     |                            |<-- setup socket: "c" + console master|
//     |                            | veth, routes, filter (NetworkSetup)  |
//     |                            |   into the child's netns             |
//     |                            |-- go pipe: one byte (network ready) ->| waits for it
//     |                            | write run/NAME/state                 | seccomp, drop caps, close fds
//     |                            |<-- error pipe: EOF (exec ok) or text  | execve(/sbin/init)
//     |<-- fd 4: "ok MONITOR INIT" |   [text: state file removed]         |
//     |                            | execveat berth-monitor: console ring,|
//     |                            |   [fails: kill init, tear down, exit |
//     |                            |    record "monitor failed: …"]       |
//     |                            |   reap init; its exit execs this     |
//     |                            |   binary back (resume): reboot =     |
//     |                            |   clone again, or tear down          |
//     |  (agent may exit/restart; the monitor and VPS keep running)      |
//     |                            | on final exit: umount, write exit    |

func report(_ report: HelperProtocol.StartReport) { writeText(report.line, to: HelperProtocol.StartDescriptor.report) }

func runStart() -> Never {
    let specBytes = FileIO.readAll(fd: HelperProtocol.StartDescriptor.spec) ?? []
    close(HelperProtocol.StartDescriptor.spec)
    var monitor: Monitor?
    do {
        let spec = try SpawnSpec.decode(String(decoding: specBytes, as: UTF8.self))
        let m = try Monitor(spec: spec)
        monitor = m
        try m.awaitCgroups(fd: HelperProtocol.StartDescriptor.cgroupsReady)
        let initPid = try m.boot()
        report(.started(monitorPid: getpid(), initPid: initPid))
        close(HelperProtocol.StartDescriptor.report)
        m.handOff()
    } catch {
        report(.failed(stage: error.stage, errno: error.errno, message: error.message))
        monitor?.teardown(reason: "failed to start: \(error.message)")
        exit(1)
    }
}

/// Forks a child with the VPS namespaces that sets itself up and execs init, while this process
/// maps its ids, places it in its cgroups and wires its network namespace. `whileInitExecs` runs
/// once the child may exec, beside that exec. Returns the child's pid once the exec happened, or
/// throws what failed (the child is killed and the network undone).
func cloneInit(
    spec: SpawnSpec, guest: GuestSpec,
    whileInitExecs: (Int32) throws(IsolationError) -> Void
) throws(IsolationError) -> (pid: Int32, consoleMaster: Int32) {
    var errorPipe: [Int32] = [0, 0]
    var goPipe: [Int32] = [0, 0]
    var setup: [Int32] = [0, 0]
    try check("pipe") { berth_pipe_cloexec(&errorPipe) }
    if berth_pipe_cloexec(&goPipe) != 0 || berth_socketpair_cloexec(&setup) != 0 {
        let err = errno
        close(errorPipe[0]); close(errorPipe[1])
        throw IsolationError.sys("pipe", errno: err)
    }
    var pid: Int32
    if let idmap = spec.idmap {
        // The child's namespace belongs to the VPS's root uid, so it is not host root and
        // cannot walk the host's 0700 data directory: it starts with its root as its working
        // directory instead (clone carries the cwd into the new mount namespace).
        guard chdir(spec.rootPath) == 0 else {
            let err = errno
            [errorPipe[0], errorPipe[1], goPipe[0], goPipe[1], setup[0], setup[1]].forEach { close($0) }
            throw IsolationError.sys("chdir \(spec.rootPath)", errno: err)
        }
        pid = berth_clone_fork_owned(NamespaceFlag.vps | NamespaceFlag.user, idmap.hostBase)
        let err = errno
        _ = chdir("/")
        errno = err
    } else {
        pid = berth_clone_fork(NamespaceFlag.vps)
    }
    if pid < 0 {
        let err = errno
        [errorPipe[0], errorPipe[1], goPipe[0], goPipe[1], setup[0], setup[1]].forEach { close($0) }
        throw IsolationError.sys("clone VPS namespaces", errno: err)
    }
    if pid == 0 {
        close(errorPipe[0])
        close(goPipe[1])
        close(setup[0])
        do {
            try becomeInit(spec: spec, guest: guest, setupSocket: setup[1], goPipe: goPipe[0])
        } catch {
            let line = "\(error.stage)\t\(error.errno)\t\(error.message)"
            _ = Array(line.utf8).withUnsafeBytes { write(errorPipe[1], $0.baseAddress, $0.count) }
        }
        _exit(127)
    }
    close(errorPipe[1])
    close(goPipe[0])
    close(setup[1])
    var consoleMaster: Int32 = -1
    do throws(IsolationError) {
        try prepareChild(pid, spec: spec, setupSocket: setup[0])
        var byte: CChar = 0
        guard berth_recv_byte_and_fd(setup[0], &byte, &consoleMaster) == 0, consoleMaster >= 0 else {
            throw IsolationError(.childFailed, "the VPS init gave no console", stage: "receive the console")
        }
        close(setup[0])
        setup[0] = -1
        if let link = guest.link {
            let netns = try check("open the VPS network namespace") { open("/proc/\(pid)/ns/net", O_RDONLY | O_CLOEXEC) }
            defer { close(netns) }
            let wall0 = monotonicMicros(), cpu0 = cpuMicros()
            try NetworkSetup.attach(link, vpsNetns: netns)
            // For operators and Benchmarks/network.sh: what wiring the VPS cost this process.
            writeStderr("berth-spawn: network set-up of \(link.hostInterface): wall_us=\(monotonicMicros() - wall0) cpu_us=\(cpuMicros() - cpu0)\n")
        }
    } catch {
        // The child may have failed first and said why: that is the better message.
        kill(pid, SIGKILL)
        if setup[0] >= 0 { close(setup[0]) }
        close(goPipe[1])
        if consoleMaster >= 0 { close(consoleMaster) }
        let reply = FileIO.readAll(fd: errorPipe[0]) ?? []
        close(errorPipe[0])
        var status: Int32 = 0
        waitpid(pid, &status, 0)
        throw childError(reply) ?? error
    }
    _ = write(goPipe[1], "g", 1)
    close(goPipe[1])
    var sideError: IsolationError?
    do { try whileInitExecs(pid) } catch { sideError = error }
    let reply = FileIO.readAll(fd: errorPipe[0]) ?? []
    close(errorPipe[0])
    if reply.isEmpty && sideError == nil { return (pid, consoleMaster) }
    if reply.isEmpty { kill(pid, SIGKILL) }
    close(consoleMaster)
    var status: Int32 = 0
    waitpid(pid, &status, 0)
    throw childError(reply) ?? sideError ?? IsolationError(.childFailed, "VPS init setup failed")
}

/// The child's "STAGE<TAB>ERRNO<TAB>MESSAGE" report, nil when it sent none.
func childError(_ reply: [UInt8]) -> IsolationError? {
    if reply.isEmpty { return nil }
    let parts = String(decoding: reply, as: UTF8.self).split(separator: "\t", maxSplits: 2, omittingEmptySubsequences: false)
    return IsolationError(
        .childFailed, parts.count == 3 ? String(parts[2]) : "VPS init setup failed",
        stage: parts.first.map(String.init) ?? "", errno: parts.count > 1 ? Int32(parts[1]) ?? 0 : 0)
}

/// What only the host side can do for the child, before it may go on: its id maps, its cgroups
/// (a process in a user namespace cannot move itself into host-owned cgroups), its open-files
/// limit (raising a hard limit needs the host's privilege) and the idmapped root.
func prepareChild(_ pid: Int32, spec: SpawnSpec, setupSocket: Int32) throws(IsolationError) {
    if let idmap = spec.idmap {
        try FileIO.write("/proc/\(pid)/uid_map", idmap.mapLine)
        try FileIO.write("/proc/\(pid)/gid_map", idmap.mapLine)
    }
    for file in spec.cgroupProcsFiles {
        do throws(IsolationError) {
            try FileIO.write(file, String(pid))
        } catch  where error.errno == EBUSY {
            // cgroup v2 after an in-VPS reboot: the last boot's systemd left child cgroups and
            // controllers enabled for them, so the VPS cgroup takes no process until reset.
            try resetCgroupSubtree(FileIO.directory(of: file))
            try FileIO.write(file, String(pid))
        }
    }
    if let files = spec.openFilesLimit {
        // Host root acts on the VPS's namespace through CAP_SYS_RESOURCE, which some hosts
        // withhold even from root; the namespace's owner may lower the limit without it.
        if berth_set_nofile_limit(pid, files) != 0 {
            let err = errno
            guard err == EPERM, let idmap = spec.idmap else { throw IsolationError.sys("set the open files limit", errno: err) }
            try check("set the open files limit") { berth_set_nofile_limit_as(pid, files, idmap.hostBase) }
        }
    }
    var rootTree: Int32 = -1
    if spec.idmap != nil {
        let userns = try check("open the VPS user namespace") { open("/proc/\(pid)/ns/user", O_RDONLY | O_CLOEXEC) }
        defer { close(userns) }
        if let layer = spec.layer, let idmap = spec.idmap {
            rootTree = try check("idmapped overlay of \(layer.template) and \(layer.diskMount)") {
                berth_overlay_tree(layer.template, layer.diskMount, userns, UInt32(idmap.hostBase))
            }
        } else {
            rootTree = try check("idmapped mount of \(spec.rootPath)") { berth_idmapped_tree(spec.rootPath, userns) }
        }
    }
    defer { if rootTree >= 0 { close(rootTree) } }
    try check("hand the child its setup") { berth_send_byte_and_fd(setupSocket, CChar(UInt8(ascii: "i")), rootTree) }
    var beancounters: Int32 = -1
    if let directory = spec.beancounters {
        beancounters = try check("read-only mount of \(directory)") { berth_readonly_tree(directory) }
    }
    defer { if beancounters >= 0 { close(beancounters) } }
    try check("hand the child its beancounter table") { berth_send_byte_and_fd(setupSocket, CChar(UInt8(ascii: "b")), beancounters) }
}

/// Runs in the cloned child: PID 1 of the new PID namespace, still on the host root.
func becomeInit(spec: SpawnSpec, guest: GuestSpec, setupSocket: Int32, goPipe: Int32) throws(IsolationError) {
    var byte: CChar = 0
    var rootTree: Int32 = -1
    guard berth_recv_byte_and_fd(setupSocket, &byte, &rootTree) == 0 else {
        throw IsolationError.sys("wait for the monitor's setup")
    }
    var beancounters: Int32 = -1
    guard berth_recv_byte_and_fd(setupSocket, &byte, &beancounters) == 0 else {
        throw IsolationError.sys("wait for the monitor's setup")
    }
    var root = spec.rootPath
    if spec.idmap != nil {
        guard rootTree >= 0 else { throw IsolationError(.childFailed, "the monitor sent no idmapped root", stage: "receive the VPS root") }
        // Private first: the attach must not propagate to the host's mount namespace. The
        // working directory is the VPS's root (see cloneInit): no walk of host directories.
        try check("make / private") { mount("", "/", nil, UInt(MS_REC | MS_PRIVATE), nil) }
        try check("attach the idmapped VPS root") { berth_move_mount_to(rootTree, ".") }
        try check("become root of the VPS user namespace") { berth_become_root() }
        // The tree's fd now names the attached idmapped root: paths through it need no walk
        // of host directories, which the VPS's root may not search.
        root = "/proc/self/fd/\(rootTree)"
    }
    try check("unshare cgroup namespace") { berth_unshare(Int32(NamespaceFlag.cgroup)) }
    let consoleMaster = try Rootfs.enter(
        root: root, hostname: guest.hostname, lxcfs: spec.lxcfs,
        cgroupMounts: spec.cgroupMounts, userns: spec.idmap != nil,
        beancounters: beancounters)
    if beancounters >= 0 { close(beancounters) }
    let newRoot = try check("open the VPS root") { open("/", O_PATH | O_DIRECTORY | O_CLOEXEC) }
    try GuestFiles.write(guest, rootFD: newRoot)
    close(newRoot)
    // The monitor keeps the console's master: the ring buffer and `berth console` read it.
    try check("hand the console to the monitor") { berth_send_byte_and_fd(setupSocket, CChar(UInt8(ascii: "c")), consoleMaster) }
    close(consoleMaster)
    close(setupSocket)

    // init must not run before its network is in place (rc scripts start servers at once).
    var go: UInt8 = 0
    guard read(goPipe, &go, 1) == 1 else {
        throw IsolationError(.childFailed, "the monitor gave up before the VPS network was ready", stage: "wait for network")
    }
    close(goPipe)

    // The console is init's controlling terminal and its stdio, like on a real machine.
    try check("setsid") { setsid() }
    let console = try check("open /dev/console") { open("/dev/console", O_RDWR | O_CLOEXEC) }
    try check("make /dev/console the controlling tty") { berth_tiocsctty(console) }
    for target in Int32(0)...2 { try check("dup console") { dup2(console, target) } }

    try check("install seccomp filter") { berth_install_baseline_seccomp() }
    try Capabilities.drop(spec.dropCapabilities)
    // Only stdio survives into the VPS: the error pipe is CLOEXEC and reports exec success by closing.
    _ = berth_close_range(3, UInt32.max, UInt32(CLOSE_RANGE_CLOEXEC))

    let argv = spec.initArgv.map { strdup($0) } + [nil]
    let envp = spec.environment.map { strdup($0) } + [nil]
    execve(spec.initArgv[0], argv, envp)
    throw IsolationError.sys("exec \(spec.initArgv[0]) in the VPS")
}

let CLOSE_RANGE_CLOEXEC: Int32 = 4

func monotonicMicros() -> Int64 {
    var now = timespec()
    clock_gettime(CLOCK_MONOTONIC, &now)
    return Int64(now.tv_sec) * 1_000_000 + Int64(now.tv_nsec) / 1000
}

/// User + system CPU of this process (the kernel's netlink work is system time of the caller).
func cpuMicros() -> Int64 {
    var usage = rusage()
    getrusage(RUSAGE_SELF.rawValue, &usage)
    return Int64(usage.ru_utime.tv_sec + usage.ru_stime.tv_sec) * 1_000_000 + Int64(usage.ru_utime.tv_usec + usage.ru_stime.tv_usec)
}

/// `berth-spawn resume`: berth-monitor handing a VPS back once its init exited (Monitor.handOff).
/// Reboots it and hands it off again, or tears it down and exits.
func runResume(_ args: [String]) -> Never {
    guard let (handOff, status) = HelperProtocol.HandOff.resumed(args) else {
        writeStderr("berth-spawn resume: incomplete hand-back from berth-monitor: \(args)\n")
        exit(2)
    }
    lseek(handOff.spec, 0, SEEK_SET)
    let spec: SpawnSpec
    do {
        spec = try SpawnSpec.decode(String(decoding: FileIO.readAll(fd: handOff.spec) ?? [], as: UTF8.self))
    } catch {
        writeStderr("berth-spawn resume: the spec berth-monitor handed back does not decode: \(error.message)\n")
        exit(1)
    }
    let monitor = Monitor(resuming: spec, from: handOff)
    guard monitor.initExited(status: status) else { exit(0) }
    monitor.handOff()
}
