import NIOCore
import NIOPosix
import SwiftProtobuf

/// What arrives on a client call's stream.
public enum ClientEvent: Sendable {
    case data(Frame.Channel, ByteBuffer)
    case end(Frame.Channel)
    case progress(Berth_V1_Progress)
    case response(Berth_V1_Response)
    case failure(WireError)
}

/// One call in flight: its events, and the input side for exec/console streams.
public final class ClientCall: @unchecked Sendable {
    public let id: UInt32
    /// What the server sends; taking DATA returns its credit to the server.
    public let events: CreditedStream<ClientEvent>
    let continuation: AsyncStream<ClientEvent>.Continuation
    let channel: Channel
    /// Ends the call here when its deadline passed without an answer (event-loop confined).
    var deadlineTask: Scheduled<Void>?
    /// Event-loop confined.
    let sendWindow: SendWindow
    let receiveWindow = ReceiveWindow()

    init(id: UInt32, channel: Channel) {
        self.id = id
        self.channel = channel
        sendWindow = SendWindow(channel: channel, stream: id)
        (events, continuation) = CreditedStream.make(stream: id, channel: channel, window: receiveWindow) { event in
            if case .data(_, let bytes) = event { return bytes.readableBytes + 1 }
            return 0
        }
    }

    /// Sends stream bytes; the future completes once the server's credit let them out.
    public func send(_ channelNumber: Frame.Channel, _ bytes: [UInt8]) -> EventLoopFuture<Void> {
        send(channelNumber, channel.allocator.buffer(bytes: bytes))
    }

    /// As above, for bytes already in a buffer (no copy on the way out).
    public func send(_ channelNumber: Frame.Channel, _ buffer: ByteBuffer) -> EventLoopFuture<Void> {
        let promise = channel.eventLoop.makePromise(of: Void.self)
        channel.eventLoop.execute { self.sendWindow.send(channelNumber.rawValue, buffer, promise: promise) }
        return promise.futureResult
    }

    /// As above, failing with `unavailable` when the peer's credit has not let the bytes out
    /// within `limit`: a peer gone silent (a cut link, a frozen host) would otherwise hold the
    /// sender until TCP gives up, many minutes later.
    public func send(_ channelNumber: Frame.Channel, _ buffer: ByteBuffer, within limit: TimeAmount, peer: String) -> EventLoopFuture<Void> {
        let loop = channel.eventLoop
        let guarded = loop.makePromise(of: Void.self)
        let timer = loop.scheduleTask(in: limit) {
            guarded.fail(WireError(.unavailable, "\(peer) took no data for \(spoken(limit)) (is the link to it down?)"))
        }
        // Both completions run on the loop; the later one is ignored.
        send(channelNumber, buffer).whenComplete { result in
            timer.cancel()
            guarded.completeWith(result)
        }
        return guarded.futureResult
    }

    /// END on the channel, after the bytes sent before it.
    public func sendEnd(_ channelNumber: Frame.Channel) {
        channel.eventLoop.execute { self.sendWindow.sendEnd(channelNumber.rawValue, promise: nil) }
    }

    public func cancel() {
        channel.writeAndFlush(Frame(type: .cancel, stream: id), promise: nil)
    }

    /// As `result`, failing with `unavailable` when the answer has not come within `limit`.
    public func result(within limit: TimeAmount, from peer: String, onProgress: (Berth_V1_Progress) -> Void = { _ in }) async throws -> Berth_V1_Response {
        let continuation = self.continuation
        let timer = channel.eventLoop.scheduleTask(in: limit) {
            continuation.yield(.failure(WireError(.unavailable, "\(peer) did not answer within \(spoken(limit)) (is the link to it down?)")))
        }
        defer { timer.cancel() }
        return try await result(onProgress: onProgress)
    }

    /// Waits for the final response, passing progress to `onProgress`; stream bytes are dropped.
    public func result(onProgress: (Berth_V1_Progress) -> Void = { _ in }) async throws -> Berth_V1_Response {
        for await event in events {
            switch event {
            case .response(let response): return response
            case .failure(let error): throw error
            case .progress(let progress): onProgress(progress)
            case .data, .end: continue
            }
        }
        throw WireError(.unavailable, "the connection to the agent closed before the call finished")
    }
}

/// A request/response call: one promise for the answer and nothing else (no stream, no credit).
final class UnaryCall: @unchecked Sendable {
    let answer: EventLoopPromise<Berth_V1_Response>
    /// Event-loop confined: 0 until the request is on its way.
    var id: UInt32 = 0
    var cancelled = false
    var deadlineTask: Scheduled<Void>?

    init(answer: EventLoopPromise<Berth_V1_Response>) { self.answer = answer }
}

final class WireClientHandler: ChannelInboundHandler, @unchecked Sendable {
    typealias InboundIn = Frame
    var calls: [UInt32: ClientCall] = [:]
    var unaryCalls: [UInt32: UnaryCall] = [:]
    var hello: EventLoopPromise<Berth_V1_Hello>?

    func channelRead(context: ChannelHandlerContext, data: NIOAny) {
        let frame = unwrapInboundIn(data)
        if frame.type == .ping {
            // Either side may PING (Docs/wire.md); the answer goes back on the PING's stream.
            context.writeAndFlush(NIOAny(Frame(type: .pong, stream: frame.stream, payload: frame.payload)), promise: nil)
            return
        }
        if let unary = unaryCalls[frame.stream] {
            // Progress, stream bytes and credit have no taker on a unary call.
            switch frame.type {
            case .response:
                finishUnary(frame.stream)
                do throws(WireError) { unary.answer.succeed(try frame.serverResponse()) } catch { unary.answer.fail(error) }
            case .error:
                finishUnary(frame.stream)
                unary.answer.fail(frame.serverError)
            default:
                break
            }
            return
        }
        let bytes = Array(frame.payload.readableBytesView)
        if frame.stream == 0 {
            switch frame.type {
            case .hello:
                if let message = try? Berth_V1_Hello(serializedBytes: bytes) {
                    hello?.succeed(message)
                } else {
                    hello?.fail(WireError(.malformedFrame, "malformed HELLO from the server"))
                }
                hello = nil
            case .error:
                let error = frame.serverError
                hello?.fail(error)
                hello = nil
                failAll(error)
            default: break
            }
            return
        }
        guard let call = calls[frame.stream] else { return }
        switch frame.type {
        case .data, .end:
            if frame.type == .data && !call.receiveWindow.received(frame.payload.readableBytes) {
                failAll(WireError(.protocolViolation, "the server sent DATA on stream \(frame.stream) beyond the credit given"))
                context.close(promise: nil)
                return
            }
            var payload = frame.payload
            guard let raw = payload.readInteger(as: UInt8.self), let ch = Frame.Channel(rawValue: raw) else { return }
            call.continuation.yield(frame.type == .data ? .data(ch, payload) : .end(ch))
        case .progress:
            if let p = try? Berth_V1_Progress(serializedBytes: bytes) { call.continuation.yield(.progress(p)) }
        case .response:
            do throws(WireError) {
                call.continuation.yield(.response(try frame.serverResponse()))
            } catch {
                call.continuation.yield(.failure(error))
            }
            finish(frame.stream)
        case .error:
            call.continuation.yield(.failure(frame.serverError))
            finish(frame.stream)
        case .credit:
            guard let credit = frame.creditIncrement, call.sendWindow.grant(credit) else {
                failAll(WireError(.protocolViolation, "the server sent a malformed or overflowing CREDIT on stream \(frame.stream)"))
                context.close(promise: nil)
                return
            }
        default: break
        }
    }

    func finish(_ id: UInt32) {
        calls[id]?.deadlineTask?.cancel()
        calls[id]?.sendWindow.fail(WireError(.cancelled, "the call has finished"))
        calls[id]?.continuation.finish()
        calls[id] = nil
    }

    func finishUnary(_ id: UInt32) {
        unaryCalls[id]?.deadlineTask?.cancel()
        unaryCalls[id] = nil
    }

    func failAll(_ error: WireError) {
        let unary = unaryCalls.values
        unaryCalls.removeAll()
        for call in unary {
            call.deadlineTask?.cancel()
            call.answer.fail(error)
        }
        for call in calls.values {
            call.deadlineTask?.cancel()
            call.sendWindow.fail(error)
            call.continuation.yield(.failure(error))
            call.continuation.finish()
        }
        calls.removeAll()
    }

    func channelInactive(context: ChannelHandlerContext) {
        hello?.fail(WireError(.unavailable, "the server closed the connection"))
        hello = nil
        failAll(WireError(.unavailable, "the connection to the server was closed"))
    }

    func errorCaught(context: ChannelHandlerContext, error: Error) {
        let wire = (error as? WireError) ?? WireError(.unavailable, "connection error: \(error)")
        hello?.fail(wire)
        hello = nil
        failAll(wire)
        context.close(promise: nil)
    }
}

/// A time limit in an error message: whole seconds, or milliseconds below one.
func spoken(_ limit: TimeAmount) -> String {
    limit.nanoseconds % 1_000_000_000 == 0 ? "\(limit.nanoseconds / 1_000_000_000) s" : "\(limit.nanoseconds / 1_000_000) ms"
}

/// A client connection. Calls are multiplexed: each gets an odd stream id.
public final class WireClient: @unchecked Sendable {
    package let channel: Channel
    let handler: WireClientHandler
    var nextStream: UInt32 = 1
    public let serverSoftware: String

    public static func connect(unixPath: String, group: EventLoopGroup) async throws -> WireClient {
        let channel: Channel
        do {
            channel = try await ClientBootstrap(group: group).connect(unixDomainSocketPath: unixPath).get()
        } catch {
            throw WireError(.unavailable, "cannot reach the agent at \(unixPath): \(error) (is berth-agent running?)")
        }
        return try await handshake(channel: channel)
    }

    /// Installs the frame codec on a connected channel (TLS already below it, if any) and
    /// exchanges HELLOs.
    package static func handshake(channel: Channel) async throws -> WireClient {
        let handler = WireClientHandler()
        let promise = channel.eventLoop.makePromise(of: Berth_V1_Hello.self)
        do {
            try await channel.eventLoop.submit {
                try channel.pipeline.syncOperations.addHandler(ByteToMessageHandler(FrameDecoder()))
                try channel.pipeline.syncOperations.addHandler(FrameWriter())
                try channel.pipeline.syncOperations.addHandler(handler)
                handler.hello = promise
                let payload = ByteBuffer(bytes: try Berth_V1_Hello.clientOffer.serializedBytes() as [UInt8])
                channel.writeAndFlush(Frame(type: .hello, stream: 0, payload: payload), promise: nil)
            }.get()
        } catch {
            // The channel may close before the codec is in (a TLS handshake the server refused):
            // the HELLO promise must still be completed.
            // The caller gets the typed error every other refusal gives, not NIO's.
            let wire = (error as? WireError) ?? WireError(.unavailable, "the server closed the connection during the handshake: \(error)")
            promise.fail(wire)
            try? await channel.close().get()
            throw wire
        }
        // A server that accepts but never answers HELLO must not hang the client.
        let helloTimeout = channel.eventLoop.scheduleTask(in: .seconds(10)) {
            guard let pending = handler.hello else { return }
            handler.hello = nil
            pending.fail(WireError(.deadlineExceeded, "the server did not answer HELLO within 10 s"))
            channel.close(promise: nil)
        }
        defer { helloTimeout.cancel() }
        do {
            let answer = try await promise.futureResult.get()
            return WireClient(channel: channel, handler: handler, serverSoftware: answer.software, peerIdentity: nil)
        } catch {
            try? await channel.close().get()
            throw error
        }
    }

    let coalescer: FlushCoalescer

    init(channel: Channel, handler: WireClientHandler, serverSoftware: String, peerIdentity: CertificateIdentity?) {
        self.coalescer = FlushCoalescer(channel: channel)
        self.executor = EventLoopTaskExecutor(eventLoop: channel.eventLoop)
        self.channel = channel
        self.handler = handler
        self.serverSoftware = serverSoftware
        self.peerIdentity = peerIdentity
    }

    /// The server's verified certificate identity (TLS connections only).
    public package(set) var peerIdentity: CertificateIdentity?

    public var isActive: Bool { channel.isActive }

    /// Runs tasks on this connection's event loop: a caller that makes many calls in a row
    /// (`withTaskExecutorPreference(client.executor) { … }`) is then resumed by each answer on
    /// the thread that read it, with no hop to the cooperative pool and back.
    public let executor: EventLoopTaskExecutor

    /// Starts a call; events (progress, stream bytes, the final response) arrive on the result.
    public func start(_ request: Berth_V1_Request) async throws -> ClientCall {
        let payload = ByteBuffer(bytes: try request.serializedBytes() as [UInt8])
        return try await channel.eventLoop.submit { () -> ClientCall in
            // A connection that closed before this call would never deliver its answer.
            guard self.channel.isActive else { throw WireError(.unavailable, "the connection to the server was closed") }
            let id = self.nextStream
            self.nextStream &+= 2
            let call = ClientCall(id: id, channel: self.channel)
            self.handler.calls[id] = call
            if request.deadlineMs > 0 {
                // The server answers a passed deadline with a typed error. A connection that
                // stalls (a peer gone without a reset, a stale neighbour entry) never delivers
                // it: a second later the call ends here, and the server is told to cancel.
                let handler = self.handler
                call.deadlineTask = self.channel.eventLoop.scheduleTask(in: .milliseconds(Int64(request.deadlineMs) + 1000)) {
                    guard handler.calls[id] === call else { return }
                    call.continuation.yield(.failure(WireError(.deadlineExceeded, "no answer from the server within \(request.deadlineMs) ms")))
                    handler.finish(id)
                    call.cancel()
                }
            }
            let written = self.channel.eventLoop.makePromise(of: Void.self)
            self.coalescer.write(Frame(type: .request, stream: id, payload: payload), promise: written)
            written.futureResult.whenFailure { error in
                self.handler.calls[id]?.continuation.yield(.failure(WireError(.unavailable, "cannot send the request: \(error)")))
                self.handler.finish(id)
            }
            return call
        }.get()
    }

    /// A call whose progress the caller follows; the stream's bytes are dropped.
    public func call(_ request: Berth_V1_Request, onProgress: (Berth_V1_Progress) -> Void) async throws -> Berth_V1_Response {
        try await start(request).result(onProgress: onProgress)
    }

    /// A request and its response. Unlike `start`, nothing waits for the event loop to register
    /// the call, and no stream or credit state is made: one hop to the loop, one promise back.
    public func call(_ request: Berth_V1_Request) async throws -> Berth_V1_Response {
        let payload = ByteBuffer(bytes: try request.serializedBytes() as [UInt8])
        let call = UnaryCall(answer: channel.eventLoop.makePromise(of: Berth_V1_Response.self))
        let loop = channel.eventLoop
        return try await withTaskCancellationHandler {
            loop.execute { self.send(call, payload: payload, deadlineMs: request.deadlineMs) }
            return try await call.answer.futureResult.get()
        } onCancel: {
            loop.execute {
                call.cancelled = true
                self.abandon(call, WireError(.cancelled, "the call was cancelled"))
            }
        }
    }

    /// Ends a unary call here with `error` and tells the server to stop its work (event-loop
    /// confined; a call already answered or not yet sent is left alone).
    private func abandon(_ call: UnaryCall, _ error: WireError) {
        guard call.id != 0, handler.unaryCalls[call.id] === call else { return }
        handler.finishUnary(call.id)
        call.answer.fail(error)
        channel.writeAndFlush(Frame(type: .cancel, stream: call.id), promise: nil)
    }

    /// Event-loop confined.
    private func send(_ call: UnaryCall, payload: ByteBuffer, deadlineMs: UInt32) {
        guard !call.cancelled else { return call.answer.fail(WireError(.cancelled, "the call was cancelled")) }
        guard channel.isActive else { return call.answer.fail(WireError(.unavailable, "the connection to the server was closed")) }
        let id = nextStream
        nextStream &+= 2
        call.id = id
        handler.unaryCalls[id] = call
        if deadlineMs > 0 {
            // As for streamed calls: a stalled connection never delivers the server's
            // deadline error, so a second later the call ends here and the server is told.
            call.deadlineTask = channel.eventLoop.scheduleTask(in: .milliseconds(Int64(deadlineMs) + 1000)) {
                self.abandon(call, WireError(.deadlineExceeded, "no answer from the server within \(deadlineMs) ms"))
            }
        }
        let written = channel.eventLoop.makePromise(of: Void.self)
        coalescer.write(Frame(type: .request, stream: id, payload: payload), promise: written)
        written.futureResult.whenFailure { error in
            guard self.handler.unaryCalls[id] === call else { return }
            self.handler.finishUnary(id)
            call.answer.fail(WireError(.unavailable, "cannot send the request: \(error)"))
        }
    }

    public func close() async {
        try? await channel.close().get()
    }
}
