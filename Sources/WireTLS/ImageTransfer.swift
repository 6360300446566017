import Crypto
import NIOCore
import Wire

#if canImport(Glibc)
    import Glibc
#endif

/// A disk image on a call's channel 0 as chunk records (Docs/wire.md, "Image transfer"). The
/// image is cut into chunks of `chunkSize` bytes (the last one shorter); a record replaces one
/// chunk on the receiver, so a chunk may be sent again in a later pass of a warm migration:
///
///     data     offset u64 | length u32 | length bytes   (a whole chunk at its own offset)
///     zeros    offset u64 | 0x80000000 + length         (the chunk is zeros again: no bytes follow)
///     trailer  0xFFFFFFFFFFFFFFFF | 32 | table digest    (then END)
///
/// (big-endian). Holes and chunks of zeros are never sent. Each end keeps the SHA-256 of every
/// chunk the receiver holds; the table digest is the SHA-256 of (index u64 | digest) for each
/// chunk that is not zeros, in index order. The sender's table says what its image is at the
/// end; the receiver's says what it wrote. They must match: a record cut short, a stream
/// without its trailer, a record off the chunk grid or beyond the image, or one changed chunk
/// is refused, and the file is removed.
public enum ImageTransfer {
    /// The chunk: the unit of change between passes, of records, and of the digest table.
    public static let chunkSize = 256 << 10
    static let headerSize = 12
    static let trailerOffset = UInt64.max
    static let zerosFlag: UInt32 = 1 << 31
    /// lseek's whence for the next data (Linux; Glibc exports it only with _GNU_SOURCE).
    static let seekData: Int32 = 3

    static func chunkCount(_ size: UInt64) -> Int { Int((size + UInt64(chunkSize) - 1) / UInt64(chunkSize)) }

    static func chunkLength(_ index: Int, size: UInt64) -> Int {
        Int(min(UInt64(chunkSize), size - UInt64(index) * UInt64(chunkSize)))
    }

    /// The digest both ends compare in the trailer.
    static func tableDigest(_ table: [SHA256Digest?]) -> [UInt8] {
        var hasher = SHA256()
        for (index, digest) in table.enumerated() {
            guard let digest else { continue }
            var entry = ByteBuffer()
            entry.writeInteger(UInt64(index))
            entry.writeBytes(Array(digest))
            entry.withUnsafeReadableBytes { hasher.update(bufferPointer: $0) }
        }
        return Array(hasher.finalize())
    }

    /// Receives an image of `size` bytes from `input` into `destination` (created here, mode
    /// 0600; it must not exist): every pass the sender makes, until the trailer. Throws,
    /// removing the file, when the stream is not whole.
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
        var table = [SHA256Digest?](repeating: nil, count: chunkCount(size))
        var pending = ByteBuffer()
        var whole = false
        var ended = false
        loop: for await item in input {
            switch item {
            case .data(.stdin, var bytes):
                guard !whole else { throw refused("bytes arrived after the image's trailer") }
                pending.writeBuffer(&bytes)
                while pending.readableBytes >= headerSize, !whole {
                    let offset = pending.getInteger(at: pending.readerIndex, as: UInt64.self)!
                    let word = pending.getInteger(at: pending.readerIndex + 8, as: UInt32.self)!
                    if offset == trailerOffset {
                        guard word == SHA256.byteCount else { throw refused("a trailer of \(word) bytes") }
                        guard pending.readableBytes >= headerSize + SHA256.byteCount else { break }
                        let digest = Array(pending.getBytes(at: pending.readerIndex + headerSize, length: SHA256.byteCount)!)
                        guard digest == tableDigest(table) else {
                            throw refused("the chunk digests of the received image do not match the sender's")
                        }
                        pending.moveReaderIndex(forwardBy: headerSize + SHA256.byteCount)
                        whole = true
                        break
                    }
                    let zeros = word & zerosFlag != 0
                    let length = Int(word & ~zerosFlag)
                    guard offset < size, offset % UInt64(chunkSize) == 0 else {
                        throw refused("a record at \(offset), which is not the start of a chunk of the \(size)-byte image")
                    }
                    let index = Int(offset / UInt64(chunkSize))
                    guard length == chunkLength(index, size: size) else {
                        throw refused("a record of \(length) bytes for chunk \(index), which holds \(chunkLength(index, size: size))")
                    }
                    if zeros {
                        try clear(fd, offset: offset, length: length, destination)
                        table[index] = nil
                        pending.moveReaderIndex(forwardBy: headerSize)
                        continue
                    }
                    guard pending.readableBytes >= headerSize + length else { break }
                    try pending.withUnsafeReadableBytes { raw throws(WireError) in
                        let chunk = UnsafeRawBufferPointer(rebasing: raw[headerSize..<(headerSize + length)])
                        table[index] = SHA256.hash(data: chunk)
                        try write(fd, chunk, at: offset, destination)
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
        if !ended && Task.isCancelled {
            throw WireError(.cancelled, "\(field): the transfer was aborted (by the controller); nothing was kept", field: field)
        }
        guard ended, whole, pending.readableBytes == 0 else {
            throw refused(whole ? "bytes arrived after the image's trailer" : "the transfer ended before the image's trailer")
        }
        guard fsync(fd) == 0 else { throw failure("fsync \(destination)", stage: "fsync") }
        kept = true
    }

    static func write(_ fd: Int32, _ bytes: UnsafeRawBufferPointer, at offset: UInt64, _ path: String) throws(WireError) {
        var written = 0
        while written < bytes.count {
            let n = pwrite(fd, bytes.baseAddress! + written, bytes.count - written, off_t(offset) + off_t(written))
            if n < 0 && errno == EINTR { continue }
            guard n > 0 else { throw failure("write \(path)", stage: "pwrite") }
            written += n
        }
    }

    /// Makes a chunk zeros again (the VPS trimmed or zeroed it since an earlier pass sent it).
    /// Written as zeros: Glibc does not export fallocate's hole punching to Swift, and such
    /// chunks are few.
    static func clear(_ fd: Int32, offset: UInt64, length: Int, _ path: String) throws(WireError) {
        let zeros = UnsafeMutableRawBufferPointer.allocate(byteCount: length, alignment: 16)
        defer { zeros.deallocate() }
        zeros.initializeMemory(as: UInt8.self, repeating: 0)
        try write(fd, UnsafeRawBufferPointer(zeros), at: offset, path)
    }

    static func failure(_ what: String, stage: String) -> WireError {
        let code = errno
        return WireError(.kernel, "\(what): \(String(cString: strerror(code)))", stage: stage, errno: code)
    }
}
