#if canImport(Glibc)
    import Glibc
#endif

/// An IPv4 or IPv6 address in network byte order: the one address parser of the project (node
/// ranges, VPS addresses, IP pools, certificate SANs, listen addresses). Parsing is strict:
/// operators' typos like `010.0.0.1` (octal to some tools, decimal to others) are errors, never
/// guesses; IPv6 zone ids (`%eth0`) are refused.
public struct IPAddress: Hashable, Sendable, CustomStringConvertible, Comparable {
    public let bytes: [UInt8]

    public var isV4: Bool { bytes.count == 4 }
    public var family: Int32 { isV4 ? AF_INET : AF_INET6 }
    public var bitWidth: Int { bytes.count * 8 }

    public init?(bytes: [UInt8]) {
        guard bytes.count == 4 || bytes.count == 16 else { return nil }
        self.bytes = bytes
    }

    /// Why `text` is not an address, or the address.
    public static func parse(_ text: String) -> Result<IPAddress, AddressError> {
        if text.contains(":") {
            var raw = in6_addr()
            guard !text.contains("%"), inet_pton(AF_INET6, text, &raw) == 1 else {
                return .failure(AddressError("'\(text)' is not a valid IPv6 address"))
            }
            return .success(IPAddress(bytes: withUnsafeBytes(of: raw) { Array($0) })!)
        }
        let parts = text.split(separator: ".", omittingEmptySubsequences: false)
        guard parts.count == 4 else { return .failure(AddressError("'\(text)' is not a valid IPv4 address (four dot-separated numbers)")) }
        var out: [UInt8] = []
        for part in parts {
            guard !part.isEmpty, part.count <= 3, part.utf8.allSatisfy({ $0 >= 0x30 && $0 <= 0x39 }) else {
                return .failure(AddressError("'\(text)' is not a valid IPv4 address"))
            }
            guard part.count == 1 || part.first != "0" else {
                return .failure(AddressError("'\(text)' has a leading zero (octal to some tools, decimal to others); write it without"))
            }
            guard let value = UInt8(part) else { return .failure(AddressError("'\(text)': \(part) is larger than 255")) }
            out.append(value)
        }
        return .success(IPAddress(bytes: out)!)
    }

    public init(_ text: String) throws(AddressError) {
        switch Self.parse(text) {
        case .success(let address): self = address
        case .failure(let error): throw error
        }
    }

    public var description: String {
        if isV4 { return bytes.map(String.init).joined(separator: ".") }
        var buffer = [CChar](repeating: 0, count: Int(INET6_ADDRSTRLEN))
        var raw = in6_addr()
        withUnsafeMutableBytes(of: &raw) { $0.copyBytes(from: bytes) }
        inet_ntop(AF_INET6, &raw, &buffer, socklen_t(buffer.count))
        return String(cString: buffer)
    }

    public static func < (a: IPAddress, b: IPAddress) -> Bool {
        a.bytes.count != b.bytes.count ? a.bytes.count < b.bytes.count : a.bytes.lexicographicallyPrecedes(b.bytes)
    }

    public var isUnspecified: Bool { bytes.allSatisfy { $0 == 0 } }
    public var isLoopback: Bool { isV4 ? bytes[0] == 127 : bytes == [UInt8](repeating: 0, count: 15) + [1] }
    public var isMulticast: Bool { isV4 ? bytes[0] >= 224 && bytes[0] <= 239 : bytes[0] == 0xff }
    public var isLinkLocal: Bool { isV4 ? bytes[0] == 169 && bytes[1] == 254 : bytes[0] == 0xfe && bytes[1] & 0xc0 == 0x80 }
    /// 240.0.0.0/4 including the limited broadcast address.
    public var isReservedV4: Bool { isV4 && bytes[0] >= 240 }

    /// Why this address cannot belong to a VPS, or nil when it can.
    public var unusableForVPS: String? {
        if isUnspecified { return "is the unspecified address" }
        if isLoopback { return "is a loopback address" }
        if isMulticast { return "is a multicast address" }
        if isLinkLocal { return "is link-local (Berth uses link-local addresses for the VPS gateway)" }
        if isReservedV4 { return "is in the reserved 240.0.0.0/4 range" }
        if !isV4 && bytes[0] == 0 && bytes[1] == 0 && bytes[10] == 0xff && bytes[11] == 0xff && bytes[2..<10].allSatisfy({ $0 == 0 }) {
            return "is an IPv4-mapped IPv6 address; give the IPv4 address itself"
        }
        return nil
    }

    /// The address as a number (IPv4 in the low 32 bits), for arithmetic over ranges.
    public var value: UInt128 { bytes.reduce(UInt128(0)) { $0 << 8 | UInt128($1) } }

    /// The IPv4 (`v4`) or IPv6 address whose number is `value`, truncated to the family's width.
    public init(value: UInt128, v4: Bool) {
        let count = v4 ? 4 : 16
        bytes = (0..<count).map { UInt8(truncatingIfNeeded: value >> UInt128(8 * (count - 1 - $0))) }
    }

    /// The modified EUI-64 link-local address derived from a MAC (RFC 4291 appendix A).
    public static func linkLocal(mac: [UInt8]) -> IPAddress {
        let suffix = [mac[0] ^ 0x02, mac[1], mac[2], 0xff, 0xfe, mac[3], mac[4], mac[5]]
        return IPAddress(bytes: [0xfe, 0x80, 0, 0, 0, 0, 0, 0] + suffix)!
    }
}

public struct AddressError: Error, Equatable, Sendable, CustomStringConvertible {
    public let message: String
    public init(_ message: String) { self.message = message }
    public var description: String { message }
}

/// An address range ("198.18.0.0/24"). As a node range the host bits must be zero.
public struct CIDR: Hashable, Sendable, CustomStringConvertible {
    public let address: IPAddress
    public let prefixLength: Int

    public init(address: IPAddress, prefixLength: Int) {
        self.address = address
        self.prefixLength = prefixLength
    }

    public init(_ text: String) throws(AddressError) {
        let parts = text.split(separator: "/", omittingEmptySubsequences: false)
        guard parts.count == 2 else { throw AddressError("'\(text)' is not a CIDR range like 198.18.0.0/24") }
        let address = try IPAddress(String(parts[0]))
        guard let length = Int(parts[1]), parts[1].utf8.allSatisfy({ $0 >= 0x30 && $0 <= 0x39 }),
            parts[1].count == 1 || parts[1].first != "0", length >= 0, length <= address.bitWidth
        else {
            throw AddressError("'\(text)': prefix length must be 0-\(address.bitWidth)")
        }
        let range = CIDR(address: address, prefixLength: length)
        guard range.network == address else {
            throw AddressError("'\(text)' has host bits set; did you mean \(range.network)/\(length)?")
        }
        self = range
    }

    /// The first address of the range (host bits cleared).
    public var network: IPAddress { withHostBits(0x00) }
    /// The last address of the range (host bits set): IPv4's broadcast address.
    public var lastAddress: IPAddress { withHostBits(0xff) }

    private func withHostBits(_ fill: UInt8) -> IPAddress {
        var out = address.bytes
        for i in 0..<out.count {
            let hostMask = UInt8(truncatingIfNeeded: 0xff >> max(0, min(8, prefixLength - i * 8)))
            out[i] = out[i] & ~hostMask | fill & hostMask
        }
        return IPAddress(bytes: out)!
    }

    public func contains(_ other: IPAddress) -> Bool {
        guard other.bytes.count == address.bytes.count else { return false }
        return CIDR(address: other, prefixLength: prefixLength).network == network
    }

    /// How many addresses the range holds (saturating at UInt128.max for ::/0).
    public var size: UInt128 {
        let hostBits = address.bitWidth - prefixLength
        return hostBits >= 128 ? UInt128.max : UInt128(1) << UInt128(hostBits)
    }

    public func overlaps(_ other: CIDR) -> Bool {
        guard other.address.bytes.count == address.bytes.count else { return false }
        return prefixLength <= other.prefixLength ? contains(other.address) : other.contains(address)
    }

    public var description: String { "\(address)/\(prefixLength)" }
}
