import BerthCore
import CIsolation
import Foundation
import Isolation
import Logging

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
    var guestCgroupMounts: [CgroupGuestMount] = []
    /// berth-spawn and berth-monitor as installed; `paths` names their read-only copies.
    let helperSources: (spawn: String, monitor: String)
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
    /// Migrations this node was told to expect, by grant id (VPSManager+Migration.swift).
    var expectedMigrations: [String: MigrationGrant] = [:]
    /// VPSs received by migration, with their grant, until the controller settles the move.
    var receivedMigrations: [String: String] = [:]
    /// Grants the controller aborted: a transfer still under way under one is refused at its end.
    var abortedMigrations: Set<String> = []
    /// VPSs whose disk is being sent to another node.
    var migratingOut: Set<String> = []
    /// VPSs whose disk a snapshot, rollback or backup holds, with what it is doing.
    var diskHolds: [String: String] = [:]
    /// Replication (VPSManager+Replication.swift): per HA VPS, how each target's last round went,
    /// the rounds under way and when each last began; replicas being received here.
    var replicationStates: [String: [ReplicaState]] = [:]
    var replicating: Set<String> = []
    var lastReplication: [String: ContinuousClock.Instant] = [:]
    var receivingReplicas: Set<String> = []
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

    /// No I/O: a unit test builds a manager over a temporary directory and a fake cgroup driver.
    /// The daemon calls `prepare()` before anything else.
    public init(
        paths: AgentPaths, nodeName: String, cgroups: any CgroupDriver, logger: Logger,
        overcommit: Overcommit = Overcommit(), settings: NodeSettings = NodeSettings(),
        beancounterInterval: Int = 30, defaultLayout: VPSConfig.Layout = .loop,
        onlineCPUs: Int = Int(sysconf(Int32(_SC_NPROCESSORS_ONLN)))
    ) {
        self.beancounterInterval = beancounterInterval
        self.defaultLayout = defaultLayout
        self.overcommit = overcommit
        self.settings = settings
        helperSources = (paths.spawnBinary, paths.monitorBinary)
        var paths = paths
        paths.spawnBinary = Self.helperCopy(of: paths.spawnBinary, runDir: paths.runDir)
        paths.monitorBinary = Self.helperCopy(of: paths.monitorBinary, runDir: paths.runDir)
        self.paths = paths
        self.nodeName = nodeName
        self.cgroups = cgroups
        self.logger = logger
        store = ConfigStore(dataDir: paths.dataDir)
        templates = TemplateStore(dataDir: paths.dataDir, cacheDir: paths.templateCache)
        self.onlineCPUs = onlineCPUs
    }

    /// What a starting agent does before it serves: its directories, the read-only helper
    /// copies its VPSs run (readOnlyHelper), and the host's cgroup layout VPSs are shown.
    public func prepare() throws {
        try FileManager.default.createDirectory(
            atPath: paths.runDir, withIntermediateDirectories: true,
            attributes: [.posixPermissions: 0o755])
        try Self.readOnlyHelper(helperSources.spawn, at: paths.spawnBinary)
        try Self.readOnlyHelper(helperSources.monitor, at: paths.monitorBinary)
        guestCgroupMounts = cgroups.guestMounts()
        for dir in [paths.dataDir, store.vpsRoot, templates.root] {
            try FileManager.default.createDirectory(atPath: dir, withIntermediateDirectories: true)
        }
    }

    func runDir(_ name: String) -> String { paths.runDir + "/" + name }

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

    /// The VPSs (running ones only unless `all`) that `selector` selects, by name; with `all`
    /// and no selector also the directories whose config is broken.
    public func list(all: Bool, selector: Selector = Selector()) -> (vpses: [VPSView], broken: [BrokenVPS]) {
        let vpses = records.keys.sorted().compactMap { name -> VPSView? in
            let record = records[name]!
            if !all && record.state == .stopped { return nil }
            guard
                selector.isEmpty
                    || selector.matches(
                        SelectorFacts(
                            name: name, state: record.state.rawValue, template: record.config.template, node: nodeName, ha: record.config.isHA,
                            labels: record.config.labels))
            else { return nil }
            return view(record)
        }
        let broken = all && selector.isEmpty ? self.broken.sorted { $0.key < $1.key }.map { BrokenVPS(name: $0.key, reason: $0.value) } : []
        return (vpses, broken)
    }

    func view(_ record: VPSRecord) -> VPSView {
        var view = VPSView(config: record.config, state: record.state, node: nodeName, lastExit: record.lastExit)
        (view.snapshots, view.snapshotBytes) = snapshotUsage(record)
        if let plan = record.config.replication {
            view.replicationIntervalSeconds = plan.intervalSeconds
            view.replicas = replicaStates(record.config.name)
        }
        view.fenceArmed = record.state.hasMonitor && fenceArmed(record.config.name)
        if record.state.hasMonitor {
            // The init pid changes on an in-VPS reboot: the monitor's state file is current.
            if let run = RunState.read(runDir: runDir(record.config.name)) { record.run = run }
            view.initPid = record.run?.initPid
            view.bootedAt = record.run?.bootedAt
        }
        return view
    }
}
