import NIOCore

/// Berth's frame types (Docs/wire.md). Raw values are on the wire: never renumber.
public enum FrameType: UInt8, Sendable {
    case hello = 1
    case request = 2
    case response = 3
    case data = 4
    case end = 5
    case cancel = 6
    case error = 7
    case credit = 8
    case ping = 9
    case pong = 10
    case progress = 11
}

extension FrameType: CustomStringConvertible {
    /// The name Docs/wire.md gives the type, for messages.
    public var description: String {
        switch self {
        case .hello: "HELLO"
        case .request: "REQUEST"
        case .response: "RESPONSE"
        case .data: "DATA"
        case .end: "END"
        case .cancel: "CANCEL"
        case .error: "ERROR"
        case .credit: "CREDIT"
        case .ping: "PING"
        case .pong: "PONG"
        case .progress: "PROGRESS"
        }
    }
}

/// One frame: `[u32 length][u8 type][u8 flags][u32 stream][payload]`, big-endian, where length
/// counts everything after itself.
public struct Frame: Sendable, Equatable {
    public var type: FrameType
    public var flags: UInt8
    public var stream: UInt32
    public var payload: ByteBuffer

    public init(type: FrameType, flags: UInt8 = 0, stream: UInt32, payload: ByteBuffer = ByteBuffer()) {
        self.type = type
        self.flags = flags
        self.stream = stream
        self.payload = payload
    }

    public static let headerSize = 6  // type + flags + stream, after the length word
    public static let defaultMaxPayload = 4 << 20

    /// DATA/END channel numbers of exec and console streams.
    public enum Channel: UInt8, Sendable {
        case stdin = 0, stdout = 1, stderr = 2, resize = 3
    }
}

extension Frame {
    /// The ERROR frame that carries `error` on `stream` (0: the connection's own).
    public static func error(_ error: WireError, stream: UInt32) -> Frame {
        Frame(type: .error, stream: stream, payload: ByteBuffer(bytes: (try? error.reply.serializedBytes() as [UInt8]) ?? []))
    }
}

/// What a client reads out of the server's frames (the NIO client and the CLI's blocking one).
extension Frame {
    /// The typed error an ERROR frame carries.
    var serverError: WireError {
        (try? Berth_V1_ErrorReply(serializedBytes: Array(payload.readableBytesView))).map(WireError.init(reply:))
            ?? WireError(.malformedFrame, "malformed ERROR from the server")
    }

    /// The answer a RESPONSE frame carries.
    func serverResponse() throws(WireError) -> Berth_V1_Response {
        do { return try Berth_V1_Response(serializedBytes: Array(payload.readableBytesView)) } catch {
            throw WireError(.malformedFrame, "malformed RESPONSE from the server")
        }
    }
}

extension Berth_V1_Hello {
    /// The HELLO a client opens with.
    static var clientOffer: Berth_V1_Hello {
        var hello = Berth_V1_Hello()
        hello.minVersion = wireProtocolVersion
        hello.maxVersion = wireProtocolVersion
        hello.software = wireSoftware
        return hello
    }
}

public enum FrameParser {
    /// Takes one complete frame off `buffer`, or returns nil (buffer untouched) when more bytes
    /// are needed. The declared length is checked against `maxPayload` before anything is
    /// buffered for it, so a peer cannot make us allocate by announcing a huge frame.
    public static func parse(_ buffer: inout ByteBuffer, maxPayload: Int = Frame.defaultMaxPayload) throws(WireError) -> Frame? {
        guard let length = buffer.getInteger(at: buffer.readerIndex, as: UInt32.self) else { return nil }
        guard length >= UInt32(Frame.headerSize) else {
            throw WireError(.malformedFrame, "frame length \(length) is shorter than the \(Frame.headerSize)-byte header")
        }
        let payloadLength = Int(length) - Frame.headerSize
        guard payloadLength <= maxPayload else {
            throw WireError(.frameTooLarge, "frame of \(payloadLength) bytes exceeds the limit of \(maxPayload)")
        }
        guard buffer.readableBytes >= 4 + Int(length) else { return nil }
        let start = buffer.readerIndex
        let rawType = buffer.getInteger(at: start + 4, as: UInt8.self)!
        guard let type = FrameType(rawValue: rawType) else {
            throw WireError(.malformedFrame, "unknown frame type \(rawType)")
        }
        let flags = buffer.getInteger(at: start + 5, as: UInt8.self)!
        let stream = buffer.getInteger(at: start + 6, as: UInt32.self)!
        let payload = buffer.getSlice(at: start + 10, length: payloadLength)!
        buffer.moveReaderIndex(forwardBy: 4 + Int(length))
        return Frame(type: type, flags: flags, stream: stream, payload: payload)
    }

    public static func write(_ frame: Frame, into out: inout ByteBuffer) {
        out.writeInteger(UInt32(Frame.headerSize + frame.payload.readableBytes))
        out.writeInteger(frame.type.rawValue)
        out.writeInteger(frame.flags)
        out.writeInteger(frame.stream)
        var payload = frame.payload
        out.writeBuffer(&payload)
    }
}

public final class FrameDecoder: ByteToMessageDecoder {
    public typealias InboundOut = Frame
    let maxPayload: Int

    public init(maxPayload: Int = Frame.defaultMaxPayload) { self.maxPayload = maxPayload }

    public func decode(context: ChannelHandlerContext, buffer: inout ByteBuffer) throws -> DecodingState {
        guard let frame = try FrameParser.parse(&buffer, maxPayload: maxPayload) else { return .needMoreData }
        context.fireChannelRead(wrapInboundOut(frame))
        return .continue
    }

    public func decodeLast(context: ChannelHandlerContext, buffer: inout ByteBuffer, seenEOF: Bool) throws -> DecodingState {
        while try decode(context: context, buffer: &buffer) == .continue {}
        return .needMoreData
    }
}

/// Encodes the frames written to a connection into one buffer that goes down the pipeline at the
/// next flush: the frames one flush carries become one TLS record (up to 16 KiB) and one buffer,
/// not a record and a buffer each. Order is kept: every frame passes through here.
public final class FrameWriter: ChannelOutboundHandler, RemovableChannelHandler {
    public typealias OutboundIn = Frame
    public typealias OutboundOut = ByteBuffer
    /// A buffer this large goes on without waiting for the flush (bounds what waits here).
    static let passOnBytes = 64 * 1024
    private var pending: ByteBuffer?
    /// Completes with the write of `pending`; the promises of the other frames in it follow it.
    private var pendingPromise: EventLoopPromise<Void>?

    public init() {}

    public func write(context: ChannelHandlerContext, data: NIOAny, promise: EventLoopPromise<Void>?) {
        let frame = unwrapOutboundIn(data)
        var buffer = pending ?? context.channel.allocator.buffer(capacity: 4 + Frame.headerSize + frame.payload.readableBytes)
        pending = nil  // the only reference while it grows: appending then copies nothing
        FrameParser.write(frame, into: &buffer)
        pending = buffer
        if let promise {
            if let pendingPromise { pendingPromise.futureResult.cascade(to: promise) } else { pendingPromise = promise }
        }
        if buffer.readableBytes >= Self.passOnBytes { passOn(context) }
    }

    public func flush(context: ChannelHandlerContext) {
        passOn(context)
        context.flush()
    }

    public func handlerRemoved(context: ChannelHandlerContext) {
        pending = nil
        pendingPromise?.fail(ChannelError.ioOnClosedChannel)
        pendingPromise = nil
    }

    private func passOn(_ context: ChannelHandlerContext) {
        guard let buffer = pending else { return }
        let promise = pendingPromise
        pending = nil
        pendingPromise = nil
        context.write(wrapOutboundOut(buffer), promise: promise)
    }
}

/// Frames written by many concurrent calls share one flush per event-loop tick: under load one
/// write syscall (and fewer TLS records) carries many frames, instead of one each.
package final class FlushCoalescer: @unchecked Sendable {
    let channel: Channel
    /// Touched only on the channel's event loop.
    var flushScheduled = false

    package init(channel: Channel) { self.channel = channel }

    /// Must run on the channel's event loop.
    package func write(_ frame: Frame, promise: EventLoopPromise<Void>? = nil) {
        channel.write(frame, promise: promise)
        guard !flushScheduled else { return }
        flushScheduled = true
        // Runs after the tasks already queued on the loop, so their writes join this flush.
        channel.eventLoop.execute {
            self.flushScheduled = false
            self.channel.flush()
        }
    }
}
