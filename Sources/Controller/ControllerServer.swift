import Foundation
import Logging
import NIOCore
import Placement
import ServiceLifecycle
import Synchronization
import Wire
import WireTLS

/// The controller as a ServiceLifecycle service: the mTLS listener (anonymous peers may only
/// enrol) and the liveness watcher; graceful shutdown closes the listener and agent links.
public final class ControllerServer: Service, Sendable {
    let service: ControllerService
    let links: AgentLinks
    let bundle: CredentialBundle
    let ca: ClusterCA
    let hosts: [String]
    let registry: PeerRegistry
    let host: String
    let port: Int
    let group: EventLoopGroup
    let logger: Logger
    let portFile: String?

    public init(
        store: ClusterStore, ca: ClusterCA, settings: ControllerSettings, host: String, port: Int,
        extraHosts: [String], group: EventLoopGroup, logger: Logger, portFile: String?
    ) throws {
        var hosts = ["localhost", "127.0.0.1", "::1", ProcessInfo.processInfo.hostName] + extraHosts
        if host != "0.0.0.0" && host != "::" { hosts.insert(host, at: 0) }
        var seen = Set<String>()
        self.hosts = hosts.filter { seen.insert($0).inserted }
        self.ca = ca
        bundle = try ca.issueBundle(role: .controller, name: "controller", hosts: self.hosts)
        registry = PeerRegistry()
        links = AgentLinks(bundle: bundle, group: group)
        service = try ControllerService(store: store, ca: ca, links: links, settings: settings, registry: registry, logger: logger)
        self.host = host
        self.port = port
        self.group = group
        self.logger = logger
        self.portFile = portFile
    }

    public func run() async throws {
        let server = try await TLSWireServer.bind(
            host: host, port: port, service: service, bundle: bundle, group: group,
            registry: registry, allowAnonymous: true)
        logger.info("controller serving", metadata: ["listen": "\(host):\(server.port)"])
        if let portFile { try? "\(server.port)\n".write(toFile: portFile, atomically: true, encoding: .utf8) }
        // Rotation: a fresh key and certificate for new connections (the listener's and the
        // agent links'); sessions already open keep theirs, so nothing is cut off.
        let current = Mutex(try bundle.identity().serial)
        service.setControllerRotation { [ca, hosts, links] in
            let fresh = try ca.issueBundle(role: .controller, name: "controller", hosts: hosts)
            let serial = try fresh.identity().serial
            try server.replaceCredentials(fresh)
            await links.replaceBundle(fresh)
            let old = current.withLock { value in
                defer { value = serial }
                return value
            }
            return (serial, old)
        }
        let watcher = Task { await service.watchLiveness() }
        service.resumeDrains()
        let settler = Task { await service.settleMigrations() }
        let failover = Task { await service.watchFailover() }
        let pruner = Task { await service.pruneEvents() }
        defer {
            failover.cancel()
            pruner.cancel()
        }
        await withGracefulShutdownHandler {
            try? await server.closeFuture.get()
        } onGracefulShutdown: {
            self.logger.info("graceful shutdown: closing the listener")
            Task { await server.close() }
        }
        watcher.cancel()
        settler.cancel()
        await links.closeAll()
    }
}
