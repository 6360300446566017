import BerthCore

#if canImport(Glibc)
    import Glibc
#endif

/// rtnetlink requests (rtnetlink(7)), built byte for byte so they can be tested without root and
/// sent without running `ip` (each `ip` process costs ~7 ms here).
public enum RouteMessages {
    static let newLink: UInt16 = 16, deleteLink: UInt16 = 17, setLink: UInt16 = 19
    static let newAddress: UInt16 = 20, deleteAddress: UInt16 = 21
    static let newRoute: UInt16 = 24, deleteRoute: UInt16 = 25
    static let newNeighbour: UInt16 = 28, deleteNeighbour: UInt16 = 29

    static let ifUp: UInt32 = 0x1
    static let createFlags = Netlink.request | Netlink.ack | Netlink.create | Netlink.exclusive
    static let changeFlags = Netlink.request | Netlink.ack
    /// Re-applying a VPS's network after a crash must not fail on what is already there.
    static let replaceFlags = Netlink.request | Netlink.ack | Netlink.create | Netlink.replace
    /// Routes Berth installs carry this protocol number (`ip route` shows "proto 183"), so an
    /// operator can tell them from hand-made ones.
    public static let routeProtocol: UInt8 = 183

    /// struct ifinfomsg { u8 family, u8 pad, u16 type, s32 index, u32 flags, u32 change }.
    static func linkHeader(index: Int32 = 0, flags: UInt32 = 0, change: UInt32 = 0) -> [UInt8] {
        var out: [UInt8] = [UInt8(AF_UNSPEC), 0, 0, 0]
        out.appendLittleEndian(UInt32(bitPattern: index))
        out.appendLittleEndian(flags)
        out.appendLittleEndian(change)
        return out
    }

    /// A veth pair: `host` stays here, `peer` is created directly in the namespace `peerNetnsFD`
    /// (so no other process ever sees it on the host). `master` enslaves the host end to a bridge.
    /// Both ends are created down.
    public static func createVeth(
        host: String, hostMAC: [UInt8], peer: String, peerMAC: [UInt8],
        peerNetnsFD: Int32, master: Int32? = nil, mtu: UInt32? = nil
    ) -> NetlinkMessage {
        var attributes = NetlinkAttributes()
        attributes.put(3 /* IFLA_IFNAME */, string: host)
        attributes.put(1 /* IFLA_ADDRESS */, hostMAC)
        if let mtu { attributes.put(4 /* IFLA_MTU */, u32: mtu) }
        if let master { attributes.put(10 /* IFLA_MASTER */, u32: UInt32(bitPattern: master)) }
        attributes.nest(18 /* IFLA_LINKINFO */) { info in
            info.put(1 /* IFLA_INFO_KIND */, string: "veth")
            info.nest(2 /* IFLA_INFO_DATA */) { data in
                data.nest(1 /* VETH_INFO_PEER */) { peerInfo in
                    peerInfo.raw(linkHeader())
                    peerInfo.put(3, string: peer)
                    peerInfo.put(1, peerMAC)
                    if let mtu { peerInfo.put(4, u32: mtu) }
                    peerInfo.put(28 /* IFLA_NET_NS_FD */, u32: UInt32(bitPattern: peerNetnsFD))
                }
            }
        }
        return NetlinkMessage(type: newLink, flags: createFlags, body: linkHeader() + attributes.bytes)
    }

    public static func setUp(index: Int32) -> NetlinkMessage {
        NetlinkMessage(type: setLink, flags: changeFlags, body: linkHeader(index: index, flags: ifUp, change: ifUp))
    }

    /// No automatic IPv6 link-local address: Berth assigns a known one (no DAD, no surprise source).
    public static func disableAddressGeneration(index: Int32) -> NetlinkMessage {
        var attributes = NetlinkAttributes()
        attributes.nest(26 /* IFLA_AF_SPEC */) { spec in
            spec.nest(UInt16(AF_INET6)) { inet6 in
                inet6.put(8 /* IFLA_INET6_ADDR_GEN_MODE */, u8: 1 /* IN6_ADDR_GEN_MODE_NONE */)
            }
        }
        return NetlinkMessage(type: setLink, flags: changeFlags, body: linkHeader(index: index) + attributes.bytes)
    }

    public static func deleteLink(name: String) -> NetlinkMessage {
        var attributes = NetlinkAttributes()
        attributes.put(3, string: name)
        return NetlinkMessage(type: deleteLink, flags: changeFlags, body: linkHeader() + attributes.bytes)
    }

    /// struct ifaddrmsg { u8 family, u8 prefixlen, u8 flags, u8 scope, u32 index } + IFA_LOCAL
    /// (IPv4) / IFA_ADDRESS; IPv6 addresses skip duplicate address detection: the host assigned
    /// them and a tentative address would delay the VPS's first packets by a second.
    public static func address(_ add: Bool, index: Int32, address: IPAddress, prefixLength: Int) -> NetlinkMessage {
        var body: [UInt8] = [UInt8(address.family), UInt8(prefixLength), 0, address.isLinkLocal && !address.isV4 ? 253 : 0]
        body.appendLittleEndian(UInt32(bitPattern: index))
        var attributes = NetlinkAttributes()
        if address.isV4 { attributes.put(2 /* IFA_LOCAL */, address.bytes) }
        attributes.put(1 /* IFA_ADDRESS */, address.bytes)
        if add && !address.isV4 { attributes.put(8 /* IFA_FLAGS */, u32: 0x02 /* IFA_F_NODAD */) }
        return NetlinkMessage(type: add ? newAddress : deleteAddress, flags: add ? replaceFlags : changeFlags, body: body + attributes.bytes)
    }

    /// struct rtmsg { family, dst_len, src_len, tos, table, protocol, scope, type, u32 flags }.
    /// Without a gateway the route is a link-scope route to `destination` on `index`; with one it
    /// is a universe-scope route through it (`onlink`: the gateway needs no covering route).
    public static func route(_ add: Bool, destination: CIDR, index: Int32, gateway: IPAddress? = nil, onlink: Bool = false) -> NetlinkMessage {
        let scope: UInt8 = gateway == nil ? 253 /* RT_SCOPE_LINK */ : 0 /* RT_SCOPE_UNIVERSE */
        var body: [UInt8] = [
            UInt8(destination.address.family), UInt8(destination.prefixLength), 0, 0,
            254 /* RT_TABLE_MAIN */, routeProtocol, scope, 1 /* RTN_UNICAST */,
        ]
        body.appendLittleEndian(UInt32(onlink ? 4 /* RTNH_F_ONLINK */ : 0))
        var attributes = NetlinkAttributes()
        if destination.prefixLength > 0 { attributes.put(1 /* RTA_DST */, destination.address.bytes) }
        if let gateway { attributes.put(5 /* RTA_GATEWAY */, gateway.bytes) }
        attributes.put(4 /* RTA_OIF */, u32: UInt32(bitPattern: index))
        return NetlinkMessage(type: add ? newRoute : deleteRoute, flags: add ? replaceFlags : changeFlags, body: body + attributes.bytes)
    }

    /// struct ndmsg { u8 family, u8 pad, u16 pad, s32 ifindex, u16 state, u8 flags, u8 type }.
    /// A permanent entry cannot be overridden by ARP/NDP from the wire — what makes spoofed
    /// replies harmless.
    public static func neighbour(_ add: Bool, index: Int32, address: IPAddress, mac: [UInt8]) -> NetlinkMessage {
        var body: [UInt8] = [UInt8(address.family), 0, 0, 0]
        body.appendLittleEndian(UInt32(bitPattern: index))
        body.appendLittleEndian(UInt16(0x80 /* NUD_PERMANENT */))
        body += [0, 0]
        var attributes = NetlinkAttributes()
        attributes.put(1 /* NDA_DST */, address.bytes)
        if add { attributes.put(2 /* NDA_LLADDR */, mac) }
        return NetlinkMessage(
            type: add ? newNeighbour : deleteNeighbour,
            flags: add ? replaceFlags : changeFlags,
            body: body + attributes.bytes)
    }

    /// A proxy ARP/NDP entry (`ip neigh add proxy ADDR dev UPLINK`): the node answers for a VPS
    /// address on its LAN.
    public static func proxyNeighbour(_ add: Bool, index: Int32, address: IPAddress) -> NetlinkMessage {
        var body: [UInt8] = [UInt8(address.family), 0, 0, 0]
        body.appendLittleEndian(UInt32(bitPattern: index))
        body.appendLittleEndian(UInt16(0x80))
        body += [0x08 /* NTF_PROXY */, 0]
        var attributes = NetlinkAttributes()
        attributes.put(1, address.bytes)
        return NetlinkMessage(
            type: add ? newNeighbour : deleteNeighbour,
            flags: add ? replaceFlags : changeFlags,
            body: body + attributes.bytes)
    }
}
