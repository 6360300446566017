import BerthCore
import Crypto
import Foundation
import Logging
import Synchronization
import Wire
import WireTLS

/// The cluster's certificates as the controller hands them out and takes them back: join tokens,
/// enrolment of nodes, their renewals, rotation (of the controller's own certificate, or asking a
/// node to renew) and revocation.
final class Enrolment: Sendable {
    struct JoinToken: Sendable {
        let text: String
        let expires: Date
    }

    struct IssuedCertificate: Sendable {
        let certificatePEM: String
        let caPEM: String
        let serial: String
    }

    let store: ClusterStore
    let ca: ClusterCA
    let heartbeats: Heartbeats
    let logger: Logger
    /// Set by the server once it listens: takes a new controller certificate for new connections
    /// and agent links, returning the new and the old serial.
    let controllerRotation = Mutex<(@Sendable () async throws -> (new: String, old: String))?>(nil)

    init(store: ClusterStore, ca: ClusterCA, heartbeats: Heartbeats, logger: Logger) {
        self.store = store
        self.ca = ca
        self.heartbeats = heartbeats
        self.logger = logger
    }

    /// A single-use token, valid `ttl` seconds (0: an hour; at most 7 days).
    func joinToken(ttl: UInt32) throws -> JoinToken {
        let seconds = ttl == 0 ? 3600 : ttl
        guard seconds <= 7 * 24 * 3600 else {
            throw WireError(.invalidArgument, "ttl: \(seconds) s is longer than the maximum of 7 days", field: "ttl")
        }
        let token = JoinTokenText.generate(caFingerprint: ca.fingerprint)
        let expires = Date().addingTimeInterval(TimeInterval(seconds))
        try store.addJoinToken(id: token.id, secretHash: token.secretHash, expires: expires)
        return JoinToken(text: token.text, expires: expires)
    }

    /// A node joins with a token: it gets a certificate for its key, and its record (a node that
    /// enrols again under its name keeps its cordon and capacity, and its old certificate stops
    /// working at once).
    func enroll(
        token text: String, node name: String, address: String, labels: [String: String],
        publicKeyPEM: String
    ) throws -> IssuedCertificate {
        let token = try JoinTokenText(parsing: text)
        try Name.validate(name)
        _ = try HostPort(parsing: address, field: "listen")
        guard token.caFingerprint == ca.fingerprint else {
            throw WireError(.unauthenticated, "join: the token was made for another cluster CA")
        }
        guard try store.consumeJoinToken(id: token.id, secretHash: token.secretHash, now: Date()) else {
            throw WireError(
                .unauthenticated, "join: the token is unknown, expired or already used (tokens are single-use: make a new one with `berth node join-token`)")
        }
        let issued = try nodeCertificate(name: name, address: address, publicKeyPEM: publicKeyPEM)
        let previous = try store.node(name)
        if let previous, !previous.certificateSerial.isEmpty, previous.certificateSerial != issued.serial {
            try heartbeats.revoke(previous.certificateSerial)
        }
        try store.saveNode(
            NodeRecord(
                name: name, address: address, labels: labels,
                info: previous?.info ?? NodeReport(), cordoned: previous?.cordoned ?? false,
                certificateSerial: issued.serial))
        heartbeats.enrolled(name, serial: issued.serial)
        try? store.addEvent(kind: "node.enrolled", subject: name, message: "at \(address)")
        logger.notice("node enrolled", metadata: ["node": "\(name)", "address": "\(address)"])
        return issued
    }

    /// A node certificate for `publicKeyPEM` (CN the node, SANs the host of its listen address
    /// and its name), as enrolment and renewal hand it out.
    func nodeCertificate(name: String, address: String, publicKeyPEM: String) throws -> IssuedCertificate {
        let host = try HostPort(parsing: address, field: "listen").host
        let publicKey: P256.Signing.PublicKey
        do { publicKey = try P256.Signing.PublicKey(pemRepresentation: publicKeyPEM) } catch {
            throw WireError(.invalidArgument, "public_key_pem: not a P-256 public key in PEM", field: "public_key_pem")
        }
        let certificate = try ca.issue(role: .node, name: name, publicKey: publicKey, hosts: [host, name])
        let pem: String
        do { pem = try certificate.serializeAsPEM().pemString } catch {
            throw WireError(.internalError, "cannot encode the node certificate: \(error)")
        }
        return IssuedCertificate(certificatePEM: pem, caPEM: ca.certificatePEM, serial: try CertificateIdentity(certificate: certificate).serial)
    }

    /// A node's new certificate for a new key, asked for over its current session (see
    /// ClusterMember.renew). It becomes the node's serial at the first heartbeat made with it.
    func renew(_ identity: CertificateIdentity, publicKeyPEM: String) throws -> IssuedCertificate {
        guard heartbeats.isCurrent(serial: identity.serial, of: identity.name), let node = try store.node(identity.name) else {
            throw WireError(.unauthenticated, "renew: node \(identity.name) is not enrolled with this certificate")
        }
        let issued = try nodeCertificate(name: node.name, address: node.address, publicKeyPEM: publicKeyPEM)
        heartbeats.renewed(node.name, serial: issued.serial)
        logger.notice("node certificate renewed", metadata: ["node": "\(node.name)", "serial": "\(issued.serial)"])
        return issued
    }

    /// Asks `node` to renew at its next heartbeat.
    func requestRenewal(of node: String, by caller: Caller) throws {
        guard try store.node(node) != nil else {
            throw WireError(.notFound, "node: no node named \(node) (see `berth node list`)", field: "node")
        }
        heartbeats.requestRenewal(of: node)
        try? store.addEvent(kind: "node.renew-requested", subject: node, message: "", actor: caller.actor)
    }

    /// The controller takes a new certificate now, for new connections and agent links; returns
    /// its serial.
    func rotateControllerCertificate(by caller: Caller) async throws -> String {
        guard let rotation = controllerRotation.withLock({ $0 }) else {
            throw WireError(.unavailable, "rotate: the controller is not serving yet")
        }
        let (new, old) = try await rotation()
        try? store.addEvent(kind: "controller.certificate-rotated", subject: new, message: "replaces \(old)", actor: caller.actor)
        logger.notice("controller certificate rotated", metadata: ["serial": "\(new)", "old": "\(old)", "by": "\(caller.name)"])
        return new
    }

    /// `ca revoke`: `serialText` in any of the forms Docs/wire.md accepts.
    func revoke(_ serialText: String, by caller: Caller) throws {
        let serial = try CertificateIdentity.canonicalSerial(serialText)
        try heartbeats.revoke(serial)
        try? store.addEvent(kind: "certificate.revoked", subject: serial, message: "revoked", actor: caller.actor)
        logger.notice("certificate revoked", metadata: ["serial": "\(serial)", "by": "\(caller.name)"])
    }
}
