import Foundation
import NIOCore
import NIOPosix
import Testing

@testable import Wire

/// A service that echoes: status calls return the requested name, exec streams stdin back.
struct EchoService: WireService {
    func handle(_ request: Berth_V1_Request, stream: ServerStream) async throws -> Berth_V1_Response {
        var response = Berth_V1_Response()
        switch request.call {
        case .status(let r):
            if r.name == "missing" { throw WireError(.notFound, "VPS missing does not exist", field: "name") }
            if r.name == "slow" { try await Task.sleep(nanoseconds: 5_000_000_000) }
            stream.progress("looking up", done: 1, total: 1)
            response.status.name = r.name
            response.status.state = "running"
        case .exec:
            for await input in stream.input {
                switch input {
                case .data(_, let bytes): try await stream.send(.stdout, bytes)
                case .end: try await stream.sendEnd(.stdout)
                }
                if case .end = input { break }
            }
            response.exec.exitCode = 7
        default:
            throw WireError(.invalidArgument, "unsupported")
        }
        return response
    }
}

/// Says where its handler ran; calls named "loop…" may run on the event loop, "loop-slow" sleeps.
struct PlacementService: WireService {
    func handlesOnEventLoop(_ request: Berth_V1_Request) -> Bool { request.status.name.hasPrefix("loop") }

    func handle(_ request: Berth_V1_Request, stream: ServerStream) async throws -> Berth_V1_Response {
        let before = stream.channel.eventLoop.inEventLoop
        if request.status.name == "loop-slow" { try await Task.sleep(nanoseconds: 5_000_000_000) }
        // After a suspension the handler is still where it started.
        try await Task.sleep(nanoseconds: 1_000_000)
        var response = Berth_V1_Response()
        response.status.name = request.status.name
        response.status.state = before && stream.channel.eventLoop.inEventLoop ? "event-loop" : before ? "moved" : "pool"
        return response
    }
}

/// Answers the first frame (a HELLO, with a REQUEST behind it) with a version refusal and closes.
final class RefusingPeer: ChannelInboundHandler, @unchecked Sendable {
    typealias InboundIn = Frame
    typealias OutboundOut = Frame
    var answered = false

    func channelRead(context: ChannelHandlerContext, data: NIOAny) {
        guard !answered else { return }
        answered = true
        let refusal = WireError(.incompatibleVersion, "this server speaks wire version 9")
        context.writeAndFlush(wrapOutboundOut(.error(refusal, stream: 0))).whenComplete { _ in
            context.close(promise: nil)
        }
    }
}

@Suite(.serialized) struct ConnectionTests {
    func withServer(_ service: WireService = EchoService(), _ body: (String) async throws -> Void) async throws {
        let dir = FileManager.default.temporaryDirectory.appendingPathComponent("berth-wire-\(getpid())-\(UInt32.random(in: 0...UInt32.max))")
        try FileManager.default.createDirectory(at: dir, withIntermediateDirectories: true)
        defer { try? FileManager.default.removeItem(at: dir) }
        let path = dir.appendingPathComponent("s.sock").path
        let server = try await UnixWireServer.bind(
            path: path, service: service, group: MultiThreadedEventLoopGroup.singleton,
            allowedUIDs: [getuid()])
        var mode = stat()
        stat(path, &mode)
        #expect(mode.st_mode & 0o777 == 0o600)
        try await body(path)
        await server.close()
    }

    /// A connection that speaks frames and nothing else: no HELLO, no credit, unless the test sends them.
    func rawFrames(_ path: String) async throws -> NIOAsyncChannel<Frame, Frame> {
        try await ClientBootstrap(group: MultiThreadedEventLoopGroup.singleton).connect(unixDomainSocketPath: path) { channel in
            channel.eventLoop.makeCompletedFuture {
                try channel.pipeline.syncOperations.addHandler(ByteToMessageHandler(FrameDecoder()))
                try channel.pipeline.syncOperations.addHandler(FrameWriter())
                return try NIOAsyncChannel<Frame, Frame>(wrappingChannelSynchronously: channel)
            }
        }
    }

    @Test func unaryCallsProgressAndTypedErrors() async throws {
        try await withServer { path in
            let client = try await WireClient.connect(unixPath: path, group: MultiThreadedEventLoopGroup.singleton)
            #expect(client.serverSoftware == wireSoftware)
            var request = Berth_V1_Request()
            request.status.name = "web1"
            var steps: [String] = []
            let response = try await client.call(request) { steps.append($0.step) }
            #expect(response.status.name == "web1")
            #expect(steps == ["looking up"])
            request.status.name = "missing"
            await #expect(throws: WireError(.notFound, "VPS missing does not exist", field: "name")) { try await client.call(request) }
            await client.close()
        }
    }

    @Test func multiplexesConcurrentCalls() async throws {
        try await withServer { path in
            let client = try await WireClient.connect(unixPath: path, group: MultiThreadedEventLoopGroup.singleton)
            try await withThrowingTaskGroup(of: String.self) { group in
                for i in 0..<50 {
                    group.addTask {
                        var request = Berth_V1_Request()
                        request.status.name = "vps\(i)"
                        return try await client.call(request).status.name
                    }
                }
                var names = Set<String>()
                for try await name in group { names.insert(name) }
                #expect(names.count == 50)
            }
            await client.close()
        }
    }

    @Test func handlersRunOnTheEventLoopOnlyWhereTheServiceSaysSo() async throws {
        try await withServer(PlacementService()) { path in
            let client = try await WireClient.connect(unixPath: path, group: MultiThreadedEventLoopGroup.singleton)
            var request = Berth_V1_Request()
            request.status.name = "loop"
            #expect(try await client.call(request).status.state == "event-loop")
            request.status.name = "other"
            #expect(try await client.call(request).status.state == "pool")
            // A deadline still cancels a handler on the event loop, and the loop stays free meanwhile.
            var slowRequest = Berth_V1_Request()
            slowRequest.status.name = "loop-slow"
            slowRequest.deadlineMs = 100
            let slow = Task { [slowRequest] in try await client.call(slowRequest) }
            var quick = Berth_V1_Request()
            quick.status.name = "loop"
            #expect(try await client.call(quick).status.state == "event-loop")
            await #expect(throws: WireError(.deadlineExceeded, "the call did not finish within its deadline of 100 ms")) {
                _ = try await slow.value
            }
            // A caller may run on the connection's event loop too, and calls from there work.
            let (onLoop, answered) = try await withTaskExecutorPreference(client.executor) {
                (client.channel.eventLoop.inEventLoop, try await client.call(quick).status.name)
            }
            #expect(onLoop && answered == "loop")
            await client.close()
        }
    }

    @Test func deadlinesCancelTheWork() async throws {
        try await withServer { path in
            let client = try await WireClient.connect(unixPath: path, group: MultiThreadedEventLoopGroup.singleton)
            var request = Berth_V1_Request()
            request.status.name = "slow"
            request.deadlineMs = 100
            let start = Date()
            do {
                _ = try await client.call(request)
                Issue.record("a slow call beat its deadline")
            } catch let error as WireError {
                #expect(error.code == .deadlineExceeded)
            }
            #expect(Date().timeIntervalSince(start) < 2)
            await client.close()
        }
    }

    /// A peer that completes HELLO and then never answers (a stalled connection): a call with a
    /// deadline still ends, with deadline-exceeded, and the peer is told to cancel it.
    @Test(.timeLimit(.minutes(1))) func aStalledPeerCannotHoldACallPastItsDeadline() async throws {
        try await withSilentPeer { client, _, cancelled in
            var request = Berth_V1_Request()
            request.status.name = "web1"
            request.deadlineMs = 200
            do {
                _ = try await client.call(request)
                Issue.record("a silent peer answered")
            } catch let error as WireError {
                #expect(error.code == .deadlineExceeded)
            }
            let stream = try await cancelled.get()
            #expect(stream % 2 == 1)
        }
    }

    /// A client connected to a peer that completes HELLO and then never answers; the futures
    /// get the stream of the first REQUEST and of the first CANCEL the peer receives.
    func withSilentPeer(_ body: (WireClient, EventLoopFuture<UInt32>, EventLoopFuture<UInt32>) async throws -> Void) async throws {
        let dir = FileManager.default.temporaryDirectory.appendingPathComponent("berth-silent-\(getpid())-\(UInt32.random(in: 0...UInt32.max))")
        try FileManager.default.createDirectory(at: dir, withIntermediateDirectories: true)
        defer { try? FileManager.default.removeItem(at: dir) }
        let path = dir.appendingPathComponent("s.sock").path
        let group = MultiThreadedEventLoopGroup.singleton
        let requested = group.next().makePromise(of: UInt32.self)
        let cancelled = group.next().makePromise(of: UInt32.self)
        let server = try await ServerBootstrap(group: group).childChannelInitializer { channel in
            channel.eventLoop.makeCompletedFuture {
                try channel.pipeline.syncOperations.addHandler(ByteToMessageHandler(FrameDecoder()))
                try channel.pipeline.syncOperations.addHandler(FrameWriter())
                try channel.pipeline.syncOperations.addHandler(SilentPeer(requested: requested, cancelled: cancelled))
            }
        }.bind(unixDomainSocketPath: path).get()
        let client = try await WireClient.connect(unixPath: path, group: group)
        try await body(client, requested.futureResult, cancelled.futureResult)
        await client.close()
        try await server.close()
    }

    /// Cancelling the task of a request/response call ends it at once with `cancelled` and
    /// tells the peer to cancel the work.
    @Test(.timeLimit(.minutes(1))) func cancellingACallTellsThePeer() async throws {
        try await withSilentPeer { client, requested, cancelled in
            var request = Berth_V1_Request()
            request.status.name = "web1"
            let call = Task { try await client.call(request) }
            // Cancelled once the request is out, so the peer has something to cancel.
            _ = try await requested.get()
            call.cancel()
            await #expect(throws: WireError(.cancelled, "the call was cancelled")) { try await call.value }
            let stream = try await cancelled.get()
            #expect(stream % 2 == 1)
        }
    }

    /// Runs blocking client code on its own thread, off the concurrency pool the server needs.
    func onThread<T: Sendable>(_ body: @escaping @Sendable () throws -> T) async throws -> T {
        try await withCheckedThrowingContinuation { continuation in
            Thread { continuation.resume(with: Result { try body() }) }.start()
        }
    }

    /// The CLI's synchronous client: HELLO, a call with its progress, and typed errors, like
    /// the event-loop client; an absent agent is named with its path.
    @Test func blockingClientCallsProgressAndTypedErrors() async throws {
        try await withServer { path in
            let (name, steps) = try await onThread { () throws -> (String, [String]) in
                let client = try BlockingWireClient(unixPath: path)
                var request = Berth_V1_Request()
                request.status.name = "web1"
                var steps: [String] = []
                // HELLO went out with this first request, and the server's came back before the answer.
                let response = try client.call(request) { steps.append($0.step) }
                #expect(client.serverSoftware == wireSoftware)
                request.status.name = "missing"
                #expect(throws: WireError(.notFound, "VPS missing does not exist", field: "name")) { try client.call(request) }
                // The connection stays usable after a typed error.
                request.status.name = "web2"
                #expect(try client.call(request).status.name == "web2")
                return (response.status.name, steps)
            }
            #expect(name == "web1")
            #expect(steps == ["looking up"])
        }
        let error = #expect(throws: WireError.self) { try BlockingWireClient(unixPath: "/nonexistent/berth.sock") }
        #expect(error?.code == .unavailable)
        #expect(error?.message.contains("/nonexistent/berth.sock") == true)
    }

    /// A server that refuses the HELLO: its error is what the caller gets, although the
    /// request went out right behind the HELLO.
    @Test(.timeLimit(.minutes(1))) func blockingClientReportsARefusedHelloNotItsRequest() async throws {
        let dir = FileManager.default.temporaryDirectory.appendingPathComponent("berth-refuse-\(getpid())-\(UInt32.random(in: 0...UInt32.max))")
        try FileManager.default.createDirectory(at: dir, withIntermediateDirectories: true)
        defer { try? FileManager.default.removeItem(at: dir) }
        let path = dir.appendingPathComponent("s.sock").path
        let server = try await ServerBootstrap(group: MultiThreadedEventLoopGroup.singleton).childChannelInitializer { channel in
            channel.eventLoop.makeCompletedFuture {
                try channel.pipeline.syncOperations.addHandler(ByteToMessageHandler(FrameDecoder()))
                try channel.pipeline.syncOperations.addHandler(FrameWriter())
                try channel.pipeline.syncOperations.addHandler(RefusingPeer())
            }
        }.bind(unixDomainSocketPath: path).get()
        let error = try await onThread { () -> WireError? in
            let client = try BlockingWireClient(unixPath: path)
            var request = Berth_V1_Request()
            request.status.name = "web1"
            do { _ = try client.call(request); return nil } catch let error as WireError { return error }
        }
        #expect(error == WireError(.incompatibleVersion, "this server speaks wire version 9"))
        try await server.close()
    }

    /// A session moves more than a credit window each way through the echo, in order, and
    /// returns the exit code; stdin's end reaches the server.
    @Test(.timeLimit(.minutes(1))) func blockingSessionStreamsMoreThanAWindowBothWays() async throws {
        try await withServer { path in
            let size = 3 * streamWindow + 12345
            let sent = (0..<size).map { UInt8(truncatingIfNeeded: $0 &* 31 &+ $0 >> 9) }
            var fds: [Int32] = [0, 0]
            #expect(pipe(&fds) == 0)
            let (readEnd, writeEnd) = (fds[0], fds[1])
            Thread {
                sent.withUnsafeBytes { raw in
                    var offset = 0
                    while offset < raw.count {
                        let n = write(writeEnd, raw.baseAddress! + offset, raw.count - offset)
                        if n <= 0 { break }
                        offset += n
                    }
                }
                close(writeEnd)
            }.start()
            let (received, code) = try await onThread { () throws -> ([UInt8], Int32) in
                let client = try BlockingWireClient(unixPath: path)
                var request = Berth_V1_Request()
                request.exec.name = "v"
                var received: [UInt8] = []
                let response = try client.session(request, input: readEnd) { channel, bytes throws(WireError) in
                    #expect(channel == .stdout)
                    received += bytes.readableBytesView
                }
                return (received, response.exec.exitCode)
            }
            close(readEnd)
            #expect(received.count == sent.count)
            #expect(received == sent)
            #expect(code == 7)
        }
    }

    @Test func streamsBytesBothWays() async throws {
        try await withServer { path in
            let client = try await WireClient.connect(unixPath: path, group: MultiThreadedEventLoopGroup.singleton)
            var request = Berth_V1_Request()
            request.exec.name = "v"
            request.exec.argv = ["cat"]
            let call = try await client.start(request)
            _ = try await call.send(.stdin, Array("hello ".utf8)).get()
            _ = try await call.send(.stdin, Array("world".utf8)).get()
            call.sendEnd(.stdin)
            var received: [UInt8] = []
            var exit: Int32 = -1
            for await event in call.events {
                switch event {
                case .data(.stdout, let bytes): received += Array(bytes.readableBytesView)
                case .response(let r): exit = r.exec.exitCode
                default: break
                }
            }
            #expect(String(decoding: received, as: UTF8.self) == "hello world")
            #expect(exit == 7)
            await client.close()
        }
    }

    /// A client that stops reading holds the echo back: the server's output waits for credit,
    /// so it stops taking input, and the client's own sends stop completing, well short of
    /// everything sent. Once the client reads, all of it arrives, in order.
    @Test func creditHoldsBackAProducerUntilTheConsumerReads() async throws {
        try await withServer { path in
            let client = try await WireClient.connect(unixPath: path, group: MultiThreadedEventLoopGroup.singleton)
            var request = Berth_V1_Request()
            request.exec.name = "v"
            let call = try await client.start(request)
            let chunk = 100 << 10, count = 60
            let written = ManagedAtomicCounter()
            var sends: [EventLoopFuture<Void>] = []
            for i in 0..<count {
                let future = call.send(.stdin, Array(repeating: UInt8(i), count: chunk))
                future.whenSuccess { written.increment() }
                sends.append(future)
            }
            call.sendEnd(.stdin)
            try await Task.sleep(nanoseconds: 500_000_000)
            // At most both directions' windows plus a chunk in each task are in flight.
            let early = written.value
            #expect(early < count - 10, "\(early) of \(count) sends completed with nobody reading")
            var received: [UInt8] = []
            received.reserveCapacity(chunk * count)
            for await event in call.events {
                if case .data(.stdout, let bytes) = event { received += Array(bytes.readableBytesView) }
            }
            for future in sends { try await future.get() }
            #expect(received.count == chunk * count)
            #expect((0..<count).allSatisfy { received[$0 * chunk] == UInt8($0) && received[$0 * chunk + chunk - 1] == UInt8($0) })
            await client.close()
        }
    }

    /// A peer that sends more DATA than the credit it was given loses the connection.
    @Test func dataBeyondTheCreditIsAProtocolViolation() async throws {
        try await withServer { path in
            let channel = try await rawFrames(path)
            try await channel.executeThenClose { inbound, outbound in
                var hello = Berth_V1_Hello()
                hello.minVersion = wireProtocolVersion
                hello.maxVersion = wireProtocolVersion
                try await outbound.write(Frame(type: .hello, stream: 0, payload: ByteBuffer(bytes: try hello.serializedBytes() as [UInt8])))
                // A call that never reads its input, then a window and a byte more of DATA.
                var request = Berth_V1_Request()
                request.status.name = "slow"
                try await outbound.write(Frame(type: .request, stream: 1, payload: ByteBuffer(bytes: try request.serializedBytes() as [UInt8])))
                let piece = ByteBuffer(bytes: [0] + Array(repeating: 7, count: 65535))
                for _ in 0..<(streamWindow / 65536) { try await outbound.write(Frame(type: .data, stream: 1, payload: piece)) }
                try await outbound.write(Frame(type: .data, stream: 1, payload: ByteBuffer(bytes: [0, 1])))
                var sawViolation = false
                for try await frame in inbound where frame.type == .error && frame.stream == 0 {
                    let reply = try Berth_V1_ErrorReply(serializedBytes: Array(frame.payload.readableBytesView))
                    sawViolation = reply.code == WireError.Code.protocolViolation.rawValue
                }
                #expect(sawViolation)
            }
        }
    }

    @Test func rejectsPeersThatSkipHelloOrSpeakAnotherVersion() async throws {
        try await withServer { path in
            // A raw client that sends a request first gets a protocol-violation error and a close.
            let channel = try await rawFrames(path)
            try await channel.executeThenClose { inbound, outbound in
                try await outbound.write(Frame(type: .request, stream: 1))
                var iterator = inbound.makeAsyncIterator()
                let frame = try #require(try await iterator.next())
                #expect(frame.type == .error)
                let reply = try Berth_V1_ErrorReply(serializedBytes: Array(frame.payload.readableBytesView))
                #expect(reply.code == WireError.Code.protocolViolation.rawValue)
            }
        }
    }
}

/// Answers HELLO, swallows every request, and reports the first CANCEL it gets.
final class SilentPeer: ChannelInboundHandler, @unchecked Sendable {
    typealias InboundIn = Frame
    typealias OutboundOut = Frame
    let requested: EventLoopPromise<UInt32>
    let cancelled: EventLoopPromise<UInt32>
    var sawRequest = false, sawCancel = false

    init(requested: EventLoopPromise<UInt32>, cancelled: EventLoopPromise<UInt32>) {
        self.requested = requested
        self.cancelled = cancelled
    }

    func channelRead(context: ChannelHandlerContext, data: NIOAny) {
        let frame = unwrapInboundIn(data)
        switch frame.type {
        case .hello:
            var hello = Berth_V1_Hello()
            hello.minVersion = wireProtocolVersion
            hello.maxVersion = wireProtocolVersion
            hello.software = "silent"
            let payload = ByteBuffer(bytes: (try? hello.serializedBytes() as [UInt8]) ?? [])
            context.writeAndFlush(wrapOutboundOut(Frame(type: .hello, stream: 0, payload: payload)), promise: nil)
        case .request where !sawRequest:
            sawRequest = true
            requested.succeed(frame.stream)
        case .cancel where !sawCancel:
            sawCancel = true
            cancelled.succeed(frame.stream)
        default:
            break
        }
    }
}

/// Counts completions from NIO callbacks (any thread).
final class ManagedAtomicCounter: @unchecked Sendable {
    private let lock = NSLock()
    private var count = 0
    func increment() { lock.lock(); count += 1; lock.unlock() }
    var value: Int { lock.lock(); defer { lock.unlock() }; return count }
}
