import Crypto
import Foundation
import NIOCore
import NIOPosix
import Synchronization
import Testing
import WireTLS

@testable import Wire

/// Receives images as a migration's target does, into a directory.
struct ImageService: WireService {
    let directory: String

    func handle(_ request: Berth_V1_Request, stream: ServerStream) async throws -> Berth_V1_Response {
        guard case .migrationReceive(let r) = request.call else { throw WireError(.invalidArgument, "unsupported") }
        if r.grantID == "silent" {
            // A target behind a cut link: it reads nothing, and so gives no credit.
            try await Task.sleep(for: .seconds(60))
        }
        try await ImageTransfer.receive(into: directory + "/" + r.grantID, size: r.diskSize, from: stream.input, field: "disk")
        var response = Berth_V1_Response()
        response.ok = Berth_V1_Empty()
        return response
    }
}

@Suite(.serialized) struct ImageTransferTests {
    func withReceiver(_ body: (WireClient, String, String) async throws -> Void) async throws {
        let dir = FileManager.default.temporaryDirectory.appendingPathComponent("berth-img-\(getpid())-\(UInt32.random(in: 0...UInt32.max))").path
        try FileManager.default.createDirectory(atPath: dir + "/in", withIntermediateDirectories: true)
        defer { try? FileManager.default.removeItem(atPath: dir) }
        let server = try await UnixWireServer.bind(
            path: dir + "/s.sock", service: ImageService(directory: dir + "/in"), group: MultiThreadedEventLoopGroup.singleton, allowedUIDs: [getuid()])
        let client = try await WireClient.connect(unixPath: dir + "/s.sock", group: MultiThreadedEventLoopGroup.singleton)
        try await body(client, dir, dir + "/in")
        await client.close()
        await server.close()
    }

    func call(_ client: WireClient, name: String, size: UInt64) async throws -> ClientCall {
        var request = Berth_V1_Request()
        request.migrationReceive.grantID = name
        request.migrationReceive.diskSize = size
        return try await client.start(request)
    }

    /// A sparse image arrives with the same bytes and stays sparse; only chunks with data travel.
    @Test func onlyDataTravelsAndTheImageArrivesWhole() async throws {
        try await withReceiver { client, dir, incoming in
            let size: UInt64 = 64 << 20
            let path = dir + "/image"
            let fd = open(path, O_RDWR | O_CREAT, 0o600)
            defer { close(fd) }
            #expect(ftruncate(fd, off_t(size)) == 0)
            func put(_ bytes: [UInt8], at offset: Int) { _ = bytes.withUnsafeBytes { pwrite(fd, $0.baseAddress, bytes.count, off_t(offset)) } }
            put((0..<4096).map { UInt8(truncatingIfNeeded: $0 | 1) }, at: 0)
            put((0..<(300 << 10)).map { _ in UInt8.random(in: 1...255) }, at: 10 << 20)  // two chunks
            put([UInt8](repeating: 0, count: 1 << 20), at: 20 << 20)  // allocated, but zeros
            put([7], at: Int(size) - 1)
            fsync(fd)
            let transfer = try await call(client, name: "vps", size: size)
            let paced = Mutex(0)
            let sender = try ImageSender(path, on: transfer, target: "n2", pace: { bytes in paced.withLock { $0 += bytes } })
            let pass = try await sender.pass()
            try await sender.finish()
            _ = try await transfer.result()
            // Four chunks of data, not the zeros or the holes; each record waited for the pace.
            #expect(pass.chunks == 4 && pass.bytes == 4 * UInt64(ImageTransfer.chunkSize))
            #expect(paced.withLock { $0 } == Int(pass.bytes) + 12 * 4)
            #expect(FileManager.default.contents(atPath: incoming + "/vps") == FileManager.default.contents(atPath: path))
            var info = stat()
            #expect(stat(incoming + "/vps", &info) == 0 && info.st_size == off_t(size) && Int(info.st_blocks) * 512 < 2 << 20)
        }
    }

    /// A warm migration's passes: each sends only the chunks that changed since the one before
    /// (rewritten, new, or zeros again), and the image arrives as it was at the last pass.
    @Test func laterPassesSendOnlyWhatChanged() async throws {
        try await withReceiver { client, dir, incoming in
            let chunk = ImageTransfer.chunkSize
            let size: UInt64 = 16 << 20
            let path = dir + "/image"
            let fd = open(path, O_RDWR | O_CREAT, 0o600)
            defer { close(fd) }
            #expect(ftruncate(fd, off_t(size)) == 0)
            func put(_ byte: UInt8, chunks: Range<Int>) {
                let bytes = [UInt8](repeating: byte, count: chunks.count * chunk)
                _ = bytes.withUnsafeBytes { pwrite(fd, $0.baseAddress, bytes.count, off_t(chunks.lowerBound * chunk)) }
            }
            put(1, chunks: 0..<8)
            let transfer = try await call(client, name: "warm", size: size)
            let sender = try ImageSender(path, on: transfer, target: "n2")
            let first = try await sender.pass()
            #expect(first.chunks == 8 && first.bytes == 8 * UInt64(chunk))
            put(2, chunks: 3..<4)  // rewritten
            put(0, chunks: 5..<6)  // zeros again
            put(3, chunks: 20..<22)  // new
            let second = try await sender.pass()
            #expect(second.chunks == 4 && second.bytes == 3 * UInt64(chunk))
            let third = try await sender.pass()
            #expect(third.chunks == 0 && third.bytes == 0)
            try await sender.finish()
            _ = try await transfer.result()
            #expect(FileManager.default.contents(atPath: incoming + "/warm") == FileManager.default.contents(atPath: path))
        }
    }

    /// A target that takes no data (a cut link) fails the sender at the stall limit, not when
    /// TCP gives up.
    @Test func aSilentTargetFailsTheSenderAtTheStallLimit() async throws {
        try await withReceiver { client, dir, _ in
            let path = dir + "/image"
            // More than the stream's credit window, so that the sender must wait for the target.
            #expect(FileManager.default.createFile(atPath: path, contents: Data(repeating: 7, count: 8 << 20)))
            let transfer = try await call(client, name: "silent", size: 8 << 20)
            let sender = try ImageSender(path, on: transfer, target: "n2", stallLimit: .milliseconds(500))
            let began = ContinuousClock.now
            let error = await #expect(throws: WireError.self) { _ = try await sender.pass() }
            #expect(error?.code == .unavailable && error?.message == "n2 took no data for 500 ms (is the link to it down?)")
            #expect(ContinuousClock.now - began < .seconds(5))
            transfer.cancel()
        }
    }

    /// A stream whose records, end or digest table are wrong keeps nothing.
    @Test func aDamagedStreamKeepsNothing() async throws {
        func record(_ offset: UInt64, _ data: [UInt8]) -> [UInt8] {
            var buffer = ByteBuffer()
            buffer.writeInteger(offset)
            buffer.writeInteger(UInt32(data.count))
            buffer.writeBytes(data)
            return Array(buffer.readableBytesView)
        }
        /// The table digest of a one-chunk image holding `data` (Docs/wire.md, "Image transfer").
        func table(_ data: [UInt8]) -> [UInt8] {
            var entry = ByteBuffer()
            entry.writeInteger(UInt64(0))
            entry.writeBytes(Array(SHA256.hash(data: data)))
            return Array(SHA256.hash(data: Array(entry.readableBytesView)))
        }
        let data = [UInt8](repeating: 9, count: 64 << 10)  // the image's one chunk, whole
        let good = record(0, data)
        let digest = table(data)
        let cases: [(String, [[UInt8]], String)] = [
            ("digest", [good, record(UInt64.max, digest.map { $0 ^ 1 })], "chunk digests"),
            ("changed", [good, record(UInt64.max, table(data.map { $0 ^ 1 }))], "chunk digests"),
            ("cut", [good], "ended before the image's trailer"),
            ("beyond", [record(1 << 20, data), record(UInt64.max, digest)], "not the start of a chunk"),
            ("off-grid", [record(4096, Array(data[0..<4096])), record(UInt64.max, digest)], "not the start of a chunk"),
            ("short", [record(0, Array(data[0..<1000])), record(UInt64.max, digest)], "a record of 1000 bytes for chunk 0"),
            ("after", [good, record(UInt64.max, digest), good], "after the image's trailer"),
        ]
        try await withReceiver { client, _, incoming in
            for (name, chunks, message) in cases {
                let transfer = try await call(client, name: name, size: 64 << 10)
                for chunk in chunks { try? await transfer.send(.stdin, chunk).get() }
                transfer.sendEnd(.stdin)
                let error = await #expect(throws: WireError.self) { _ = try await transfer.result() }
                #expect(error?.message.contains(message) == true, "\(name): \(error?.message ?? "")")
            }
            #expect(try FileManager.default.contentsOfDirectory(atPath: incoming).isEmpty)
            // Negative control: the good stream is kept.
            let transfer = try await call(client, name: "good", size: 64 << 10)
            for chunk in [good, record(UInt64.max, digest)] { try await transfer.send(.stdin, chunk).get() }
            transfer.sendEnd(.stdin)
            _ = try await transfer.result()
            #expect(FileManager.default.contents(atPath: incoming + "/good") == Data(data))
        }
    }
}
