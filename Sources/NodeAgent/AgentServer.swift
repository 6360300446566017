import Foundation
import Isolation
import Logging
import NIOCore
import NIOPosix
import Prometheus
import ServiceLifecycle
import Wire
import WireTLS

/// The agent as a ServiceLifecycle service: recover VPSs, serve the Unix socket, and on
/// graceful shutdown stop serving — VPSs keep running; a new agent re-adopts them.
public final class AgentServer: Service, @unchecked Sendable {
    let manager: VPSManager
    let socketPath: String
    let group: EventLoopGroup
    let logger: Logger
    let metrics: (host: String, port: Int, registry: PrometheusCollectorRegistry)?
    let cluster: ClusterOptions?

    public init(
        manager: VPSManager, socketPath: String, group: EventLoopGroup, logger: Logger,
        metrics: (host: String, port: Int, registry: PrometheusCollectorRegistry)? = nil,
        cluster: ClusterOptions? = nil
    ) {
        self.cluster = cluster
        self.manager = manager
        self.socketPath = socketPath
        self.group = group
        self.logger = logger
        self.metrics = metrics
    }

    public func run() async throws {
        await manager.recover()
        // Fail closed: without its anti-spoofing filter a node must not serve VPS networking.
        try await manager.setUpNodeNetwork()
        try FileManager.default.createDirectory(atPath: FileIO.directory(of: socketPath), withIntermediateDirectories: true)
        let service = AgentService(manager: manager, group: group, logger: logger, migrationSlots: cluster?.migrationSlots ?? MigrationSlots())
        // Enrol before serving anything, so a bad token fails the start with its reason.
        var membership: Task<Void, Never>?
        var listener: TLSWireServer?
        if let cluster {
            let member = ClusterMember(options: cluster, manager: manager, group: group, logger: logger)
            let bundle = try await member.credentials()
            service.credentials.replace(bundle)
            let server = try await member.serve(service: service, bundle: bundle)
            listener = server
            membership = Task {
                // Replication rounds of HA VPSs run beside the heartbeats, and end with them.
                let replication = Task { await service.replicate() }
                defer { replication.cancel() }
                try? await member.heartbeats(bundle: bundle, server: server, credentials: service.credentials)
            }
        }
        let clusterServer = listener
        defer { membership?.cancel() }
        let interval = manager.beancounterInterval
        let beancounters: Task<Void, Never>? =
            interval > 0
            ? Task { [manager] in
                // Each pass rewrites only the tables read since their last write and the stale ones.
                while (try? await Task.sleep(for: .seconds(1))) != nil { await manager.refreshBeancounters() }
            } : nil
        defer { beancounters?.cancel() }
        let server = try await UnixWireServer.bind(path: socketPath, service: service, group: group)
        logger.info("agent serving", metadata: ["socket": "\(socketPath)", "node": "\(manager.nodeName)"])
        let metricsServer: MetricsServer? =
            if let metrics {
                try await MetricsServer.bind(
                    host: metrics.host, port: metrics.port, manager: manager,
                    registry: metrics.registry, group: group)
            } else {
                nil
            }
        if let bound = metricsServer {
            // The bound address (port 0 picks one) for scripts and tests.
            try? FileIO.writeAtomically(manager.paths.runDir + "/metrics.addr", Array((bound.address + "\n").utf8), mode: 0o644)
            logger.info("metrics served", metadata: ["address": "\(bound.address)"])
        }
        await withGracefulShutdownHandler {
            try? await server.closeFuture.get()
        } onGracefulShutdown: {
            self.logger.info("graceful shutdown: closing the socket; VPSs keep running")
            Task {
                await server.close()
                await clusterServer?.close()
                await metricsServer?.close()
            }
        }
    }
}
