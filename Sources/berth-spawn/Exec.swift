import CIsolation
import Isolation

#if canImport(Glibc)
    import Glibc
#endif

// Exec handshake (agent → berth-spawn exec → command inside the VPS):
//
//   agent                        berth-spawn exec (host pid ns)            command (VPS pid ns)
//     | fds 0-2: stdio pipes ------>| non-dumpable; verify init start time    |
//     | fd 3: resize pipe (tty)     | open VPS cgroup.procs, pidfd of init    |
//     |                             | setns(pidfd, mnt|pid|uts|ipc|net|cgroup |
//     |                             |        [|user]); [user] become its root |
//     |                             | [tty] open ptmx of the VPS's devpts     |
//     |                             | fork ----------------------------------->|
//     |                             |                                          | join cgroup, [tty] setsid+ctty
//     |                             |                                          | seccomp, drop caps, close fds
//     |                             |                                          | execvpe(CMD) in the VPS root
//     |<== [tty] relay stdio <=====>| pty master <============================>|
//     |<-- exit status (CMD's) -----| waitpid                                   |
//
// The helper itself never enters the VPS's PID namespace, so nothing inside the VPS can see
// or signal it; the command is non-dumpable until its execve.

struct ExecOptions {
    var initPid: Int32 = 0
    var initStart: UInt64 = 0
    var cgroupFiles: [String] = []
    var tty: (rows: UInt16, cols: UInt16)?
    var environment: [String] = []
    var argv: [String] = []
}

func fail(_ message: String, code: Int32 = 125) -> Never {
    writeStderr("berth: " + message + "\n")
    exit(code)
}

func parseExec(_ args: [String]) -> ExecOptions {
    var options = ExecOptions()
    var i = 0
    func next() -> String {
        i += 1
        guard i < args.count else { fail("berth-spawn exec: \(args[i - 1]) needs a value", code: 2) }
        return args[i]
    }
    while i < args.count {
        switch args[i] {
        case "--init-pid": options.initPid = Int32(next()) ?? 0
        case "--init-start": options.initStart = UInt64(next()) ?? 0
        case "--cgroup": options.cgroupFiles.append(next())
        case "--tty": options.tty = (UInt16(next()) ?? 24, UInt16(next()) ?? 80)
        case "--env": options.environment.append(next())
        case "--":
            options.argv = Array(args[(i + 1)...])
            i = args.count
            continue
        default: fail("berth-spawn exec: unknown option \(args[i])", code: 2)
        }
        i += 1
    }
    if options.argv.isEmpty { fail("berth-spawn exec: no command given", code: 2) }
    return options
}

/// cgroup v2 refuses processes in a cgroup whose own init (systemd) enabled controllers for its
/// children: then the command joins a `berth-exec` leaf of the VPS's cgroup, made and opened here
/// as host root (a writer's permission is judged by who opened the file).
func joinableProcsFile(_ procs: String) -> String {
    let directory = FileIO.directory(of: procs)
    let enabled = (FileIO.read(directory + "/cgroup.subtree_control") ?? "").split(whereSeparator: { $0 == " " || $0 == "\n" })
    guard !enabled.isEmpty else { return procs }
    let leaf = directory + "/berth-exec"
    if mkdir(leaf, 0o755) != 0 && errno != EEXIST { fail("mkdir \(leaf): \(errnoName(errno))") }
    return leaf + "/cgroup.procs"
}

func runExec(_ args: [String]) -> Never {
    let options = parseExec(args)
    // fd 3 is the agent's resize pipe when present; probe before any open() could take number 3.
    let resizeFD: Int32 = fcntl(3, F_GETFD) >= 0 ? 3 : -1
    _ = berth_set_nondumpable()
    guard HostProcess.isAlive(pid: options.initPid, startTime: options.initStart) else {
        fail("the VPS is not running (its init process is gone)")
    }
    let pidfd = berth_pidfd_open(options.initPid, 0)
    if pidfd < 0 { fail("pidfd_open of the VPS init: \(errnoName(errno))") }
    var cgroupFDs: [Int32] = []
    for file in options.cgroupFiles {
        let fd = open(joinableProcsFile(file), O_WRONLY | O_CLOEXEC)
        if fd < 0 { fail("open \(file): \(errnoName(errno))") }
        cgroupFDs.append(fd)
    }
    // A command gets exactly the capabilities the VPS's init kept (its bounding set carries the
    // VPS's policy for this boot; a `set --capability` waits for the next one).
    guard let initBounding = Capabilities.boundingMask(pid: options.initPid) else { fail("read the VPS init's capabilities") }
    let drop = Capabilities.names(missingFrom: initBounding)
    let userns = HostProcess.inOtherUserNamespace(pid: options.initPid)
    if berth_setns(pidfd, Int32(NamespaceFlag.join | (userns ? NamespaceFlag.user : 0))) != 0 { fail("setns into the VPS: \(errnoName(errno))") }
    close(pidfd)
    // Host root is nobody inside a VPS's user namespace: become the VPS's root.
    if userns && berth_become_root() != 0 { fail("become root of the VPS user namespace: \(errnoName(errno))") }

    var master: Int32 = -1
    if let tty = options.tty {
        var number: Int32 = 0
        master = berth_open_pty_master("/dev/pts/ptmx", &number)
        if master < 0 { fail("open a pty inside the VPS: \(errnoName(errno))") }
        _ = berth_set_winsize(master, tty.rows, tty.cols)
    }

    let childSignals = berth_sigchld_fd()

    let child = berth_clone_fork(0)
    if child < 0 { fail("fork: \(errnoName(errno))") }
    if child == 0 {
        var empty = sigset_t()
        sigemptyset(&empty)
        sigprocmask(SIG_SETMASK, &empty, nil)
        for fd in cgroupFDs where Glibc.write(fd, "0", 1) != 1 {
            fail("join the VPS cgroup: \(errnoName(errno))")
        }
        if master >= 0 {
            setsid()
            let slave = berth_open_pty_peer(master, O_RDWR)
            if slave < 0 || berth_tiocsctty(slave) != 0 { fail("attach the pty: \(errnoName(errno))") }
            for target in Int32(0)...2 { dup2(slave, target) }
            if slave > 2 { close(slave) }
        }
        if berth_install_baseline_seccomp() != 0 { fail("seccomp: \(errnoName(errno))") }
        do { try Capabilities.drop(drop) } catch { fail(error.message) }
        _ = berth_close_range(3, UInt32.max, 0)
        chdir("/")
        let path =
            options.environment.first { $0.hasPrefix("PATH=") }.map { String($0.dropFirst(5)) }
            ?? "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"
        setenv("PATH", path, 1)
        let argv = options.argv.map { strdup($0) } + [nil]
        let envp = options.environment.map { strdup($0) } + [nil]
        berth_execvpe(options.argv[0], argv, envp)
        let err = errno
        fail("\(options.argv[0]): \(String(cString: strerror(err)))", code: err == ENOENT ? 127 : 126)
    }
    for fd in cgroupFDs { close(fd) }

    if master >= 0 {
        exit(InitExit(status: relay(master: master, childSignals: childSignals, child: child, resizeFD: resizeFD)).shellCode)
    }
    // Stdio of the helper must not keep the agent's pipes open after the command exits.
    let devnull = open("/dev/null", O_RDWR)
    if devnull >= 0 { for fd in Int32(0)...2 { dup2(devnull, fd) } }
    var status: Int32 = 0
    while waitpid(child, &status, 0) < 0 && errno == EINTR {}
    exit(InitExit(status: status).shellCode)
}

/// Copies agent stdin → pty and pty → agent stdout until the command exits; fd 3 carries
/// "ROWS COLS\n" window-size changes.
func relay(master: Int32, childSignals: Int32, child: Int32, resizeFD: Int32) -> Int32 {
    var buffer = [UInt8](repeating: 0, count: 16384)
    var stdinOpen = true
    var resizeOpen = resizeFD >= 0
    var resizeLine: [UInt8] = []
    // When the operator's input ends (or the client goes away) we type ^D like a terminal would,
    // so an idle shell exits instead of waiting forever on a pty nobody feeds. It is sent after
    // the program next writes (its prompt: it is reading the terminal by then, in whatever mode
    // it chose), or after half a second of silence; a ^D sent while the pty is switching out of
    // canonical mode would be lost. For the same reason (a shell that flushes its input while it
    // switches modes) it is typed again after every second of silence until the program exits.
    var eofPending = false
    var eofSent = false
    func drainMaster() {
        while true {
            var pfd = pollfd(fd: master, events: Int16(POLLIN), revents: 0)
            guard poll(&pfd, 1, 0) > 0, pfd.revents & Int16(POLLIN) != 0 else { return }
            let n = buffer.withUnsafeMutableBytes { read(master, $0.baseAddress, $0.count) }
            if n <= 0 { return }
            try? FileIO.writeAll(fd: 1, Array(buffer[0..<n]), stage: "stdout")
        }
    }
    while true {
        var fds = [
            pollfd(fd: master, events: Int16(POLLIN), revents: 0),
            pollfd(fd: childSignals, events: Int16(POLLIN), revents: 0),
            pollfd(fd: stdinOpen ? 0 : -1, events: Int16(POLLIN), revents: 0),
            pollfd(fd: resizeOpen ? resizeFD : -1, events: Int16(POLLIN), revents: 0),
        ]
        let ready = poll(&fds, nfds_t(fds.count), eofPending ? 500 : eofSent ? 1000 : -1)
        if ready < 0 {
            if errno == EINTR { continue }
            var status: Int32 = 0
            waitpid(child, &status, 0)
            return status
        }
        var produced = false
        if fds[0].revents != 0 {
            let n = buffer.withUnsafeMutableBytes { read(master, $0.baseAddress, $0.count) }
            if n > 0 {
                try? FileIO.writeAll(fd: 1, Array(buffer[0..<n]), stage: "stdout")
                produced = true
            }
        }
        if (eofPending && (produced || ready == 0)) || (eofSent && ready == 0) {
            eofPending = false
            eofSent = true
            try? FileIO.writeAll(fd: master, [0x04], stage: "pty")
        }
        if fds[2].revents != 0 {
            let n = buffer.withUnsafeMutableBytes { read(0, $0.baseAddress, $0.count) }
            if n > 0 {
                try? FileIO.writeAll(fd: master, Array(buffer[0..<n]), stage: "pty")
            } else {
                stdinOpen = false
                eofPending = true
            }
        }
        if fds[3].revents != 0 {
            let n = buffer.withUnsafeMutableBytes { read(resizeFD, $0.baseAddress, $0.count) }
            if n <= 0 {
                resizeOpen = false
            } else {
                resizeLine.append(contentsOf: buffer[0..<n])
                while let newline = resizeLine.firstIndex(of: 10) {
                    let parts = String(decoding: resizeLine[..<newline], as: UTF8.self).split(separator: " ")
                    resizeLine.removeSubrange(...newline)
                    if parts.count == 2, let rows = UInt16(parts[0]), let cols = UInt16(parts[1]) {
                        _ = berth_set_winsize(master, rows, cols)
                    }
                }
            }
        }
        if fds[1].revents != 0 {
            berth_drain_signalfd(childSignals)
            var status: Int32 = 0
            if waitpid(child, &status, WNOHANG) == child {
                drainMaster()
                return status
            }
        }
    }
}
