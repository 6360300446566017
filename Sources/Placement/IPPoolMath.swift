import BerthCore
import Wire

public struct IPPoolRecord: Sendable, Equatable {
    public var name: String
    public var cidr: String
    public var gateway: String

    public init(name: String, cidr: String, gateway: String) {
        self.name = name
        self.cidr = cidr
        self.gateway = gateway
    }
}

/// IP pool rules on top of BerthCore's addresses: pool validation, the next free addresses, sizes.
public enum IPPoolMath {
    static func parseNetwork(_ text: String, field: String = "cidr") throws(WireError) -> CIDR {
        do { return try CIDR(text) } catch {
            throw WireError(.invalidArgument, "\(field): \(error.message)", field: field)
        }
    }

    /// The canonical text of an address ("fd00:b17::0001" → "fd00:b17::1"), or nil.
    public static func canonical(_ text: String) -> String? {
        (try? IPAddress(text))?.description
    }

    /// Validates a pool definition; returns it canonicalised.
    public static func validatePool(name: String, cidr: String, gateway: String) throws(WireError) -> IPPoolRecord {
        try Name.validate(name)
        let network = try parseNetwork(cidr)
        guard network.prefixLength <= network.address.bitWidth - 2 else {
            throw WireError(.invalidArgument, "cidr: a pool needs at least a /30 (IPv4) or /126 (IPv6) to hold an address", field: "cidr")
        }
        var canonicalGateway = ""
        if !gateway.isEmpty {
            guard let address = try? IPAddress(gateway), network.contains(address) else {
                throw WireError(.invalidArgument, "gateway: \(gateway) is not an address inside \(cidr)", field: "gateway")
            }
            canonicalGateway = address.description
        }
        return IPPoolRecord(name: name, cidr: network.description, gateway: canonicalGateway)
    }

    /// The lowest `count` addresses of `cidr` not in `excluding`; IPv4 skips the network and
    /// broadcast addresses, IPv6 the subnet-router anycast address (::0 of the prefix).
    public static func free(cidr: String, excluding: Set<String>, count: Int) throws(WireError) -> [String] {
        let network = try parseNetwork(cidr)
        let v4 = network.address.isV4
        var result: [String] = []
        var candidate = network.network.value &+ 1
        let last = network.lastAddress.value
        let end = v4 ? last &- 1 : last
        while result.count < count && candidate <= end && candidate != 0 {
            let text = IPAddress(value: candidate, v4: v4).description
            if !excluding.contains(text) { result.append(text) }
            candidate &+= 1
        }
        return result
    }

    public static func overlap(_ a: String, _ b: String) -> Bool {
        guard let x = try? CIDR(a), let y = try? CIDR(b) else { return false }
        return x.overlaps(y)
    }

    /// Addresses a pool can hand out.
    public static func size(cidr: String) -> UInt64 {
        guard let network = try? CIDR(cidr) else { return 0 }
        let size = network.size
        let usable = !network.address.isV4 ? size &- 1 : (size >= 2 ? size - 2 : 0)
        return usable > UInt128(UInt64.max) ? UInt64.max : UInt64(usable)
    }
}
