import BerthCore
import CIsolation
import Foundation
import Isolation
import Logging


/// Where the agent keeps things and what it runs.
/// How far this node may promise more than it has (Virtuozzo/Nomad style): allocatable =
/// capacity x ratio. CPU is commonly overcommitted, memory and disk rarely.
public struct Overcommit: Sendable, Equatable {
    public var cpu: Double
    public var memory: Double
    public var disk: Double
    public init(cpu: Double = 4, memory: Double = 1, disk: Double = 1) {
        self.cpu = cpu
        self.memory = memory
        self.disk = disk
    }
}

public struct AgentPaths: Sendable {
    public var dataDir: String
    public var runDir: String
    /// The berth-spawn helper binary.
    public var spawnBinary: String
    /// berth-monitor, which each VPS's monitor becomes once the VPS has booted.
    public var monitorBinary: String
    /// Where lxcfs is mounted; VPSs started while it serves there get its /proc views.
    public var lxcfs: String
    /// Downloaded distribution trees (debootstrap output), kept across template rebuilds and
    /// shared by every data directory on the host.
    public var templateCache: String
    /// Size of the storage pool image the first `create --layout pool` makes (nil: a fifth of the
    /// free space, 5–30 GiB; see StoragePool).
    public var poolSize: UInt64?

    public init(dataDir: String, runDir: String, spawnBinary: String, monitorBinary: String, lxcfs: String = "/var/lib/lxcfs",
                templateCache: String = "/var/cache/berth/templates", poolSize: UInt64? = nil) {
        self.dataDir = dataDir
        self.runDir = runDir
        self.spawnBinary = spawnBinary
        self.monitorBinary = monitorBinary
        self.lxcfs = lxcfs
        self.templateCache = templateCache
        self.poolSize = poolSize
    }
}

final class VPSRecord {
    var config: VPSConfig
    /// Every change of `state` goes through here.
    var lifecycle = VPSLifecycle()
    var state: VPSState { lifecycle.state }
    var run: RunState?
    var lastExit = ""
    /// Bumped on every start so a late exit notice of an earlier run is ignored.
    var generation = 0
    /// Stops waiting for the monitor's exit, by ticket; resumed when it exits or their time is up.
    var exitWaiters: [Int: CheckedContinuation<Void, Never>] = [:]
    var nextExitTicket = 0

    init(config: VPSConfig) { self.config = config }
}

/// Owns the node's VPSs: the lifecycle state machine over the checkpointed configs, the
/// cgroups, and the berth-spawn monitors. All state changes are serialised by the actor;
/// `starting`/`stopping` mark a VPS busy while an operation awaits the kernel.
public actor VPSManager {
    public let paths: AgentPaths
    public let nodeName: String
    let store: ConfigStore
    public let templates: TemplateStore
    let cgroups: any CgroupDriver
    /// What VPSs see under /sys/fs/cgroup: the host's layout, read once at agent start.
    let guestCgroupMounts: [CgroupGuestMount]
    let logger: Logger
    var records: [String: VPSRecord] = [:]
    /// VPS directories whose config could not be loaded, with the reason.
    var broken: [String: String] = [:]
    var creating: Set<String> = []
    /// Interfaces and addresses of VPSs being created (their records do not exist yet).
    var pendingNetworks: [String: VPSConfig.Network] = [:]
    /// Id ranges handed to creates still in flight (their configs are not saved yet).
    var pendingIdmaps: Set<UInt32> = []
    var warnedNoLxcfs = false
    /// The disk layout of a VPS created without `--layout` (`berth-agent --default-layout`).
    public let defaultLayout: VPSConfig.Layout
    /// The node's btrfs pool once a pool VPS needed it (StoragePool.swift).
    var pool: StoragePool?
    /// The pool's mount or first format while it is in progress.
    var poolSetUp: Task<StoragePool, any Error>?
    var checkedLxcfsControllers = false
    let onlineCPUs: Int
    public let overcommit: Overcommit
    public let settings: NodeSettings
    /// Seconds after which an unread beancounter table is rewritten (a read one is within 1 s);
    /// 0 leaves the tables as written at start.
    public let beancounterInterval: Int
    let beancounterReaders = BeancounterReaders()
    var beancounterWritten: [String: ContinuousClock.Instant] = [:]

    public init(paths: AgentPaths, nodeName: String, cgroups: any CgroupDriver, logger: Logger,
                overcommit: Overcommit = Overcommit(), settings: NodeSettings = NodeSettings(),
                beancounterInterval: Int = 30, defaultLayout: VPSConfig.Layout = .loop) throws {
        self.beancounterInterval = beancounterInterval
        self.defaultLayout = defaultLayout
        self.overcommit = overcommit
        self.settings = settings
        try FileManager.default.createDirectory(atPath: paths.runDir, withIntermediateDirectories: true,
                                                attributes: [.posixPermissions: 0o755])
        var paths = paths
        paths.spawnBinary = try Self.readOnlyHelper(paths.spawnBinary, runDir: paths.runDir)
        paths.monitorBinary = try Self.readOnlyHelper(paths.monitorBinary, runDir: paths.runDir)
        self.paths = paths
        self.nodeName = nodeName
        self.cgroups = cgroups
        guestCgroupMounts = cgroups.guestMounts()
        self.logger = logger
        store = ConfigStore(dataDir: paths.dataDir)
        templates = TemplateStore(dataDir: paths.dataDir, cacheDir: paths.templateCache)
        onlineCPUs = Int(sysconf(Int32(_SC_NPROCESSORS_ONLN)))
        for dir in [paths.dataDir, store.vpsRoot, templates.root] {
            try FileManager.default.createDirectory(atPath: dir, withIntermediateDirectories: true)
        }
        try FileManager.default.createDirectory(atPath: paths.runDir, withIntermediateDirectories: true,
                                                attributes: [.posixPermissions: 0o755])
    }

    func runDir(_ name: String) -> String { paths.runDir + "/" + name }

    // MARK: - Recovery

    /// Re-adopts running VPSs, notices the ones that exited while no agent ran, cleans their
    /// leftovers, and — on the first agent start after a host boot — starts `onboot` VPSs.
    public func recover() async {
        for name in store.names() {
            let config: VPSConfig
            do {
                config = try store.load(name)
            } catch {
                broken[name] = "\(error)"
                logger.error("cannot load VPS config", metadata: ["vps": "\(name)", "error": "\(error)"])
                continue
            }
            let record = VPSRecord(config: config)
            records[name] = record
            if config.isLayered { templates.share(config.template, with: name) }
            if let run = RunState.read(runDir: runDir(name)), run.monitorAlive {
                record.run = run
                record.lifecycle.adoptRunning()
                let pidfd = berth_pidfd_open(run.monitorPid, 0)
                if pidfd >= 0 { watchMonitor(name, record: record, pid: run.monitorPid, pidfd: pidfd) }
                logger.info("re-adopted running VPS", metadata: ["vps": "\(name)", "pid": "\(run.initPid)"])
            } else {
                record.lastExit = exitReason(name) ?? ""
                cleanupAfterExit(name)
                removeRebuildLeftovers(name)
                if config.desiredState == .running {
                    logger.notice("VPS stopped while the agent was down", metadata: ["vps": "\(name)", "reason": "\(record.lastExit)"])
                }
            }
        }
        if hostBootedSinceLastAgent() {
            for record in records.values where record.config.onboot && record.state == .stopped {
                do {
                    _ = try await start(record.config.name)
                    logger.info("started onboot VPS", metadata: ["vps": "\(record.config.name)"])
                } catch {
                    logger.error("onboot start failed", metadata: ["vps": "\(record.config.name)", "error": "\(error)"])
                }
            }
        }
    }

    /// /run is empty after a host boot: a boot-id marker there tells a restart from a reboot.
    func hostBootedSinceLastAgent() -> Bool {
        let bootID = (FileIO.read("/proc/sys/kernel/random/boot_id") ?? "").trimmed
        let marker = paths.runDir + "/agent.boot-id"
        let previous = (FileIO.read(marker) ?? "").trimmed
        try? FileIO.writeAtomically(marker, Array((bootID + "\n").utf8), mode: 0o644)
        return previous != bootID
    }

    // MARK: - Queries

    func record(_ name: String) throws -> VPSRecord {
        if let message = broken[name] { throw AgentError(.corruptState, message) }
        guard let record = records[name] else { throw AgentError.notFound(name) }
        return record
    }

    public func status(_ name: String) throws -> VPSView {
        _ = try Name.validate(name)
        return view(try record(name))
    }

    /// The VPSs (running ones only unless `all`) whose labels match `selector`, by name; with
    /// `all` and no selector also the directories whose config is broken.
    public func list(all: Bool, selector: [String: String]) -> (vpses: [VPSView], broken: [BrokenVPS]) {
        let vpses = records.keys.sorted().compactMap { name -> VPSView? in
            let record = records[name]!
            if !all && record.state == .stopped { return nil }
            if !selector.allSatisfy({ record.config.labels[$0.key] == $0.value }) { return nil }
            return view(record)
        }
        let broken = all && selector.isEmpty ? self.broken.sorted { $0.key < $1.key }.map { BrokenVPS(name: $0.key, reason: $0.value) } : []
        return (vpses, broken)
    }

    func view(_ record: VPSRecord) -> VPSView {
        var view = VPSView(config: record.config, state: record.state, node: nodeName, lastExit: record.lastExit)
        if record.state.hasMonitor {
            // The init pid changes on an in-VPS reboot: the monitor's state file is current.
            if let run = RunState.read(runDir: runDir(record.config.name)) { record.run = run }
            view.initPid = record.run?.initPid
            view.bootedAt = record.run?.bootedAt
        }
        return view
    }

    // MARK: - Create / destroy

    public func create(_ request: VPSCreation, progress: @Sendable (String) -> Void = { _ in }) async throws -> VPSView {
        let name = try Name.validate(request.name)
        guard !request.template.isEmpty else { throw AgentError.invalid("template", "is required") }
        _ = try Name.validate(request.template, field: "template")
        guard let template = templates.info(request.template) else {
            throw AgentError(.notFound, "template \(request.template) does not exist (see 'berth template list')", field: "template")
        }
        let hostname = try Validation.hostname(request.hostname.isEmpty ? name : request.hostname)
        for (key, value) in request.labels { try Validation.label(key: key, value: value) }
        let nameservers = try request.nameservers.map { try Validation.nameserver($0).description }
        let searchDomains = try Validation.searchDomains(request.searchDomains)
        let limits = try Limits().merging(request.limits, onlineCPUs: onlineCPUs)
        let storage: VPSConfig.Storage
        switch request.storage {
        case "", "image": storage = .image
        case "layered": storage = .layered
        default: throw AgentError.invalid("storage", "'\(request.storage)' is not a storage kind (image, layered)")
        }
        let layout: VPSConfig.Layout
        switch request.layout {
        case "": layout = defaultLayout
        case "loop": layout = .loop
        case "pool": layout = .pool
        default: throw AgentError.invalid("layout", "'\(request.layout)' is not a disk layout (loop, pool)")
        }
        if layout == .pool, limits.diskInodes != nil {
            throw AgentError.invalid("disk-inodes", "a pool VPS's disk is a btrfs subvolume, which has no inode limit; leave --disk-inodes out or use --layout loop")
        }
        // A layered disk holds only what the VPS changes.
        let minimum = storage == .layered ? UInt64(16 << 20) : template.sizeBytes + template.sizeBytes / 4 + (16 << 20)
        if limits.diskBytes < minimum {
            throw AgentError.invalid("disk", "\(ByteSize.format(limits.diskBytes)) is too small for template \(template.name) (needs at least \(minimum >> 20)M)")
        }
        guard records[name] == nil, broken[name] == nil, !creating.contains(name),
              !FileManager.default.fileExists(atPath: store.directory(name)) else {
            throw AgentError(.alreadyExists, "VPS \(name) already exists", field: "name")
        }
        let capabilities = try Validation.capabilities(request.capabilities)
        let network = try newNetwork(name: name, net: request.net, ips: request.ips)
        let idmapBase = request.privileged ? nil : try allocateIdmap()
        creating.insert(name)
        pendingNetworks[name] = network
        if let idmapBase { pendingIdmaps.insert(idmapBase) }
        defer {
            creating.remove(name)
            pendingNetworks[name] = nil
            if let idmapBase { pendingIdmaps.remove(idmapBase) }
        }

        var config = VPSConfig(name: name, template: template.name, hostname: hostname, limits: limits,
                               labels: request.labels, onboot: request.onboot, stopSignal: template.stopSignal)
        config.network = network
        config.nameservers = nameservers.isEmpty ? nil : nameservers
        config.searchDomains = searchDomains.isEmpty ? nil : searchDomains
        config.privileged = request.privileged ? true : nil
        config.idmapBase = idmapBase
        config.capabilities = capabilities.isEmpty ? nil : capabilities
        config.storage = storage == .layered ? .layered : nil
        config.layout = layout == .pool ? .pool : nil
        let dir = store.directory(name)
        var volumeIn: StoragePool?
        do {
            try FileManager.default.createDirectory(atPath: store.rootPath(name), withIntermediateDirectories: true)
            chmod(dir, 0o700)
            // A layered disk starts empty; the monitor makes its upper and work directories.
            let tree = storage == .layered ? nil : templates.rootfs(template.name)
            if storage == .layered { templates.share(template.name, with: name) }
            if layout == .pool {
                let pool = try await storagePool(creating: true)
                progress("creating a \(ByteSize.format(limits.diskBytes)) subvolume in the storage pool " + (tree == nil ? "layered over" : "from") + " template \(template.name)")
                try await createVolume(name, in: pool, bytes: limits.diskBytes, copying: tree)
                volumeIn = pool
            } else {
                progress("creating \(ByteSize.format(limits.diskBytes)) disk " + (tree == nil ? "layered over" : "from") + " template \(template.name)")
                let result = try await Subprocess.run(mkfsArguments(name, from: tree, image: store.diskPath(name),
                                                                    bytes: limits.diskBytes, inodes: limits.diskInodes))
                guard result.status == 0 else {
                    throw AgentError(.kernel, "creating the disk image failed: \(result.stderr.trimmed)", stage: "mke2fs")
                }
            }
            try store.save(config)
        } catch {
            if let volumeIn { try? deleteVolume(name, in: volumeIn) }
            try? FileManager.default.removeItem(atPath: dir)
            if storage == .layered { templates.unshare(template.name, with: name) }
            throw error
        }
        let record = VPSRecord(config: config)
        records[name] = record
        logger.info("created VPS", metadata: ["vps": "\(name)", "template": "\(template.name)"])
        return view(record)
    }

    public func destroy(_ name: String, force: Bool) async throws {
        _ = try Name.validate(name)
        if let message = broken[name] {
            guard force else { throw AgentError(.corruptState, "\(message); use --force to destroy it anyway") }
        } else {
            if try record(name).lifecycle.destroyPlan(name, force: force) == .killThenDelete {
                try await stop(name, timeout: 0, kill: true)
            }
        }
        for mounted in [store.rootPath(name), store.diskMountPath(name)] where FileIO.isMountPoint(mounted) {
            throw AgentError(.conflict, "\(mounted) is still mounted; refusing to delete through a mounted VPS disk")
        }
        if records[name]?.config.isPooled ?? false {
            try deleteVolume(name, in: try await storagePool(creating: false))
        } else if let pool = try? mountedPool(), FileIO.exists(pool.volume(name)) {
            // A pool VPS whose config is broken, or what an interrupted destroy left.
            try deleteVolume(name, in: pool)
        }
        do {
            try FileManager.default.removeItem(atPath: store.directory(name))
        } catch {
            throw AgentError(.kernel, "removing \(store.directory(name)) failed: \(error.localizedDescription)")
        }
        try? FileManager.default.removeItem(atPath: runDir(name))
        if let config = records[name]?.config, config.isLayered { templates.unshare(config.template, with: name) }
        records[name] = nil
        broken[name] = nil
        logger.info("destroyed VPS", metadata: ["vps": "\(name)"])
    }

    // MARK: - Start / stop

    public func start(_ name: String) async throws -> VPSView {
        _ = try Name.validate(name)
        let record = try record(name)
        // Before the disk is looked for: a running VPS answers "already running".
        try record.lifecycle.checkStart(name)
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
            try await launch(record, pool: pool, whileBooting: {
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
        record.lifecycle.startSucceeded()
        record.lastExit = ""
        // The monitor has mounted the table's directory: its first table, with the booted init,
        // written once this reply is on its way (reading the counters is no part of a start).
        Task { try? self.writeBeancounters(name) }
        logger.info("started VPS", metadata: ["vps": "\(name)", "pid": "\(record.run?.initPid ?? 0)"])
        return view(record)
    }

    /// `pool`: the storage pool of a pool VPS. `whileBooting` runs once the monitor has its spec,
    /// before its report is awaited.
    private func launch(_ record: VPSRecord, pool: StoragePool?, whileBooting: () -> Void = {}) async throws {
        let name = record.config.name
        if !record.config.isPrivileged && record.config.idmapBase == nil {
            // A VPS created before user namespaces: its files need no change (the root is
            // mounted idmapped), only a range of its own.
            record.config.idmapBase = try allocateIdmap()
            try store.save(record.config)
        }
        if let pool, pool.device == nil, record.config.limits.io != IOLimits() {
            throw AgentError.kernel("I/O limits of \(name)", StoragePool.noDeviceForIOLimits)
        }
        let run = runDir(name)
        try FileManager.default.createDirectory(atPath: run, withIntermediateDirectories: true)
        chmod(run, 0o700)
        for file in [RunState.exitFile, RunState.stopRequestFile, RunState.stateFile] { unlink(run + "/" + file) }

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
        var pipes: [(read: Int32, write: Int32)] = []
        do {
            for _ in 0..<3 { pipes.append(try Subprocess.makePipe()) }
        } catch {
            pipes.forEach { close($0.read); close($0.write) }
            throw error
        }
        let (specPipe, statusPipe, cgroupPipe) = (pipes[0], pipes[1], pipes[2])
        let devnull = open("/dev/null", O_RDWR | O_CLOEXEC)
        let log = open(run + "/monitor.log", O_WRONLY | O_CREAT | O_APPEND | O_CLOEXEC, 0o600)
        defer { close(devnull); if log >= 0 { close(log) } }
        let child: (pid: Int32, pidfd: Int32)
        do {
            child = try Subprocess.spawn([paths.spawnBinary, "start"],
                                         fds: HelperProtocol.StartDescriptor.table(
                                            stdin: devnull, stdout: log >= 0 ? log : devnull, stderr: log >= 0 ? log : devnull,
                                            spec: specPipe.read, report: statusPipe.write, cgroupsReady: cgroupPipe.read),
                                         environment: [], newSession: true)
        } catch {
            [specPipe.read, specPipe.write, statusPipe.read, statusPipe.write, cgroupPipe.read, cgroupPipe.write].forEach { close($0) }
            throw AgentError(.kernel, "cannot run \(paths.spawnBinary): \(error)", stage: "spawn")
        }
        close(specPipe.read)
        close(statusPipe.write)
        close(cgroupPipe.read)
        let spec: SpawnSpec
        do {
            spec = try spawnSpec(record, runDir: run, pool: pool)
        } catch {
            await abandonStart(monitor: child, closing: [specPipe.write, statusPipe.read, cgroupPipe.write])
            throw error
        }
        try? FileIO.writeAll(fd: specPipe.write, Array(spec.encode().utf8), stage: "spec")
        close(specPipe.write)
        let ready: CgroupsReady
        do {
            ready = try makeCgroups(record)
        } catch {
            await abandonStart(monitor: child, closing: [cgroupPipe.write, statusPipe.read])
            throw error
        }
        try? FileIO.writeAll(fd: cgroupPipe.write, Array(ready.encode().utf8), stage: "cgroups")
        close(cgroupPipe.write)
        whileBooting()
        let reply = await Subprocess.readFirstLine(statusPipe.read)
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
    private func warnIfLxcfsIsBlindToCPUs() {
        guard !checkedLxcfsControllers else { return }
        checkedLxcfsControllers = true
        guard case .v2(let root) = CgroupMode.detect(), let pidOne = FileIO.read("/proc/1/cgroup"),
              let seen = CgroupV2Driver.controllersSeenByLxcfs(root: root, pidOneCgroup: pidOne) else { return }
        guard !seen.contains("cpuset") else { return }
        logger.warning("lxcfs takes its cgroup controllers from the cgroup of the host's PID 1, which lacks cpuset: /proc/cpuinfo and /proc/stat inside VPSs list every host CPU (their cpusets still hold)",
                       metadata: ["pid1_cgroup": "\(pidOne.trimmed)", "controllers_seen": "\(seen.sorted().joined(separator: " "))"])
    }

    /// Ends a start this side gave up on before the monitor could boot: EOF on its spec pipe
    /// makes it exit untouched, EOF on its cgroup pipe makes it undo its mounts and exit. One
    /// still there after a while (stuck in the kernel, or deaf to EOF) is killed, and whatever
    /// it started is ended with the VPS's cgroup (cleanupAfterExit): a start fails, it never hangs.
    private func abandonStart(monitor: (pid: Int32, pidfd: Int32), closing fds: [Int32]) async {
        fds.forEach { close($0) }
        // A pidfd of its own: the watcher closes its copy once the monitor is reaped, and a late
        // kill through this one can only reach the monitor (or nothing), never a reused pid.
        let pidfd = dup(monitor.pidfd)
        defer { if pidfd >= 0 { close(pidfd) } }
        await withTaskGroup(of: Bool.self) { group in
            group.addTask { _ = await ProcessWatcher.shared.waitForExit(pid: monitor.pid, pidfd: monitor.pidfd); return true }
            group.addTask { try? await Task.sleep(for: .seconds(10)); return false }
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
    private func makeCgroups(_ record: VPSRecord) throws -> CgroupsReady {
        let name = record.config.name
        do {
            try cgroups.create(name)
            try cgroups.apply(name, record.config.limits.cgroup)
            if let base = record.config.idmapBase { try cgroups.delegate(name, uid: base, gid: base) }
        } catch {
            throw AgentError.kernel("setting up the cgroup of \(name)", error)
        }
        guard record.config.limits.io != IOLimits() else { return CgroupsReady() }
        do {
            return CgroupsReady(deviceWrites: try cgroups.ioSettings(name, record.config.limits.io, device: IOLimits.devicePlaceholder))
        } catch {
            throw AgentError.kernel("I/O limits of \(name)", error)
        }
    }

    /// The VPS's guest spec file, and the spec the monitor boots it from.
    private func spawnSpec(_ record: VPSRecord, runDir run: String, pool: StoragePool?) throws -> SpawnSpec {
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
        var spec = SpawnSpec(name: name, diskImage: store.diskPath(name), rootPath: store.rootPath(name), runDir: run,
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

    private func watchMonitor(_ name: String, record: VPSRecord, pid: Int32, pidfd: Int32) {
        let generation = record.generation
        Task {
            _ = await ProcessWatcher.shared.waitForExit(pid: pid, pidfd: pidfd)
            self.monitorExited(name, generation: generation)
        }
    }

    private func monitorExited(_ name: String, generation: Int) {
        guard let record = records[name], record.generation == generation else { return }
        let reason = exitReason(name) ?? "monitor exited unexpectedly"
        record.lastExit = reason
        record.run = nil
        cleanupAfterExit(name)
        let waiters = record.exitWaiters.values
        record.exitWaiters.removeAll()
        waiters.forEach { $0.resume() }
        // Stopped as asked, or from inside (poweroff/halt), or crashed.
        guard record.lifecycle.monitorExited(reason: reason) != .stoppedAsAsked else { return }
        record.config.desiredState = .stopped
        try? store.save(record.config)
        logger.notice("VPS stopped by itself", metadata: ["vps": "\(name)", "reason": "\(reason)"])
    }

    func exitRecord(_ name: String) -> HelperProtocol.ExitRecord? {
        FileIO.read(runDir(name) + "/" + RunState.exitFile).flatMap(HelperProtocol.ExitRecord.init(text:))
    }

    func exitReason(_ name: String) -> String? { exitRecord(name)?.reason }

    /// Removes what a stopped VPS leaves: stray processes, its cgroup, its run directory and a
    /// root mount whose monitor died. Idempotent.
    func cleanupAfterExit(_ name: String) {
        let monitorDetached = exitRecord(name)?.networkDetached ?? false
        if !monitorDetached, let config = records[name]?.config, let link = guestSpec(config).link {
            // The monitor removes these itself; this covers a monitor that died mid-way.
            NetworkSetup.detach(link, removeInterface: false)
        }
        if cgroups.exists(name) {
            try? cgroups.killAll(name)
            do { try cgroups.destroy(name) } catch {
                logger.warning("cannot remove cgroup", metadata: ["vps": "\(name)", "error": "\(error)"])
            }
        }
        // Left in the host's namespace only by a monitor of an earlier version (today's mount in
        // their own). The root first: a layered VPS's overlay holds its disk mount busy.
        for mounted in [store.rootPath(name), store.diskMountPath(name)] where FileIO.isMountPoint(mounted) {
            if umount2(mounted, 0) != 0 { umount2(mounted, Int32(MNT_DETACH)) }
        }
        if FileIO.isMountPoint(beancounterDirectory(name)) { umount2(beancounterDirectory(name), Int32(MNT_DETACH)) }
        forgetBeancounters(name)
        try? FileManager.default.removeItem(atPath: runDir(name))
    }

    public func stop(_ name: String, timeout: UInt32, kill: Bool) async throws {
        _ = try Name.validate(name)
        let record = try record(name)
        try record.lifecycle.beginStop(name)
        let run = runDir(name)
        _ = FileManager.default.createFile(atPath: run + "/" + RunState.stopRequestFile, contents: nil)
        if kill {
            try? cgroups.killAll(name)
        } else if let state = RunState.read(runDir: run), state.initAlive {
            Glibc.kill(state.initPid, record.config.stopSignal)
        }
        let grace = kill ? 5 : Double(timeout == 0 ? 30 : timeout)
        if !(await waitUntilStopped(record, seconds: grace)) {
            logger.notice("clean stop timed out, killing", metadata: ["vps": "\(name)"])
            try? cgroups.killAll(name)
            if !(await waitUntilStopped(record, seconds: 10)) {
                record.lifecycle.stopFailed()
                throw AgentError(.deadlineExceeded, "VPS \(name) did not stop even after SIGKILL")
            }
        }
        record.config.desiredState = .stopped
        try? store.save(record.config)
        logger.info("stopped VPS", metadata: ["vps": "\(name)", "reason": "\(record.lastExit)"])
    }

    /// Waits for the monitor's exit (told by `monitorExited`, not polled) or `seconds`.
    private func waitUntilStopped(_ record: VPSRecord, seconds: Double) async -> Bool {
        let monitorRunning = { record.state == .stopping && record.run != nil }
        if monitorRunning() {
            let ticket = record.nextExitTicket
            record.nextExitTicket += 1
            let timer = Task {
                try? await Task.sleep(for: .seconds(seconds))
                if !Task.isCancelled { self.endExitWait(record, ticket: ticket) }
            }
            await withCheckedContinuation { record.exitWaiters[ticket] = $0 }
            timer.cancel()
        }
        return !monitorRunning()
    }

    private func endExitWait(_ record: VPSRecord, ticket: Int) {
        record.exitWaiters.removeValue(forKey: ticket)?.resume()
    }

    public func restart(_ name: String) async throws -> VPSView {
        _ = try Name.validate(name)
        let record = try record(name)
        if record.state == .running { try await stop(name, timeout: 0, kill: false) }
        return try await start(name)
    }

    // MARK: - Set

    public func set(_ request: VPSChange) async throws -> VPSChangeOutcome {
        let name = try Name.validate(request.name)
        let record = try record(name)
        try record.lifecycle.beginChange(name)
        defer { record.lifecycle.endChange() }
        var config = record.config
        var live: [String] = [], restart: [String] = []
        let running = record.state == .running
        // Everything is validated before anything is applied, so bad input changes nothing.
        config.limits = try config.limits.merging(request.limits, onlineCPUs: onlineCPUs)
        var guestChanged: [String] = []
        if !request.hostname.isEmpty && request.hostname != config.hostname {
            config.hostname = try Validation.hostname(request.hostname)
            guestChanged.append("hostname")
        }
        try applyNetworkChanges(request, to: &config, changed: &guestChanged, restart: &restart, running: running)
        for (key, value) in request.labels {
            if value.isEmpty { config.labels[key] = nil } else {
                try Validation.label(key: key, value: value)
                config.labels[key] = value
            }
        }
        if let onboot = request.onboot { config.onboot = onboot }
        if !request.capabilities.isEmpty {
            var merged = config.capabilities ?? [:]
            for (capability, value) in try Validation.capabilities(request.capabilities) { merged[capability] = value }
            config.capabilities = merged.isEmpty ? nil : merged
            // A process's bounding set only shrinks: the new set applies from the next boot.
            if running && config.capabilities != record.config.capabilities { restart.append("capability") }
        }
        // Addresses added here are taken while this call awaits the kernel: a concurrent create
        // or set must not hand them out again.
        pendingNetworks[name] = config.network
        defer { pendingNetworks[name] = nil }

        let old = record.config.limits
        if config.isPooled {
            if config.limits.diskInodes != nil {
                throw AgentError.invalid("disk-inodes", "a pool VPS's disk is a btrfs subvolume, which has no inode limit")
            }
            if old.diskBytes != config.limits.diskBytes {
                try await resizeVolume(name, to: config.limits.diskBytes)
                if running { live.append("disk") }
            }
        } else if let inodes = config.limits.diskInodes, inodes != old.diskInodes {
            try await rebuildDisk(name, inodes: inodes, bytes: config.limits.diskBytes, running: running)
        } else if old.diskBytes != config.limits.diskBytes {
            try await resizeDisk(name, from: old.diskBytes, to: config.limits.diskBytes, running: running)
            if running { live.append("disk") }
        }
        let cgroupChanged = [
            ("memory", old.memoryBytes != config.limits.memoryBytes), ("swap", old.swapBytes != config.limits.swapBytes),
            ("pids", old.pids != config.limits.pids), ("cpu-units", old.cpuUnits != config.limits.cpuUnits),
            ("cpu-limit", old.cpuLimitPercent != config.limits.cpuLimitPercent), ("cpus", old.cpus != config.limits.cpus),
        ].filter(\.1).map(\.0)
        if running && !cgroupChanged.isEmpty {
            do {
                try cgroups.apply(name, config.limits.cgroup)
            } catch {
                try? cgroups.apply(name, old.cgroup)
                throw AgentError.kernel("applying limits to \(name)", error)
            }
            live += cgroupChanged
        }
        if running && old.files != config.limits.files { restart.append("files") }
        if old.io != config.limits.io {
            // Checked for stopped VPSs too: a limit the host cannot enforce is refused now.
            let result = applyIO(name, config.limits.io, running: running)
            if case .failure(let error) = result {
                if !cgroupChanged.isEmpty { try? cgroups.apply(name, old.cgroup) }
                throw AgentError.kernel("I/O limits of \(name)", error)
            }
            if running { live.append("io") }
        }
        if running && !guestChanged.isEmpty {
            do {
                try await configureLive(record, config)
            } catch {
                if !cgroupChanged.isEmpty { try? cgroups.apply(name, old.cgroup) }
                throw error
            }
            live += guestChanged
        }
        try store.save(config)
        record.config = config
        return VPSChangeOutcome(vps: view(record), appliedLive: live, needsRestart: restart)
    }

    // MARK: - Accounting

    /// Beancounter-style counters from the VPS's cgroup and its mounted disk. A stopped VPS
    /// reports its configured limits with nothing held; disk counters appear while it runs.
    public func stats(_ name: String) throws -> VPSAccounting {
        _ = try Name.validate(name)
        let record = try record(name)
        let running = record.state == .running || record.state == .stopping
        var usage = CgroupUsage()
        let limits = record.config.limits
        if running {
            usage = cgroups.usage(name)
        } else {
            usage.memoryLimitBytes = limits.memoryBytes
            usage.swapLimitBytes = limits.memoryBytes == nil ? nil : limits.swapBytes ?? 0
            usage.pidsLimit = limits.pids.map(UInt64.init)
        }
        func counter(_ resource: String, _ held: UInt64, _ peak: UInt64, _ limit: UInt64?, _ failcnt: UInt64) -> VPSAccounting.Counter {
            VPSAccounting.Counter(resource: resource, held: held, peak: peak, limit: limit, failures: failcnt)
        }
        var stats = VPSAccounting(name: name, cpuNanoseconds: usage.cpuNanoseconds, counters: [])
        stats.counters = [
            // Some kernels count no failed charge when the OOM killer resolves it: a kill is a
            // failure too (OpenVZ's privvmpages failcnt rises on either).
            counter("memory", usage.memoryBytes, usage.memoryPeakBytes, usage.memoryLimitBytes, max(usage.memoryFailcount, usage.oomKills)),
            counter("swap", usage.swapBytes, usage.swapPeakBytes, usage.swapLimitBytes, usage.swapFailcount),
            counter("pids", usage.pids, usage.pidsPeak, usage.pidsLimit, usage.pidsFailcount),
            counter("cpu_throttled", usage.cpuThrottledPeriods, 0, limits.cpuLimitPercent.map(UInt64.init), usage.cpuThrottledPeriods),
            counter("cpu_throttled_ms", usage.cpuThrottledNanoseconds / 1_000_000, 0, nil, 0),
            counter("oom_kill", usage.oomKills, 0, nil, usage.oomKills),
            counter("io_bytes", usage.ioBytes, 0, limits.ioBytesPerSecond, 0),
            counter("io_ops", usage.ioOperations, 0, limits.ioOperationsPerSecond.map(UInt64.init), 0),
        ]
        // A pool VPS's disk is its quota group; the limit stands whether it runs or not.
        if record.config.isPooled {
            if let usage = (try? mountedPool())??.usage(name) {
                stats.counters.append(counter("disk_bytes", usage.used, 0, usage.limit ?? limits.diskBytes, 0))
            }
            return stats
        }
        // The disk is the mounted image: its own filesystem's totals are the hard limits.
        var fs = statvfs()
        if running, let disk = mountedDisk(record), statvfs(disk, &fs) == 0 {
            let block = UInt64(fs.f_frsize)
            stats.counters.append(counter("disk_bytes", UInt64(fs.f_blocks - fs.f_bfree) * block, 0, UInt64(fs.f_blocks) * block, 0))
            stats.counters.append(counter("disk_inodes", UInt64(fs.f_files - fs.f_ffree), 0, UInt64(fs.f_files), 0))
        }
        return stats
    }

    /// The mounted filesystem of a running VPS's disk as its monitor sees it (the host's own
    /// namespace never has it mounted); nil when it is not mounted.
    func mountedDisk(_ record: VPSRecord) -> String? {
        let name = record.config.name
        guard let view = record.run?.monitorView(record.config.isLayered ? store.diskMountPath(name) : store.rootPath(name)),
              FileIO.isMountPoint(view) else { return nil }
        return view
    }

    /// Capacity of this node and what its VPSs' limits commit of it.
    public func nodeInfo() -> NodeCapacity {
        var info = NodeCapacity(name: nodeName, overcommit: overcommit)
        var uts = utsname()
        uname(&uts)
        info.kernel = withUnsafePointer(to: &uts.release) { $0.withMemoryRebound(to: CChar.self, capacity: 65) { String(cString: $0) } }
        info.cgroupMode = cgroups.modeName
        info.cpus = onlineCPUs
        let meminfo = FileIO.read("/proc/meminfo") ?? ""
        if let line = meminfo.split(separator: "\n").first(where: { $0.hasPrefix("MemTotal:") }),
           let kib = UInt64(line.split(separator: " ").dropFirst().first ?? "") {
            info.memoryBytes = kib * 1024
        }
        var fs = statvfs()
        if statvfs(store.vpsRoot, &fs) == 0 {
            info.diskBytes = UInt64(fs.f_blocks) * UInt64(fs.f_frsize)
            info.diskFreeBytes = UInt64(fs.f_bavail) * UInt64(fs.f_frsize)
        }
        if let pool = try? mountedPool(), statvfs(pool.directory, &fs) == 0 {
            info.poolBytes = UInt64(fs.f_blocks) * UInt64(fs.f_frsize)
            info.poolFreeBytes = UInt64(fs.f_bavail) * UInt64(fs.f_frsize)
        }
        for record in records.values {
            let limits = record.config.limits
            info.committed += limits.commitment
            if record.config.isPooled { info.committedPoolBytes += limits.diskBytes }
            info.vpsTotal += 1
            if record.state == .running { info.vpsRunning += 1 }
        }
        return info
    }

    /// Every VPS with its kernel counters, for the metrics endpoint.
    /// The kernel reads happen outside the actor: a scrape must not hold up lifecycle calls.
    public nonisolated func accountingSnapshot() async -> [(name: String, running: Bool, usage: CgroupUsage)] {
        let states = await vpsStates()
        // Every VPS costs ~20 small cgroupfs reads; spread them over the CPUs.
        let usages = UsageBuffer(count: states.count)
        let driver = cgroups
        DispatchQueue.concurrentPerform(iterations: states.count) { i in
            if states[i].running { usages.set(i, driver.usage(states[i].name, scope: .scrape)) }
        }
        return states.indices.map { (states[$0].name, states[$0].running, usages.get($0)) }
    }

    func vpsStates() -> [(name: String, running: Bool)] {
        records.keys.sorted().map { ($0, records[$0]!.state == .running) }
    }

    // MARK: - Joining a running VPS

    /// What berth-spawn exec needs to join `name`.
    func joinTarget(_ name: String) throws -> (run: RunState, cgroupFiles: [String]) {
        _ = try Name.validate(name)
        let record = try record(name)
        guard record.state == .running, let run = RunState.read(runDir: runDir(name)), run.initAlive else {
            throw AgentError(.conflict, "VPS \(name) is not running")
        }
        return (run, cgroups.procsFiles(name))
    }

    /// A read-only bind of a helper binary in the run directory, under the same name, run
    /// instead of the original: a process in a VPS that reaches the helper through /proc/PID/exe
    /// (CVE-2019-5736) cannot open it for writing (EROFS), even in a privileged VPS where it is
    /// host root.
    static func readOnlyHelper(_ binary: String, runDir: String) throws -> String {
        let target = runDir + "/" + FileIO.baseName(binary)
        // A previous agent's bind: replace it, the binary may have been upgraded since (monitors
        // still running from it keep it alive; a lazy unmount does not disturb them).
        for _ in 0..<16 where umount2(target, Int32(MNT_DETACH)) == 0 {}
        if !FileIO.exists(target) {
            let fd = open(target, O_WRONLY | O_CREAT | O_EXCL | O_CLOEXEC, 0o755)
            guard fd >= 0 else { throw AgentError(.kernel, "cannot create \(target): \(errnoName(errno))", stage: "create", errno: errno) }
            close(fd)
        }
        guard mount(binary, target, nil, UInt(MS_BIND), nil) == 0,
              mount("", target, nil, UInt(MS_BIND | MS_REMOUNT | MS_RDONLY | MS_NOSUID | MS_NODEV), nil) == 0 else {
            throw AgentError(.kernel, "cannot bind \(binary) read-only at \(target): \(errnoName(errno))", stage: "mount", errno: errno)
        }
        return target
    }

    /// Detaches the helper's read-only bind when the agent exits (processes started from it keep
    /// running); the next agent makes a fresh one.
    public nonisolated func releaseHelper() {
        for helper in [paths.spawnBinary, paths.monitorBinary] where FileIO.directory(of: helper) == paths.runDir {
            for _ in 0..<16 where umount2(helper, Int32(MNT_DETACH)) == 0 {}
            unlink(helper)
        }
    }

    /// The lowest free id range of this node (saved configs and creates in flight).
    func allocateIdmap() throws -> UInt32 {
        var used = pendingIdmaps
        for record in records.values { if let base = record.config.idmapBase { used.insert(base) } }
        // A broken config still owns its range: its files may be in use again after a fix.
        for name in broken.keys {
            // Unreadable as a config, maybe still running: its range stays taken if it names one.
            if let data = FileManager.default.contents(atPath: store.configPath(name)),
               let object = try? JSONSerialization.jsonObject(with: data) as? [String: Any],
               let base = object["idmapBase"] as? NSNumber {
                used.insert(base.uint32Value)
            }
        }
        return try IDMapPool.allocate(excluding: used)
    }

    func consoleSocket(_ name: String) throws -> String {
        _ = try joinTarget(name)
        return runDir(name) + "/" + RunState.consoleSocket
    }

    /// What the console showed during the VPS's last run, kept by its monitor when it stopped:
    /// a failed boot's last words. Empty for a VPS that never ran.
    func consoleLog(_ name: String) throws -> [UInt8] {
        _ = try Name.validate(name)
        _ = try record(name)
        let fd = open(store.directory(name) + "/" + RunState.consoleLogFile, O_RDONLY | O_NOFOLLOW | O_CLOEXEC)
        guard fd >= 0 else { return [] }
        defer { close(fd) }
        return FileIO.readAll(fd: fd) ?? []
    }
}

/// Results of a concurrent sweep, one slot per VPS (each written by exactly one iteration).
final class UsageBuffer: @unchecked Sendable {
    private var slots: [CgroupUsage]
    private let lock = NSLock()
    init(count: Int) { slots = Array(repeating: CgroupUsage(), count: count) }
    func set(_ i: Int, _ usage: CgroupUsage) { lock.lock(); slots[i] = usage; lock.unlock() }
    func get(_ i: Int) -> CgroupUsage { lock.lock(); defer { lock.unlock() }; return slots[i] }
}
