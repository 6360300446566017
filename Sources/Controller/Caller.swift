import Wire

/// Who makes a call, once authorised: what the handlers need of the certificate.
struct Caller: Sendable {
    /// nil only for an anonymous enrolment.
    let identity: CertificateIdentity?

    var name: String { identity?.name ?? "" }

    /// The tenant whose VPSs alone this caller sees; nil for every other role.
    var tenant: String? {
        if case .tenant(let name)? = identity?.role { return name }
        return nil
    }

    /// Whether a VPS of `owner` ("" for admins' and operators' VPSs) exists for this caller: to a
    /// tenant, others' VPSs do not.
    func sees(vpsOf owner: String) -> Bool { tenant.map { $0 == owner } ?? true }

    /// "ROLE/NAME": who made a call, in events; "" without a certificate.
    var actor: String { identity.map { $0.role.description + "/" + $0.name } ?? "" }

    /// Who started an operation; only the same certificate holder re-attaches to it.
    var operationOwner: String { actor }

    /// Tenants read their own operations only.
    func mayRead(operationOf owner: String) -> Bool {
        guard let identity, case .tenant = identity.role else { return true }
        return owner.hasPrefix(identity.role.description + "/")
    }
}
