import Crypto
import Foundation
import NIOCore
import Wire

#if canImport(Glibc)
    import Glibc
#endif

/// The sending end of an image transfer (`ImageTransfer`): one pass sends every chunk whose
/// content is not what the receiver holds, so a warm migration repeats passes while the VPS
/// runs and each sends only what changed since the one before. `finish` sends the trailer.
public final class ImageSender {
    /// What one pass sent and how long it took.
    public struct Pass: Sendable {
        /// Bytes of chunk data sent (zero records carry none).
        public var bytes: UInt64 = 0
        /// Chunks sent: changed data, and chunks that became zeros.
        public var chunks = 0
        public var seconds: Double = 0

        public init(bytes: UInt64 = 0, chunks: Int = 0, seconds: Double = 0) {
            self.bytes = bytes
            self.chunks = chunks
            self.seconds = seconds
        }
    }

    let path: String
    let fd: Int32
    public let size: UInt64
    public private(set) var call: ClientCall
    /// The receiver's name, and how long it may take no data before the transfer fails.
    let target: String
    let stallLimit: TimeAmount
    let pace: (Int) async -> Void
    /// Per chunk, the digest of what the receiver holds (nil: zeros).
    var held: [ChunkDigest?]
    var buffer: [UInt8]

    /// Opens the image at `path` for transfers on `call` to `target`, which fail once it takes
    /// no data for `stallLimit`; `pace` is awaited before each record with its size (a node's
    /// bandwidth limit).
    public init(
        _ path: String, on call: ClientCall, target: String, stallLimit: TimeAmount = .seconds(30), pace: @escaping (Int) async -> Void = { _ in }
    ) throws {
        fd = try FileTransfer.open(path)
        var info = stat()
        guard fstat(fd, &info) == 0 else {
            let error = ImageTransfer.failure("stat \(path)", stage: "fstat")
            close(fd)
            throw error
        }
        self.path = path
        self.call = call
        self.target = target
        self.stallLimit = stallLimit
        self.pace = pace
        size = UInt64(info.st_size)
        held = Array(repeating: nil, count: ImageTransfer.chunkCount(size))
        buffer = Array(repeating: 0, count: ImageTransfer.chunkSize)
    }

    deinit { close(fd) }

    /// Sends every chunk that differs from what the receiver holds; `progress` gets the image
    /// bytes passed over so far (holes included) and the image's size.
    public func pass(progress: (_ done: UInt64, _ size: UInt64) -> Void = { _, _ in }) async throws -> Pass {
        let began = ContinuousClock.now
        var pass = Pass()
        let chunk = UInt64(ImageTransfer.chunkSize)
        var index = 0
        while index < held.count {
            // Chunks wholly inside a hole are zeros without being read. A file system without
            // SEEK_DATA gives every offset as data.
            let offset = UInt64(index) * chunk
            var dataAt = lseek(fd, off_t(offset), ImageTransfer.seekData)
            if dataAt < 0 {
                if errno == ENXIO {
                    dataAt = off_t(size)
                } else {
                    guard errno == EINVAL else { throw ImageTransfer.failure("seek \(path)", stage: "lseek") }
                    dataAt = off_t(offset)
                }
            }
            let firstWithData = min(Int(UInt64(dataAt) / chunk), held.count)
            while index < firstWithData {
                try await sendZeros(index, &pass)
                index += 1
            }
            guard index < held.count else { break }
            let length = ImageTransfer.chunkLength(index, size: size)
            try read(length, at: UInt64(index) * chunk)
            let zeros = buffer.withUnsafeBytes { FileTransfer.isAllZero(UnsafeRawBufferPointer(rebasing: $0.prefix(length))) }
            if zeros {
                try await sendZeros(index, &pass)
            } else {
                let digest = buffer.withUnsafeBytes { ChunkDigest(SHA256.hash(data: UnsafeRawBufferPointer(rebasing: $0.prefix(length)))) }
                if held[index] != digest {
                    var record = ByteBuffer()
                    record.reserveCapacity(ImageTransfer.headerSize + length)
                    record.writeInteger(UInt64(index) * chunk)
                    record.writeInteger(UInt32(length))
                    record.writeBytes(buffer[0..<length])
                    try await transmit(record)
                    held[index] = digest
                    pass.bytes += UInt64(length)
                    pass.chunks += 1
                }
            }
            index += 1
            progress(min(UInt64(index) * chunk, size), size)
        }
        pass.seconds = (ContinuousClock.now - began) / .seconds(1)
        return pass
    }

    /// Goes on over `call`, a resumed transfer on a new connection: reads the chunks the
    /// receiver holds (its table, then END on channel 1) and takes them as what it holds, so
    /// that the next pass sends what differs. Throws what the receiver answered instead.
    public func resume(on call: ClientCall) async throws {
        let (target, limit) = (self.target, stallLimit)
        // A new connection that goes silent too must not hold the migration.
        var records = try await withThrowingTaskGroup(of: ByteBuffer?.self) { group in
            group.addTask {
                var records = ByteBuffer()
                for await event in call.events {
                    switch event {
                    case .data(.stdout, var bytes): records.writeBuffer(&bytes)
                    case .end(.stdout): return records
                    case .failure(let error): throw error
                    case .response: throw WireError(.protocolViolation, "\(target) answered a resumed transfer before it was sent")
                    default: continue
                    }
                }
                return nil
            }
            group.addTask {
                try await Task.sleep(for: .nanoseconds(limit.nanoseconds))
                throw WireError(.unavailable, "\(target) sent no chunk table within \(limit.nanoseconds / 1_000_000_000) s of a resume")
            }
            defer { group.cancelAll() }
            guard let records = try await group.next() ?? nil else {
                throw WireError(.unavailable, "\(target) closed the resumed transfer before its chunk table")
            }
            return records
        }
        guard records.readableBytes % (8 + SHA256.byteCount) == 0 else {
            throw WireError(.protocolViolation, "\(target) sent a chunk table of \(records.readableBytes) bytes")
        }
        var table = [ChunkDigest?](repeating: nil, count: held.count)
        while let index = records.readInteger(as: UInt64.self).map(Int.init), let digest = ChunkDigest(reading: &records) {
            guard index < table.count else {
                throw WireError(.protocolViolation, "\(target) sent a chunk table entry for chunk \(index) of \(table.count)")
            }
            table[index] = digest
        }
        held = table
        self.call = call
    }

    /// The trailer, with the digest table of the image as the passes left it, then END.
    public func finish() async throws {
        var trailer = ByteBuffer()
        trailer.writeInteger(ImageTransfer.trailerOffset)
        trailer.writeInteger(UInt32(SHA256.byteCount))
        trailer.writeBytes(ImageTransfer.tableDigest(held))
        try await call.send(.stdin, trailer, within: stallLimit, peer: target).get()
        call.sendEnd(.stdin)
    }

    func sendZeros(_ index: Int, _ pass: inout Pass) async throws {
        guard held[index] != nil else { return }
        var record = ByteBuffer()
        record.writeInteger(UInt64(index) * UInt64(ImageTransfer.chunkSize))
        record.writeInteger(ImageTransfer.zerosFlag | UInt32(ImageTransfer.chunkLength(index, size: size)))
        try await transmit(record)
        held[index] = nil
        pass.chunks += 1
    }

    func transmit(_ record: ByteBuffer) async throws {
        await pace(record.readableBytes)
        do {
            try await call.send(.stdin, record, within: stallLimit, peer: target).get()
        } catch let error as WireError where error.code == .cancelled {
            // The target ended the call (its disk full, the grant refused): its error says why.
            _ = try await call.result(within: stallLimit, from: target)
            throw error
        }
    }

    func read(_ length: Int, at offset: UInt64) throws {
        var done = 0
        while done < length {
            let count = buffer.withUnsafeMutableBytes { pread(fd, $0.baseAddress! + done, length - done, off_t(offset) + off_t(done)) }
            if count < 0 && errno == EINTR { continue }
            // A file that shrank under us reads short: the rest is zeros.
            guard count >= 0 else { throw ImageTransfer.failure("read \(path)", stage: "pread") }
            if count == 0 {
                buffer.withUnsafeMutableBytes { _ = memset($0.baseAddress! + done, 0, length - done) }
                return
            }
            done += count
        }
    }
}
