#if canImport(Glibc)
import Glibc
#endif
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

/// Address arithmetic for IP pools: an address is a 128-bit number (IPv4 in the low 32 bits),
/// so one code path serves both families.
public enum IPPoolMath {
    struct Network: Equatable {
        var isV6: Bool
        var base: UInt128
        var prefix: Int
        var bits: Int { isV6 ? 128 : 32 }
        var size: UInt128 { prefix == 0 && isV6 ? UInt128.max : (UInt128(1) << UInt128(bits - prefix)) }
        var last: UInt128 { base &+ (size &- 1) }
        func contains(_ address: UInt128) -> Bool { address >= base && address <= last }
    }

    static func parseAddress(_ text: String) -> (isV6: Bool, value: UInt128)? {
        var v4 = in_addr()
        // inet_pton rejects leading zeros ("010.0.0.1"), as Berth's own parser does.
        if inet_pton(AF_INET, text, &v4) == 1 {
            return (false, UInt128(UInt32(bigEndian: v4.s_addr)))
        }
        var v6 = in6_addr()
        if inet_pton(AF_INET6, text, &v6) == 1 {
            let bytes = withUnsafeBytes(of: v6) { Array($0) }
            return (true, bytes.reduce(UInt128(0)) { ($0 << 8) | UInt128($1) })
        }
        return nil
    }

    static func format(_ value: UInt128, isV6: Bool) -> String {
        var buffer = [CChar](repeating: 0, count: 64)
        if isV6 {
            var address = in6_addr()
            withUnsafeMutableBytes(of: &address) { raw in
                for i in 0..<16 { raw[i] = UInt8(truncatingIfNeeded: value >> UInt128(8 * (15 - i))) }
            }
            inet_ntop(AF_INET6, &address, &buffer, socklen_t(buffer.count))
        } else {
            var address = in_addr(s_addr: UInt32(truncatingIfNeeded: value).bigEndian)
            inet_ntop(AF_INET, &address, &buffer, socklen_t(buffer.count))
        }
        return String(cString: buffer)
    }

    static func parseNetwork(_ text: String, field: String = "cidr") throws(WireError) -> Network {
        let parts = text.split(separator: "/", omittingEmptySubsequences: false)
        guard parts.count == 2, let (isV6, value) = parseAddress(String(parts[0])), let prefix = Int(parts[1]),
              prefix >= 0, prefix <= (isV6 ? 128 : 32), String(prefix) == parts[1] else {
            throw WireError(.invalidArgument, "\(field): \"\(text)\" is not ADDRESS/PREFIX", field: field)
        }
        let network = Network(isV6: isV6, base: value, prefix: prefix)
        let hostBits = UInt128(network.bits - prefix)
        let mask: UInt128 = hostBits >= 128 ? UInt128.max : (UInt128(1) << hostBits) &- 1
        guard value & mask == 0 else {
            throw WireError(.invalidArgument, "\(field): \"\(text)\" has host bits set (the network is \(format(value & ~mask, isV6: isV6))/\(prefix))", field: field)
        }
        return network
    }

    /// The canonical text of an address ("fd00:b17::0001" → "fd00:b17::1"), or nil.
    public static func canonical(_ text: String) -> String? {
        parseAddress(text).map { format($0.value, isV6: $0.isV6) }
    }

    /// Validates a pool definition; returns it canonicalised.
    public static func validatePool(name: String, cidr: String, gateway: String) throws(WireError) -> IPPoolRecord {
        guard Role.isValidName(name) else {
            throw WireError(.invalidArgument, "name: \"\(name)\" must be 1-63 of [a-z0-9-]", field: "name")
        }
        let network = try parseNetwork(cidr)
        guard network.prefix <= (network.isV6 ? 126 : 30) else {
            throw WireError(.invalidArgument, "cidr: a pool needs at least a /30 (IPv4) or /126 (IPv6) to hold an address", field: "cidr")
        }
        var canonicalGateway = ""
        if !gateway.isEmpty {
            guard let (isV6, value) = parseAddress(gateway), isV6 == network.isV6, network.contains(value) else {
                throw WireError(.invalidArgument, "gateway: \(gateway) is not an address inside \(cidr)", field: "gateway")
            }
            canonicalGateway = format(value, isV6: isV6)
        }
        return IPPoolRecord(name: name, cidr: "\(format(network.base, isV6: network.isV6))/\(network.prefix)", gateway: canonicalGateway)
    }

    /// The lowest `count` addresses of `cidr` not in `excluding`; IPv4 skips the network and
    /// broadcast addresses, IPv6 the subnet-router anycast address (::0 of the prefix).
    public static func free(cidr: String, excluding: Set<String>, count: Int) throws(WireError) -> [String] {
        let network = try parseNetwork(cidr)
        var result: [String] = []
        var candidate = network.base &+ 1
        let end = network.isV6 ? network.last : network.last &- 1
        while result.count < count && candidate <= end && candidate != 0 {
            let text = format(candidate, isV6: network.isV6)
            if !excluding.contains(text) { result.append(text) }
            candidate &+= 1
        }
        return result
    }

    public static func overlap(_ a: String, _ b: String) -> Bool {
        guard let x = try? parseNetwork(a), let y = try? parseNetwork(b), x.isV6 == y.isV6 else { return false }
        return x.base <= y.last && y.base <= x.last
    }

    public static func size(cidr: String) -> UInt64 {
        guard let network = try? parseNetwork(cidr) else { return 0 }
        let usable = network.isV6 ? network.size &- 1 : (network.size >= 2 ? network.size - 2 : 0)
        return usable > UInt128(UInt64.max) ? UInt64.max : UInt64(usable)
    }
}
