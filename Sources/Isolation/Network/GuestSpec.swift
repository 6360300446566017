import BerthCore

/// What a VPS is on the network and what the host writes into it: host name, interface,
/// addresses, resolver. The agent writes it to `RUN/NAME/guest`; the monitor reads it at every
/// boot (a reboot inside picks up addresses added live) and at teardown.
public struct GuestSpec: Equatable, Sendable {
    public struct Link: Equatable, Sendable {
        /// Routed (venet semantics) or a port of `bridge` (OpenVZ veth).
        public var bridge: String?
        /// Host-side veth name (`bv-…`); inside the VPS it is always eth0.
        public var hostInterface: String
        public var mac: [UInt8]
        /// Addresses with their on-link prefix (/32 and /128 when routed).
        public var addresses: [CIDR]
        public var gateway4: IPAddress?
        public var gateway6: IPAddress?
        /// The node's LAN interface that answers ARP/NDP for routed VPS addresses.
        public var uplink: String?

        public init(
            bridge: String?, hostInterface: String, mac: [UInt8], addresses: [CIDR],
            gateway4: IPAddress? = nil, gateway6: IPAddress? = nil, uplink: String? = nil
        ) {
            self.bridge = bridge
            self.hostInterface = hostInterface
            self.mac = mac
            self.addresses = addresses
            self.gateway4 = gateway4
            self.gateway6 = gateway6
            self.uplink = uplink
        }

        /// The host end's MAC: the VPS's with another locally administered first byte, so the pair
        /// is recognisable in neighbour tables. 0xfe, as libvirt does for its taps: a Linux
        /// bridge without a fixed address takes the lowest of its ports' MACs, and a VPS joining
        /// must never change the address the node's own neighbours cached for the bridge.
        public var hostMAC: [UInt8] { [0xfe] + mac.dropFirst() }
        public var vpsLinkLocal: IPAddress { IPAddress.linkLocal(mac: mac) }
        /// Every source address the host accepts from this VPS.
        public var allowedSources: [IPAddress] { addresses.map(\.address) + [vpsLinkLocal] }
        /// Every routed VPS's gateways: link-local addresses held by each host-side veth.
        public static let routedGateway4 = IPAddress(bytes: [169, 254, 0, 1])!
        public static let routedGateway6 = IPAddress(bytes: [0xfe, 0x80] + [UInt8](repeating: 0, count: 13) + [1])!
    }

    public var hostname: String
    public var link: Link?
    public var nameservers: [IPAddress]
    public var searchDomains: [String]

    public init(hostname: String, link: Link? = nil, nameservers: [IPAddress] = [], searchDomains: [String] = []) {
        self.hostname = hostname
        self.link = link
        self.nameservers = nameservers
        self.searchDomains = searchDomains
    }

    public func encode() -> String {
        var lines = ["hostname=\(hostname)"]
        if let link {
            if let bridge = link.bridge { lines.append("bridge=\(bridge)") }
            lines.append("host-interface=\(link.hostInterface)")
            lines.append("mac=\(MACAddress.format(link.mac))")
            lines += link.addresses.map { "address=\($0)" }
            if let g = link.gateway4 { lines.append("gateway4=\(g)") }
            if let g = link.gateway6 { lines.append("gateway6=\(g)") }
            if let u = link.uplink { lines.append("uplink=\(u)") }
        }
        lines += nameservers.map { "nameserver=\($0)" }
        lines += searchDomains.map { "search=\($0)" }
        return lines.joined(separator: "\n") + "\n"
    }

    /// Every value is validated by the agent before it writes the file; this only rejects a file
    /// that is not what the agent wrote (nothing here needs escaping: no value has '=' or '\n').
    public static func decode(_ text: String) throws(IsolationError) -> GuestSpec {
        var hostname = ""
        var bridge: String?, hostInterface: String?, mac: [UInt8]?, uplink: String?
        var addresses: [CIDR] = [], nameservers: [IPAddress] = [], search: [String] = []
        var gateway4: IPAddress?, gateway6: IPAddress?
        func bad(_ line: Substring) -> IsolationError { IsolationError(.invalidSpec, "guest spec line not understood: \(line)") }
        for line in text.split(separator: "\n") {
            guard let eq = line.firstIndex(of: "=") else { throw bad(line) }
            let key = line[..<eq], value = String(line[line.index(after: eq)...])
            do {
                switch key {
                case "hostname": hostname = value
                case "bridge": bridge = value
                case "host-interface": hostInterface = value
                case "mac": guard let m = MACAddress.parse(value) else { throw bad(line) }; mac = m
                case "address":
                    let parts = value.split(separator: "/")
                    guard parts.count == 2, let length = Int(parts[1]) else { throw bad(line) }
                    addresses.append(CIDR(address: try IPAddress(String(parts[0])), prefixLength: length))
                case "gateway4": gateway4 = try IPAddress(value)
                case "gateway6": gateway6 = try IPAddress(value)
                case "uplink": uplink = value
                case "nameserver": nameservers.append(try IPAddress(value))
                case "search": search.append(value)
                default: throw bad(line)
                }
            } catch {
                throw bad(line)
            }
        }
        guard !hostname.isEmpty else { throw IsolationError(.invalidSpec, "guest spec lacks hostname") }
        var spec = GuestSpec(hostname: hostname, nameservers: nameservers, searchDomains: search)
        if let hostInterface, let mac {
            spec.link = Link(
                bridge: bridge, hostInterface: hostInterface, mac: mac, addresses: addresses,
                gateway4: gateway4, gateway6: gateway6, uplink: uplink)
        } else if hostInterface != nil || mac != nil || !addresses.isEmpty {
            throw IsolationError(.invalidSpec, "guest spec has a partial interface (host-interface and mac go together)")
        }
        return spec
    }

    public static let fileName = "guest"

    public static func read(runDir: String) throws(IsolationError) -> GuestSpec? {
        guard let text = FileIO.read(runDir + "/" + fileName) else { return nil }
        return try decode(text)
    }
}
