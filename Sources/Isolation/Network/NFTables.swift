import BerthCore

/// Host-side anti-spoofing with nftables. The rules are fixed and installed once per agent start
/// (`nft -f`, see `ruleset`); they drop everything arriving from a VPS interface (`bv-*`) unless
/// the (interface, source) pair is in a set. Starting a VPS only adds set elements, over
/// nfnetlink, so the filter is in place before a VPS link exists and costs no process per start.
public enum NFTables {
    public static let table = "berth"
    /// Every host-side VPS interface starts with this; the ruleset matches it as a wildcard.
    public static let interfacePrefix = "bv-"

    public enum Family: UInt8, Sendable {
        case inet = 1, arp = 3, bridge = 7
        var name: String {
            switch self {
            case .inet: return "inet"
            case .arp: return "arp"
            case .bridge: return "bridge"
            }
        }
    }

    /// One set element: which table and set, and its concatenated key.
    public struct Element: Equatable, Sendable {
        public var family: Family
        public var set: String
        public var key: [UInt8]
    }

    /// The elements that let a VPS interface send from its MAC and addresses: one key per
    /// (interface, MAC, address), so an allowed packet costs one set lookup. Routed VPSs are
    /// filtered in the inet (IP) and arp tables; bridged ones in the bridge table.
    public static func elements(interface: String, mac: [UInt8], addresses: [IPAddress], bridged: Bool) -> [Element] {
        let prefix = interfaceKey(interface) + mac + [0, 0]
        var out: [Element] = []
        for family in bridged ? [Family.bridge] : [.inet, .arp] {
            for address in addresses where address.isV4 || family != .arp {
                out.append(Element(family: family, set: address.isV4 ? "src4" : "src6", key: prefix + address.bytes))
            }
        }
        return out
    }

    /// `ifname` keys are IFNAMSIZ (16) bytes, zero padded; each field of a concatenation is
    /// padded to 4 bytes (hence the 2 zero bytes after a MAC).
    static func interfaceKey(_ name: String) -> [UInt8] {
        let bytes = Array(name.utf8.prefix(15))
        return bytes + [UInt8](repeating: 0, count: 16 - bytes.count)
    }

    static let subsystem: UInt16 = 10  // NFNL_SUBSYS_NFTABLES
    static let batchBegin: UInt16 = 0x10, batchEnd: UInt16 = 0x11
    static let newSetElement: UInt16 = 12, deleteSetElement: UInt16 = 14

    static func generalHeader(family: UInt8, resourceID: UInt16) -> [UInt8] {
        var out: [UInt8] = [family, 0 /* NFNETLINK_V0 */]
        out.appendBigEndian(resourceID)
        return out
    }

    /// One transaction adding or deleting `elements` (grouped per set): all or nothing.
    public static func batch(_ add: Bool, _ elements: [Element]) -> [NetlinkMessage] {
        var groups: [(Family, String, [[UInt8]])] = []
        for element in elements {
            if let i = groups.firstIndex(where: { $0.0 == element.family && $0.1 == element.set }) {
                groups[i].2.append(element.key)
            } else {
                groups.append((element.family, element.set, [element.key]))
            }
        }
        var messages = [NetlinkMessage(type: batchBegin, flags: Netlink.request, body: generalHeader(family: 0, resourceID: subsystem))]
        for (family, set, keys) in groups {
            var attributes = NetlinkAttributes()
            attributes.put(1 /* NFTA_SET_ELEM_LIST_TABLE */, string: table)
            attributes.put(2 /* NFTA_SET_ELEM_LIST_SET */, string: set)
            attributes.nest(3 /* NFTA_SET_ELEM_LIST_ELEMENTS */) { list in
                for key in keys {
                    list.nest(1 /* NFTA_LIST_ELEM */) { element in
                        element.nest(1 /* NFTA_SET_ELEM_KEY */) { data in data.put(1 /* NFTA_DATA_VALUE */, key) }
                    }
                }
            }
            messages.append(
                NetlinkMessage(
                    type: subsystem << 8 | (add ? newSetElement : deleteSetElement),
                    flags: Netlink.request | Netlink.ack | (add ? Netlink.create : 0),
                    body: generalHeader(family: family.rawValue, resourceID: 0) + attributes.bytes))
        }
        messages.append(NetlinkMessage(type: batchEnd, flags: Netlink.request, body: generalHeader(family: 0, resourceID: subsystem)))
        return messages
    }

    /// The ruleset, replacing any earlier one in one transaction together with the elements of
    /// the VPSs already running (an agent restart re-asserts the filter without a gap).
    public static func ruleset(elements: [Element]) -> String {
        func render(_ key: [UInt8]) -> String {
            let name = String(decoding: key.prefix(16).prefix { $0 != 0 }, as: UTF8.self)
            return "\"\(name)\" . \(MACAddress.format(Array(key[16..<22]))) . \(IPAddress(bytes: Array(key[24...]))!)"
        }
        func sets(_ family: Family, v6: Bool) -> String {
            var text = ""
            for (set, type) in [("src4", "ipv4_addr"), ("src6", "ipv6_addr")] where set == "src4" || v6 {
                let keys = elements.filter { $0.family == family && $0.set == set }.map { render($0.key) }
                let list = keys.isEmpty ? "" : " elements = { \(keys.joined(separator: ", ")) };"
                text += "  set \(set) { type ifname . ether_addr . \(type);\(list) }\n"
            }
            return text
        }
        let vps = "\"\(interfacePrefix)*\""
        return """
            table inet \(table)
            delete table inet \(table)
            table inet \(table) {
            \(sets(.inet, v6: true))  counter spoofed {}
              counter to_node {}
              chain prerouting {
                type filter hook prerouting priority raw; policy accept;
                iifname != \(vps) accept
                iifname . ether saddr . ip saddr @src4 accept
                icmpv6 type { nd-router-advert, nd-redirect } counter name spoofed drop
                iifname . ether saddr . ip6 saddr @src6 accept
                counter name spoofed drop
              }
              chain input {
                type filter hook input priority filter; policy accept;
                iifname != \(vps) accept
                # Stateless on purpose: a ct rule would put every forwarded VPS packet through
                # conntrack. New TCP connections and all UDP to the node are refused; segments of
                # connections the node opened, ICMP errors, echo and neighbour discovery pass.
                icmp type { echo-request, echo-reply, destination-unreachable, time-exceeded } accept
                icmpv6 type { echo-request, echo-reply, destination-unreachable, packet-too-big, time-exceeded, nd-neighbor-solicit, nd-neighbor-advert, nd-router-solicit } accept
                tcp flags & (syn | ack) != syn accept
                counter name to_node drop
              }
              chain output {
                type filter hook output priority filter; policy accept;
                # A VPS link is point to point: the node's multicast listener reports would only be
                # chatter a VPS could capture.
                oifname \(vps) icmpv6 type { mld-listener-report, mld-listener-done, mld2-listener-report } drop
              }
            }
            table arp \(table)
            delete table arp \(table)
            table arp \(table) {
            \(sets(.arp, v6: false))  counter spoofed {}
              chain input {
                type filter hook input priority filter; policy accept;
                iifname != \(vps) accept
                iifname . arp saddr ether . arp saddr ip @src4 accept
                counter name spoofed drop
              }
            }
            table bridge \(table)
            delete table bridge \(table)
            table bridge \(table) {
            \(sets(.bridge, v6: true))  counter spoofed {}
              chain prerouting {
                type filter hook prerouting priority filter; policy accept;
                iifname != \(vps) accept
                ether type ip iifname . ether saddr . ip saddr @src4 accept
                ether type arp iifname . ether saddr . arp saddr ip @src4 iifname . arp saddr ether . arp saddr ip @src4 accept
                icmpv6 type { nd-router-advert, nd-redirect } counter name spoofed drop
                ether type ip6 iifname . ether saddr . ip6 saddr @src6 accept
                counter name spoofed drop
              }
            }

            """
    }
}
