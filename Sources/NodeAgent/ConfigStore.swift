import Foundation
import Isolation

/// Where a node keeps its VPSs: `vps/NAME/{config.json,disk.img,root/}`.
public struct ConfigStore: Sendable {
    public let vpsRoot: String

    public init(dataDir: String) { vpsRoot = dataDir + "/vps" }

    public func directory(_ name: String) -> String { vpsRoot + "/" + name }
    public func configPath(_ name: String) -> String { directory(name) + "/config.json" }
    public func diskPath(_ name: String) -> String { directory(name) + "/disk.img" }
    public func rootPath(_ name: String) -> String { directory(name) + "/root" }
    /// Where a layered VPS's own disk is mounted while it runs (its root is the overlay).
    public func diskMountPath(_ name: String) -> String { directory(name) + "/disk" }

    public func names() -> [String] {
        FileIO.listDirectory(vpsRoot).filter { FileIO.exists(configPath($0)) }
    }

    public func load(_ name: String) throws -> VPSConfig {
        guard let data = FileManager.default.contents(atPath: configPath(name)) else {
            throw AgentError(.corruptState, "\(configPath(name)) cannot be read")
        }
        return try VPSConfig.decode(data, expectedName: name, path: configPath(name))
    }

    public func save(_ config: VPSConfig) throws {
        do {
            try FileIO.writeAtomically(configPath(config.name), Array(try config.encoded()), mode: 0o600)
        } catch let error as IsolationError {
            throw AgentError.kernel("saving the config of \(config.name)", error)
        }
    }
}
