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

    /// A sparse image arrives with the same bytes and stays sparse; only its data travels.
    @Test func onlyDataTravelsAndTheImageArrivesWhole() async throws {
        try await withReceiver { client, dir, incoming in
            let size: UInt64 = 64 << 20
            let path = dir + "/image"
            let fd = open(path, O_RDWR | O_CREAT, 0o600)
            defer { close(fd) }
            #expect(ftruncate(fd, off_t(size)) == 0)
            func put(_ bytes: [UInt8], at offset: Int) { _ = bytes.withUnsafeBytes { pwrite(fd, $0.baseAddress, bytes.count, off_t(offset)) } }
            put((0..<4096).map { UInt8(truncatingIfNeeded: $0 | 1) }, at: 0)
            put((0..<(300 << 10)).map { _ in UInt8.random(in: 1...255) }, at: 10 << 20)
            put([UInt8](repeating: 0, count: 1 << 20), at: 20 << 20)  // allocated, but zeros
            put([7], at: Int(size) - 1)
            fsync(fd)
            let transfer = try await call(client, name: "vps", size: size)
            let paced = Mutex(0)
            let sent = try await ImageTransfer.send(path, on: transfer, pace: { bytes in paced.withLock { $0 += bytes } })
            // Every record waited for the pace: its data and its 12-byte header.
            #expect(paced.withLock { $0 } > Int(sent) && paced.withLock { $0 } < Int(sent) + 12 * 64)
            _ = try await transfer.result()
            #expect(FileManager.default.contents(atPath: incoming + "/vps") == FileManager.default.contents(atPath: path))
            #expect(sent < 1 << 20)  // the data and the last block, not the zeros or the holes
            var info = stat()
            #expect(stat(incoming + "/vps", &info) == 0 && info.st_size == off_t(size) && Int(info.st_blocks) * 512 < 2 << 20)
        }
    }

    /// A stream whose digest, end or records are wrong keeps nothing.
    @Test func aDamagedStreamKeepsNothing() async throws {
        func record(_ offset: UInt64, _ data: [UInt8]) -> [UInt8] {
            var buffer = ByteBuffer()
            buffer.writeInteger(offset)
            buffer.writeInteger(UInt32(data.count))
            buffer.writeBytes(data)
            return Array(buffer.readableBytesView)
        }
        let data = [UInt8](repeating: 9, count: 1000)
        let good = record(0, data)
        let digest = Array(SHA256.hash(data: good))
        let cases: [(String, [[UInt8]], String)] = [
            ("digest", [good, record(UInt64.max, digest.map { $0 ^ 1 })], "SHA-256"),
            ("cut", [good], "ended before the image's trailer"),
            ("beyond", [record(1 << 20, data), record(UInt64.max, digest)], "beyond the image's"),
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
            #expect(FileManager.default.contents(atPath: incoming + "/good")?.prefix(1000) == Data(data))
        }
    }
}
