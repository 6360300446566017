import NIOCore

#if canImport(Glibc)
    import Glibc
#endif

// Credit-based flow control of stream bytes (Docs/wire.md, "Flow control"): each side of a call
// may have at most `streamWindow` bytes of DATA payload in flight that the other side's
// application has not consumed yet. The receiver returns credit with CREDIT frames as its
// application takes the bytes, so a slow consumer (an operator's terminal, a relay to a slow
// client) holds back the producer instead of growing buffers in between.

/// Initial credit of each direction of every stream, in DATA payload bytes (channel byte included).
public let streamWindow = 1 << 20
/// Consumed bytes are returned as one CREDIT once they reach this much.
let creditBatch = streamWindow / 4

/// The sending half of one stream: DATA goes out only while the peer's credit lasts; the rest
/// waits in order. Event-loop confined.
final class SendWindow: @unchecked Sendable {
    private struct Pending {
        var channelNumber: UInt8
        var bytes: ByteBuffer
        var promise: EventLoopPromise<Void>?
        /// END on the channel, sent in order after the DATA queued before it (not counted).
        var isEnd = false
    }
    private var available = streamWindow
    private var queue: [Pending] = []
    /// Why sends fail from now on; made only when something asks (most calls never send).
    private var failure: (() -> Error)?
    let channel: Channel
    let stream: UInt32

    init(channel: Channel, stream: UInt32) {
        self.channel = channel
        self.stream = stream
    }

    /// Queues `bytes` on `channelNumber`; `promise` completes once the last of them went out
    /// under the peer's credit (handed to the channel). The credit, not the socket, bounds what
    /// is buffered, so a producer may have a window's worth in flight instead of one chunk.
    func send(_ channelNumber: UInt8, _ bytes: ByteBuffer, promise: EventLoopPromise<Void>) {
        if let failure { promise.fail(failure()); return }
        queue.append(Pending(channelNumber: channelNumber, bytes: bytes, promise: promise))
        pump()
    }

    /// Queues END on `channelNumber` behind the DATA already waiting.
    func sendEnd(_ channelNumber: UInt8, promise: EventLoopPromise<Void>?) {
        if let failure { promise?.fail(failure()); return }
        queue.append(Pending(channelNumber: channelNumber, bytes: ByteBuffer(), promise: promise, isEnd: true))
        pump()
    }

    /// A CREDIT from the peer; false when it would overflow the window (a protocol violation).
    func grant(_ credit: UInt32) -> Bool {
        available += Int(credit)
        guard available <= Int(UInt32.max) else { return false }
        pump()
        return true
    }

    /// Fails what still waits for credit, and every later send (the call ended or the
    /// connection closed).
    func fail(_ error: @escaping @autoclosure () -> Error) {
        failure = error
        guard !queue.isEmpty else { return }
        let waiting = queue
        queue.removeAll()
        let reason = error()
        waiting.forEach { $0.promise?.fail(reason) }
    }

    private func pump() {
        var wrote = false
        while let first = queue.first {
            if first.isEnd {
                var payload = channel.allocator.buffer(capacity: 1)
                payload.writeInteger(first.channelNumber)
                channel.write(Frame(type: .end, stream: stream, payload: payload), promise: queue.removeFirst().promise)
                wrote = true
                continue
            }
            guard available > 1 else { break }
            let count = min(available - 1, first.bytes.readableBytes)
            var payload = channel.allocator.buffer(capacity: count + 1)
            payload.writeInteger(first.channelNumber)
            var slice = queue[0].bytes.readSlice(length: count)!
            payload.writeBuffer(&slice)
            available -= count + 1
            channel.write(Frame(type: .data, stream: stream, payload: payload), promise: nil)
            if queue[0].bytes.readableBytes == 0 { queue.removeFirst().promise?.succeed() }
            wrote = true
        }
        if wrote { channel.flush() }
    }
}

/// The receiving half: counts DATA against the credit given and returns credit as the
/// application consumes. Event-loop confined.
final class ReceiveWindow: @unchecked Sendable {
    private var remaining = streamWindow
    private var consumedSinceCredit = 0

    /// False when the peer sent more than its credit allowed (a protocol violation).
    func received(_ count: Int) -> Bool {
        remaining -= count
        return remaining >= 0
    }

    /// The credit to return now, if enough was consumed since the last one.
    func consumed(_ count: Int) -> UInt32? {
        consumedSinceCredit += count
        guard consumedSinceCredit >= creditBatch else { return nil }
        let credit = consumedSinceCredit
        consumedSinceCredit = 0
        remaining += credit
        return UInt32(credit)
    }

    /// Runs on the channel's loop: returns credit for `count` consumed bytes of `stream`.
    static func consume(_ window: ReceiveWindow, _ count: Int, stream: UInt32, on channel: Channel) {
        channel.eventLoop.execute {
            guard let credit = window.consumed(count) else { return }
            var payload = channel.allocator.buffer(capacity: 4)
            payload.writeInteger(credit)
            channel.writeAndFlush(Frame(type: .credit, stream: stream, payload: payload), promise: nil)
        }
    }
}

/// A call's incoming events or inputs; taking a DATA item returns its bytes as credit.
public struct CreditedStream<Element: Sendable>: AsyncSequence, Sendable {
    let base: AsyncStream<Element>
    let dataSize: @Sendable (Element) -> Int
    let consumed: @Sendable (Int) -> Void

    public struct AsyncIterator: AsyncIteratorProtocol {
        public typealias Failure = Never
        var base: AsyncStream<Element>.AsyncIterator
        let dataSize: @Sendable (Element) -> Int
        let consumed: @Sendable (Int) -> Void

        public mutating func next() async -> Element? {
            guard let element = await base.next() else { return nil }
            let size = dataSize(element)
            if size > 0 { consumed(size) }
            return element
        }
    }

    public func makeAsyncIterator() -> AsyncIterator {
        AsyncIterator(base: base.makeAsyncIterator(), dataSize: dataSize, consumed: consumed)
    }

    /// The incoming side of stream `id`: taking an item of `dataSize` > 0 bytes returns that
    /// much credit through `window`.
    static func make(
        stream id: UInt32, channel: Channel, window: ReceiveWindow,
        dataSize: @escaping @Sendable (Element) -> Int
    ) -> (CreditedStream, AsyncStream<Element>.Continuation) {
        let (base, continuation) = AsyncStream.makeStream(of: Element.self, bufferingPolicy: .unbounded)
        let stream = CreditedStream(
            base: base, dataSize: dataSize,
            consumed: { count in ReceiveWindow.consume(window, count, stream: id, on: channel) })
        return (stream, continuation)
    }
}

extension Frame {
    /// The credit a CREDIT frame grants, nil when its payload is not one u32.
    var creditIncrement: UInt32? {
        guard payload.readableBytes == 4 else { return nil }
        return payload.getInteger(at: payload.readerIndex, as: UInt32.self)
    }
}

/// Writes all of `buffer` to `fd`, retrying short writes and EINTR; `what` names the file in the
/// error. Shared by everything that lands stream bytes in a file or on a terminal.
/// `socket`: `fd` is a socket, written with MSG_NOSIGNAL: a peer that went away is an error
/// to report, not a SIGPIPE that ends the process without a word.
public func writeAll(fd: Int32, _ buffer: ByteBuffer, what: @autoclosure () -> String, socket: Bool = false) throws(WireError) {
    let failed: Int32? = buffer.withUnsafeReadableBytes { raw in
        var offset = 0
        while offset < raw.count {
            let n =
                socket
                ? send(fd, raw.baseAddress! + offset, raw.count - offset, Int32(MSG_NOSIGNAL))
                : write(fd, raw.baseAddress! + offset, raw.count - offset)
            if n < 0 && errno == EINTR { continue }
            guard n > 0 else { return errno }
            offset += n
        }
        return nil
    }
    if let failed {
        throw WireError(.kernel, "writing \(what()): \(String(cString: strerror(failed)))", stage: "write", errno: failed)
    }
}
