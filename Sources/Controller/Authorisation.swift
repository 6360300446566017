import BerthCore
import Wire

/// Roles to access: every call is authorised from the caller's verified certificate (role and
/// name), never from a payload field. Docs/wire.md has the table this implements.
enum Authorisation {
    enum Access: Sendable {
        /// No role needed: enrolment (also without a certificate), and the per-node calls the
        /// controller refuses as invalid whoever asks.
        case anyone
        case admin
        /// Nodes, pools, templates.
        case operate
        case read
        /// Read, except for tenants: `hidden` says what they do not see ("nodes").
        case readCluster(hidden: String)
        /// VPS calls; a tenant only on its own VPSs (see `Caller.sees`).
        case writeVPS
        /// Node certificates only (about themselves); `refusal` says so to anyone else.
        case node(refusal: String)
    }

    static func authorise(_ peer: PeerIdentity, _ access: Access, call: String) throws(WireError) -> Caller {
        let identity: CertificateIdentity?
        if case .certificate(let certificate) = peer { identity = certificate } else { identity = nil }
        if case .anyone = access { return Caller(identity: identity) }
        guard let identity else {
            throw WireError(.unauthenticated, "\(call): a client certificate from the cluster CA is required (only enrolment works without one)")
        }
        if case .node(let refusal) = access {
            guard identity.role == .node else { throw WireError(.permissionDenied, "\(call): \(refusal)") }
            return Caller(identity: identity)
        }
        guard allows(identity.role, access) else {
            throw WireError(.permissionDenied, "\(call): role \(identity.role) may not do this")
        }
        if case .readCluster(let hidden) = access, case .tenant = identity.role {
            throw WireError(.permissionDenied, "\(call): tenants do not see \(hidden)")
        }
        return Caller(identity: identity)
    }

    static func allows(_ role: Role, _ access: Access) -> Bool {
        switch (role, access) {
        case (.admin, _): return true
        case (.operator_, .operate), (.operator_, .read), (.operator_, .readCluster), (.operator_, .writeVPS): return true
        case (.viewer, .read), (.viewer, .readCluster): return true
        case (.tenant, .read), (.tenant, .readCluster), (.tenant, .writeVPS): return true
        default: return false
        }
    }
}
