import BerthCore
import Placement

/// A VPS placed by the controller: where it lives, who owns it, what it was created with and
/// the status its agent last reported.
public struct VPSRecord: Sendable, Equatable {
    /// Whether the node has confirmed the create.
    public enum Phase: String, Sendable {
        case creating, ready
    }

    public var name: String
    public var node: String
    /// "" for VPSs created by admins and operators; a tenant sees only its own.
    public var tenant: String
    public var spec: VPSSpec
    public var status: VPSStatusRecord
    public var phase: Phase
    /// The node a drain took it from, until `node restore` brings it back or it is moved by
    /// hand; "" otherwise.
    public var origin = ""
    /// A migration under way (or cut short by a controller that stopped): what `Migrations`
    /// needs to finish or undo it.
    public var migration: PendingMigration?
    /// Why the stored row could not be read as written, if it could not (`SQLiteStore.vps`).
    public var damage: String?

    public init(name: String, node: String, tenant: String, spec: VPSSpec, status: VPSStatusRecord, phase: Phase) {
        self.name = name
        self.node = node
        self.tenant = tenant
        self.spec = spec
        self.status = status
        self.phase = phase
    }

    /// The VPS as the placement ledger counts it.
    public var placed: PlacedVPS { PlacedVPS(name: name, node: node, cost: spec.cost, group: spec.antiAffinity) }
}
