import BerthCore
import CIsolation
import Foundation
import Isolation
import Logging

/// Starting a VPS: berth-spawn, its spec, the cgroups, and the report (HelperProtocol).
extension VPSManager {
    public func start(_ name: String) async throws -> VPSView {
        _ = try Name.validate(name)
        let record = try record(name)
        try checkNotMigrating(name)
        try checkDiskFree(name)
        // Before the disk is looked for: a running VPS answers "already running".
        try record.lifecycle.checkStart(name)
        try checkLeaseAllowsStart(record.config)
        let pool = record.config.isPooled ? try await storagePool(creating: false) : nil
        if let pool {
            guard FileIO.isDirectory(pool.volume(name)) else {
                throw AgentError(.notFound, "the disk of VPS \(name) (its subvolume in the storage pool) is missing")
            }
        } else {
            guard FileManager.default.fileExists(atPath: store.diskPath(name)) else {
                throw AgentError(.notFound, "the disk of VPS \(name) is missing")
            }
        }
        try record.lifecycle.beginStart(name)
        record.generation += 1
        let desiredBefore = record.config.desiredState
        do {
            // The desired state is saved (fsync and all) while the monitor boots the VPS.
            try await launch(
                record, pool: pool,
                whileBooting: {
                    guard record.config.desiredState != .running else { return }
                    record.config.desiredState = .running
                    try? self.store.save(record.config)
                })
        } catch {
            record.lifecycle.startFailed()
            cleanupAfterExit(name)
            if record.config.desiredState != desiredBefore {
                record.config.desiredState = desiredBefore
                try? store.save(record.config)
            }
            throw error
        }
        if record.config.isHA { await awaitFenceCapableMark(name) }
        record.lifecycle.startSucceeded()
        receivedMigrations[name] = nil  // running here: no longer a copy an abort may delete
        record.lastExit = ""
        // The monitor has mounted the table's directory: its first table, with the booted init,
        // written once this reply is on its way (reading the counters is no part of a start).
        Task { try? self.writeBeancounters(name) }
        announceAddresses(of: record)
        logger.info("started VPS", metadata: ["vps": "\(name)", "pid": "\(record.run?.initPid ?? 0)"])
        return view(record)
    }

    /// `pool`: the storage pool of a pool VPS. `whileBooting` runs once the monitor has its spec,
    /// before its report is awaited.
    func launch(_ record: VPSRecord, pool: StoragePool?, whileBooting: () -> Void = {}) async throws {
        let name = record.config.name
        if !record.config.isPrivileged && record.config.idmapBase == nil {
            // A VPS created before user namespaces: its files need no change (the root is
            // mounted idmapped), only a range of its own.
            record.config.idmapBase = try allocateIdmap()
            try store.save(record.config)
        }
        if let pool, pool.device == nil, record.config.limits.hasIOLimits {
            throw AgentError.kernel("I/O limits of \(name)", StoragePool.noDeviceForIOLimits)
        }
        let run = runDir(name)
        try FileManager.default.createDirectory(atPath: run, withIntermediateDirectories: true)
        chmod(run, 0o700)
        for file in [
            RunState.exitFile, RunState.stopRequestFile, RunState.stateFile, HelperProtocol.LeaseRecord.fencedFile, HelperProtocol.LeaseRecord.capableFile,
        ] {
            unlink(run + "/" + file)
        }
        // Armed before the monitor exists: an HA VPS never runs unfenced.
        try setFence(of: record.config)

        // The monitor starts first and waits for its spec while this side writes it: its exec
        // and runtime start-up (about a millisecond) overlap that work instead of following it.
        // It then mounts the VPS's disk while this side makes the cgroups, and clones init
        // only once they are ready. A pipe closed empty makes it undo what it did and exit.
        //
        //   agent                                  berth-spawn start
        //     | spawn --------------------------------->| exec, runtime start-up
        //     | guest spec, spawn spec                  | read(fd 3) blocks
        //     | spec on fd 3, EOF --------------------->| decode, mount the disk (Start.swift)
        //     |   [a failure here: EOF alone] --------->|   empty spec: report, exit 1
        //     | make and limit the cgroups              | read(fd 5) blocks
        //     | "cgroups=ready" on fd 5, EOF ---------->| clone init into them, boot
        //     |   [a failure here: EOF alone] --------->|   unmount, report, exit 1
        let specPipe = try PipeEnds(), reportPipe = try PipeEnds(), cgroupPipe = try PipeEnds()
        let devnull = FileDescriptor(open("/dev/null", O_RDWR | O_CLOEXEC))
        let log = FileDescriptor(open(run + "/monitor.log", O_WRONLY | O_CREAT | O_APPEND | O_CLOEXEC, 0o600))
        let output = log.isValid ? log.raw : devnull.raw
        let child = try Subprocess.spawn(
            [paths.spawnBinary, "start"],
            fds: HelperProtocol.StartDescriptor.table(
                stdin: devnull.raw, stdout: output, stderr: output,
                spec: specPipe.read.raw, report: reportPipe.write.raw, cgroupsReady: cgroupPipe.read.raw),
            environment: [], newSession: true)
        // berth-spawn holds its ends now; ours go, so that its reads and ours see EOF.
        specPipe.read.close()
        reportPipe.write.close()
        cgroupPipe.read.close()
        let spec: SpawnSpec
        do {
            spec = try spawnSpec(record, runDir: run, pool: pool)
        } catch {
            await abandonStart(monitor: child, closing: [specPipe.write.release(), reportPipe.read.release(), cgroupPipe.write.release()])
            throw error
        }
        try? FileIO.writeAll(fd: specPipe.write.raw, Array(spec.encode().utf8), stage: "spec")
        specPipe.write.close()
        let ready: CgroupsReady
        do {
            ready = try makeCgroups(record)
        } catch {
            await abandonStart(monitor: child, closing: [cgroupPipe.write.release(), reportPipe.read.release()])
            throw error
        }
        try? FileIO.writeAll(fd: cgroupPipe.write.raw, Array(ready.encode().utf8), stage: "cgroups")
        cgroupPipe.write.close()
        whileBooting()
        let reply = await Subprocess.readFirstLine(reportPipe.read.release())
        if case .started = HelperProtocol.StartReport(line: reply) {
            guard let state = RunState.read(runDir: run) else {
                throw AgentError(.kernel, "berth-spawn reported success but wrote no state file")
            }
            record.run = state
            watchMonitor(name, record: record, pid: child.pid, pidfd: child.pidfd)
            return
        }
        _ = await ProcessWatcher.shared.waitForExit(pid: child.pid, pidfd: child.pidfd)
        if case .failed(let stage, let errno, let message) = HelperProtocol.StartReport(line: reply) {
            throw AgentError(.kernel, "starting \(name) failed: \(message)", stage: stage, errno: errno)
        }
        let logText = (FileIO.read(run + "/monitor.log") ?? "").trimmed
        throw AgentError(.kernel, "starting \(name) failed: berth-spawn exited without a status\(logText.isEmpty ? "" : ": " + logText)", stage: "spawn")
    }

    /// Says once, when lxcfs first serves a VPS, that it cannot narrow the CPU views: what an
    /// operator sees as "every VPS shows all host CPUs" has its cause outside Berth.
    func warnIfLxcfsIsBlindToCPUs() {
        guard !checkedLxcfsControllers else { return }
        checkedLxcfsControllers = true
        guard case .v2(let root) = CgroupMode.detect(), let pidOne = FileIO.read("/proc/1/cgroup"),
            let seen = CgroupV2Driver.controllersSeenByLxcfs(root: root, pidOneCgroup: pidOne)
        else { return }
        guard !seen.contains("cpuset") else { return }
        logger.warning(
            "lxcfs takes its cgroup controllers from the cgroup of the host's PID 1, which lacks cpuset: /proc/cpuinfo and /proc/stat inside VPSs list every host CPU (their cpusets still hold)",
            metadata: ["pid1_cgroup": "\(pidOne.trimmed)", "controllers_seen": "\(seen.sorted().joined(separator: " "))"])
    }

    /// Ends a start this side gave up on before the monitor could boot: EOF on its spec pipe
    /// makes it exit untouched, EOF on its cgroup pipe makes it undo its mounts and exit. One
    /// still there after a while (stuck in the kernel, or deaf to EOF) is killed, and whatever
    /// it started is ended with the VPS's cgroup (cleanupAfterExit): a start fails, it never hangs.
    func abandonStart(monitor: (pid: Int32, pidfd: Int32), closing fds: [Int32]) async {
        fds.forEach { close($0) }
        // A pidfd of its own: the watcher closes its copy once the monitor is reaped, and a late
        // kill through this one can only reach the monitor (or nothing), never a reused pid.
        let pidfd = dup(monitor.pidfd)
        defer { if pidfd >= 0 { close(pidfd) } }
        await withTaskGroup(of: Bool.self) { group in
            group.addTask {
                _ = await ProcessWatcher.shared.waitForExit(pid: monitor.pid, pidfd: monitor.pidfd); return true
            }
            group.addTask {
                try? await Task.sleep(for: .seconds(10)); return false
            }
            // The first to finish: the exit, or the timer (cancelled once the exit came first).
            if await group.next() == false {
                logger.warning("the monitor of an abandoned start did not exit: killed", metadata: ["pid": "\(monitor.pid)"])
                _ = berth_pidfd_send_signal(pidfd, SIGKILL)
            }
            group.cancelAll()
        }
    }

    /// The VPS's cgroups, made and limited, and the writes the monitor makes once it knows the
    /// disk's loop device.
    func makeCgroups(_ record: VPSRecord) throws -> CgroupsReady {
        let name = record.config.name
        do {
            try cgroups.create(name)
            try cgroups.apply(name, record.config.limits)
            if let base = record.config.idmapBase { try cgroups.delegate(name, uid: base, gid: base) }
        } catch {
            throw AgentError.kernel("setting up the cgroup of \(name)", error)
        }
        guard record.config.limits.hasIOLimits else { return CgroupsReady() }
        do {
            return CgroupsReady(deviceWrites: try cgroups.ioSettings(name, record.config.limits, device: CgroupWrite.devicePlaceholder))
        } catch {
            throw AgentError.kernel("I/O limits of \(name)", error)
        }
    }

    /// The VPS's guest spec file, and the spec the monitor boots it from.
    func spawnSpec(_ record: VPSRecord, runDir run: String, pool: StoragePool?) throws -> SpawnSpec {
        let name = record.config.name
        let idmap = record.config.idmapBase.map { IDMap(hostBase: $0) }
        let dropCapabilities: [String]
        do {
            dropCapabilities = try Capabilities.dropList(userns: idmap != nil, overrides: record.config.capabilityOverrides)
        } catch {
            throw AgentError.kernel("capabilities of \(name)", error)
        }
        do {
            try FileIO.writeAtomically(run + "/" + GuestSpec.fileName, Array(guestSpec(record.config).encode().utf8), mode: 0o600, durable: false)
        } catch {
            throw AgentError.kernel("writing the guest spec of \(name)", error)
        }
        var spec = SpawnSpec(
            name: name, diskImage: store.diskPath(name), rootPath: store.rootPath(name), runDir: run,
            hostname: record.config.hostname, cgroupProcsFiles: cgroups.procsFiles(name))
        spec.openFilesLimit = record.config.limits.files
        spec.cgroupMounts = guestCgroupMounts
        spec.idmap = idmap
        spec.dropCapabilities = dropCapabilities
        spec.beancounters = beancounterDirectory(name)
        spec.monitorBinary = paths.monitorBinary
        if let pool { spec.volume = PoolVolume(subvolume: pool.volume(name), device: pool.device) }
        if record.config.isLayered {
            let tree = templates.rootfs(record.config.template)
            // The agent never removes a shared tree; this catches one deleted by hand.
            guard FileIO.exists(tree) else {
                throw AgentError(.notFound, "template \(record.config.template), the shared layer of layered VPS \(name), is gone", field: "template")
            }
            spec.layer = SharedLayer(template: tree, diskMount: store.diskMountPath(name))
        }
        if FileIO.exists(paths.lxcfs + "/proc/meminfo") {
            spec.lxcfs = paths.lxcfs
            warnIfLxcfsIsBlindToCPUs()
        } else if !warnedNoLxcfs {
            warnedNoLxcfs = true
            logger.notice("lxcfs is not serving: VPSs see the host's /proc/meminfo, cpuinfo, uptime", metadata: ["expected": "\(paths.lxcfs)"])
        }
        return spec
    }
}
