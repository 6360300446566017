import Synchronization
import WireTLS

/// The node's current certificate, for the calls this agent makes to other agents (a migration's
/// transfer). Set once enrolled and replaced on every renewal; nil on a node outside a cluster.
public final class NodeCredentials: Sendable {
    private let bundle = Mutex<CredentialBundle?>(nil)

    public init() {}

    public var current: CredentialBundle? { bundle.withLock { $0 } }

    public func replace(_ new: CredentialBundle) { bundle.withLock { $0 = new } }
}
