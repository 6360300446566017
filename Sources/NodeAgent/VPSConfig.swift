import BerthCore
import Foundation
import Isolation
import Wire

/// A VPS's checkpointed configuration: the single source of truth for start, restart, agent
/// restarts and host reboots. Stored as `vps/NAME/config.json`.
public struct VPSConfig: Codable, Equatable, Sendable {
    public static let currentSchema = 1

    /// Limits are BerthCore's model; their cgroup and I/O forms are below.
    public typealias Limits = BerthCore.Limits

    public enum DesiredState: String, Codable, Sendable { case running, stopped }

    /// The VPS's interface. Absent for VPSs created on a node without network settings: they
    /// have a network namespace with loopback only.
    public struct Network: Codable, Equatable, Sendable {
        /// nil: routed (venet semantics); else the host bridge the VPS is a port of.
        public var bridge: String?
        public var ips: [String]
        public var mac: String
        public var hostInterface: String

        static let keys: Set<String> = ["bridge", "ips", "mac", "hostInterface"]

        public var mode: String { bridge.map { "bridged:\($0)" } ?? "routed" }
    }

    public var schemaVersion: Int
    public var name: String
    public var template: String
    public var hostname: String
    public var limits: Limits
    public var labels: [String: String]
    public var onboot: Bool
    public var desiredState: DesiredState
    public var createdAt: Date
    /// Signal that asks this VPS's init for a clean shutdown (from the template).
    public var stopSignal: Int32
    public var network: Network?
    public var nameservers: [String]?
    public var searchDomains: [String]?
    /// `--privileged`: the VPS shares the host's user namespace, so its root is host root. Unsafe.
    public var privileged: Bool?
    /// First host uid/gid of the VPS's user namespace (`IDMap.defaultCount` ids), allocated by
    /// the agent; the disk keeps ids as the VPS sees them (its root is mounted idmapped).
    public var idmapBase: UInt32?
    /// Per-VPS changes to the default capability set: libcap name → "on" | "off".
    public var capabilities: [String: String]?
    /// `--storage layered`: the root is the template's tree (shared, read-only) under what the
    /// VPS changed, which its disk holds. Absent: the disk holds a full copy of the template.
    public var storage: Storage?
    /// `--layout pool`: the disk is a subvolume of the node's btrfs pool with a quota
    /// (StoragePool.swift). Absent: an ext4 image of its own on a loop device (`loop`).
    public var layout: Layout?

    public enum Storage: String, Codable, Sendable {
        case image, layered
    }

    public enum Layout: String, Codable, Sendable {
        case loop, pool
    }

    /// An HA VPS (Docs/ha.md): the controller's plan for its replicas. Its monitor enforces the
    /// node's lease (the fence) while it runs, and the agent sends its snapshots to the targets.
    public struct Replication: Codable, Equatable, Sendable {
        public struct Target: Codable, Equatable, Sendable {
            public var node: String
            public var address: String
        }
        public var intervalSeconds: Int
        public var targets: [Target]
    }
    public var replication: Replication?
    public var isHA: Bool { replication != nil }

    public var isPrivileged: Bool { privileged ?? false }
    public var isLayered: Bool { storage == .layered }
    public var isPooled: Bool { layout == .pool }

    /// Capability name → kept, from `capabilities`.
    public var capabilityOverrides: [String: Bool] { (capabilities ?? [:]).mapValues { $0 == "on" } }

    static let keys: Set<String> = [
        "schemaVersion", "name", "template", "hostname", "limits", "labels", "onboot", "desiredState", "createdAt", "stopSignal",
        "network", "nameservers", "searchDomains", "privileged", "idmapBase", "capabilities", "storage", "layout", "replication",
    ]

    public init(
        name: String, template: String, hostname: String, limits: Limits = Limits(), labels: [String: String] = [:],
        onboot: Bool = false, stopSignal: Int32
    ) {
        schemaVersion = Self.currentSchema
        self.name = name
        self.template = template
        self.hostname = hostname
        self.limits = limits
        self.labels = labels
        self.onboot = onboot
        desiredState = .stopped
        createdAt = Date(timeIntervalSince1970: Double(Int(Date().timeIntervalSince1970)))
        self.stopSignal = stopSignal
    }

    public func encoded() throws -> Data {
        try JSONEncoder.berth.encode(self)
    }

    /// Decodes a config file, rejecting anything a hand edit could have broken: invalid JSON,
    /// unknown or missing fields, a newer schema, a name that does not match its directory.
    /// `received`: the config came from another node (a migration), not from this node's
    /// disk: a bad one is the sender's bad input (`invalid-argument`, field `config`).
    public static func decode(_ data: Data, expectedName: String, path: String, received: Bool = false) throws -> VPSConfig {
        func corrupt(_ why: String) -> AgentError {
            if received { return AgentError.invalid("config", "\(path): \(why); nothing was kept") }
            return AgentError(.corruptState, "\(path): \(why); fix or remove the file (the VPS is left untouched)")
        }
        guard let object = try? JSONSerialization.jsonObject(with: data) as? [String: Any] else {
            throw corrupt("not a JSON object")
        }
        let unknown = Set(object.keys).subtracting(keys)
        if !unknown.isEmpty { throw corrupt("unknown field(s) \(unknown.sorted().joined(separator: ", "))") }
        if let limits = object["limits"] as? [String: Any] {
            let unknownLimits = Set(limits.keys).subtracting(Limits.keys)
            if !unknownLimits.isEmpty { throw corrupt("unknown field(s) limits.\(unknownLimits.sorted().joined(separator: ", limits."))") }
        }
        if let network = object["network"] as? [String: Any] {
            let unknownNetwork = Set(network.keys).subtracting(Network.keys)
            if !unknownNetwork.isEmpty { throw corrupt("unknown field(s) network.\(unknownNetwork.sorted().joined(separator: ", network."))") }
        }
        if let version = object["schemaVersion"] as? Int, version > currentSchema {
            throw corrupt("schema version \(version) is newer than this agent understands (\(currentSchema))")
        }
        let decoder = JSONDecoder()
        decoder.dateDecodingStrategy = .iso8601
        let config: VPSConfig
        do {
            config = try decoder.decode(VPSConfig.self, from: data)
        } catch let DecodingError.keyNotFound(key, _) {
            throw corrupt("missing field \(key.stringValue)")
        } catch let DecodingError.typeMismatch(_, context) {
            throw corrupt("wrong type at \(context.codingPath.map(\.stringValue).joined(separator: "."))")
        } catch let DecodingError.dataCorrupted(context) {
            throw corrupt("bad value at \(context.codingPath.map(\.stringValue).joined(separator: ".")): \(context.debugDescription)")
        } catch {
            throw corrupt("\(error)")
        }
        guard config.name == expectedName else {
            throw corrupt(
                received
                    ? "name '\(config.name)' is not the VPS the grant names ('\(expectedName)')"
                    : "name '\(config.name)' does not match its directory '\(expectedName)'")
        }
        do {
            _ = try Name.validate(config.name)
            _ = try Validation.hostname(config.hostname)
            for (key, value) in config.labels { try Validation.label(key: key, value: value) }
            if let network = config.network {
                for ip in network.ips where (try? IPAddress(ip)) == nil { throw AgentError.invalid("network.ips", "'\(ip)' is not an address") }
                guard MACAddress.parse(network.mac) != nil else { throw AgentError.invalid("network.mac", "'\(network.mac)' is not a MAC address") }
                _ = try Validation.interfaceName(network.hostInterface, field: "network.hostInterface")
                guard network.hostInterface.hasPrefix(NFTables.interfacePrefix) else {
                    throw AgentError.invalid(
                        "network.hostInterface", "must start with \(NFTables.interfacePrefix) (the anti-spoofing filter matches that prefix)")
                }
            }
            for ip in config.nameservers ?? [] { _ = try Validation.nameserver(ip) }
            _ = try Validation.capabilities(config.capabilities ?? [:])
            if let base = config.idmapBase, !IDMapPool.isSlotBase(base) {
                throw AgentError.invalid("idmapBase", "\(base) is not the start of an id range this agent allocates")
            }
            _ = try Validation.searchDomains(config.searchDomains ?? [])
        } catch let error as AgentError {
            throw corrupt(error.description)
        }
        return config
    }
}

/// Host uid/gid ranges for VPS user namespaces: 65,536 ids each from 2^31 up. That is above
/// Debian's /etc/subuid ranges for ordinary accounts (100000 + 65536·k), systemd's
/// container range (0x80000-0x6FFFFFFF) and SSSD's default id mapping (200000-2000200000);
/// ranges listed in /etc/subuid or /etc/subgid are skipped as well.
public enum IDMapPool {
    public static let start: UInt32 = 1 << 31
    public static let slots: UInt32 = (UInt32.max - start) / IDMap.defaultCount

    public static func isSlotBase(_ base: UInt32) -> Bool {
        base >= start && (base - start) % IDMap.defaultCount == 0 && (base - start) / IDMap.defaultCount < slots
    }

    /// The lowest range not in `used` and overlapping none of `reserved` (start, count).
    public static func allocate(excluding used: Set<UInt32>, reserved: [(UInt64, UInt64)] = hostReserved()) throws -> UInt32 {
        for slot in 0..<slots {
            let base = start + slot * IDMap.defaultCount
            if used.contains(base) { continue }
            let low = UInt64(base), high = UInt64(base) + UInt64(IDMap.defaultCount)
            if reserved.contains(where: { $0.0 < high && low < $0.0 + $0.1 }) { continue }
            return base
        }
        throw AgentError(.noCapacity, "every user-namespace id range of this node is in use")
    }

    /// "name:start:count" lines of /etc/subuid and /etc/subgid: ranges other tools hand out.
    public static func hostReserved(files: [String] = ["/etc/subuid", "/etc/subgid"]) -> [(UInt64, UInt64)] {
        var ranges: [(UInt64, UInt64)] = []
        for file in files {
            for line in (FileIO.read(file) ?? "").split(separator: "\n") {
                let fields = line.split(separator: ":")
                if fields.count == 3, let first = UInt64(fields[1]), let count = UInt64(fields[2]) { ranges.append((first, count)) }
            }
        }
        return ranges
    }
}
