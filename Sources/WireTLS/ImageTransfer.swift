import Crypto
import NIOCore
import Wire

#if canImport(Glibc)
    import Glibc
#endif

/// A disk image on a call's channel 0 as extent records (Docs/wire.md, "Image transfer"): only
/// the image's data moves, never its holes or blocks of zeros, and the receiver rebuilds a sparse
/// file of the announced size.
///
///     record   offset u64 | length u32 | length bytes     (big-endian; length 1 … 4 MiB)
///     trailer  0xFFFFFFFFFFFFFFFF | 32 | SHA-256 of every byte of the stream before the trailer
///
/// The trailer proves the stream whole: a record cut short, a stream without its trailer, a
/// record beyond the image's size or a digest that does not match is refused and the file removed.
public enum ImageTransfer {
    static let headerSize = 12
    static let trailerOffset = UInt64.max
    static let maxRecord = 4 << 20
    /// lseek's whence values for data and holes (Linux; Glibc exports them only with _GNU_SOURCE).
    static let seekData: Int32 = 3
    static let seekHole: Int32 = 4

    /// Sends the image at `path` as extent records, then END; `pace` is awaited before each
    /// record with its size (a node's bandwidth limit), `progress` gets the image bytes passed
    /// over so far (holes included) and the image's size. Returns the bytes of data sent.
    @discardableResult
    public static func send(
        _ path: String, on call: ClientCall, pace: (Int) async -> Void = { _ in }, progress: (_ done: UInt64, _ size: UInt64) -> Void = { _, _ in }
    ) async throws -> UInt64 {
        let fd = try FileTransfer.open(path)
        defer { close(fd) }
        var info = stat()
        guard fstat(fd, &info) == 0 else { throw failure("stat \(path)", stage: "fstat") }
        let size = UInt64(info.st_size)
        var hasher = SHA256()
        var buffer = [UInt8](repeating: 0, count: FileTransfer.chunkSize)
        var sent: UInt64 = 0
        var position: off_t = 0
        while UInt64(position) < size {
            // The next run of data, from `start` to the hole after it. A file system without
            // SEEK_DATA gives the whole rest as data.
            var start = lseek(fd, position, seekData)
            if start < 0 {
                if errno == ENXIO { break }  // only a hole is left
                guard errno == EINVAL else { throw failure("seek \(path)", stage: "lseek") }
                start = position
            }
            var end = lseek(fd, start, seekHole)
            if end < 0 { end = off_t(size) }
            var offset = start
            while offset < end {
                let want = min(buffer.count, Int(end - offset))
                let count = buffer.withUnsafeMutableBytes { pread(fd, $0.baseAddress, want, offset) }
                guard count > 0 else {
                    if count < 0 && errno == EINTR { continue }
                    throw failure("read \(path)", stage: "pread")
                }
                if !buffer.withUnsafeBytes({ FileTransfer.isAllZero(UnsafeRawBufferPointer(rebasing: $0.prefix(count))) }) {
                    var record = ByteBuffer()
                    record.reserveCapacity(headerSize + count)
                    record.writeInteger(UInt64(offset))
                    record.writeInteger(UInt32(count))
                    record.writeBytes(buffer[0..<count])
                    record.withUnsafeReadableBytes { hasher.update(bufferPointer: $0) }
                    await pace(record.readableBytes)
                    try await call.send(.stdin, Array(record.readableBytesView)).get()
                    sent += UInt64(count)
                }
                offset += off_t(count)
                progress(UInt64(offset), size)
            }
            position = end
        }
        var trailer = ByteBuffer()
        trailer.writeInteger(trailerOffset)
        trailer.writeInteger(UInt32(SHA256.byteCount))
        trailer.writeBytes(Array(hasher.finalize()))
        try await call.send(.stdin, Array(trailer.readableBytesView)).get()
        call.sendEnd(.stdin)
        progress(size, size)
        return sent
    }

    /// Receives an image of `size` bytes from `input` into `destination` (created here, mode
    /// 0600; it must not exist). Throws, removing the file, when the stream is not whole.
    public static func receive(into destination: String, size: UInt64, from input: CreditedStream<StreamInput>, field: String) async throws {
        guard size <= FileTransfer.maxSize else {
            throw WireError(.invalidArgument, "\(field): \(size) bytes is more than the \(FileTransfer.maxSize >> 30) GiB a transfer may carry", field: field)
        }
        let fd = Glibc.open(destination, O_WRONLY | O_CREAT | O_EXCL | O_CLOEXEC | O_NOFOLLOW, 0o600)
        guard fd >= 0 else { throw failure("create \(destination)", stage: "create") }
        var kept = false
        defer {
            close(fd)
            if !kept { unlink(destination) }
        }
        guard ftruncate(fd, off_t(size)) == 0 else { throw failure("size \(destination)", stage: "ftruncate") }
        func refused(_ why: String) -> WireError { WireError(.invalidArgument, "\(field): \(why); nothing was kept", field: field) }
        var pending = ByteBuffer()
        var hasher = SHA256()
        var whole = false
        var ended = false
        loop: for await item in input {
            switch item {
            case .data(.stdin, var bytes):
                guard !whole else { throw refused("bytes arrived after the image's trailer") }
                pending.writeBuffer(&bytes)
                while pending.readableBytes >= headerSize, !whole {
                    let offset = pending.getInteger(at: pending.readerIndex, as: UInt64.self)!
                    let length = Int(pending.getInteger(at: pending.readerIndex + 8, as: UInt32.self)!)
                    if offset == trailerOffset {
                        guard length == SHA256.byteCount else { throw refused("a trailer of \(length) bytes") }
                        guard pending.readableBytes >= headerSize + length else { break }
                        let digest = Array(pending.getBytes(at: pending.readerIndex + headerSize, length: length)!)
                        guard digest == Array(hasher.finalize()) else { throw refused("the SHA-256 of the received image does not match the sender's") }
                        pending.moveReaderIndex(forwardBy: headerSize + length)
                        whole = true
                        break
                    }
                    guard length > 0, length <= maxRecord else { throw refused("a record of \(length) bytes") }
                    guard offset.addingReportingOverflow(UInt64(length)).partialValue <= size, offset < size else {
                        throw refused("a record at \(offset)+\(length) beyond the image's \(size) bytes")
                    }
                    guard pending.readableBytes >= headerSize + length else { break }
                    pending.withUnsafeReadableBytes { hasher.update(bufferPointer: UnsafeRawBufferPointer(rebasing: $0.prefix(headerSize + length))) }
                    try pending.withUnsafeReadableBytes { raw throws(WireError) in
                        var written = 0
                        while written < length {
                            let n = pwrite(fd, raw.baseAddress! + headerSize + written, length - written, off_t(offset) + off_t(written))
                            if n < 0 && errno == EINTR { continue }
                            guard n > 0 else { throw failure("write \(destination)", stage: "pwrite") }
                            written += n
                        }
                    }
                    pending.moveReaderIndex(forwardBy: headerSize + length)
                }
                pending.discardReadBytes()
            case .end(.stdin):
                ended = true
                break loop
            default:
                continue
            }
        }
        guard ended, whole, pending.readableBytes == 0 else {
            throw refused(whole ? "bytes arrived after the image's trailer" : "the transfer ended before the image's trailer")
        }
        guard fsync(fd) == 0 else { throw failure("fsync \(destination)", stage: "fsync") }
        kept = true
    }

    static func failure(_ what: String, stage: String) -> WireError {
        let code = errno
        return WireError(.kernel, "\(what): \(String(cString: strerror(code)))", stage: stage, errno: code)
    }
}
