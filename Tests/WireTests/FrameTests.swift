import BerthCore
import NIOCore
import NIOEmbedded
import Testing

@testable import Wire

@Suite struct FrameTests {
    @Test func theFramesOfOneFlushGoDownAsOneBufferInOrder() throws {
        let channel = EmbeddedChannel(handler: FrameWriter())
        let frames = (1...3).map { Frame(type: .response, stream: UInt32($0), payload: ByteBuffer(bytes: [UInt8($0)])) }
        var written: [EventLoopFuture<Void>] = []
        for frame in frames {
            let promise = channel.eventLoop.makePromise(of: Void.self)
            channel.write(frame, promise: promise)
            written.append(promise.futureResult)
        }
        #expect(try channel.readOutbound(as: ByteBuffer.self) == nil)
        channel.flush()
        var out = try #require(try channel.readOutbound(as: ByteBuffer.self))
        #expect(try channel.readOutbound(as: ByteBuffer.self) == nil)
        for frame in frames { #expect(try FrameParser.parse(&out) == frame) }
        #expect(out.readableBytes == 0)
        for future in written { try future.wait() }
        // What is still held when the connection goes fails instead of vanishing.
        let held = channel.eventLoop.makePromise(of: Void.self)
        channel.write(frames[0], promise: held)
        _ = try channel.finish(acceptAlreadyClosed: true)
        #expect(throws: ChannelError.ioOnClosedChannel) { try held.futureResult.wait() }
    }

    @Test func roundTripsEveryFrameType() throws {
        for type in [FrameType.hello, .request, .response, .data, .end, .cancel, .error, .credit, .ping, .pong, .progress] {
            var out = ByteBuffer()
            FrameParser.write(Frame(type: type, flags: 3, stream: 0xDEAD_BEEF, payload: ByteBuffer(bytes: [1, 2, 3])), into: &out)
            let frame = try #require(try FrameParser.parse(&out))
            #expect(frame.type == type)
            #expect(frame.flags == 3)
            #expect(frame.stream == 0xDEAD_BEEF)
            #expect(Array(frame.payload.readableBytesView) == [1, 2, 3])
            #expect(out.readableBytes == 0)
        }
    }

    @Test func encodesTheDocumentedLayout() {
        var out = ByteBuffer()
        FrameParser.write(Frame(type: .request, flags: 0, stream: 5, payload: ByteBuffer(bytes: [0xAA])), into: &out)
        // [u32 length = 6 + 1][type 2][flags 0][stream 5][payload]
        #expect(Array(out.readableBytesView) == [0, 0, 0, 7, 2, 0, 0, 0, 0, 5, 0xAA])
    }

    @Test func waitsForPartialFramesWithoutConsuming() throws {
        var whole = ByteBuffer()
        FrameParser.write(Frame(type: .data, stream: 1, payload: ByteBuffer(bytes: Array(repeating: 7, count: 100))), into: &whole)
        for cut in [0, 3, 4, 9, 10, 50, whole.readableBytes - 1] {
            var partial = whole.getSlice(at: 0, length: cut)!
            #expect(try FrameParser.parse(&partial) == nil)
            #expect(partial.readableBytes == cut)
        }
    }

    @Test func rejectsOversizeBeforeBuffering() {
        var buffer = ByteBuffer(bytes: [0x7F, 0xFF, 0xFF, 0xFF, 2, 0])  // announces ~2 GiB, sends 6 bytes
        #expect(throws: WireError.self) { try FrameParser.parse(&buffer, maxPayload: 1 << 20) }
        do {
            _ = try FrameParser.parse(&buffer, maxPayload: 1 << 20)
        } catch {
            #expect(error.code == .frameTooLarge)
        }
    }

    @Test func rejectsShortLengthAndUnknownType() {
        var short = ByteBuffer(bytes: [0, 0, 0, 2, 1, 0])
        #expect(throws: WireError.self) { try FrameParser.parse(&short) }
        var unknown = ByteBuffer(bytes: [0, 0, 0, 6, 99, 0, 0, 0, 0, 1])
        #expect(throws: WireError.self) { try FrameParser.parse(&unknown) }
    }

    @Test func parsesBackToBackFrames() throws {
        var out = ByteBuffer()
        for i in 0..<5 { FrameParser.write(Frame(type: .ping, stream: UInt32(i)), into: &out) }
        var seen: [UInt32] = []
        while let frame = try FrameParser.parse(&out) { seen.append(frame.stream) }
        #expect(seen == [0, 1, 2, 3, 4])
    }
}

@Suite struct TextTableTests {
    @Test func padsColumnsAndTrimsTrailingBlanks() {
        #expect(textTable([["A", "BB"], ["CCC", "D"], ["E"]]) == "A    BB\nCCC  D\nE\n")
    }

    /// The beancounter file inside a VPS and `berth stats` print this one rendering.
    @Test func statsTableShowsUnlimitedAndCPUTime() {
        var stats = Berth_V1_VpsStats()
        var memory = Berth_V1_ResourceCounter()
        memory.resource = "memory"
        memory.held = 5
        memory.peak = 7
        memory.limit = 1 << 20
        memory.failcnt = 2
        var pids = Berth_V1_ResourceCounter()
        pids.resource = "pids"
        pids.limit = Berth_V1_ResourceCounter.unlimited
        stats.counters = [memory, pids]
        stats.cpuNanoseconds = 1_500_000_000
        #expect(
            stats.table == """
                RESOURCE  HELD  PEAK  LIMIT      FAILCNT
                memory    5     7     1048576    2
                pids      0     0     unlimited  0
                cpu time: 1500 ms

                """)
    }
}
