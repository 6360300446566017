import ArgumentParser
import BerthCore
import Foundation
import Isolation
import Logging
import Metrics
import NIOPosix
import NodeAgent
import Prometheus
import ServiceLifecycle
import Wire

@main
struct BerthAgent: AsyncParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "berth-agent",
        abstract: "The Berth node agent: owns this node's VPSs and serves the berth CLI.")

    @Option(help: "Where VPS disks, configs and templates live.")
    var dataDir = "/var/lib/berth"

    @Option(help: "Runtime state (monitor pids, console sockets).")
    var runDir = "/run/berth"

    @Option(help: "The root-only Unix socket the CLI talks to.")
    var socket = "/run/berth/agent.sock"

    @Option(help: "This node's name (default: the host name).")
    var name: String?

    @Option(help: "Path of the berth-spawn helper (default: next to this binary); berth-monitor must be next to it.")
    var spawn: String?

    @Option(help: "Parent cgroup of every VPS cgroup (one per node; tests use their own).")
    var cgroupParent = "berth"

    @Option(help: "Use the cgroup v2 driver on this cgroup2 mount instead of detecting the mode (hybrid hosts, tests).")
    var cgroup2Root: String?

    @Option(help: "Serve Prometheus metrics at http://HOST:PORT/metrics (port 0 picks a free one; off by default).")
    var metricsListen: String?

    @Option(help: "CPU overcommit ratio: allocatable CPU = CPUs x ratio.")
    var cpuOvercommit = 4.0

    @Option(help: "Memory overcommit ratio.")
    var memoryOvercommit = 1.0

    @Option(help: "Disk overcommit ratio (images are sparse).")
    var diskOvercommit = 1.0

    @Option(help: "Where lxcfs is mounted (its /proc views show each VPS its own limits; off when nothing serves there).")
    var lxcfs = "/var/lib/lxcfs"

    @Option(
        help:
            "Seconds after which an unread beancounter table (/run/beancounters/user_beancounters inside each VPS) is rewritten; one that was read is rewritten within 1 s. 0 writes it only at start."
    )
    var beancounterInterval = 30

    @Option(help: "Where downloaded distribution trees are cached for template builds (shared by all data directories).")
    var templateCache = "/var/cache/berth/templates"

    @Option(
        help:
            "Size of the btrfs storage pool image (DATA/pool.img, sparse) that the first `create --layout pool` makes, e.g. 50G (default: a fifth of the free space, 5G to 30G); a larger size later grows the pool online, a smaller one shrinks nothing. A btrfs mounted at DATA/pool by hand is used as it is."
    )
    var poolSize: String?

    @Option(
        help:
            "Disk layout of a VPS created without --layout: loop (an ext4 image of its own) or pool (a subvolume of the btrfs storage pool), like vz.conf's VE_LAYOUT."
    )
    var defaultLayout = "loop"

    @Option(help: "Cluster mode: the controller's HOST:PORT (mTLS). Needs --listen.")
    var controller: String?

    @Option(help: "Cluster mode: where this agent serves the controller (HOST:PORT; the host goes into its certificate).")
    var listen: String?

    @Option(help: "Cluster mode: the single-use token from `berth node join-token` (first start only).")
    var join: String?

    @Option(name: .customLong("label"), help: "Cluster mode: a node label K=V for placement constraints (repeatable).")
    var labels: [String] = []

    @Option(help: "Cluster mode: at most this many migrations at once on this node, sent or received (1-64).")
    var maxMigrations = MigrationSlots.defaultLimit

    @Option(help: "Cluster mode: the rate this node sends migrated disks at, all migrations together (e.g. 100M per second; default: unlimited).")
    var migrationBandwidth: String?

    @Option(help: "Cluster mode: seconds a migration's target may take no data before the transfer fails and is rolled back (a cut link; 5-3600).")
    var migrationStallTimeout = MigrationSlots.defaultStallSeconds

    @Flag(
        inversion: .prefixedNo,
        help:
            "Turn on the host's cgroup option favordynmods, so that moving a process into a VPS's cgroup (exec, start) does not wait for an RCU grace period (Docs/cli.md)."
    )
    var cgroupFavordynmods = true

    @Option(help: "Log level: trace, debug, info, notice, warning, error, critical.")
    var logLevel = "info"

    @Option(help: "Node settings (JSON): network uplink, address ranges, bridges. See Docs/networking.md.")
    var config: String?

    func validate() throws {
        guard Logger.Level(rawValue: logLevel) != nil else {
            throw ValidationError("--log-level: '\(logLevel)' is not one of trace, debug, info, notice, warning, error, critical")
        }
        if let problem = Name.problem(cgroupParent) { throw ValidationError("--cgroup-parent: \(problem)") }
        for (flag, value) in [("--cpu-overcommit", cpuOvercommit), ("--memory-overcommit", memoryOvercommit), ("--disk-overcommit", diskOvercommit)]
        where !(value >= 0.1 && value <= 100) {
            throw ValidationError("\(flag): \(value) must be between 0.1 and 100")
        }
        guard (1...64).contains(maxMigrations) else {
            throw ValidationError("--max-migrations: \(maxMigrations) must be between 1 and 64")
        }
        if let migrationBandwidth, (try? ByteSize.parse(migrationBandwidth, field: "migration-bandwidth")) == nil {
            throw ValidationError("--migration-bandwidth: '\(migrationBandwidth)' is not a rate such as 100M (bytes per second)")
        }
        guard (5...3600).contains(migrationStallTimeout) else {
            throw ValidationError("--migration-stall-timeout: \(migrationStallTimeout) must be between 5 and 3600 seconds")
        }
        guard (0...3600).contains(beancounterInterval) else {
            throw ValidationError("--beancounter-interval: \(beancounterInterval) must be between 0 and 3600 seconds")
        }
        if (controller == nil) != (listen == nil) {
            throw ValidationError("--controller and --listen go together: the agent calls the controller and serves it")
        }
        if let listen, let host = try? HostPort(parsing: listen, field: "listen").host, (try? IPAddress(host))?.isUnspecified == true {
            throw ValidationError("--listen: '\(listen)' must name the address the controller dials (it goes into this node's certificate), not a wildcard")
        }
        if join != nil && controller == nil {
            throw ValidationError("--join needs --controller HOST:PORT")
        }
        for label in labels where label.split(separator: "=", maxSplits: 1).count != 2 {
            throw ValidationError("--label: '\(label)' is not KEY=VALUE")
        }
        if let metricsListen, (try? HostPort(parsing: metricsListen, field: "metrics-listen", anyPort: true)) == nil {
            throw ValidationError("--metrics-listen: '\(metricsListen)' is not HOST:PORT (e.g. 127.0.0.1:9737)")
        }
    }

    func run() async throws {
        guard getuid() == 0 else {
            FileHandle.standardError.write(Data("berth-agent: must run as root (it creates namespaces, cgroups and mounts)\n".utf8))
            throw ExitCode(5)
        }
        // A helper that stops reading its stdin (btrfs receive refusing a stream) must give a
        // write error to report, not a SIGPIPE that ends the daemon. The spawn shim resets every
        // signal to its default in the children, so VPSs and tools do not inherit this.
        signal(SIGPIPE, SIG_IGN)
        let level = Logger.Level(rawValue: logLevel)!
        LoggingSystem.bootstrap { label in
            var handler = StreamLogHandler.standardError(label: label)
            handler.logLevel = level
            return handler
        }
        let logger = Logger(label: "berth-agent")
        let spawnBinary =
            spawn
            ?? URL(fileURLWithPath: CommandLine.arguments[0]).resolvingSymlinksInPath()
            .deletingLastPathComponent().appendingPathComponent("berth-spawn").path
        guard FileManager.default.isExecutableFile(atPath: spawnBinary) else {
            FileHandle.standardError.write(Data("berth-agent: helper \(spawnBinary) not found or not executable (use --spawn)\n".utf8))
            throw ExitCode(2)
        }
        // Built by the Makefile (plain C, no Swift runtime), beside berth-spawn.
        let monitorBinary = URL(fileURLWithPath: spawnBinary).resolvingSymlinksInPath()
            .deletingLastPathComponent().appendingPathComponent("berth-monitor").path
        guard FileManager.default.isExecutableFile(atPath: monitorBinary) else {
            FileHandle.standardError.write(
                Data(
                    "berth-agent: helper \(monitorBinary) not found or not executable (it belongs next to berth-spawn; `make build` or `make release` makes it)\n"
                        .utf8))
            throw ExitCode(2)
        }
        var mode = CgroupMode.detect()
        if let cgroup2Root {
            guard CgroupMode.detect(root: cgroup2Root) == .v2(root: cgroup2Root) else {
                FileHandle.standardError.write(Data("berth-agent: --cgroup2-root \(cgroup2Root) is not a cgroup2 mount\n".utf8))
                throw ExitCode(2)
            }
            mode = .v2(root: cgroup2Root)
        }
        var settings = NodeSettings()
        if let config {
            do {
                settings = try NodeSettings.load(path: config)
            } catch {
                FileHandle.standardError.write(Data("berth-agent: --config \(config): \(error)\n".utf8))
                throw ExitCode(2)
            }
        }
        var poolBytes: UInt64?
        if let poolSize {
            do {
                poolBytes = try ByteSize.parse(poolSize, field: "pool-size")
            } catch {
                FileHandle.standardError.write(Data("berth-agent: --pool-size \(poolSize): \(error)\n".utf8))
                throw ExitCode(2)
            }
            guard poolBytes! >= 256 << 20 else {
                FileHandle.standardError.write(Data("berth-agent: --pool-size \(poolSize): must be at least 256M (btrfs needs room for its metadata)\n".utf8))
                throw ExitCode(2)
            }
        }
        guard let layout = VPSConfig.Layout(rawValue: defaultLayout) else {
            FileHandle.standardError.write(Data("berth-agent: --default-layout \(defaultLayout): not a disk layout (loop, pool)\n".utf8))
            throw ExitCode(2)
        }
        let nodeName = name ?? ProcessInfo.processInfo.hostName
        let manager = VPSManager(
            paths: AgentPaths(
                dataDir: dataDir, runDir: runDir, spawnBinary: spawnBinary, monitorBinary: monitorBinary, lxcfs: lxcfs,
                templateCache: templateCache, poolSize: poolBytes),
            nodeName: nodeName, cgroups: mode.driver(parent: cgroupParent), logger: logger,
            overcommit: Overcommit(cpu: cpuOvercommit, memory: memoryOvercommit, disk: diskOvercommit),
            settings: settings, beancounterInterval: beancounterInterval, defaultLayout: layout)
        try await manager.prepare()
        // Running VPS monitors keep the helper's read-only bind alive; the path goes with the agent.
        defer { manager.releaseHelper() }
        if cgroupFavordynmods {
            let plan = CgroupMigrationTuning.plan(mountinfo: FileIO.read("/proc/self/mountinfo") ?? "")
            do {
                try CgroupMigrationTuning.apply(plan, namedHierarchyMountPoint: runDir + "/cgroup-favordynmods")
                logger.info("cgroup migrations favoured (favordynmods)", metadata: ["how": "\(plan)"])
            } catch {
                logger.notice("cgroup migrations keep waiting for an RCU grace period: favordynmods is unavailable (\(error))")
            }
        }
        logger.info("starting", metadata: ["node": "\(nodeName)", "cgroup": "\(mode.driver().modeName)", "data": "\(dataDir)"])
        let group = MultiThreadedEventLoopGroup.singleton
        var metrics: (host: String, port: Int, registry: PrometheusCollectorRegistry)?
        if let metricsListen, let endpoint = try? HostPort(parsing: metricsListen, field: "metrics-listen", anyPort: true) {
            let registry = PrometheusCollectorRegistry()
            MetricsSystem.bootstrap(PrometheusMetricsFactory(registry: registry))
            metrics = (endpoint.host, endpoint.port, registry)
        }
        var cluster: ClusterOptions?
        if let controller, let listen {
            var labelMap: [String: String] = [:]
            for label in labels {
                let parts = label.split(separator: "=", maxSplits: 1).map(String.init)
                labelMap[parts[0]] = parts[1]
            }
            let bandwidth = try migrationBandwidth.map { try ByteSize.parse($0, field: "migration-bandwidth") }
            cluster = ClusterOptions(
                controller: controller, listen: listen, joinToken: join, labels: labelMap,
                migrationSlots: MigrationSlots(limit: maxMigrations, bytesPerSecond: bandwidth, stallSeconds: migrationStallTimeout))
        }
        let server = AgentServer(manager: manager, socketPath: socket, group: group, logger: logger, metrics: metrics, cluster: cluster)
        let services = ServiceGroup(
            configuration: .init(
                services: [.init(service: server)],
                gracefulShutdownSignals: [.sigterm, .sigint],
                logger: logger))
        try await services.run()
    }
}
