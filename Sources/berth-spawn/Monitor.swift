import CIsolation
import Isolation

#if canImport(Glibc)
    import Glibc
#endif

/// The per-VPS monitor: owns the mounted disk and the console, reaps init, turns an in-VPS
/// reboot into a fresh boot, and cleans up when the VPS finally stops.
final class Monitor {
    let spec: SpawnSpec
    var rootMounted = false
    /// A layered VPS's disk, mounted apart from its root (see SpawnSpec.layer).
    var diskMounted = false
    var beancountersMounted = false
    var consoleMaster: Int32 = -1
    /// Kept open so the master never sees a hangup between boots or while init has no console.
    var consoleSlaveFD: Int32 = -1
    var listener: Int32 = -1
    var client: Int32 = -1
    var ring: ConsoleRing
    var initPid: Int32 = 0
    var signalFD: Int32 = -1
    /// What the last boot wired up (teardown removes exactly that).
    var guest: GuestSpec?
    /// The disk's block device, which I/O limits name: its own loop device, or the pool's.
    var diskDevice = ""
    /// The spec in a memfd and this very executable (O_PATH), both kept across the hand-offs to
    /// berth-monitor and back (handOff, init(resuming:)).
    var specFD: Int32 = -1
    var selfFD: Int32 = -1
    /// berth-monitor, opened (for execveat) and checked before the VPS boots: -1 when it cannot run.
    var monitorFD: Int32 = -1

    init(spec: SpawnSpec) throws(IsolationError) {
        self.spec = spec
        ring = ConsoleRing(capacity: spec.consoleRingBytes)
        // Block SIGCHLD (delivered through a signalfd) and ignore SIGPIPE from a vanished console client.
        signal(SIGPIPE, SIG_IGN)
        signalFD = berth_sigchld_fd()
        if signalFD < 0 { throw IsolationError.sys("signalfd") }
        // A start whose monitor could not run would boot a VPS nobody watches: it fails first.
        monitorFD = Self.openMonitor(spec)
        guard monitorFD >= 0 else {
            throw IsolationError(
                .invalidSpec, "berth-monitor \(spec.monitorBinary ?? "(none named)") cannot be run: it must be an executable ELF file next to berth-spawn",
                stage: "berth-monitor")
        }
        do {
            try enterOwnMountNamespace()
            try mountDisk()
            try mountBeancounters()
            try listenConsole()
        } catch {
            teardown(reason: "setup failed")
            throw error
        }
    }

    /// The monitor again after berth-monitor handed the VPS back (its init exited): what the first
    /// boot mounted is still mounted in this process's namespace, the descriptors are the same.
    init(resuming spec: SpawnSpec, from handOff: HelperProtocol.HandOff) {
        self.spec = spec
        ring = ConsoleRing(capacity: spec.consoleRingBytes)
        rootMounted = spec.layer == nil || spec.idmap == nil
        diskMounted = spec.layer != nil
        beancountersMounted = spec.beancounters != nil
        initPid = handOff.initPid
        consoleMaster = handOff.master
        consoleSlaveFD = handOff.slave
        listener = handOff.listener
        signalFD = handOff.signals
        client = handOff.client
        specFD = handOff.spec
        selfFD = handOff.selfExecutable
        for fd in handOff.descriptors where fd != handOff.history { _ = fcntl(fd, F_SETFD, FD_CLOEXEC) }
        lseek(handOff.history, 0, SEEK_SET)
        ring.append(FileIO.readAll(fd: handOff.history)?[...] ?? [])
        close(handOff.history)
        // The program berth-monitor handed back; an earlier version hands none: then the path.
        monitorFD = handOff.monitorProgram >= 0 ? handOff.monitorProgram : Self.openMonitor(spec)
    }

    /// berth-monitor opened for execveat, if it is a regular executable ELF file; else -1.
    static func openMonitor(_ spec: SpawnSpec) -> Int32 {
        guard let path = spec.monitorBinary else { return -1 }
        let fd = open(path, O_RDONLY | O_CLOEXEC)
        guard fd >= 0 else { return -1 }
        var info = stat()
        var magic = [UInt8](repeating: 0, count: 4)
        guard fstat(fd, &info) == 0, info.st_mode & S_IFMT == S_IFREG, info.st_mode & 0o111 != 0,
            pread(fd, &magic, 4, 0) == 4, magic == [0x7f, 0x45, 0x4c, 0x46]
        else {
            close(fd)
            return -1
        }
        return fd
    }

    /// The VPS's mounts (disk, overlay, beancounter tmpfs) live in a mount namespace of the
    /// monitor's own, never in the host's: there, any process that unshares a namespace of its
    /// own (`ip netns exec`, a service's private /tmp) keeps a copy of them, so the loop device
    /// and the ext4 stay mounted after stop and the next start mounts the same image twice.
    /// Slave: the host's later mounts and unmounts still reach this namespace, nothing mounted
    /// here reaches the host. The agent sees these mounts through /proc/MONITOR/root, and
    /// removes what an earlier version's monitor left in the host's namespace whenever a VPS
    /// stops (cleanupAfterExit), so none is there when this one starts.
    func enterOwnMountNamespace() throws(IsolationError) {
        try check("unshare the monitor's mount namespace") { berth_unshare(Int32(NamespaceFlag.mount)) }
        try check("make the monitor's mounts slaves of the host's") { mount("", "/", nil, UInt(MS_REC | MS_SLAVE), nil) }
    }

    /// Attaches `image` to a loop device that frees itself on the last unmount, mounts it at
    /// `target` and returns the device.
    static func mountImage(_ image: String, at target: String, type: String, flags: UInt) throws(IsolationError) -> String {
        var device = [CChar](repeating: 0, count: 64)
        let loopFD = berth_loop_attach(image, 0, &device, device.count)
        if loopFD < 0 { throw IsolationError.sys("attach \(image) to a loop device") }
        defer { close(loopFD) }
        let path = String(cString: device)
        try check("mount \(path) (\(image)) on \(target)") { mount(path, target, type, flags, "") }
        return path
    }

    func mountDisk() throws(IsolationError) {
        // With a user namespace the VPS sees an idmapped copy; the host's own view of the disk
        // gives a setuid-root file the VPS planted no meaning (the VPS's root is uid 0 on disk).
        let hostViewOnly = spec.idmap != nil
        let target = spec.layer?.diskMount ?? spec.rootPath
        if spec.layer != nil && mkdir(target, 0o700) != 0 && errno != EEXIST { throw IsolationError.sys("mkdir \(target)") }
        if let volume = spec.volume {
            // The pool is mounted once for the node: its subvolume is bound like a disk would be mounted.
            diskDevice = volume.device ?? ""
            try check("bind \(volume.subvolume) on \(target)") { berth_bind_tree_to(volume.subvolume, target, hostViewOnly ? 1 : 0) }
        } else {
            diskDevice = try Self.mountImage(spec.diskImage, at: target, type: "ext4", flags: hostViewOnly ? UInt(MS_NOSUID | MS_NODEV) : 0)
        }
        guard let layer = spec.layer else {
            rootMounted = true
            return
        }
        diskMounted = true
        // The disk's top level holds only these two; the VPS sees neither by name.
        for directory in ["upper", "work"] where mkdir(layer.diskMount + "/" + directory, 0o755) != 0 && errno != EEXIST {
            throw IsolationError.sys("mkdir \(layer.diskMount)/\(directory)")
        }
        // With a user namespace the child gets an idmapped overlay instead (see Start.swift);
        // the host then has no merged view, only the disk.
        if spec.idmap == nil {
            let tree = try check("overlay of \(layer.template) and \(layer.diskMount)") {
                berth_overlay_tree(layer.template, layer.diskMount, -1, 0)
            }
            defer { close(tree) }
            try check("attach the overlay at \(spec.rootPath)") { berth_move_mount_to(tree, spec.rootPath) }
            rootMounted = true
        }
    }

    /// Waits for the agent's word that the VPS's cgroups are ready (fd 5; see launch in
    /// VPSManager.swift), then makes the writes that name the loop device: I/O limits. Init is
    /// not cloned before this returns.
    func awaitCgroups(fd: Int32) throws(IsolationError) {
        let message = FileIO.readAll(fd: fd) ?? []
        close(fd)
        let ready = try CgroupsReady.decode(String(decoding: message, as: UTF8.self))
        guard !ready.deviceWrites.isEmpty else { return }
        let number = try FileIO.deviceNumber(diskDevice)
        for write in ready.deviceWrites {
            try FileIO.write(write.path, write.value.replacingPlaceholder(CgroupWrite.devicePlaceholder, with: number))
        }
    }

    /// A tmpfs of its own for the VPS's beancounter table, which the agent rewrites and the VPS
    /// sees read-only: its own filesystem, so the VPS's mountinfo shows no host path.
    func mountBeancounters() throws(IsolationError) {
        guard let directory = spec.beancounters else { return }
        if mkdir(directory, 0o755) != 0 && errno != EEXIST { throw IsolationError.sys("mkdir \(directory)") }
        try check("mount tmpfs on \(directory)") {
            mount("tmpfs", directory, "tmpfs", UInt(MS_NOSUID | MS_NODEV | MS_NOEXEC), "size=64k,nr_inodes=16,mode=755")
        }
        beancountersMounted = true
    }

    /// Takes the console of a new boot (a pty of the VPS's own devpts) in place of the last one.
    func adoptConsole(_ master: Int32) {
        if consoleMaster >= 0 { close(consoleMaster) }
        if consoleSlaveFD >= 0 { close(consoleSlaveFD) }
        consoleMaster = master
        // Held so the master never reads a hangup while init has no console open (early boot,
        // shutdown): that would wake the poll loop for nothing.
        consoleSlaveFD = berth_open_pty_peer(master, O_RDWR | O_CLOEXEC)
        _ = berth_set_winsize(master, 24, 80)
        let flags = fcntl(master, F_GETFL)
        _ = fcntl(master, F_SETFL, flags | O_NONBLOCK)
    }

    func listenConsole() throws(IsolationError) {
        let path = spec.runDir + "/" + RunState.consoleSocket
        unlink(path)
        listener = try check("console socket") {
            socket(AF_UNIX, Int32(SOCK_STREAM.rawValue) | Int32(SOCK_CLOEXEC.rawValue) | Int32(SOCK_NONBLOCK.rawValue), 0)
        }
        var address = sockaddr_un()
        address.sun_family = sa_family_t(AF_UNIX)
        let bytes = Array(path.utf8)
        guard bytes.count < MemoryLayout.size(ofValue: address.sun_path) else {
            throw IsolationError(.invalidSpec, "console socket path too long: \(path)")
        }
        withUnsafeMutableBytes(of: &address.sun_path) { raw in
            for (i, b) in bytes.enumerated() { raw[i] = b }
        }
        let oldMask = umask(0o177)
        defer { umask(oldMask) }
        try check("bind \(path)") {
            withUnsafePointer(to: &address) {
                $0.withMemoryRebound(to: sockaddr.self, capacity: 1) { bind(listener, $0, socklen_t(MemoryLayout<sockaddr_un>.size)) }
            }
        }
        try check("listen \(path)") { listen(listener, 4) }
    }

    /// The guest spec is re-read at every boot: addresses added live survive an in-VPS reboot.
    /// Writes the state file while init execs (an exec that fails takes it away again, in
    /// teardown): the agent reads it as soon as this boot is reported.
    func boot() throws(IsolationError) -> Int32 {
        let loaded = try GuestSpec.read(runDir: spec.runDir) ?? GuestSpec(hostname: spec.hostname)
        guest = loaded
        let started = try cloneInit(spec: spec, guest: loaded) { pid throws(IsolationError) in
            initPid = pid
            try writeState()
        }
        adoptConsole(started.consoleMaster)
        return initPid
    }

    func writeState() throws(IsolationError) {
        let state = RunState(
            monitorPid: getpid(), monitorStart: HostProcess.startTime(pid: getpid()) ?? 0,
            initPid: initPid, initStart: HostProcess.startTime(pid: initPid) ?? 0,
            bootedAt: Int64(time(nil)))
        try FileIO.writeAtomically(spec.runDir + "/" + RunState.stateFile, Array(state.encode().utf8), mode: 0o644, durable: false)
    }

    /// Init exited with `status`: a reboot from inside boots the VPS again (true), anything else
    /// ends it (false, torn down).
    func initExited(status: Int32) -> Bool {
        let exit = InitExit(status: status)
        guard exit.isRebootRequest && !FileIO.exists(spec.runDir + "/" + RunState.stopRequestFile) else {
            teardown(reason: exit.reason)
            return false
        }
        guard monitorFD >= 0 else {
            teardown(reason: HelperProtocol.ExitRecord.monitorFailed + "berth-monitor cannot be run, so the VPS was not booted again")
            return false
        }
        ring.append(Array("\r\n[berth] VPS \(spec.name) is rebooting\r\n".utf8)[...])
        do {
            _ = try boot()
            return true
        } catch {
            teardown(reason: "reboot failed: \(error.message)")
            return false
        }
    }

    /// Replaces this process with berth-monitor while the VPS runs: it keeps the console and
    /// waits for init in a fraction of this process's memory, and execs this binary back
    /// (`berth-spawn resume`) when init exits. berth-monitor is the only console monitor: when
    /// it cannot be run, the VPS is torn down with the reason in its exit record (the agent
    /// then finds it stopped, nothing left running).
    func handOff() -> Never {
        if specFD < 0 {
            specFD = berth_memfd("berth-spawn-spec")
            guard specFD >= 0, (try? FileIO.writeAll(fd: specFD, Array(spec.encode().utf8), stage: "spec")) != nil else {
                giveUp("no memfd for the spec (\(errnoName(errno)))")
            }
        }
        if selfFD < 0 {
            selfFD = open("/proc/self/exe", O_PATH | O_CLOEXEC)
            guard selfFD >= 0 else { giveUp("cannot open its own executable (\(errnoName(errno)))") }
        }
        let history = berth_memfd(HelperProtocol.HandOff.historyMemfdName)
        guard history >= 0, (try? FileIO.writeAll(fd: history, ring.contents(), stage: "history")) != nil else {
            giveUp("no memfd for the console history (\(errnoName(errno)))")
        }
        let handOff = HelperProtocol.HandOff(
            selfExecutable: selfFD, monitorProgram: monitorFD, runDir: spec.runDir, initPid: initPid, master: consoleMaster,
            slave: consoleSlaveFD, listener: listener, signals: signalFD, client: client,
            spec: specFD, history: history, capacity: spec.consoleRingBytes)
        for fd in handOff.descriptors { _ = fcntl(fd, F_SETFD, 0) }
        let argv = ["berth-monitor"] + handOff.monitorArguments
        let cArgv = argv.map { strdup($0) } + [nil]
        let environment: [UnsafeMutablePointer<CChar>?] = [nil]
        berth_execveat_empty(monitorFD, cArgv, environment)
        let err = errno
        cArgv.forEach { free($0) }
        close(history)
        giveUp("cannot run \(spec.monitorBinary ?? "berth-monitor") (\(errnoName(err)))")
    }

    /// The monitor cannot go on: the VPS ends, and the reason is left for the agent.
    func giveUp(_ why: String) -> Never {
        writeStderr("berth-spawn: \(why)\n")
        if initPid > 0 {
            kill(initPid, SIGKILL)
            var status: Int32 = 0
            _ = waitpid(initPid, &status, 0)
        }
        teardown(reason: HelperProtocol.ExitRecord.monitorFailed + why)
        exit(1)
    }

    func teardown(reason: String) {
        // The latest spec: `berth set --ip-add/--ip-del` rewrites it after changing the live VPS.
        var networkDetached = false
        if let link = (try? GuestSpec.read(runDir: spec.runDir))??.link ?? guest?.link {
            NetworkSetup.detach(link, removeInterface: false)
            networkDetached = true
        }
        if client >= 0 { close(client); client = -1 }
        if listener >= 0 {
            close(listener)
            listener = -1
            unlink(spec.runDir + "/" + RunState.consoleSocket)
        }
        if rootMounted {
            // A plain umount first: a lazy one would leave the loop device busy behind an
            // operator's shell sitting in the root.
            if umount2(spec.rootPath, 0) != 0 { umount2(spec.rootPath, Int32(MNT_DETACH)) }
            rootMounted = false
        }
        if diskMounted, let layer = spec.layer {
            if umount2(layer.diskMount, 0) != 0 { umount2(layer.diskMount, Int32(MNT_DETACH)) }
            diskMounted = false
        }
        if beancountersMounted, let directory = spec.beancounters {
            umount2(directory, Int32(MNT_DETACH))
            rmdir(directory)
            beancountersMounted = false
        }
        unlink(spec.runDir + "/" + RunState.stateFile)
        // What the console said last outlives the VPS: the first place to look when a boot fails.
        // A start that failed before init said anything keeps the last boot's log.
        let history = ring.contents()
        if !history.isEmpty {
            try? FileIO.writeAtomically(FileIO.directory(of: spec.diskImage) + "/" + RunState.consoleLogFile, history, mode: 0o600)
        }
        let record = HelperProtocol.ExitRecord(reason: reason, time: Int64(time(nil)), networkDetached: networkDetached)
        try? FileIO.writeAtomically(spec.runDir + "/" + RunState.exitFile, Array(record.text.utf8), mode: 0o644)
    }
}

extension String {
    func replacingPlaceholder(_ placeholder: String, with value: String) -> String {
        split(separator: placeholder, omittingEmptySubsequences: false).joined(separator: value)
    }
}
