import NIOCore
import NIOPosix
import SwiftProtobuf
import Synchronization

#if canImport(Glibc)
    import Glibc
#endif

/// 2: credit-based flow control of stream bytes (CREDIT frames).
public let wireProtocolVersion: UInt32 = 2
public let wireSoftware = "berth/0.1.0"
/// How long a server keeps a connection that has not sent its HELLO.
public let wireHelloTimeout = TimeAmount.seconds(10)

/// Who is on the other end, as established by the transport (never by a payload field).
public enum PeerIdentity: Sendable, Equatable {
    case unixUser(uid: UInt32, pid: Int32)
    /// A TLS peer whose certificate chains to the cluster CA.
    case certificate(CertificateIdentity)
    /// A TLS peer that presented no certificate: may only enrol with a join token.
    case anonymous
}

/// What a request handler may read from and write to its stream.
public enum StreamInput: Sendable {
    case data(Frame.Channel, ByteBuffer)
    case end(Frame.Channel)
}

public final class ServerStream: @unchecked Sendable {
    public let id: UInt32
    public let peer: PeerIdentity
    let channel: Channel
    let receiveWindow = ReceiveWindow()
    // Most calls are a request and a response: the input stream and the send window are made
    // when first needed (by the handler or by the client's first stream frame), not per call.
    private let inputLock = Mutex<InputState>(InputState())
    private struct InputState {
        var made: (CreditedStream<StreamInput>, AsyncStream<StreamInput>.Continuation)?
        /// Ended before anyone made it: it is made ended.
        var ended = false
    }
    /// Event-loop confined, like the handler that feeds it.
    private var madeSendWindow: SendWindow?

    init(id: UInt32, peer: PeerIdentity, channel: Channel) {
        self.id = id
        self.peer = peer
        self.channel = channel
    }

    /// What the client sends on the stream; taking DATA returns its credit to the client.
    public var input: CreditedStream<StreamInput> { inputPair().0 }
    var continuation: AsyncStream<StreamInput>.Continuation { inputPair().1 }

    private func inputPair() -> (CreditedStream<StreamInput>, AsyncStream<StreamInput>.Continuation) {
        inputLock.withLock { state in
            if let made = state.made { return made }
            let pair = CreditedStream.make(stream: id, channel: channel, window: receiveWindow) { (input: StreamInput) -> Int in
                if case .data(_, let bytes) = input { return bytes.readableBytes + 1 }
                return 0
            }
            if state.ended { pair.1.finish() }
            state.made = pair
            return pair
        }
    }

    /// Ends the input stream: its reader sees it end (as when the connection closes; a
    /// migration receive whose source resumed on a new connection), also one who makes it later.
    public func finishInput() {
        inputLock.withLock { state in
            state.ended = true
            state.made?.1.finish()
        }
    }

    /// Event-loop confined.
    var sendWindow: SendWindow {
        if let madeSendWindow { return madeSendWindow }
        let window = SendWindow(channel: channel, stream: id)
        madeSendWindow = window
        return window
    }

    /// Fails pending and later sends, if anything ever sent (event-loop confined).
    func failSends(_ error: @escaping @autoclosure () -> Error) {
        madeSendWindow?.fail(error())
    }

    /// Sends stream bytes; suspends until the client's credit let them out: a slow client holds
    /// back the producer instead of buffering in the server.
    public func send(_ channelNumber: Frame.Channel, _ bytes: ByteBuffer) async throws {
        let promise = channel.eventLoop.makePromise(of: Void.self)
        channel.eventLoop.execute { self.sendWindow.send(channelNumber.rawValue, bytes, promise: promise) }
        try await promise.futureResult.get()
    }

    public func sendEnd(_ channelNumber: Frame.Channel) async throws {
        let promise = channel.eventLoop.makePromise(of: Void.self)
        channel.eventLoop.execute { self.sendWindow.sendEnd(channelNumber.rawValue, promise: promise) }
        try await promise.futureResult.get()
    }

    /// Also told of every progress step (the controller records them on the operation).
    public var onProgress: (@Sendable (String) -> Void)?

    public func progress(_ step: String, done: UInt64 = 0, total: UInt64 = 0) {
        onProgress?(step)
        var message = Berth_V1_Progress()
        message.step = step
        message.done = done
        message.total = total
        if let payload = try? ByteBuffer(bytes: message.serializedBytes() as [UInt8]) {
            channel.writeAndFlush(Frame(type: .progress, stream: id, payload: payload), promise: nil)
        }
    }
}

public protocol WireService: Sendable {
    func handle(_ request: Berth_V1_Request, stream: ServerStream) async throws -> Berth_V1_Response

    /// Whether the handler of `request` may run on its connection's event loop rather than on
    /// the cooperative pool: the call then costs two thread hops fewer (Benchmarks/cluster.sh
    /// measures both). Only for handlers that never block their thread (no file or database
    /// I/O, no lock held for long): a blocked event loop stalls every connection it serves.
    /// Actor-isolated work inside the handler still runs on its actor.
    func handlesOnEventLoop(_ request: Berth_V1_Request) -> Bool
}

extension WireService {
    public func handlesOnEventLoop(_ request: Berth_V1_Request) -> Bool { false }
}

/// Serves one connection: the hello exchange, then one task per request stream. What a client
/// may send and what each mistake costs (a stream or the connection) is Docs/wire.md's
/// "Rules for clients"; each rule is checked here and nowhere else.
package final class WireServerHandler: ChannelInboundHandler, @unchecked Sendable {
    package typealias InboundIn = Frame
    package typealias OutboundOut = Frame

    let service: WireService
    let peer: PeerIdentity
    let maxStreams: Int
    let helloTimeout: TimeAmount
    var helloTimer: Scheduled<Void>?
    var helloDone = false
    var failed = false
    var streams: [UInt32: (ServerStream, Task<Void, Never>)] = [:]

    /// Calls in progress (read on the event loop).
    package var openCalls: Int { streams.count }
    var flushCoalescer: FlushCoalescer?

    func coalescer(for channel: Channel) -> FlushCoalescer {
        if let flushCoalescer { return flushCoalescer }
        let made = FlushCoalescer(channel: channel)
        flushCoalescer = made
        return made
    }

    /// Where handlers that may run on the event loop run (made at the first such call).
    var loopExecutor: EventLoopTaskExecutor?

    func executor(for channel: Channel) -> EventLoopTaskExecutor {
        if let loopExecutor { return loopExecutor }
        let made = EventLoopTaskExecutor(eventLoop: channel.eventLoop)
        loopExecutor = made
        return made
    }

    init(service: WireService, peer: PeerIdentity, maxStreams: Int, helloTimeout: TimeAmount = wireHelloTimeout) {
        self.service = service
        self.peer = peer
        self.maxStreams = maxStreams
        self.helloTimeout = helloTimeout
    }

    package func handlerAdded(context: ChannelHandlerContext) {
        let limit = helloTimeout
        helloTimer = context.eventLoop.scheduleTask(in: limit) { [self] in
            guard !helloDone else { return }
            fail(context: context, WireError(.protocolViolation, "no HELLO within \(limit.nanoseconds / 1_000_000_000) s of the connection"))
        }
    }

    package func handlerRemoved(context: ChannelHandlerContext) {
        helloTimer?.cancel()
    }

    package func channelRead(context: ChannelHandlerContext, data: NIOAny) {
        let frame = unwrapInboundIn(data)
        // The connection failed and is closing: what the peer sent behind (requests pipelined
        // after a refused HELLO) is dropped, the first error stands.
        if failed { return }
        if !helloDone {
            handleHello(context: context, frame: frame)
            return
        }
        switch frame.type {
        case .request: startRequest(context: context, frame: frame)
        case .data, .end:
            // No open call: late input for a call that has ended (or one never opened). It is
            // dropped and counts against no window, since the stream's window ended with it.
            guard let (stream, _) = streams[frame.stream] else { return }
            if frame.type == .data && !stream.receiveWindow.received(frame.payload.readableBytes) {
                fail(context: context, WireError(.protocolViolation, "DATA on stream \(frame.stream) beyond the credit given"))
                return
            }
            var payload = frame.payload
            guard let raw = payload.readInteger(as: UInt8.self), let ch = Frame.Channel(rawValue: raw) else {
                fail(context: context, WireError(.malformedFrame, "stream frame without a valid channel byte"))
                return
            }
            stream.continuation.yield(frame.type == .data ? .data(ch, payload) : .end(ch))
        case .cancel:
            streams[frame.stream]?.0.failSends(CancellationError())
            streams[frame.stream]?.1.cancel()
        case .credit:
            guard let credit = frame.creditIncrement else {
                fail(
                    context: context,
                    WireError(.protocolViolation, "CREDIT on stream \(frame.stream) carries \(frame.payload.readableBytes) bytes, not one u32"))
                return
            }
            // Credit for a call that already finished is late, not wrong.
            if let (stream, _) = streams[frame.stream], !stream.sendWindow.grant(credit) {
                fail(context: context, WireError(.protocolViolation, "CREDIT on stream \(frame.stream) overflows its window"))
            }
        case .ping:
            context.writeAndFlush(wrapOutboundOut(Frame(type: .pong, stream: frame.stream, payload: frame.payload)), promise: nil)
        case .pong:
            break
        case .hello:
            fail(context: context, WireError(.protocolViolation, "a second HELLO on the connection"))
        case .response, .error, .progress:
            fail(context: context, WireError(.protocolViolation, "\(frame.type) frames go from server to client only"))
        }
    }

    private func handleHello(context: ChannelHandlerContext, frame: Frame) {
        guard frame.type == .hello else {
            fail(context: context, WireError(.protocolViolation, "the first frame must be HELLO, not \(frame.type)"))
            return
        }
        guard frame.stream == 0 else {
            fail(context: context, WireError(.protocolViolation, "HELLO on stream \(frame.stream): it belongs on stream 0"))
            return
        }
        guard let hello = try? Berth_V1_Hello(serializedBytes: Array(frame.payload.readableBytesView)) else {
            fail(context: context, WireError(.malformedFrame, "the HELLO payload is not a valid Hello message"))
            return
        }
        guard hello.minVersion <= wireProtocolVersion && wireProtocolVersion <= hello.maxVersion else {
            fail(
                context: context,
                WireError(
                    .incompatibleVersion, "client speaks wire versions \(hello.minVersion)-\(hello.maxVersion); this server speaks \(wireProtocolVersion)"))
            return
        }
        helloDone = true
        helloTimer?.cancel()
        var answer = Berth_V1_Hello()
        answer.minVersion = wireProtocolVersion
        answer.maxVersion = wireProtocolVersion
        answer.chosenVersion = wireProtocolVersion
        answer.software = wireSoftware
        let payload = ByteBuffer(bytes: (try? answer.serializedBytes() as [UInt8]) ?? [])
        context.writeAndFlush(wrapOutboundOut(Frame(type: .hello, stream: 0, payload: payload)), promise: nil)
    }

    private func startRequest(context: ChannelHandlerContext, frame: Frame) {
        let id = frame.stream
        guard id % 2 == 1 else {
            fail(context: context, WireError(.protocolViolation, "REQUEST on stream \(id): clients open calls on odd stream ids"))
            return
        }
        guard streams[id] == nil else {
            fail(context: context, WireError(.protocolViolation, "REQUEST on stream \(id), whose call is still open"))
            return
        }
        guard streams.count < maxStreams else {
            Self.sendError(context.channel, stream: id, WireError(.tooManyStreams, "more than \(maxStreams) concurrent calls on one connection"))
            return
        }
        let request: Berth_V1_Request
        do {
            request = try Berth_V1_Request(serializedBytes: Array(frame.payload.readableBytesView))
        } catch {
            Self.sendError(context.channel, stream: id, WireError(.malformedFrame, "request body is not a valid Request message"))
            return
        }
        guard request.call != nil else {
            Self.sendError(
                context.channel, stream: id, WireError(.invalidArgument, "the request names no call (is the client newer than this server?)", field: "call"))
            return
        }
        let channel = context.channel
        let stream = ServerStream(id: id, peer: peer, channel: channel)
        let service = self.service
        let coalescer = self.coalescer(for: channel)
        let task = Task(executorPreference: service.handlesOnEventLoop(request) ? executor(for: channel) : nil) {
            let result: Result<Berth_V1_Response, Error>
            do {
                if request.deadlineMs > 0 {
                    result = .success(
                        try await withDeadline(milliseconds: request.deadlineMs) {
                            try await service.handle(request, stream: stream)
                        })
                } else {
                    result = .success(try await service.handle(request, stream: stream))
                }
            } catch {
                result = .failure(error)
            }
            let frame = Self.answer(result, stream: id)
            stream.finishInput()
            // One hop to the event loop for the answer and the bookkeeping.
            channel.eventLoop.execute {
                stream.failSends(WireError(.cancelled, "the call has finished"))
                coalescer.write(frame)
                self.streams[id] = nil
            }
        }
        streams[id] = (stream, task)
    }

    /// The frame that ends a call. No frame the server sends exceeds the payload limit a client
    /// enforces: a response that would is replaced by an error on its stream alone.
    static func answer(_ result: Result<Berth_V1_Response, Error>, stream: UInt32) -> Frame {
        switch result {
        case .success(let response):
            let bytes = (try? response.serializedBytes() as [UInt8]) ?? []
            guard bytes.count <= Frame.defaultMaxPayload else {
                return .error(
                    WireError(
                        .frameTooLarge,
                        "the response of \(bytes.count) bytes exceeds the frame limit of \(Frame.defaultMaxPayload) bytes; ask for less (a selector, a limit)"),
                    stream: stream)
            }
            return Frame(type: .response, stream: stream, payload: ByteBuffer(bytes: bytes))
        case .failure(let error):
            return .error(wireError(from: error), stream: stream)
        }
    }

    package static func wireError(from error: Error) -> WireError {
        if let convertible = error as? WireErrorConvertible { return convertible.wireError }
        if error is CancellationError { return WireError(.cancelled, "the call was cancelled") }
        return WireError(.internalError, "internal error: \(error)")
    }

    static func sendError(_ channel: Channel, stream: UInt32, _ error: WireError) {
        channel.writeAndFlush(Frame.error(error, stream: stream), promise: nil)
    }

    /// A connection-level error: report it on stream 0 and close.
    private func fail(context: ChannelHandlerContext, _ error: WireError) {
        guard !failed else { return }
        failed = true
        context.writeAndFlush(wrapOutboundOut(.error(error, stream: 0))).whenComplete { _ in
            context.close(promise: nil)
        }
    }

    package func errorCaught(context: ChannelHandlerContext, error: Error) {
        fail(context: context, Self.wireError(from: error))
    }

    package func channelInactive(context: ChannelHandlerContext) {
        helloTimer?.cancel()
        for (stream, task) in streams.values {
            stream.finishInput()
            stream.failSends(WireError(.unavailable, "the connection closed"))
            task.cancel()
        }
        streams.removeAll()
        context.fireChannelInactive()
    }
}

/// The frame codec and the request dispatcher, on a connection whose peer is already known.
@discardableResult
package func addWireServerHandlers(
    to pipeline: ChannelPipeline.SynchronousOperations, service: WireService,
    peer: PeerIdentity, maxStreams: Int,
    helloTimeout: TimeAmount = wireHelloTimeout
) throws -> WireServerHandler {
    let handler = WireServerHandler(service: service, peer: peer, maxStreams: maxStreams, helloTimeout: helloTimeout)
    try pipeline.addHandler(ByteToMessageHandler(FrameDecoder()))
    try pipeline.addHandler(FrameWriter())
    try pipeline.addHandler(handler)
    return handler
}

/// Runs `body`, cancelling it and throwing deadline-exceeded once `milliseconds` have passed.
public func withDeadline<T: Sendable>(milliseconds: UInt32, _ body: @escaping @Sendable () async throws -> T) async throws -> T {
    try await withThrowingTaskGroup(of: T.self) { group in
        group.addTask { try await body() }
        group.addTask {
            try await Task.sleep(nanoseconds: UInt64(milliseconds) * 1_000_000)
            throw WireError(.deadlineExceeded, "the call did not finish within its deadline of \(milliseconds) ms")
        }
        defer { group.cancelAll() }
        return try await group.next()!
    }
}

/// A Berth server on a Unix socket: mode 0600, and every peer's uid checked with SO_PEERCRED.
public final class UnixWireServer: @unchecked Sendable {
    public let path: String
    let group: EventLoopGroup
    let channel: Channel

    public static func bind(
        path: String, service: WireService, group: EventLoopGroup,
        allowedUIDs: Set<UInt32> = [0], maxStreams: Int = 256,
        helloTimeout: TimeAmount = wireHelloTimeout
    ) async throws -> UnixWireServer {
        unlink(path)
        let bootstrap = ServerBootstrap(group: group)
            .serverChannelOption(.backlog, value: 256)
            .childChannelInitializer { channel in
                guard let provider = channel as? SocketOptionProvider else { return channel.close() }
                let credentials: EventLoopFuture<PeerCredentials> = provider.unsafeGetSocketOption(level: .socket, name: .init(rawValue: 17 /* SO_PEERCRED */))
                return credentials.flatMap { peer in
                    guard allowedUIDs.contains(peer.uid) else { return channel.close() }
                    return channel.eventLoop.makeCompletedFuture {
                        try addWireServerHandlers(
                            to: channel.pipeline.syncOperations, service: service,
                            peer: .unixUser(uid: peer.uid, pid: peer.pid), maxStreams: maxStreams,
                            helloTimeout: helloTimeout)
                    }
                }
            }
        let channel = try await bootstrap.bind(unixDomainSocketPath: path).get()
        if chmod(path, 0o600) != 0 {
            try? await channel.close().get()
            throw WireError(.kernel, "chmod 0600 \(path) failed", stage: "chmod", errno: errno)
        }
        return UnixWireServer(path: path, group: group, channel: channel)
    }

    init(path: String, group: EventLoopGroup, channel: Channel) {
        self.path = path
        self.group = group
        self.channel = channel
    }

    public func close() async {
        try? await channel.close().get()
        unlink(path)
    }

    public var closeFuture: EventLoopFuture<Void> { channel.closeFuture }
}

/// struct ucred of <sys/socket.h> (hidden behind _GNU_SOURCE in the Glibc module).
struct PeerCredentials {
    var pid: Int32 = 0
    var uid: UInt32 = 0
    var gid: UInt32 = 0
}

/// Ends a connection from outside its frame handlers (revocation, the idle limit): an ERROR on
/// stream 0 that says why, then the close. Safe from any thread.
package func closeConnection(_ channel: Channel, with error: WireError) {
    // Nothing more is read from a peer being shut out, and a peer that does not read cannot hold
    // the close off by leaving the ERROR unwritten: the close comes within a second regardless.
    channel.setOption(ChannelOptions.autoRead, value: false).whenComplete { _ in }
    channel.writeAndFlush(Frame.error(error, stream: 0)).whenComplete { _ in channel.close(promise: nil) }
    channel.eventLoop.scheduleTask(in: .seconds(1)) { channel.close(promise: nil) }
}

extension WireError {
    /// How a thrown error travels on the wire (for services that record errors themselves).
    public static func from(_ error: Error) -> WireError { WireServerHandler.wireError(from: error) }
}
