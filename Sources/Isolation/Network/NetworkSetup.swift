import BerthCore
import CIsolation

#if canImport(Glibc)
    import Glibc
#endif

/// Wires a VPS's network namespace to the node: one veth pair, host-side routes, permanent
/// neighbour entries, proxy ARP/NDP and anti-spoofing set elements, and the VPS's own addresses
/// and default routes. Everything goes over netlink from this process.
///
/// `attach` and `update` enter the VPS's network namespace with setns, so they may only run in
/// a single-threaded process (berth-spawn); `detach` touches only the host's namespace.
///
///   berth-spawn (node netns)                       kernel                         VPS netns
///     | nft: add (bv-x, MAC/addresses) to sets ---->| filter ready, link absent      |
///     | RTM_NEWLINK veth bv-x <-> eth0 (in VPS ns) ->|------------------------------->| eth0 (down)
///     | host: addresses, bv-x up, /32 + /128 routes, |                                |
///     |       permanent neighbours, proxy entries -->| no carrier yet                 |
///     | setns(VPS netns): lo up, eth0 addresses,     |                                |
///     |       gateway neighbours, eth0 up, routes -->|------------------------------->| eth0 up
///     | setns(back) ------------------------------- >| traffic flows, filtered        |
public enum NetworkSetup {
    /// Sets up the link of a VPS whose network namespace is `vpsNetns` (an fd of it). On failure
    /// whatever was created is removed again.
    public static func attach(_ link: GuestSpec.Link, vpsNetns: Int32) throws(IsolationError) {
        let host = try NetlinkSocket.route()
        if interfaceIndex(link.hostInterface) != 0 {
            // Left over from a VPS that stopped a moment ago: its namespace is still being freed.
            try host.perform([RouteMessages.deleteLink(name: link.hostInterface)], stage: "remove stale \(link.hostInterface)", ignoring: [ENODEV])
        }
        do throws(IsolationError) {
            try allowSources(link)
            var master: Int32?
            if let bridge = link.bridge {
                let index = interfaceIndex(bridge)
                guard index != 0 else {
                    throw IsolationError(.notFound, "bridge \(bridge) does not exist on this node", stage: "find bridge \(bridge)", errno: ENODEV)
                }
                master = index
            }
            try host.perform(
                [
                    RouteMessages.createVeth(
                        host: link.hostInterface, hostMAC: link.hostMAC, peer: "eth0",
                        peerMAC: link.mac, peerNetnsFD: vpsNetns, master: master)
                ],
                stage: "create veth \(link.hostInterface)")
            let hostIndex = interfaceIndex(link.hostInterface)
            guard hostIndex != 0 else {
                throw IsolationError(.notFound, "\(link.hostInterface) vanished after creation", stage: "find \(link.hostInterface)", errno: ENODEV)
            }
            try? FileIO.write("/proc/sys/net/ipv6/conf/\(link.hostInterface)/accept_ra", "0")
            // The host end goes up before its routes can exist; the filter is already in place
            // and no packet passes before the VPS end is up too (veth carrier).
            var hostSide = [RouteMessages.disableAddressGeneration(index: hostIndex)]
            if link.bridge == nil {
                hostSide += [
                    RouteMessages.address(true, index: hostIndex, address: GuestSpec.Link.routedGateway4, prefixLength: 32),
                    RouteMessages.address(true, index: hostIndex, address: GuestSpec.Link.routedGateway6, prefixLength: 64),
                ]
            }
            hostSide.append(RouteMessages.setUp(index: hostIndex))
            if link.bridge == nil {
                hostSide += hostRoutes(true, link, link.addresses.map(\.address), index: hostIndex)
            }
            try host.perform(hostSide, stage: "configure \(link.hostInterface)")
            try proxy(true, link, link.addresses.map(\.address), socket: host)

            try insideNamespace(vpsNetns) { () throws(IsolationError) in
                let inside = try NetlinkSocket.route()
                let eth0 = interfaceIndex("eth0")
                guard eth0 != 0 else { throw IsolationError(.notFound, "eth0 missing in the VPS", stage: "find eth0", errno: ENODEV) }
                var messages = [
                    RouteMessages.setUp(index: 1), RouteMessages.disableAddressGeneration(index: eth0),
                    RouteMessages.address(true, index: eth0, address: link.vpsLinkLocal, prefixLength: 64),
                ]
                messages += link.addresses.map { RouteMessages.address(true, index: eth0, address: $0.address, prefixLength: $0.prefixLength) }
                if link.bridge == nil {
                    messages += [
                        RouteMessages.neighbour(true, index: eth0, address: GuestSpec.Link.routedGateway4, mac: link.hostMAC),
                        RouteMessages.neighbour(true, index: eth0, address: GuestSpec.Link.routedGateway6, mac: link.hostMAC),
                    ]
                }
                messages.append(RouteMessages.setUp(index: eth0))
                messages += defaultRoutes(link, index: eth0)
                try inside.perform(messages, stage: "configure eth0 in the VPS")
            }
        } catch {
            detach(link, removeInterface: true)
            throw error
        }
    }

    /// Removes the host-side state of a VPS link; everything already gone is fine. The veth
    /// itself disappears with the VPS's namespace (the kernel frees namespaces in batches, so
    /// stopping many VPSs does not pay a link deletion each); `removeInterface` deletes it now.
    public static func detach(_ link: GuestSpec.Link, removeInterface: Bool) {
        if let netfilter = try? NetlinkSocket.netfilter() {
            let elements = NFTables.elements(interface: link.hostInterface, mac: link.mac, addresses: link.allowedSources, bridged: link.bridge != nil)
            // One transaction for all; if some were already gone (the transaction then aborts),
            // one per element so the missing ones cannot hold back the rest.
            if (try? netfilter.perform(NFTables.batch(false, elements), stage: "remove filter elements")) == nil {
                for element in elements {
                    try? netfilter.perform(NFTables.batch(false, [element]), stage: "remove filter element", ignoring: [ENOENT])
                }
            }
        }
        guard let host = try? NetlinkSocket.route() else { return }
        try? proxy(false, link, link.addresses.map(\.address), socket: host)
        if removeInterface && interfaceIndex(link.hostInterface) != 0 {
            try? host.perform([RouteMessages.deleteLink(name: link.hostInterface)], stage: "delete \(link.hostInterface)", ignoring: [ENODEV])
        }
    }

    /// Applies an address change to a running VPS: new addresses are allowed and routed before
    /// the VPS may use them; removed ones leave the VPS before the host forgets them.
    public static func update(from old: GuestSpec.Link, to new: GuestSpec.Link, vpsNetns: Int32) throws(IsolationError) {
        guard old.hostInterface == new.hostInterface, old.mac == new.mac, old.bridge == new.bridge else {
            throw IsolationError(.unsupported, "the network mode or interface of a running VPS cannot change; restart it")
        }
        let added = new.addresses.filter { !old.addresses.contains($0) }
        let removed = old.addresses.filter { !new.addresses.contains($0) }
        if added.isEmpty && removed.isEmpty { return }
        let host = try NetlinkSocket.route()
        let hostIndex = interfaceIndex(new.hostInterface)
        guard hostIndex != 0 else {
            throw IsolationError(.notFound, "\(new.hostInterface) does not exist: is the VPS running?", stage: "find \(new.hostInterface)", errno: ENODEV)
        }

        if !added.isEmpty {
            try netfilter(true, NFTables.elements(interface: new.hostInterface, mac: new.mac, addresses: added.map(\.address), bridged: new.bridge != nil))
            if new.bridge == nil { try host.perform(hostRoutes(true, new, added.map(\.address), index: hostIndex), stage: "route new addresses") }
            try proxy(true, new, added.map(\.address), socket: host)
        }
        try insideNamespace(vpsNetns) { () throws(IsolationError) in
            let inside = try NetlinkSocket.route()
            let eth0 = interfaceIndex("eth0")
            guard eth0 != 0 else { throw IsolationError(.notFound, "eth0 missing in the VPS", stage: "find eth0", errno: ENODEV) }
            if !removed.isEmpty {
                try inside.perform(
                    removed.map { RouteMessages.address(false, index: eth0, address: $0.address, prefixLength: $0.prefixLength) },
                    stage: "remove addresses in the VPS", ignoring: [EADDRNOTAVAIL])
            }
            if !added.isEmpty {
                try inside.perform(
                    added.map { RouteMessages.address(true, index: eth0, address: $0.address, prefixLength: $0.prefixLength) }
                        + defaultRoutes(new, index: eth0),
                    stage: "add addresses in the VPS")
            }
        }
        if !removed.isEmpty {
            if new.bridge == nil {
                try host.perform(
                    hostRoutes(false, old, removed.map(\.address), index: hostIndex), stage: "unroute removed addresses", ignoring: [ESRCH, ENOENT])
            }
            try proxy(false, old, removed.map(\.address), socket: host)
            let elements = NFTables.elements(interface: old.hostInterface, mac: old.mac, addresses: removed.map(\.address), bridged: old.bridge != nil)
            for element in elements {
                try netfilter(false, [element], ignoring: [ENOENT])
            }
        }
    }

    static func allowSources(_ link: GuestSpec.Link) throws(IsolationError) {
        try netfilter(true, NFTables.elements(interface: link.hostInterface, mac: link.mac, addresses: link.allowedSources, bridged: link.bridge != nil))
    }

    static func netfilter(_ add: Bool, _ elements: [NFTables.Element], ignoring: Set<Int32> = []) throws(IsolationError) {
        let socket = try NetlinkSocket.netfilter()
        do {
            try socket.perform(
                NFTables.batch(add, elements), stage: add ? "allow VPS sources in nftables" : "remove VPS sources from nftables", ignoring: ignoring)
        } catch {
            if add && error.errno == ENOENT {
                throw IsolationError(
                    .notFound,
                    "the node's anti-spoofing tables (nft inet/arp/bridge \"\(NFTables.table)\") are missing; the agent installs them at start when networking is configured",
                    stage: error.stage, errno: ENOENT)
            }
            throw error
        }
    }

    /// /32 and /128 routes to the VPS addresses and permanent neighbour entries for them, so
    /// nothing a VPS sends can change how the node reaches any address.
    static func hostRoutes(_ add: Bool, _ link: GuestSpec.Link, _ addresses: [IPAddress], index: Int32) -> [NetlinkMessage] {
        addresses.flatMap { address in
            [
                RouteMessages.route(add, destination: CIDR(address: address, prefixLength: address.bitWidth), index: index),
                RouteMessages.neighbour(add, index: index, address: address, mac: link.mac),
            ]
        }
    }

    static func proxy(_ add: Bool, _ link: GuestSpec.Link, _ addresses: [IPAddress], socket: NetlinkSocket) throws(IsolationError) {
        guard link.bridge == nil, let uplink = link.uplink, !addresses.isEmpty else { return }
        let index = interfaceIndex(uplink)
        guard index != 0 else {
            if !add { return }
            throw IsolationError(.notFound, "uplink \(uplink) does not exist on this node", stage: "find uplink \(uplink)", errno: ENODEV)
        }
        try socket.perform(
            addresses.map { RouteMessages.proxyNeighbour(add, index: index, address: $0) },
            stage: add ? "answer ARP/NDP for the VPS on \(uplink)" : "stop answering ARP/NDP on \(uplink)",
            ignoring: add ? [] : [ENOENT])
    }

    static func defaultRoutes(_ link: GuestSpec.Link, index: Int32) -> [NetlinkMessage] {
        var out: [NetlinkMessage] = []
        let hasV4 = link.addresses.contains { $0.address.isV4 }, hasV6 = link.addresses.contains { !$0.address.isV4 }
        let routed = link.bridge == nil
        if hasV4, let gateway = routed ? GuestSpec.Link.routedGateway4 : link.gateway4 {
            out.append(
                RouteMessages.route(
                    true, destination: CIDR(address: IPAddress(bytes: [0, 0, 0, 0])!, prefixLength: 0), index: index,
                    gateway: gateway, onlink: routed))
        }
        if hasV6, let gateway = routed ? GuestSpec.Link.routedGateway6 : link.gateway6 {
            out.append(
                RouteMessages.route(
                    true, destination: CIDR(address: IPAddress(bytes: [UInt8](repeating: 0, count: 16))!, prefixLength: 0),
                    index: index, gateway: gateway, onlink: routed))
        }
        return out
    }

    /// Runs `body` in the network namespace `target`, then returns to the caller's own.
    static func insideNamespace(_ target: Int32, _ body: () throws(IsolationError) -> Void) throws(IsolationError) {
        let own = try check("open own network namespace") { open("/proc/thread-self/ns/net", O_RDONLY | O_CLOEXEC) }
        defer { close(own) }
        try check("enter the VPS network namespace") { berth_setns(target, Int32(NamespaceFlag.net)) }
        var failure: IsolationError?
        do { try body() } catch { failure = error }
        if berth_setns(own, Int32(NamespaceFlag.net)) != 0 {
            // Staying in the VPS's namespace would configure the wrong host: give up entirely.
            let err = errno
            _ = "berth-spawn: cannot return to the node's network namespace: \(errnoName(err))\n".withCString { write(2, $0, strlen($0)) }
            _exit(70)
        }
        if let failure { throw failure }
    }

    public static func interfaceIndex(_ name: String) -> Int32 { Int32(bitPattern: if_nametoindex(name)) }
}
