import BerthCore
import Testing
import Wire

@testable import Controller

/// The call table gives every role exactly the access of Docs/wire.md's roles table.
@Suite struct CallTableTests {
    static let roles: [Role] = [.admin, .operator_, .viewer, .tenant("acme"), .node, .controller]
    static let writers: Set<Role> = [.admin, .operator_, .tenant("acme")]
    static let readers: Set<Role> = [.admin, .operator_, .viewer, .tenant("acme")]
    static let clusterReaders: Set<Role> = [.admin, .operator_, .viewer]
    static let operators: Set<Role> = [.admin, .operator_]
    static let everyone = Set(roles)

    static let name = Berth_V1_NameRequest.with { $0.name = "web1" }
    static let table: [(Berth_V1_Request.OneOf_Call, Set<Role>)] = [
        (.create(.with { $0.name = "web1" }), writers), (.start(name), writers), (.restart(name), writers),
        (.stop(.with { $0.name = "web1" }), writers), (.destroy(.with { $0.name = "web1" }), writers),
        (.set(.with { $0.name = "web1" }), writers), (.exec(.with { $0.name = "web1" }), writers),
        (.console(.with { $0.name = "web1" }), writers),
        (.status(name), readers), (.stats(name), readers), (.list(.init()), readers),
        (.operationShow(.init()), readers), (.operationList(.init()), readers),
        (.events(.init()), clusterReaders), (.nodeList(.init()), clusterReaders), (.nodeShow(name), clusterReaders),
        (.ippoolList(.init()), clusterReaders),
        (.nodeCordon(name), operators), (.nodeUncordon(name), operators), (.ippoolAdd(.init()), operators),
        (.ippoolRemove(name), operators), (.templateUpload(.init()), operators), (.templateExport(.init()), operators),
        (.nodeJoinToken(.init()), [.admin]), (.rotate(.init()), [.admin]), (.revoke(.init()), [.admin]),
        (.tenantSet(.init()), [.admin]), (.tenantShow(name), readers), (.tenantList(.init()), readers),
        (.heartbeat(.init()), [.node]), (.renew(.init()), [.node]),
        // Enrolment needs no role; per-node calls are refused as invalid by their handler, for everyone.
        (.enroll(.init()), everyone), (.templateList(.init()), everyone), (.templateBuild(.init()), everyone),
        (.templateImport(.init()), everyone), (.templateRemove(name), everyone), (.nodeInfo(.init()), everyone),
    ]

    @Test func everyRoleGetsTheAccessOfTheRolesTable() {
        for (call, allowed) in Self.table {
            let entry = ControllerCall.of(call)
            for role in Self.roles {
                let peer = PeerIdentity.certificate(CertificateIdentity(role: role, name: "x", serial: "01"))
                let refusal = Self.refusal(call, peer)
                if allowed.contains(role) {
                    #expect(refusal == nil, "\(entry.name) refused to \(role)")
                } else {
                    #expect(refusal?.code == .permissionDenied, "\(entry.name) allowed to \(role)")
                }
            }
        }
    }

    static func refusal(_ call: Berth_V1_Request.OneOf_Call, _ peer: PeerIdentity) -> WireError? {
        let entry = ControllerCall.of(call)
        do { _ = try Authorisation.authorise(peer, entry.access, call: entry.name) } catch { return error }
        return nil
    }

    @Test func refusalsSayWhy() throws {
        let refusal = Self.refusal
        let viewer = PeerIdentity.certificate(CertificateIdentity(role: .viewer, name: "vera", serial: "01"))
        let tenant = PeerIdentity.certificate(CertificateIdentity(role: .tenant("acme"), name: "alice", serial: "02"))
        let admin = PeerIdentity.certificate(CertificateIdentity(role: .admin, name: "root", serial: "03"))
        #expect(refusal(.create(.init()), viewer)?.message == "create: role viewer may not do this")
        #expect(refusal(.nodeList(.init()), tenant)?.message == "node list: tenants do not see nodes")
        #expect(refusal(.events(.init()), tenant)?.message == "events: tenants do not see the cluster's event log")
        #expect(refusal(.heartbeat(.init()), admin)?.message == "heartbeat: only node certificates send heartbeats")
        #expect(refusal(.list(.init()), .anonymous)?.code == .unauthenticated)
        #expect(refusal(.enroll(.init()), .anonymous) == nil)
    }

    @Test func onlyMutatingVPSCallsAreOperations() {
        for (call, _) in Self.table {
            let entry = ControllerCall.of(call)
            let expected = ["create", "start", "restart", "stop", "destroy"].contains(entry.name)
            #expect((entry.operationSubject == "web1") == expected, "\(entry.name)")
        }
    }
}
