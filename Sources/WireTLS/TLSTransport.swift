import BerthCore
import Foundation
import NIOConcurrencyHelpers
import NIOCore
import NIOPosix
import NIOSSL
import NIOTLS
import Wire
import X509

/// TLS settings shared by every Berth endpoint: TLS 1.3 only, P-256 certificates from the
/// cluster CA, the peer verified against that CA alone (never the system trust store).
enum BerthTLS {
    /// ALPN names: every connection speaks `berth/1`; only a client that asks for
    /// `berth-enroll/1` may go without a certificate, and then only to enrol.
    static let protocolName = "berth/1"
    static let enrolProtocolName = "berth-enroll/1"

    /// The one ALPN rule of a Berth server: `berth/1` with a certificate, `berth-enroll/1` with or
    /// without one; anything else (none, `h2`, ...) is refused, so that no other protocol's
    /// client is ever read as Berth frames.
    static func alpnRefusal(negotiated: String?, identity: PeerIdentity) -> WireError? {
        switch negotiated {
        case protocolName?:
            guard identity == .anonymous else { return nil }
            return WireError(.unauthenticated, "a client certificate from the cluster CA is required (connections without one may only enrol a node)")
        case enrolProtocolName?:
            return nil
        default:
            return WireError(
                .protocolViolation, "ALPN must be \(protocolName) (or \(enrolProtocolName) to enrol a node); the client offered none that this server speaks")
        }
    }

    static func certificates(_ pem: String, what: String) throws(WireError) -> [NIOSSLCertificate] {
        do {
            let certificates = try NIOSSLCertificate.fromPEMBytes(Array(pem.utf8))
            guard !certificates.isEmpty else { throw WireError(.invalidArgument, "\(what) holds no certificate") }
            return certificates
        } catch let error as WireError {
            throw error
        } catch {
            throw WireError(.invalidArgument, "\(what) is not a PEM certificate: \(error)")
        }
    }

    static func key(_ pem: String) throws(WireError) -> NIOSSLPrivateKey {
        do { return try NIOSSLPrivateKey(bytes: Array(pem.utf8), format: .pem) } catch {
            throw WireError(.invalidArgument, "key.pem is not a PEM private key: \(error)")
        }
    }

    static func serverContext(bundle: CredentialBundle, allowAnonymous: Bool) throws(WireError) -> NIOSSLContext {
        let ca = try certificates(bundle.caPEM, what: "ca.pem")
        // The CA goes out with our leaf so that an enrolling agent, which pins the CA by hash,
        // can check the chain before it holds any certificate of its own.
        let chain = try certificates(bundle.certificatePEM, what: "cert.pem") + ca
        var configuration = TLSConfiguration.makeServerConfiguration(
            certificateChain: chain.map { .certificate($0) }, privateKey: .privateKey(try key(bundle.keyPEM)))
        configuration.minimumTLSVersion = .tlsv13
        configuration.trustRoots = .certificates(ca)
        configuration.certificateVerification = allowAnonymous ? .optionalVerification : .noHostnameVerification
        configuration.applicationProtocols = [protocolName, enrolProtocolName]
        do { return try NIOSSLContext(configuration: configuration) } catch {
            throw WireError(.invalidArgument, "cannot set up TLS from the certificate and key: \(error)")
        }
    }

    /// `applicationProtocols` replaces the ALPN offer (tests of other clients' offers).
    static func clientContext(bundle: CredentialBundle?, applicationProtocols: [String]? = nil) throws(WireError) -> NIOSSLContext {
        var configuration = TLSConfiguration.makeClientConfiguration()
        configuration.minimumTLSVersion = .tlsv13
        configuration.applicationProtocols = applicationProtocols ?? [bundle == nil ? enrolProtocolName : protocolName]
        if let bundle {
            configuration.certificateChain = try certificates(bundle.certificatePEM, what: "cert.pem").map { .certificate($0) }
            configuration.privateKey = .privateKey(try key(bundle.keyPEM))
        }
        if let caPEM = bundle?.caPEM {
            configuration.trustRoots = .certificates(try certificates(caPEM, what: "ca.pem"))
            configuration.certificateVerification = .fullVerification
        } else {
            // Enrolment: the chain is checked by the pinned-CA callback instead.
            configuration.trustRoots = .certificates([])
            configuration.certificateVerification = .noHostnameVerification
        }
        do { return try NIOSSLContext(configuration: configuration) } catch {
            throw WireError(.invalidArgument, "cannot set up TLS from the certificate and key: \(error)")
        }
    }

    /// Accepts a server chain only when it contains the CA whose certificate hashes to
    /// `fingerprint` and the leaf is signed by it and currently valid.
    static func pinnedCAVerifier(fingerprint: String) -> NIOSSLCustomVerificationCallback {
        { chain, promise in
            do {
                let certificates = try chain.map { try Certificate(derEncoded: $0.toDERBytes()) }
                guard let leaf = certificates.first,
                    let ca = certificates.first(where: { ClusterCA.fingerprint(of: $0) == fingerprint }),
                    leaf.issuer == ca.subject, ca.publicKey.isValidSignature(leaf.signature, for: leaf),
                    leaf.notValidBefore <= Date(), Date() <= leaf.notValidAfter
                else {
                    promise.succeed(.failed)
                    return
                }
                promise.succeed(.certificateVerified)
            } catch {
                promise.succeed(.failed)
            }
        }
    }
}

/// Revocation and per-peer connection caps for one TLS server: connections are admitted after
/// the handshake, by certificate serial, and closed at once when their certificate is revoked.
public final class PeerRegistry: Sendable {
    struct State {
        var revoked: Set<String> = []
        var open: [String: [ObjectIdentifier: Channel]] = [:]
        var anonymous = 0
    }
    /// Connections without a certificate (enrolment) at once, across all peers.
    public static let maxAnonymousConnections = 16
    let state = NIOLockedValueBox(State())
    public let maxConnectionsPerPeer: Int

    public init(maxConnectionsPerPeer: Int = 64, revoked: Set<String> = []) {
        self.maxConnectionsPerPeer = maxConnectionsPerPeer
        state.withLockedValue { $0.revoked = revoked }
    }

    public func isRevoked(_ serial: String) -> Bool { state.withLockedValue { $0.revoked.contains(serial) } }

    /// Adds serials to the denylist and closes their open connections, each with an ERROR that
    /// names the certificate.
    public func revoke<Serials: Sequence>(_ serials: Serials) where Serials.Element == String {
        let doomed = state.withLockedValue { state -> [(String, Channel)] in
            var doomed: [(String, Channel)] = []
            for serial in serials {
                state.revoked.insert(serial)
                doomed += state.open.removeValue(forKey: serial)?.values.map { (serial, $0) } ?? []
            }
            return doomed
        }
        for (serial, channel) in doomed {
            closeConnection(channel, with: WireError(.unauthenticated, "certificate \(serial) has been revoked"))
        }
    }

    func admit(_ identity: PeerIdentity, channel: Channel) -> WireError? {
        if identity == .anonymous {
            let admitted = state.withLockedValue { state -> Bool in
                guard state.anonymous < Self.maxAnonymousConnections else { return false }
                state.anonymous += 1
                return true
            }
            guard admitted else { return WireError(.tooManyConnections, "more than \(Self.maxAnonymousConnections) enrolments in progress; retry shortly") }
            channel.closeFuture.whenComplete { [state] _ in state.withLockedValue { $0.anonymous -= 1 } }
            return nil
        }
        guard case .certificate(let certificate) = identity else { return nil }
        let key = ObjectIdentifier(channel)
        let refusal: WireError? = state.withLockedValue { state in
            if state.revoked.contains(certificate.serial) {
                return WireError(.unauthenticated, "certificate \(certificate.serial) (\(certificate.role) \(certificate.name)) has been revoked")
            }
            if state.open[certificate.serial, default: [:]].count >= maxConnectionsPerPeer {
                return WireError(.tooManyConnections, "more than \(maxConnectionsPerPeer) connections from \(certificate.role) \(certificate.name)")
            }
            state.open[certificate.serial, default: [:]][key] = channel
            return nil
        }
        if refusal == nil {
            channel.closeFuture.whenComplete { [state] _ in
                state.withLockedValue { state in
                    state.open[certificate.serial]?[key] = nil
                    if state.open[certificate.serial]?.isEmpty == true { state.open[certificate.serial] = nil }
                }
            }
        }
        return refusal
    }
}

/// Waits for the TLS handshake, derives the peer's identity from its verified certificate,
/// admits it through the registry and only then installs the frame handlers: no frame is parsed
/// before the peer is known. Closes connections whose handshake takes longer than the limit.
final class TLSAdmissionHandler: ChannelInboundHandler, RemovableChannelHandler {
    typealias InboundIn = NIOAny
    let service: WireService
    let registry: PeerRegistry
    let maxStreams: Int
    let limits: TLSServerLimits
    var timer: Scheduled<Void>?

    init(service: WireService, registry: PeerRegistry, maxStreams: Int, limits: TLSServerLimits) {
        self.service = service
        self.registry = registry
        self.maxStreams = maxStreams
        self.limits = limits
    }

    func handlerAdded(context: ChannelHandlerContext) {
        let channel = context.channel
        timer = context.eventLoop.scheduleTask(in: limits.handshake) { channel.close(promise: nil) }
    }

    func userInboundEventTriggered(context: ChannelHandlerContext, event: Any) {
        guard let tls = event as? TLSUserEvent, case .handshakeCompleted(let negotiated) = tls else {
            context.fireUserInboundEventTriggered(event)
            return
        }
        timer?.cancel()
        let identity: PeerIdentity
        do {
            let handler = try context.pipeline.syncOperations.handler(type: NIOSSLServerHandler.self)
            if let peer = handler.peerCertificate {
                identity = .certificate(try CertificateIdentity(certificate: Certificate(derEncoded: peer.toDERBytes())))
            } else {
                identity = .anonymous
            }
        } catch {
            refuse(context: context, (error as? WireError) ?? WireError(.unauthenticated, "unreadable peer certificate: \(error)"))
            return
        }
        if let refusal = BerthTLS.alpnRefusal(negotiated: negotiated, identity: identity) {
            refuse(context: context, refusal)
            return
        }
        if let refusal = registry.admit(identity, channel: context.channel) {
            refuse(context: context, refusal)
            return
        }
        do {
            try context.pipeline.syncOperations.addHandler(IdleStateHandler(allTimeout: limits.idle), position: .after(self))
            // An enrolling connection makes its one call (enroll) and goes.
            let server = try addWireServerHandlers(
                to: context.pipeline.syncOperations, service: service, peer: identity,
                maxStreams: identity == .anonymous ? 1 : maxStreams, helloTimeout: limits.hello)
            try context.pipeline.syncOperations.addHandler(IdleCloser(server: server, limit: limits.idle))
        } catch {
            context.close(promise: nil)
            return
        }
        context.fireUserInboundEventTriggered(event)
        context.pipeline.syncOperations.removeHandler(context: context, promise: nil)
    }

    /// An ERROR frame on stream 0, written below the (not yet installed) frame encoder.
    private func refuse(context: ChannelHandlerContext, _ error: WireError) {
        var buffer = context.channel.allocator.buffer(capacity: 128)
        FrameParser.write(.error(error, stream: 0), into: &buffer)
        context.writeAndFlush(NIOAny(buffer)).whenComplete { _ in context.close(promise: nil) }
    }
}

/// Closes a connection on which nothing moved either way for the idle limit and no call is
/// open (a quiet exec or console keeps its connection), with an ERROR that says so.
final class IdleCloser: ChannelInboundHandler {
    typealias InboundIn = NIOAny
    let server: WireServerHandler
    let limit: TimeAmount

    init(server: WireServerHandler, limit: TimeAmount) {
        self.server = server
        self.limit = limit
    }

    func userInboundEventTriggered(context: ChannelHandlerContext, event: Any) {
        if let idle = event as? IdleStateHandler.IdleStateEvent, idle == .all {
            if server.openCalls == 0 {
                closeConnection(
                    context.channel,
                    with: WireError(
                        .unavailable, "the server closes connections idle for \(limit.nanoseconds / 1_000_000_000) s with no call open; connect again"))
            }
            return
        }
        context.fireUserInboundEventTriggered(event)
    }
}

/// The time limits of a TLS server's connections (Docs/wire.md, "Limits"); tests shorten them.
public struct TLSServerLimits: Sendable {
    /// From accept to the end of the TLS handshake.
    public var handshake: TimeAmount = .seconds(10)
    /// From the handshake to the client's HELLO.
    public var hello: TimeAmount = wireHelloTimeout
    /// Nothing moved either way and no call open.
    public var idle: TimeAmount = .minutes(5)

    public init(
        handshake: TimeAmount = .seconds(10), hello: TimeAmount = wireHelloTimeout,
        idle: TimeAmount = .minutes(5)
    ) {
        self.handshake = handshake
        self.hello = hello
        self.idle = idle
    }
}

/// A Berth server on TCP + TLS 1.3 with mutual authentication against the cluster CA.
public final class TLSWireServer: Sendable {
    let channel: Channel
    public let registry: PeerRegistry
    /// What new connections get: replaced by `replaceCredentials`, while connections already
    /// established keep the certificate they were made with.
    let context: NIOLockedValueBox<NIOSSLContext>
    let allowAnonymous: Bool

    /// `allowAnonymous` admits peers without a certificate as `.anonymous` (the controller's
    /// enrolment path); the service must refuse them everything else.
    public static func bind(
        host: String, port: Int, service: WireService, bundle: CredentialBundle,
        group: EventLoopGroup, registry: PeerRegistry = PeerRegistry(),
        allowAnonymous: Bool = false, maxStreams: Int = 256,
        limits: TLSServerLimits = TLSServerLimits()
    ) async throws -> TLSWireServer {
        let context = NIOLockedValueBox(try BerthTLS.serverContext(bundle: bundle, allowAnonymous: allowAnonymous))
        let bootstrap = ServerBootstrap(group: group)
            .serverChannelOption(.backlog, value: 256)
            .serverChannelOption(.socketOption(.so_reuseaddr), value: 1)
            .childChannelOption(.socketOption(.tcp_nodelay), value: 1)
            .childChannelInitializer { channel in
                channel.eventLoop.makeCompletedFuture {
                    try channel.pipeline.syncOperations.addHandler(NIOSSLServerHandler(context: context.withLockedValue { $0 }))
                    try channel.pipeline.syncOperations.addHandler(
                        TLSAdmissionHandler(service: service, registry: registry, maxStreams: maxStreams, limits: limits))
                }
            }
        let channel: Channel
        do {
            channel = try await bootstrap.bind(host: host, port: port).get()
        } catch {
            throw WireError(.unavailable, "listen: cannot listen on \(host):\(port): \(error)", field: "listen")
        }
        return TLSWireServer(channel: channel, registry: registry, context: context, allowAnonymous: allowAnonymous)
    }

    init(channel: Channel, registry: PeerRegistry, context: NIOLockedValueBox<NIOSSLContext>, allowAnonymous: Bool) {
        self.channel = channel
        self.registry = registry
        self.context = context
        self.allowAnonymous = allowAnonymous
    }

    /// Certificate rotation without downtime: connections from now on get `bundle`'s
    /// certificate; the open ones go on with theirs.
    public func replaceCredentials(_ bundle: CredentialBundle) throws(WireError) {
        let replacement = try BerthTLS.serverContext(bundle: bundle, allowAnonymous: allowAnonymous)
        context.withLockedValue { $0 = replacement }
    }

    public var port: Int { channel.localAddress?.port ?? 0 }

    public var closeFuture: EventLoopFuture<Void> { channel.closeFuture }

    public func close() async {
        try? await channel.close().get()
    }
}

extension WireClient {
    /// Connects over TLS. With a `bundle`, the client authenticates with its certificate and
    /// checks the server's certificate against the bundle's CA and `host` (IP or DNS SAN). Without
    /// one (enrolment), the server must present a chain with the CA whose hash is `pinnedCA`.
    public static func connect(
        host: String, port: Int, bundle: CredentialBundle?, pinnedCA: String? = nil,
        group: EventLoopGroup, timeout: TimeAmount = .seconds(10)
    ) async throws -> WireClient {
        let context = try BerthTLS.clientContext(bundle: bundle)
        let isAddress = (try? IPAddress(host)) != nil
        let bootstrap = ClientBootstrap(group: group)
            .connectTimeout(timeout)
            .channelOption(.socketOption(.tcp_nodelay), value: 1)
            .channelInitializer { channel in
                channel.eventLoop.makeCompletedFuture {
                    let tls: NIOSSLClientHandler
                    if let pinnedCA {
                        tls = try NIOSSLClientHandler(
                            context: context, serverHostname: nil,
                            customVerificationCallback: BerthTLS.pinnedCAVerifier(fingerprint: pinnedCA))
                    } else {
                        tls = try NIOSSLClientHandler(context: context, serverHostname: isAddress ? nil : host)
                    }
                    try channel.pipeline.syncOperations.addHandler(tls)
                }
            }
        let channel: Channel
        do {
            channel = try await bootstrap.connect(host: host, port: port).get()
        } catch {
            throw WireError(.unavailable, "cannot reach \(host):\(port): \(error)")
        }
        let client = try await handshake(channel: channel)
        client.peerIdentity =
            try? await channel.eventLoop.submit { () -> CertificateIdentity? in
                guard let tls = try? channel.pipeline.syncOperations.handler(type: NIOSSLClientHandler.self),
                    let peer = tls.peerCertificate, let der = try? peer.toDERBytes(),
                    let certificate = try? Certificate(derEncoded: der)
                else { return nil }
                return try? CertificateIdentity(certificate: certificate)
            }.get() ?? nil
        return client
    }
}
