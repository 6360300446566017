import BerthCore
import CIsolation

#if canImport(Glibc)
    import Glibc
#endif

extension NetworkSetup {
    /// Tells the LAN behind `uplink` that `address` is now reached through this node: a
    /// gratuitous ARP (IPv4) or an unsolicited neighbour advertisement with Override (IPv6),
    /// carrying the uplink's MAC, which answers for routed VPS addresses by proxy ARP/NDP.
    public static func announce(_ address: IPAddress, on uplink: String) throws(IsolationError) {
        let rc = address.bytes.withUnsafeBufferPointer { bytes in
            address.isV4 ? berth_announce_ipv4(uplink, bytes.baseAddress) : berth_announce_ipv6(uplink, bytes.baseAddress)
        }
        if rc != 0 {
            let code = errno
            throw IsolationError(.syscall, "announcing \(address) on \(uplink): \(errnoName(code))", stage: "announce", errno: code)
        }
    }
}
