import Foundation
import NIOCore
import NIOPosix
import Testing
import WireTLS

@testable import Wire

/// Receives template uploads into a directory, as the agent does, and answers ok.
struct UploadService: WireService {
    let directory: String

    func handle(_ request: Berth_V1_Request, stream: ServerStream) async throws -> Berth_V1_Response {
        guard case .templateUpload(let r) = request.call else { throw WireError(.invalidArgument, "unsupported") }
        try await FileTransfer.receive(
            into: directory + "/" + r.name, size: r.size, sha256: r.sha256,
            from: stream.input, field: "tarball")
        var response = Berth_V1_Response()
        response.ok = Berth_V1_Empty()
        return response
    }
}

@Suite(.serialized) struct FileTransferTests {
    /// A served directory, a client, and a local file of `bytes` to send.
    func withUploads(_ bytes: [UInt8], _ body: (WireClient, String, String) async throws -> Void) async throws {
        let dir = FileManager.default.temporaryDirectory.appendingPathComponent("berth-ft-\(getpid())-\(UInt32.random(in: 0...UInt32.max))").path
        try FileManager.default.createDirectory(atPath: dir + "/in", withIntermediateDirectories: true)
        defer { try? FileManager.default.removeItem(atPath: dir) }
        let source = dir + "/source.tar"
        try Data(bytes).write(to: URL(fileURLWithPath: source))
        let server = try await UnixWireServer.bind(
            path: dir + "/s.sock", service: UploadService(directory: dir + "/in"),
            group: MultiThreadedEventLoopGroup.singleton, allowedUIDs: [getuid()])
        let client = try await WireClient.connect(unixPath: dir + "/s.sock", group: MultiThreadedEventLoopGroup.singleton)
        try await body(client, source, dir + "/in")
        await client.close()
        await server.close()
    }

    func upload(_ client: WireClient, name: String, size: UInt64, sha256: String, send: (ClientCall) async throws -> Void) async throws {
        var request = Berth_V1_Request()
        request.templateUpload.name = name
        request.templateUpload.size = size
        request.templateUpload.sha256 = sha256
        let call = try await client.start(request)
        try? await send(call)
        _ = try await call.result()
    }

    @Test func aFileArrivesWholeUnderCredit() async throws {
        // Several windows' worth, not a multiple of the chunk size.
        let bytes = (0..<(3 * streamWindow + 12345)).map { UInt8(truncatingIfNeeded: $0 &* 7) }
        try await withUploads(bytes) { client, source, incoming in
            let (size, sha256) = try FileTransfer.digest(of: source)
            #expect(size == UInt64(bytes.count))
            try await upload(client, name: "good", size: size, sha256: sha256) { try await FileTransfer.send(source, on: $0) }
            #expect(FileManager.default.contents(atPath: incoming + "/good") == Data(bytes))
        }
    }

    /// Zeros are not written: a mostly empty image (a VPS's disk) arrives with the same bytes
    /// and few blocks, its trailing hole included.
    @Test func zerosArriveAsHoles() async throws {
        let chunk = FileTransfer.chunkSize
        var bytes = [UInt8](repeating: 0, count: 16 * chunk + 100)
        for i in 0..<1000 { bytes[3 * chunk + i] = UInt8(truncatingIfNeeded: i | 1) }
        try await withUploads(bytes) { client, source, incoming in
            let (size, sha256) = try FileTransfer.digest(of: source)
            try await upload(client, name: "sparse", size: size, sha256: sha256) { try await FileTransfer.send(source, on: $0) }
            #expect(FileManager.default.contents(atPath: incoming + "/sparse") == Data(bytes))
            var info = stat()
            #expect(stat(incoming + "/sparse", &info) == 0)
            #expect(info.st_size == off_t(bytes.count))
            // One written chunk's worth of 512-byte blocks (the rest are holes), with room for
            // a filesystem's rounding; the dense file would take 16 times as many.
            #expect(Int(info.st_blocks) * 512 <= 2 * chunk)
        }
    }

    @Test func wrongDigestShortAndLongTransfersAreRefusedAndLeaveNothing() async throws {
        let bytes = Array("not much of a tarball\n".utf8)
        try await withUploads(bytes) { client, source, incoming in
            let (size, sha256) = try FileTransfer.digest(of: source)
            let other = String(repeating: "0", count: 64)
            await #expect(throws: WireError.self) {
                try await upload(client, name: "digest", size: size, sha256: other) { try await FileTransfer.send(source, on: $0) }
            }
            await #expect(throws: WireError.self) {
                try await upload(client, name: "short", size: size + 1, sha256: sha256) { try await FileTransfer.send(source, on: $0) }
            }
            await #expect(throws: WireError.self) {
                try await upload(client, name: "long", size: size - 1, sha256: sha256) { try await FileTransfer.send(source, on: $0) }
            }
            await #expect(throws: WireError.self) {
                try await upload(client, name: "badhex", size: size, sha256: "XYZ") { try await FileTransfer.send(source, on: $0) }
            }
            #expect(try FileManager.default.contentsOfDirectory(atPath: incoming).isEmpty)
        }
    }

    @Test func tarFormats() {
        #expect(FileTransfer.tarFormat(of: "/x/a.tar") == "tar")
        #expect(FileTransfer.tarFormat(of: "/x/a.TGZ") == "tar.gz")
        #expect(FileTransfer.tarFormat(of: "/x/a.tar.xz") == "tar.xz")
        #expect(FileTransfer.tarFormat(of: "/x/a.zip") == nil)
    }
}
