import Foundation
import Isolation
import Logging
import NIOCore
import NIOPosix
import ServiceLifecycle
import Wire

/// The agent as a ServiceLifecycle service: recover VPSs, serve the Unix socket, and on
/// graceful shutdown stop serving — VPSs keep running; a new agent re-adopts them.
public final class AgentServer: Service, @unchecked Sendable {
    let manager: VPSManager
    let socketPath: String
    let group: EventLoopGroup
    let logger: Logger

    public init(manager: VPSManager, socketPath: String, group: EventLoopGroup, logger: Logger) {
        self.manager = manager
        self.socketPath = socketPath
        self.group = group
        self.logger = logger
    }

    public func run() async throws {
        await manager.recover()
        try FileManager.default.createDirectory(atPath: FileIO.directory(of: socketPath), withIntermediateDirectories: true)
        let server = try await UnixWireServer.bind(
            path: socketPath, service: AgentService(manager: manager, group: group, logger: logger), group: group)
        logger.info("agent serving", metadata: ["socket": "\(socketPath)", "node": "\(manager.nodeName)"])
        await withGracefulShutdownHandler {
            try? await server.closeFuture.get()
        } onGracefulShutdown: {
            self.logger.info("graceful shutdown: closing the socket; VPSs keep running")
            Task { await server.close() }
        }
    }
}
