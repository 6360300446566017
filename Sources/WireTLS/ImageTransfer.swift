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
    static func tableDigest(_ table: [ChunkDigest?]) -> [UInt8] {
        var hasher = SHA256()
        for (index, digest) in table.enumerated() {
            guard let digest else { continue }
            var entry = ByteBuffer()
            entry.writeInteger(UInt64(index))
            digest.write(to: &entry)
            entry.withUnsafeReadableBytes { hasher.update(bufferPointer: $0) }
        }
        return Array(hasher.finalize())
    }

    /// Receives an image of `size` bytes from `input` into `destination` (created here, mode
    /// 0600; it must not exist): every pass the sender makes, until the trailer. Throws,
    /// removing the file, when the stream is not whole.
    public static func receive(into destination: String, size: UInt64, from input: CreditedStream<StreamInput>, field: String) async throws {
        let receiver = try ImageReceiver(into: destination, size: size, field: field)
        guard try await receiver.apply(input) == .whole else {
            throw WireError(.invalidArgument, "\(field): the transfer ended before the image's trailer; nothing was kept", field: field)
        }
        try receiver.keep()
    }

    /// A table of chunk digests as a resuming sender reads it: (index u64 | digest) per chunk
    /// that is not zeros.
    static func tableRecords(_ table: [ChunkDigest?]) -> ByteBuffer {
        var records = ByteBuffer()
        for (index, digest) in table.enumerated() {
            guard let digest else { continue }
            records.writeInteger(UInt64(index))
            digest.write(to: &records)
        }
        return records
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
