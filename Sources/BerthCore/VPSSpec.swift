/// What a VPS is created with: the create request's settings, read off the wire once
/// (Sources/Wire/VPSSpec+Wire.swift). The agent creates from it (and ignores the placement
/// fields); the controller keeps it as the VPS's record (JSON in the `vps.spec` column), with its
/// addresses once assigned and how it was placed. The limits are as asked, unchecked: the agent
/// checks them against its node (`Limits.merging`), and what they commit follows the one rule
/// the scheduler and `node show` share.
public struct VPSSpec: Codable, Sendable, Equatable {
    public var name: String
    public var template: String
    public var hostname = ""
    /// Explicit addresses, and after placement also the ones taken from pools.
    public var ips: [String] = []
    public var nameservers: [String] = []
    public var searchDomains: [String] = []
    public var limits = Limits()
    /// "routed" or "bridged:BRIDGE"; "" is the agent's default.
    public var net = ""
    public var onboot = false
    public var labels: [String: String] = [:]
    public var privileged = false
    public var capabilities: [String: String] = [:]
    /// "image" or "layered"; "" is the agent's default.
    public var storage = ""
    /// "loop" or "pool"; "" is the agent's default.
    public var layout = ""
    /// The node the creator named (`--node`), "" when the scheduler chose.
    public var pinnedNode = ""
    public var constraints: [String: String] = [:]
    /// "" when the VPS belongs to no anti-affinity group.
    public var antiAffinity = ""
    /// High availability (Docs/ha.md): replicas on other nodes, and failover to one of them.
    public var ha = false
    public var replicas = 1
    public var replicationIntervalSeconds = 60
    /// Where its replicas are (the controller's placement of them).
    public var replicaNodes: [String] = []
    /// Nodes that hold a stale copy since the VPS was failed over away from them (each is told
    /// by its heartbeats' answers until it no longer reports the copy).
    public var staleCopiesOn: [String] = []

    public init(name: String, template: String) {
        self.name = name
        self.template = template
    }
}

extension VPSSpec {
    private enum CodingKeys: String, CodingKey {
        case name, template, hostname, ips, nameservers, searchDomains, limits, net, onboot, labels, privileged, capabilities, storage, layout,
            pinnedNode, constraints, antiAffinity, ha, replicas, replicationIntervalSeconds, replicaNodes, staleCopiesOn
    }

    /// A stored spec: only the name and template are required, so a record written before a
    /// field existed still reads, with that field's default.
    public init(from decoder: any Decoder) throws {
        let c = try decoder.container(keyedBy: CodingKeys.self)
        self.init(name: try c.decode(String.self, forKey: .name), template: try c.decode(String.self, forKey: .template))
        hostname = try c.decodeIfPresent(String.self, forKey: .hostname) ?? hostname
        ips = try c.decodeIfPresent([String].self, forKey: .ips) ?? ips
        nameservers = try c.decodeIfPresent([String].self, forKey: .nameservers) ?? nameservers
        searchDomains = try c.decodeIfPresent([String].self, forKey: .searchDomains) ?? searchDomains
        limits = try c.decodeIfPresent(Limits.self, forKey: .limits) ?? limits
        net = try c.decodeIfPresent(String.self, forKey: .net) ?? net
        onboot = try c.decodeIfPresent(Bool.self, forKey: .onboot) ?? onboot
        labels = try c.decodeIfPresent([String: String].self, forKey: .labels) ?? labels
        privileged = try c.decodeIfPresent(Bool.self, forKey: .privileged) ?? privileged
        capabilities = try c.decodeIfPresent([String: String].self, forKey: .capabilities) ?? capabilities
        storage = try c.decodeIfPresent(String.self, forKey: .storage) ?? storage
        layout = try c.decodeIfPresent(String.self, forKey: .layout) ?? layout
        pinnedNode = try c.decodeIfPresent(String.self, forKey: .pinnedNode) ?? pinnedNode
        constraints = try c.decodeIfPresent([String: String].self, forKey: .constraints) ?? constraints
        antiAffinity = try c.decodeIfPresent(String.self, forKey: .antiAffinity) ?? antiAffinity
        ha = try c.decodeIfPresent(Bool.self, forKey: .ha) ?? ha
        replicas = try c.decodeIfPresent(Int.self, forKey: .replicas) ?? replicas
        replicationIntervalSeconds = try c.decodeIfPresent(Int.self, forKey: .replicationIntervalSeconds) ?? replicationIntervalSeconds
        replicaNodes = try c.decodeIfPresent([String].self, forKey: .replicaNodes) ?? replicaNodes
        staleCopiesOn = try c.decodeIfPresent([String].self, forKey: .staleCopiesOn) ?? staleCopiesOn
    }

    /// The HA settings asked for, checked (Docs/ha.md): a pool disk (btrfs snapshots are what
    /// is replicated), one to three replicas, an interval of 10 s to a day.
    public func checkHA() throws(BerthError) {
        guard ha else { return }
        guard layout == "pool" else {
            throw BerthError(
                .invalidArgument, "ha: replication needs --layout pool (btrfs snapshots are what is sent, as Proxmox's replication needs ZFS)", field: "ha")
        }
        guard (1...3).contains(replicas) else { throw BerthError(.invalidArgument, "replicas: \(replicas) is not from 1 to 3", field: "replicas") }
        guard (10...86_400).contains(replicationIntervalSeconds) else {
            throw BerthError(
                .invalidArgument, "replication-interval: \(replicationIntervalSeconds) s is not from 10 s to a day", field: "replication-interval")
        }
    }
}
