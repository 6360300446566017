import ArgumentParser
import BerthCore
import Controller
import Foundation
import Logging
import NIOPosix
import Placement
import ServiceLifecycle
import Wire
import WireTLS

@main
struct BerthController: AsyncParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "berth-controller",
        abstract: "The Berth controller: places VPSs on nodes, tracks node liveness, serves the fleet over mTLS.")

    @Option(help: "Where the controller's SQLite database lives.")
    var dataDir = "/var/lib/berth-controller"

    @Option(help: "HOST:PORT to serve agents and operators on (TLS 1.3, mutual authentication; port 0 picks one).")
    var listen = "0.0.0.0:7443"

    @Option(help: "The cluster CA directory (ca.pem, ca-key.pem) from `berth ca init`.")
    var caDir: String

    @Option(help: "Cluster settings (JSON): strategy, overcommit ratios, heartbeat interval, down-after. See Docs/cluster.md.")
    var config: String?

    @Option(name: .customLong("san"), help: "Extra host name or address for the controller's certificate (repeatable).")
    var extraHosts: [String] = []

    @Option(help: "Write the bound port here (for scripts that listen on port 0).")
    var portFile: String?

    @Option(help: "Log level: trace, debug, info, notice, warning, error, critical.")
    var logLevel = "info"

    func validate() throws {
        guard Logger.Level(rawValue: logLevel) != nil else {
            throw ValidationError("--log-level: '\(logLevel)' is not one of trace, debug, info, notice, warning, error, critical")
        }
    }

    func run() async throws {
        let level = Logger.Level(rawValue: logLevel)!
        LoggingSystem.bootstrap { label in
            var handler = StreamLogHandler.standardError(label: label)
            handler.logLevel = level
            return handler
        }
        let logger = Logger(label: "berth-controller")
        do {
            var settings = try config.map { try ClusterConfigFile.load(path: $0) } ?? ControllerSettings()
            settings.uploadDirectory = dataDir + "/uploads"
            try FileManager.default.createDirectory(
                atPath: settings.uploadDirectory, withIntermediateDirectories: true,
                attributes: [.posixPermissions: 0o700])
            let endpoint = try HostPort(parsing: listen, field: "listen", anyPort: true)
            let ca = try ClusterCA.load(directory: caDir)
            let store = try SQLiteStore(directory: dataDir)
            let server = try ControllerServer(
                store: store, ca: ca, settings: settings, host: endpoint.host,
                port: endpoint.port, extraHosts: extraHosts,
                group: MultiThreadedEventLoopGroup.singleton, logger: logger, portFile: portFile)
            let services = ServiceGroup(
                configuration: .init(
                    services: [.init(service: server)], gracefulShutdownSignals: [.sigterm, .sigint], logger: logger))
            try await services.run()
        } catch let error as WireError {
            FileHandle.standardError.write(Data("berth-controller: \(error.message)\n".utf8))
            throw ExitCode(error.exitCode)
        }
    }
}
