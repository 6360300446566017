import BerthCore
import Placement

extension VPSSpec {
    /// What the VPS commits to its node, in the scheduler's units.
    public var cost: PlacementRequest { PlacementRequest(limits.commitment) }

    /// What the scheduler is asked when the VPS is placed: its explicit addresses (at a
    /// create, before pool addresses are taken) must be routable there.
    public var placementRequest: PlacementRequest {
        var request = PlacementRequest(
            limits.commitment, constraints: constraints,
            antiAffinityGroup: antiAffinity.isEmpty ? nil : antiAffinity, template: template)
        request.addresses = ips.compactMap { try? IPAddress($0) }
        return request
    }
}
