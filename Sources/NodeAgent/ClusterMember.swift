import BerthCore
import Foundation
import Isolation
import Logging
import NIOCore
import Synchronization
import Wire
import WireTLS

/// How this agent takes part in a cluster: where the controller is, where the agent serves the
/// controller, and (once) the join token that enrols it.
public struct ClusterOptions: Sendable {
    public var controller: String
    public var listen: String
    public var joinToken: String?
    public var labels: [String: String]
    /// Migrations this node runs at once, and the rate it sends their disks at.
    public var migrationSlots: MigrationSlots

    public init(
        controller: String, listen: String, joinToken: String?, labels: [String: String], migrationSlots: MigrationSlots = MigrationSlots()
    ) {
        self.controller = controller
        self.listen = listen
        self.joinToken = joinToken
        self.labels = labels
        self.migrationSlots = migrationSlots
    }
}

/// Enrolment, the mTLS listener the controller calls, and the heartbeat loop.
///
/// Enrolment (once per node; the key never leaves it):
/// ```
/// agent                                         controller
///   | TLS 1.3, no client certificate -------------->|  server chain = [controller leaf, CA]
///   |   checks: chain holds the CA whose SHA-256 is |
///   |   the token's third part, leaf signed by it   |
///   | HELLO / HELLO                                 |
///   | REQUEST enroll {token, node, pubkey, address}>|  token: known, unused, unexpired -> used
///   |<- RESPONSE enrolled {node cert, CA}           |  cert: CN node, OU node, SAN address host
///   | writes DATA/cluster/{ca,cert,key}.pem          |
///   | close; from now on every connection is mTLS   |
/// ```
/// Then: the agent listens on `listen` (only the controller's certificate may call) and sends a
/// heartbeat every interval; the reply carries the interval and the cluster's revoked serials,
/// which the agent's listener enforces too.
public final class ClusterMember: Sendable {
    let options: ClusterOptions
    let manager: VPSManager
    let directory: String
    let group: EventLoopGroup
    let logger: Logger
    /// The round of stale-copy deletion and fenced restarts under way (`lease`).
    let leaseWork = Mutex<LeaseWork?>(nil)

    public init(options: ClusterOptions, manager: VPSManager, group: EventLoopGroup, logger: Logger) {
        self.options = options
        self.manager = manager
        self.directory = manager.paths.dataDir + "/cluster"
        self.group = group
        self.logger = logger
    }

    /// The node's credentials: from disk, or obtained with the join token.
    public func credentials() async throws -> CredentialBundle {
        if FileManager.default.fileExists(atPath: directory + "/cert.pem") {
            let bundle = try CredentialBundle.load(directory: directory)
            let identity = try bundle.identity()
            guard identity.role == .node, identity.name == manager.nodeName else {
                throw WireError(
                    .invalidArgument, "name: \(directory)/cert.pem belongs to \(identity.role) \(identity.name), not node \(manager.nodeName)", field: "name")
            }
            if options.joinToken != nil { logger.notice("already enrolled; --join is ignored", metadata: ["dir": "\(directory)"]) }
            return bundle
        }
        guard let tokenText = options.joinToken else {
            throw WireError(.invalidArgument, "join: this node is not enrolled yet: pass --join TOKEN (from `berth node join-token`)", field: "join")
        }
        let token = try JoinTokenText(parsing: tokenText)
        let controller = try HostPort(parsing: options.controller, field: "controller")
        let key = ClusterCA.generateKeyPair()
        let client: WireClient
        do {
            client = try await WireClient.connect(host: controller.host, port: controller.port, bundle: nil, pinnedCA: token.caFingerprint, group: group)
        } catch let error as WireError where error.message.contains("CERTIFICATE_VERIFY_FAILED") {
            throw WireError(
                .unauthenticated,
                "join: the controller at \(options.controller) did not present the CA the token names (sha-256 \(token.caFingerprint.prefix(16))…): wrong controller or wrong token",
                field: "join")
        }
        defer { Task { await client.close() } }
        // Any certificate of the cluster chains to the pinned CA: only the controller's may
        // receive the token.
        guard client.peerIdentity?.role == .controller else {
            throw WireError(
                .unauthenticated,
                "join: \(options.controller) presented \(client.peerIdentity.map { "\($0.role) \($0.name)" } ?? "no identity"), not the controller",
                field: "join")
        }
        var request = Berth_V1_Request()
        var enroll = Berth_V1_EnrollRequest()
        enroll.token = tokenText
        enroll.nodeName = manager.nodeName
        enroll.publicKeyPem = key.publicKeyPEM
        enroll.address = options.listen
        enroll.labels = options.labels
        request.enroll = enroll
        request.deadlineMs = 10_000
        let bundle = try nodeBundle(try await client.call(request).enrolled, key: key, caFingerprint: token.caFingerprint, call: "join")
        try FileManager.default.createDirectory(atPath: directory, withIntermediateDirectories: true, attributes: [.posixPermissions: 0o700])
        try bundle.write(directory: directory)
        logger.notice("enrolled", metadata: ["node": "\(manager.nodeName)", "controller": "\(options.controller)"])
        return bundle
    }

    /// The credentials an enrolment or renewal answer gives, checked: the CA must be the one the
    /// node already trusts and the certificate this node's.
    func nodeBundle(
        _ reply: Berth_V1_EnrollReply, key: (privateKeyPEM: String, publicKeyPEM: String), caFingerprint: String,
        call: String
    ) throws -> CredentialBundle {
        guard try ClusterCA.fingerprint(ofPEM: reply.caPem) == caFingerprint else {
            throw WireError(.unauthenticated, "\(call): the controller answered with a CA other than the one this node trusts")
        }
        let bundle = CredentialBundle(caPEM: reply.caPem, certificatePEM: reply.certificatePem, keyPEM: key.privateKeyPEM)
        let identity = try bundle.identity()
        guard identity.role == .node, identity.name == manager.nodeName else {
            throw WireError(.unauthenticated, "\(call): the controller issued a certificate for \(identity.role) \(identity.name)")
        }
        return bundle
    }

    /// Binds the listener the controller calls (a failure here fails the agent's start).
    public func serve(service: AgentService, bundle: CredentialBundle) async throws -> TLSWireServer {
        let listen = try HostPort(parsing: options.listen, field: "listen")
        let server = try await TLSWireServer.bind(host: listen.host, port: listen.port, service: service, bundle: bundle, group: group)
        logger.info("serving the controller", metadata: ["listen": "\(options.listen)"])
        return server
    }

    /// Heartbeats until cancelled; failures are logged and retried every interval. The node
    /// renews its certificate when the controller asks (an admin's `berth node rotate`) or when
    /// two thirds of its validity have passed.
    public func heartbeats(bundle initial: CredentialBundle, server: TLSWireServer, credentials: NodeCredentials) async throws {
        let controller = try HostPort(parsing: options.controller, field: "controller")
        var bundle = initial
        var interval: Duration = .seconds(1)
        var fenceAfter: Duration?
        var client: WireClient?
        var failing = false
        while !Task.isCancelled {
            do {
                if client == nil || client?.isActive == false {
                    client = try await WireClient.connect(host: controller.host, port: controller.port, bundle: bundle, group: group, timeout: .seconds(2))
                    guard client?.peerIdentity?.role == .controller else {
                        await client?.close()
                        client = nil
                        throw WireError(.unauthenticated, "\(options.controller) did not present a controller certificate")
                    }
                }
                var beat = Berth_V1_Heartbeat()
                beat.info = Berth_V1_NodeInfo(await manager.nodeInfo())
                beat.vpses = Berth_V1_VpsList(await manager.list(all: true), node: manager.nodeName).vpses
                beat.address = options.listen
                beat.labels = options.labels
                beat.templates = manager.templates.list().map(\.name)
                beat.replicas = await manager.heldReplicas().map { held in
                    var replica = Berth_V1_HeldReplica()
                    replica.vps = held.vps
                    replica.takenUnixMs = held.takenUnixMs
                    return replica
                }
                var request = Berth_V1_Request()
                request.heartbeat = beat
                request.deadlineMs = UInt32(Self.heartbeatDeadline(interval: interval, fenceAfter: fenceAfter) / .milliseconds(1))
                // The lease counts from the send: it lapses here no later than at the controller.
                let sentAt = HelperProtocol.LeaseRecord.boottimeNow()
                let reply = try await client!.call(request).heartbeat
                server.registry.revoke(reply.revokedSerials)
                await lease(reply, sentAt: sentAt)
                if reply.renewCertificate || bundle.needsRenewal() {
                    do {
                        bundle = try await renew(bundle, over: client!, server: server)
                        credentials.replace(bundle)
                        // The next heartbeat goes out on a connection with the new certificate.
                        await client?.close()
                        client = nil
                    } catch {
                        // The old certificate stays in use; the next heartbeat tries again.
                        logger.warning("certificate renewal failed", metadata: ["error": "\(error)"])
                    }
                }
                if reply.intervalMs > 0 { interval = .milliseconds(Int(reply.intervalMs)) }
                fenceAfter = reply.fenceAfterMs > 0 ? .milliseconds(Int(reply.fenceAfterMs)) : nil
                if failing { logger.notice("heartbeats reach the controller again") }
                failing = false
            } catch {
                let firstFailure = !failing
                if firstFailure { logger.warning("heartbeat failed", metadata: ["controller": "\(options.controller)", "error": "\(error)"]) }
                failing = true
                await client?.close()
                client = nil
                // Once at once, on a new connection: the lease runs on from the last beat answered.
                if firstFailure { continue }
            }
            try? await Task.sleep(for: interval)
        }
        await client?.close()
    }

    /// How long a heartbeat waits for its answer. The beat after the last one answered goes an
    /// interval later; if it is lost, the client gives up this deadline plus its 1 s grace
    /// (`WireClient`) later and the beat goes again at once, on a new connection. Half of what
    /// the lease leaves after that interval and grace: the retry comes with half the lease to
    /// spare, so a cut shorter than half of `fenceAfter` never fences. At least 0.5 s, at most 5 s.
    static func heartbeatDeadline(interval: Duration, fenceAfter: Duration?) -> Duration {
        let cap = Duration.seconds(5)
        guard let fenceAfter else { return cap }
        return min(cap, max(.milliseconds(500), (fenceAfter - interval - .seconds(1)) / 2))
    }

    /// The lease the reply renews (Docs/ha.md). The renewal is written at once; deleting the
    /// stale copies of VPSs failed over away from this node, then starting the HA VPSs fenced
    /// during a lapse that are still its own, runs beside the heartbeats (a start takes seconds,
    /// and heartbeats must go on meanwhile), one such round at a time.
    func lease(_ reply: Berth_V1_HeartbeatReply, sentAt: UInt64) async {
        guard reply.fenceAfterMs > 0 else { return }
        do {
            if try await manager.renewLease(epoch: reply.leaseEpoch, sentAt: sentAt, fenceAfterMs: reply.fenceAfterMs) {
                logger.warning("the node's lease epoch rose: VPSs were failed over away from this node", metadata: ["epoch": "\(reply.leaseEpoch)"])
            }
        } catch {
            logger.error("cannot write the node's lease", metadata: ["error": "\(error)"])
            return
        }
        let superseded = reply.superseded, dropped = reply.droppedReplicas
        let manager = self.manager
        leaseWork.withLock { running in
            if let running, !running.isFinished { return }
            running = LeaseWork {
                if !superseded.isEmpty { _ = await manager.dropSuperseded(superseded) }
                if !dropped.isEmpty { await manager.dropReplicas(dropped) }
                await manager.restartFenced(except: Set(superseded))
            }
        }
    }

    /// Certificate rotation without downtime, over the node's current mTLS session:
    /// ```
    /// agent                                          controller
    ///   | REQUEST renew {new public key} ------------->|  caller: node N with N's current serial
    ///   |<- RESPONSE enrolled {new node cert, CA}      |  N's serial := new; old revoked in 2 s
    ///   | DATA/cluster/*.pem replaced as one unit       |
    ///   | listener: new connections get the new cert   |  links to N reconnect, pin the new serial
    ///   | heartbeats reconnect with the new cert  ---->|
    /// ```
    /// VPSs and open sessions are untouched; a failure keeps the old certificate and is retried
    /// at the next heartbeat.
    func renew(_ current: CredentialBundle, over client: WireClient, server: TLSWireServer) async throws -> CredentialBundle {
        let key = ClusterCA.generateKeyPair()
        var request = Berth_V1_Request()
        request.renew.publicKeyPem = key.publicKeyPEM
        request.deadlineMs = 10_000
        let bundle = try nodeBundle(
            try await client.call(request).enrolled, key: key,
            caFingerprint: try ClusterCA.fingerprint(ofPEM: current.caPEM), call: "renew")
        try bundle.replace(directory: directory)
        try server.replaceCredentials(bundle)
        let serial = try bundle.identity().serial
        logger.notice("certificate renewed", metadata: ["node": "\(manager.nodeName)", "serial": "\(serial)"])
        return bundle
    }
}

/// A task that says when it has finished (a `Task` does not).
final class LeaseWork: Sendable {
    private let done = Mutex(false)

    init(_ work: @escaping @Sendable () async -> Void) {
        Task {
            await work()
            self.done.withLock { $0 = true }
        }
    }

    var isFinished: Bool { done.withLock { $0 } }
}
