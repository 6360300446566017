import Foundation
import NIOCore
import NIOPosix
import NIOSSL
import Testing

@testable import Wire
@testable import WireTLS

/// Echoes like EchoService; a status call for "big" answers more than a frame may carry.
struct OversizeService: WireService {
    func handle(_ request: Berth_V1_Request, stream: ServerStream) async throws -> Berth_V1_Response {
        var response = Berth_V1_Response()
        response.status.name = request.status.name == "big" ? String(repeating: "x", count: Frame.defaultMaxPayload + 1) : request.status.name
        return response
    }
}

/// A connection that speaks frames and nothing else, so that a test can break each rule of
/// Docs/wire.md's "Rules for clients" and read exactly what the server answers.
struct RawPeer {
    let channel: NIOAsyncChannel<Frame, Frame>

    static func unix(_ path: String) async throws -> RawPeer {
        RawPeer(
            channel: try await ClientBootstrap(group: MultiThreadedEventLoopGroup.singleton).connect(unixDomainSocketPath: path) { channel in
                channel.eventLoop.makeCompletedFuture { try framing(channel) }
            })
    }

    /// Over TLS with `bundle`'s certificate, offering `alpn` (empty: no ALPN extension at all).
    static func tls(port: Int, bundle: CredentialBundle, alpn: [String]) async throws -> RawPeer {
        let context = try BerthTLS.clientContext(bundle: bundle, applicationProtocols: alpn)
        return RawPeer(
            channel: try await ClientBootstrap(group: MultiThreadedEventLoopGroup.singleton).connect(host: "127.0.0.1", port: port) { channel in
                channel.eventLoop.makeCompletedFuture {
                    try channel.pipeline.syncOperations.addHandler(NIOSSLClientHandler(context: context, serverHostname: nil))
                    return try framing(channel)
                }
            })
    }

    private static func framing(_ channel: Channel) throws -> NIOAsyncChannel<Frame, Frame> {
        try channel.pipeline.syncOperations.addHandler(ByteToMessageHandler(FrameDecoder()))
        try channel.pipeline.syncOperations.addHandler(FrameWriter())
        return try NIOAsyncChannel<Frame, Frame>(wrappingChannelSynchronously: channel)
    }

    static var hello: Frame {
        Frame(type: .hello, stream: 0, payload: ByteBuffer(bytes: (try? Berth_V1_Hello.clientOffer.serializedBytes() as [UInt8]) ?? []))
    }

    static func status(_ name: String, stream: UInt32, flags: UInt8 = 0) -> Frame {
        var request = Berth_V1_Request()
        request.status.name = name
        return Frame(type: .request, flags: flags, stream: stream, payload: ByteBuffer(bytes: (try? request.serializedBytes() as [UInt8]) ?? []))
    }

    /// Bytes written below the frame codec: what no well-formed Frame can say.
    func writeRaw(_ bytes: ByteBuffer) async throws {
        let channel = self.channel.channel
        try await channel.pipeline.context(handlerType: FrameWriter.self).flatMap { context in
            context.writeAndFlush(NIOAny(bytes))
        }.get()
    }

    /// Sends `frames`, then returns every frame the server sends until it closes (or the limit).
    func exchange(_ frames: [Frame], readingAtMost limit: Int = 50) async throws -> [Frame] {
        try await channel.executeThenClose { inbound, outbound in
            // A server that refuses the connection may close it before these are written.
            for frame in frames { try? await outbound.write(frame) }
            var received: [Frame] = []
            for try await frame in inbound {
                received.append(frame)
                if received.count >= limit { break }
            }
            return received
        }
    }

    /// Sends `frames` and returns the frames that answer them, up to and including the one
    /// `until` accepts; the connection stays open for the next exchange.
    func send(
        _ frames: [Frame], until: (Frame) -> Bool,
        _ inbound: inout NIOAsyncChannelInboundStream<Frame>.AsyncIterator,
        _ outbound: NIOAsyncChannelOutboundWriter<Frame>
    ) async throws -> [Frame] {
        for frame in frames { try await outbound.write(frame) }
        var received: [Frame] = []
        while let frame = try await inbound.next() {
            received.append(frame)
            if until(frame) { break }
        }
        return received
    }
}

extension Frame {
    var errorReply: Berth_V1_ErrorReply? {
        type == .error ? try? Berth_V1_ErrorReply(serializedBytes: Array(payload.readableBytesView)) : nil
    }

    /// The connection-level error that ended an exchange, if it was one.
    static func closingError(_ frames: [Frame]) -> (code: String, message: String)? {
        guard let last = frames.last, last.stream == 0, let reply = last.errorReply else { return nil }
        return (reply.code, reply.message)
    }
}

/// Each rule of Docs/wire.md's "Rules for clients": what breaking it costs, the stream or the
/// connection, and with which code.
@Suite(.serialized) struct WireRulesTests {
    func withServer(
        _ service: WireService = EchoService(), helloTimeout: TimeAmount = wireHelloTimeout,
        _ body: (String) async throws -> Void
    ) async throws {
        let dir = FileManager.default.temporaryDirectory.appendingPathComponent("berth-rules-\(getpid())-\(UInt32.random(in: 0...UInt32.max))")
        try FileManager.default.createDirectory(at: dir, withIntermediateDirectories: true)
        defer { try? FileManager.default.removeItem(at: dir) }
        let path = dir.appendingPathComponent("s.sock").path
        let server = try await UnixWireServer.bind(
            path: path, service: service, group: MultiThreadedEventLoopGroup.singleton,
            allowedUIDs: [getuid()], helloTimeout: helloTimeout)
        do { try await body(path) } catch { await server.close(); throw error }
        await server.close()
    }

    /// Frames after a good HELLO that must close the connection, each with its code.
    @Test(arguments: [
        (Frame(type: .credit, stream: 1, payload: ByteBuffer(bytes: [0, 0, 1])), "wire.protocol-violation", "not one u32"),
        (RawPeer.status("web1", stream: 2), "wire.protocol-violation", "odd stream ids"),
        (RawPeer.status("web1", stream: 0), "wire.protocol-violation", "odd stream ids"),
        (RawPeer.hello, "wire.protocol-violation", "a second HELLO"),
        (Frame(type: .response, stream: 1), "wire.protocol-violation", "server to client only"),
        (Frame(type: .progress, stream: 1), "wire.protocol-violation", "server to client only"),
        (Frame(type: .error, stream: 0), "wire.protocol-violation", "server to client only"),
    ])
    func framesThatCloseTheConnection(_ frame: Frame, code: String, says: String) async throws {
        try await withServer { path in
            let frames = try await RawPeer.unix(path).exchange([RawPeer.hello, frame])
            #expect(frames.first?.type == .hello)
            let error = try #require(Frame.closingError(frames))
            #expect(error.code == code)
            #expect(error.message.contains(says), "\(error.message)")
        }
    }

    /// An unknown frame type cannot be skipped safely (its meaning is unknown), so it ends the
    /// connection as a malformed frame; unknown flag bits are ignored.
    @Test func unknownTypesCloseAndUnknownFlagsAreIgnored() async throws {
        try await withServer { path in
            var unknown = ByteBuffer()
            unknown.writeInteger(UInt32(Frame.headerSize))
            unknown.writeInteger(UInt8(12))
            unknown.writeInteger(UInt8(0))
            unknown.writeInteger(UInt32(1))
            let peer = try await RawPeer.unix(path)
            let frames = try await peer.channel.executeThenClose { inbound, outbound in
                var inbound = inbound.makeAsyncIterator()
                let answered = try await peer.send(
                    [RawPeer.hello, RawPeer.status("flagged", stream: 1, flags: 0xff)],
                    until: { $0.type == .response }, &inbound, outbound)
                #expect(answered.last?.type == .response && answered.last?.stream == 1)
                // Below the frame codec: the raw bytes of a frame of type 12.
                try await peer.writeRaw(unknown)
                var rest: [Frame] = []
                while let frame = try await inbound.next() { rest.append(frame) }
                return rest
            }
            #expect(Frame.closingError(frames)?.code == "wire.malformed-frame")
        }
    }

    /// The server's HELLO gives the range it speaks itself and the version chosen, on stream 0.
    @Test func theServersHelloNamesItsOwnRange() async throws {
        try await withServer { path in
            let frames = try await RawPeer.unix(path).exchange([RawPeer.hello], readingAtMost: 1)
            let hello = try #require(frames.first)
            #expect(hello.type == .hello && hello.stream == 0)
            let answer = try Berth_V1_Hello(serializedBytes: Array(hello.payload.readableBytesView))
            #expect(answer.minVersion == wireProtocolVersion && answer.maxVersion == wireProtocolVersion)
            #expect(answer.chosenVersion == wireProtocolVersion && answer.software == wireSoftware)
        }
    }

    @Test func helloMustComeFirstOnStreamZeroAndDecode() async throws {
        try await withServer { path in
            let notFirst = try await RawPeer.unix(path).exchange([RawPeer.status("web1", stream: 1)])
            #expect(Frame.closingError(notFirst)?.code == "wire.protocol-violation")
            #expect(Frame.closingError(notFirst)?.message.contains("not REQUEST") == true)
            let garbled = try await RawPeer.unix(path).exchange([Frame(type: .hello, stream: 0, payload: ByteBuffer(bytes: [0xff, 0xff]))])
            #expect(Frame.closingError(garbled)?.code == "wire.malformed-frame")
            var onStream = RawPeer.hello
            onStream.stream = 1
            let misplaced = try await RawPeer.unix(path).exchange([onStream])
            #expect(Frame.closingError(misplaced)?.code == "wire.protocol-violation")
        }
    }

    /// Mistakes inside one call fail that call alone: the connection goes on serving.
    @Test func badRequestsFailTheirStreamOnly() async throws {
        try await withServer { path in
            let peer = try await RawPeer.unix(path)
            try await peer.channel.executeThenClose { inbound, outbound in
                var inbound = inbound.makeAsyncIterator()
                _ = try await peer.send([RawPeer.hello], until: { $0.type == .hello }, &inbound, outbound)
                let garbled = try await peer.send(
                    [Frame(type: .request, stream: 1, payload: ByteBuffer(bytes: [0xff, 0xff]))],
                    until: { $0.type == .error }, &inbound, outbound)
                #expect(garbled.last?.stream == 1 && garbled.last?.errorReply?.code == "wire.malformed-frame")
                let empty = try await peer.send([Frame(type: .request, stream: 3)], until: { $0.type == .error }, &inbound, outbound)
                #expect(empty.last?.stream == 3 && empty.last?.errorReply?.code == "invalid-argument")
                #expect(empty.last?.errorReply?.field == "call")
                let fine = try await peer.send([RawPeer.status("web1", stream: 5)], until: { $0.type == .response }, &inbound, outbound)
                #expect(fine.last?.stream == 5)
            }
        }
    }

    /// A REQUEST on a stream whose call is still open closes the connection.
    @Test func reusingAnOpenStreamClosesTheConnection() async throws {
        try await withServer { path in
            let frames = try await RawPeer.unix(path).exchange([RawPeer.hello, RawPeer.status("slow", stream: 1), RawPeer.status("web1", stream: 1)])
            #expect(Frame.closingError(frames)?.code == "wire.protocol-violation")
            #expect(Frame.closingError(frames)?.message.contains("still open") == true)
        }
    }

    /// PONG goes back on the PING's stream with its bytes, whichever stream that is.
    @Test func pingIsAnsweredOnItsStream() async throws {
        try await withServer { path in
            let peer = try await RawPeer.unix(path)
            try await peer.channel.executeThenClose { inbound, outbound in
                var inbound = inbound.makeAsyncIterator()
                _ = try await peer.send([RawPeer.hello], until: { $0.type == .hello }, &inbound, outbound)
                for stream: UInt32 in [0, 7] {
                    let answer = try await peer.send(
                        [Frame(type: .ping, stream: stream, payload: ByteBuffer(bytes: [1, 2, 3]))],
                        until: { $0.type == .pong }, &inbound, outbound)
                    #expect(answer.last?.stream == stream)
                    #expect(answer.last.map { Array($0.payload.readableBytesView) } == [1, 2, 3])
                }
            }
        }
    }

    /// DATA on a call that reads no input is counted against its credit and dropped; DATA for
    /// a stream with no open call is dropped uncounted. Neither costs the connection.
    @Test func inputNobodyReadsIsDropped() async throws {
        try await withServer { path in
            let peer = try await RawPeer.unix(path)
            try await peer.channel.executeThenClose { inbound, outbound in
                var inbound = inbound.makeAsyncIterator()
                _ = try await peer.send([RawPeer.hello], until: { $0.type == .hello }, &inbound, outbound)
                let data = Frame(type: .data, stream: 1, payload: ByteBuffer(bytes: [0] + Array(repeating: 7, count: 1000)))
                let answered = try await peer.send(
                    [RawPeer.status("web1", stream: 1), data, Frame(type: .end, stream: 1, payload: ByteBuffer(bytes: [0]))],
                    until: { $0.type == .response }, &inbound, outbound)
                #expect(answered.last?.stream == 1)
                var stray = data
                stray.stream = 9
                let pong = try await peer.send([stray, Frame(type: .ping, stream: 0)], until: { $0.type == .pong }, &inbound, outbound)
                // The stray DATA cost nothing: the next thing the server sends is the PONG.
                #expect(pong.map(\.type) == [.pong])
            }
        }
    }

    /// A frame announced larger than 4 MiB ends the connection before it is buffered; a
    /// response that would exceed it fails its stream only.
    @Test func frameSizeLimitsBothWays() async throws {
        try await withServer(OversizeService()) { path in
            let peer = try await RawPeer.unix(path)
            try await peer.channel.executeThenClose { inbound, outbound in
                var inbound = inbound.makeAsyncIterator()
                _ = try await peer.send([RawPeer.hello], until: { $0.type == .hello }, &inbound, outbound)
                let big = try await peer.send([RawPeer.status("big", stream: 1)], until: { $0.type == .error || $0.type == .response }, &inbound, outbound)
                #expect(big.last?.stream == 1 && big.last?.errorReply?.code == "wire.frame-too-large")
                let next = try await peer.send([RawPeer.status("web1", stream: 3)], until: { $0.type == .response }, &inbound, outbound)
                #expect(next.last?.stream == 3)
                var header = ByteBuffer()
                header.writeInteger(UInt32(Frame.headerSize + Frame.defaultMaxPayload + 1))
                header.writeInteger(FrameType.data.rawValue)
                header.writeInteger(UInt8(0))
                header.writeInteger(UInt32(3))
                try await peer.writeRaw(header)
                var rest: [Frame] = []
                while let frame = try await inbound.next() { rest.append(frame) }
                #expect(Frame.closingError(rest)?.code == "wire.frame-too-large")
            }
        }
    }

    /// A client that never says HELLO is closed at the HELLO limit, told why.
    @Test(.timeLimit(.minutes(1))) func aSilentClientIsClosedAtTheHelloLimit() async throws {
        try await withServer(helloTimeout: .milliseconds(300)) { path in
            let frames = try await RawPeer.unix(path).exchange([])
            #expect(Frame.closingError(frames)?.code == "wire.protocol-violation")
            #expect(Frame.closingError(frames)?.message.contains("no HELLO") == true)
        }
    }
}

/// The TLS side of the rules: ALPN, the connection cap, revocation and idle closes say why.
@Suite(.serialized) struct TLSRulesTests {
    func withServer(
        registry: PeerRegistry = PeerRegistry(), limits: TLSServerLimits = TLSServerLimits(),
        _ body: (Int, TLSWireServer, ClusterCA) async throws -> Void
    ) async throws {
        let dir = try TLSTests.temporaryDirectory()
        defer { try? FileManager.default.removeItem(atPath: dir) }
        let ca = try ClusterCA.create(directory: dir)
        let server = try await TLSWireServer.bind(
            host: "127.0.0.1", port: 0, service: WhoAmIService(),
            bundle: try ca.issueBundle(role: .controller, name: "controller", hosts: ["127.0.0.1"]),
            group: MultiThreadedEventLoopGroup.singleton, registry: registry,
            allowAnonymous: true, limits: limits)
        do { try await body(server.port, server, ca) } catch { await server.close(); throw error }
        await server.close()
    }

    /// Only berth/1 (and berth-enroll/1) are spoken: no ALPN or another protocol is refused
    /// before any frame is read, even with a good certificate.
    @Test(arguments: [[], ["h2"], ["http/1.1"]])
    func otherALPNOffersAreRefused(_ alpn: [String]) async throws {
        try await withServer { port, _, ca in
            let peer = try await RawPeer.tls(port: port, bundle: try ca.issueBundle(role: .admin, name: "ann"), alpn: alpn)
            let frames = try await peer.exchange([RawPeer.hello])
            #expect(Frame.closingError(frames)?.code == "wire.protocol-violation")
            #expect(Frame.closingError(frames)?.message.contains("ALPN") == true)
        }
    }

    @Test func berthALPNWithACertificateIsServed() async throws {
        try await withServer { port, _, ca in
            let peer = try await RawPeer.tls(port: port, bundle: try ca.issueBundle(role: .admin, name: "ann"), alpn: ["berth/1"])
            let frames = try await peer.exchange([RawPeer.hello, RawPeer.status("x", stream: 1)], readingAtMost: 2)
            #expect(frames.map(\.type) == [.hello, .response])
        }
    }

    @Test func connectionsBeyondTheCapPerCertificateAreRefused() async throws {
        try await withServer(registry: PeerRegistry(maxConnectionsPerPeer: 2)) { port, _, ca in
            let bundle = try ca.issueBundle(role: .operator_, name: "olga")
            let group = MultiThreadedEventLoopGroup.singleton
            let first = try await WireClient.connect(host: "127.0.0.1", port: port, bundle: bundle, group: group)
            let second = try await WireClient.connect(host: "127.0.0.1", port: port, bundle: bundle, group: group)
            let third = try await RawPeer.tls(port: port, bundle: bundle, alpn: ["berth/1"]).exchange([RawPeer.hello])
            #expect(Frame.closingError(third)?.code == "wire.too-many-connections")
            #expect(try await TLSTests.whoAmI(first) == "operator/olga")
            await first.close()
            await second.close()
        }
    }

    @Test(.timeLimit(.minutes(1))) func revocationClosesWithAnError() async throws {
        try await withServer { port, server, ca in
            let bundle = try ca.issueBundle(role: .operator_, name: "olga")
            let peer = try await RawPeer.tls(port: port, bundle: bundle, alpn: ["berth/1"])
            let frames = try await peer.channel.executeThenClose { inbound, outbound in
                var inbound = inbound.makeAsyncIterator()
                _ = try await peer.send([RawPeer.hello], until: { $0.type == .hello }, &inbound, outbound)
                server.registry.revoke([try bundle.identity().serial])
                var rest: [Frame] = []
                while let frame = try await inbound.next() { rest.append(frame) }
                return rest
            }
            #expect(Frame.closingError(frames)?.code == "unauthenticated")
            #expect(Frame.closingError(frames)?.message.contains("revoked") == true)
        }
    }

    @Test(.timeLimit(.minutes(1))) func idleConnectionsCloseWithAnError() async throws {
        try await withServer(limits: TLSServerLimits(idle: .milliseconds(300))) { port, _, ca in
            let peer = try await RawPeer.tls(port: port, bundle: try ca.issueBundle(role: .viewer, name: "vera"), alpn: ["berth/1"])
            let frames = try await peer.exchange([RawPeer.hello])
            #expect(frames.first?.type == .hello)
            #expect(Frame.closingError(frames)?.code == "unavailable")
            #expect(Frame.closingError(frames)?.message.contains("idle") == true)
        }
    }
}
