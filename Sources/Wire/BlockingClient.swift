import NIOCore
import SwiftProtobuf

#if canImport(Glibc)
    import Glibc
#endif

/// A synchronous client of the node-local Unix socket, for short-lived processes such as the
/// CLI: one blocking socket, no event loop threads. It speaks the same frames, hello, errors and
/// credit as `WireClient` (Docs/wire.md) for one call at a time. Starting NIO's threads, pipeline
/// and promise machinery cost the CLI 2.6 ms per command, more than the call itself.
///
/// Its HELLO goes out in one write with its first REQUEST instead of a round trip ahead of it
/// (a third of a millisecond of every command when measured): the server takes frames in order,
/// and refuses a HELLO with ERROR on stream 0 and a close, which this client reads first.
///
///   CLI (this client)                       agent
///     | HELLO (versions) + REQUEST stream 1 ->|   one write
///     |<---------------------- HELLO (chosen) --|
///     |   [session] DATA stdin / END stdin ---->|   (within the agent's credit)
///     |<---------- DATA stdout|stderr, END ----|   (CREDIT back per 256 KiB written out)
///     |<------------- PROGRESS (0..n) ---------|
///     |<------------- RESPONSE | ERROR --------|
public final class BlockingWireClient {
    private let socket: Int32
    private var inbound = ByteBuffer()
    private var nextStream: UInt32 = 1
    /// Sent with the first request.
    private var helloSent = false
    /// The server's HELLO has been read (the first frame it sends).
    private var helloAnswered = false
    /// Known once the first call has read the server's HELLO.
    public private(set) var serverSoftware = ""

    /// Connects; the HELLO exchange happens with the first call. Errors read like `WireClient`'s.
    public init(unixPath: String) throws(WireError) {
        socket = Glibc.socket(AF_UNIX, Int32(SOCK_STREAM.rawValue) | Int32(SOCK_CLOEXEC.rawValue), 0)
        guard socket >= 0 else { throw WireError(.unavailable, "cannot make a socket: \(String(cString: strerror(errno)))") }
        let connected = Self.connect(socket, to: unixPath)
        guard connected == 0 else {
            close(socket)
            throw WireError(.unavailable, "cannot reach the agent at \(unixPath): \(String(cString: strerror(connected))) (is berth-agent running?)")
        }
    }

    /// The server's first frame: its HELLO, or the error that refused ours.
    private func takeHello(_ answer: Frame) throws(WireError) {
        switch answer.type {
        case .hello:
            guard let message = try? Berth_V1_Hello(serializedBytes: Array(answer.payload.readableBytesView)) else {
                throw WireError(.malformedFrame, "malformed HELLO from the server")
            }
            serverSoftware = message.software
            helloAnswered = true
        case .error:
            throw answer.serverError
        default:
            throw WireError(.protocolViolation, "the server answered HELLO with \(answer.type)")
        }
    }

    deinit { close(socket) }

    /// connect(2) to a Unix socket path: 0, or the errno.
    private static func connect(_ socket: Int32, to path: String) -> Int32 {
        var address = sockaddr_un()
        address.sun_family = sa_family_t(AF_UNIX)
        let bytes = Array(path.utf8)
        let fits = withUnsafeMutableBytes(of: &address.sun_path) { raw -> Bool in
            guard bytes.count < raw.count else { return false }
            raw.copyBytes(from: bytes)
            raw[bytes.count] = 0
            return true
        }
        guard fits else { return ENAMETOOLONG }
        return withUnsafePointer(to: &address) { pointer in
            pointer.withMemoryRebound(to: sockaddr.self, capacity: 1) {
                Glibc.connect(socket, $0, socklen_t(MemoryLayout<sockaddr_un>.size)) == 0 ? 0 : errno
            }
        }
    }

    /// A request and its response; progress steps go to `onProgress`, stream bytes are dropped.
    public func call(_ request: Berth_V1_Request, onProgress: (Berth_V1_Progress) -> Void = { _ in }) throws(WireError) -> Berth_V1_Response {
        try session(request, input: nil, output: { _, _ in }, onProgress: onProgress)
    }

    /// A call with byte streams (exec without a terminal): reads `input` (a file descriptor) to
    /// its end as stdin DATA within the server's credit, hands each DATA it receives to `output`,
    /// and returns credit once that returns, so a slow reader of our output holds back the
    /// command inside the VPS.
    public func session(
        _ request: Berth_V1_Request, input: Int32?, output: (Frame.Channel, ByteBuffer) throws(WireError) -> Void,
        onProgress: (Berth_V1_Progress) -> Void = { _ in }
    ) throws(WireError) -> Berth_V1_Response {
        let id = nextStream
        nextStream &+= 2
        var out = ByteBuffer()
        if !helloSent {
            FrameParser.write(Frame(type: .hello, stream: 0, payload: ByteBuffer(bytes: try Self.encode(Berth_V1_Hello.clientOffer))), into: &out)
            helloSent = true
        }
        FrameParser.write(Frame(type: .request, stream: id, payload: ByteBuffer(bytes: try Self.encode(request))), into: &out)
        try write(out)
        var inputOpen = input != nil
        var sendCredit = streamWindow
        let receiveWindow = ReceiveWindow()
        var chunk = [UInt8](repeating: 0, count: 128 << 10)
        while true {
            // Frames already buffered come first: poll would not report them.
            if let frame = try FrameParser.parse(&inbound) {
                if !helloAnswered {
                    try takeHello(frame)
                    continue
                }
                if frame.stream == 0 && frame.type == .error { throw frame.serverError }
                if frame.type == .ping {
                    try send(Frame(type: .pong, stream: frame.stream, payload: frame.payload))
                    continue
                }
                guard frame.stream == id else { continue }
                switch frame.type {
                case .response:
                    return try frame.serverResponse()
                case .error:
                    throw frame.serverError
                case .progress:
                    if let progress = try? Berth_V1_Progress(serializedBytes: Array(frame.payload.readableBytesView)) { onProgress(progress) }
                case .data:
                    guard receiveWindow.received(frame.payload.readableBytes) else {
                        throw WireError(.protocolViolation, "the server sent DATA on stream \(id) beyond the credit given")
                    }
                    var payload = frame.payload
                    guard let raw = payload.readInteger(as: UInt8.self), let channel = Frame.Channel(rawValue: raw) else {
                        throw WireError(.malformedFrame, "stream frame without a valid channel byte")
                    }
                    try output(channel, payload)
                    if let credit = receiveWindow.consumed(frame.payload.readableBytes) {
                        var grant = ByteBuffer()
                        grant.writeInteger(credit)
                        try send(Frame(type: .credit, stream: id, payload: grant))
                    }
                case .credit:
                    guard let credit = frame.creditIncrement, sendCredit + Int(credit) <= Int(UInt32.max) else {
                        throw WireError(.protocolViolation, "the server sent a malformed or overflowing CREDIT on stream \(id)")
                    }
                    sendCredit += Int(credit)
                default:
                    break
                }
                continue
            }
            var fds = [
                pollfd(fd: socket, events: Int16(POLLIN), revents: 0),
                pollfd(fd: inputOpen && sendCredit > 1 ? input! : -1, events: Int16(POLLIN), revents: 0),
            ]
            if poll(&fds, 2, -1) < 0 {
                if errno == EINTR { continue }
                throw WireError(.kernel, "poll: \(String(cString: strerror(errno)))", stage: "poll", errno: errno)
            }
            if fds[1].revents != 0, let input {
                // One byte of each DATA payload is the channel number, counted by the credit.
                let n = read(input, &chunk, min(chunk.count, sendCredit - 1))
                if n < 0 && (errno == EINTR || errno == EAGAIN) { continue }
                var payload = ByteBuffer()
                payload.writeInteger(Frame.Channel.stdin.rawValue)
                if n > 0 {
                    payload.writeBytes(chunk[0..<n])
                    sendCredit -= n + 1
                    try send(Frame(type: .data, stream: id, payload: payload))
                } else {
                    inputOpen = false
                    try send(Frame(type: .end, stream: id, payload: payload))
                }
            }
            if fds[0].revents != 0 { try fill() }
        }
    }

    private func send(_ frame: Frame) throws(WireError) {
        var bytes = ByteBuffer()
        FrameParser.write(frame, into: &bytes)
        try write(bytes)
    }

    private func write(_ bytes: ByteBuffer) throws(WireError) {
        do { try writeAll(fd: socket, bytes, what: "the agent socket", socket: true) } catch {
            throw WireError(.unavailable, "the connection to the agent broke: \(error.message)")
        }
    }

    /// One read from the socket into `inbound`; end of stream is an error (a call was open).
    private func fill() throws(WireError) {
        if inbound.readerIndex > 0 { inbound.discardReadBytes() }
        inbound.reserveCapacity(minimumWritableBytes: 64 << 10)
        let n = inbound.withUnsafeMutableWritableBytes { raw in read(socket, raw.baseAddress, raw.count) }
        if n < 0 {
            if errno == EINTR { return }
            throw WireError(.unavailable, "reading from the agent: \(String(cString: strerror(errno)))")
        }
        if n == 0 { throw WireError(.unavailable, "the connection to the agent closed before the call finished") }
        inbound.moveWriterIndex(forwardBy: n)
    }

    private static func encode(_ message: some SwiftProtobuf.Message) throws(WireError) -> [UInt8] {
        do { return try message.serializedBytes() } catch { throw WireError(.internalError, "cannot encode \(type(of: message)): \(error)") }
    }
}
