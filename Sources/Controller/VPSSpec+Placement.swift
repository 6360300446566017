import BerthCore
import Placement

extension VPSSpec {
    /// What the VPS commits to its node, in the scheduler's units.
    public var cost: PlacementRequest { PlacementRequest(limits.commitment) }

    /// What the scheduler is asked when the VPS is placed.
    public var placementRequest: PlacementRequest {
        PlacementRequest(
            limits.commitment, constraints: constraints,
            antiAffinityGroup: antiAffinity.isEmpty ? nil : antiAffinity, template: template)
    }
}
