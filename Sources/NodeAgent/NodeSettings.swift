import BerthCore
import Foundation
import Isolation

/// Node settings from `berth-agent --config FILE` (JSON). Today: the node's network.
///
///     { "network": { "uplink": "eth0",
///                    "ranges": ["198.18.0.0/24", "fd00:b17::/64"],
///                    "bridges": [ { "name": "br0", "gateway4": "198.18.1.1", "gateway6": "fd00:b17:1::1" } ] } }
///
/// Every error names the field (`network.ranges[1]`) and the reason; a bad file stops the agent
/// before it touches anything.
public struct NodeSettings: Equatable, Sendable {
    public struct Bridge: Equatable, Sendable {
        public var name: String
        public var gateway4: IPAddress?
        public var gateway6: IPAddress?
    }

    public struct Network: Equatable, Sendable {
        /// The LAN interface on which the node answers ARP/NDP for routed VPS addresses.
        public var uplink: String?
        /// The addresses this node may give its VPSs.
        public var ranges: [CIDR]
        /// Bridges VPSs may join with `--net bridged:NAME`.
        public var bridges: [Bridge]

        public func range(containing address: IPAddress) -> CIDR? { ranges.first { $0.contains(address) } }
        public func bridge(_ name: String) -> Bridge? { bridges.first { $0.name == name } }
    }

    public var network: Network?

    public init(network: Network? = nil) { self.network = network }

    public static func load(path: String) throws -> NodeSettings {
        guard let data = FileManager.default.contents(atPath: path) else {
            throw AgentError.invalid("config", "\(path) cannot be read")
        }
        return try parse(data)
    }

    public static func parse(_ data: Data) throws -> NodeSettings {
        guard let object = try? JSONSerialization.jsonObject(with: data) as? [String: Any] else {
            throw AgentError.invalid("config", "not a JSON object")
        }
        try rejectUnknown(object, allowed: ["network"], prefix: "")
        guard let rawNetwork = object["network"] else { return NodeSettings() }
        guard let network = rawNetwork as? [String: Any] else { throw AgentError.invalid("network", "must be an object") }
        try rejectUnknown(network, allowed: ["uplink", "ranges", "bridges"], prefix: "network.")

        var uplink: String?
        if let value = network["uplink"] {
            guard let name = value as? String else { throw AgentError.invalid("network.uplink", "must be an interface name") }
            uplink = try Validation.interfaceName(name, field: "network.uplink")
        }
        guard let rawRanges = network["ranges"] as? [Any], !rawRanges.isEmpty else {
            throw AgentError.invalid("network.ranges", "must list at least one CIDR range VPS addresses come from (e.g. \"198.18.0.0/24\")")
        }
        var ranges: [CIDR] = []
        for (i, raw) in rawRanges.enumerated() {
            let field = "network.ranges[\(i)]"
            guard let text = raw as? String else { throw AgentError.invalid(field, "must be a string like \"198.18.0.0/24\"") }
            let range: CIDR
            do throws(AddressError) { range = try CIDR(text) } catch { throw AgentError.invalid(field, error.message) }
            if let why = range.network.unusableForVPS {
                throw AgentError.invalid(field, "\(text) \(why)")
            }
            if range.prefixLength == 0 { throw AgentError.invalid(field, "\(text) is the whole address space") }
            if let other = ranges.first(where: { $0.overlaps(range) }) {
                throw AgentError.invalid(field, "\(text) overlaps \(other)")
            }
            ranges.append(range)
        }
        var bridges: [Bridge] = []
        if let value = network["bridges"] {
            guard let list = value as? [Any] else { throw AgentError.invalid("network.bridges", "must be a list of {\"name\": …} objects") }
            for (i, raw) in list.enumerated() {
                let field = "network.bridges[\(i)]"
                guard let entry = raw as? [String: Any] else { throw AgentError.invalid(field, "must be an object with a name") }
                try rejectUnknown(entry, allowed: ["name", "gateway4", "gateway6"], prefix: field + ".")
                guard let name = entry["name"] as? String else { throw AgentError.invalid(field + ".name", "is required") }
                var bridge = Bridge(name: try Validation.interfaceName(name, field: field + ".name"))
                if bridges.contains(where: { $0.name == name }) { throw AgentError.invalid(field + ".name", "bridge \(name) is listed twice") }
                if name == uplink { throw AgentError.invalid(field + ".name", "\(name) is also the uplink") }
                for (key, wantV4) in [("gateway4", true), ("gateway6", false)] {
                    guard let rawGateway = entry[key] else { continue }
                    let gatewayField = "\(field).\(key)"
                    guard let text = rawGateway as? String else { throw AgentError.invalid(gatewayField, "must be an address") }
                    let gateway: IPAddress
                    do throws(AddressError) { gateway = try IPAddress(text) } catch { throw AgentError.invalid(gatewayField, error.message) }
                    guard gateway.isV4 == wantV4 else { throw AgentError.invalid(gatewayField, "\(text) is not an IPv\(wantV4 ? 4 : 6) address") }
                    if let why = gateway.unusableForVPS { throw AgentError.invalid(gatewayField, "\(text) \(why)") }
                    guard ranges.contains(where: { $0.contains(gateway) }) else {
                        throw AgentError.invalid(gatewayField, "\(text) is outside network.ranges: bridged VPSs get their on-link prefix from the range")
                    }
                    if wantV4 { bridge.gateway4 = gateway } else { bridge.gateway6 = gateway }
                }
                bridges.append(bridge)
            }
        }
        return NodeSettings(network: Network(uplink: uplink, ranges: ranges, bridges: bridges))
    }

    static func rejectUnknown(_ object: [String: Any], allowed: Set<String>, prefix: String) throws {
        if let unknown = Set(object.keys).subtracting(allowed).sorted().first {
            throw AgentError.invalid(prefix + unknown, "unknown setting (known: \(allowed.sorted().joined(separator: ", ")))")
        }
    }
}

extension NodeSettings.Bridge {
    init(name: String) { self.init(name: name, gateway4: nil, gateway6: nil) }
}
