import BerthCore
import Placement

/// What a VPS was created with, as the controller keeps it (JSON in the `vps.spec` column): the
/// create request's settings, its addresses once assigned, and how it was placed. The limits are
/// BerthCore's, so what the VPS commits follows the one rule the agent's `node show` sums too.
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
    public var onBoot = false
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

    public init(name: String, template: String) {
        self.name = name
        self.template = template
    }

    /// What the VPS commits to its node, in the scheduler's units.
    public var cost: PlacementRequest { PlacementRequest(limits.commitment) }

    /// What the scheduler is asked when the VPS is placed.
    public var placementRequest: PlacementRequest {
        PlacementRequest(
            limits.commitment, constraints: constraints,
            antiAffinityGroup: antiAffinity.isEmpty ? nil : antiAffinity, template: template)
    }
}
