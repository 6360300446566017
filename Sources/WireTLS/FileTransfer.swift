import Crypto
import NIOCore
import Wire

#if canImport(Glibc)
    import Glibc
#endif

/// File transfer on a call's stream (Docs/wire.md, "File transfer"): the request names the
/// size and SHA-256; the bytes follow as DATA on channel 0 under the stream's credit, then END.
/// The receiver writes them to a new file and keeps it only when size and digest match; runs of
/// zeros it skips, so a sparse file (a VPS's disk image) arrives sparse.
public enum FileTransfer {
    /// DATA payload per frame when sending a file.
    public static let chunkSize = 256 << 10
    /// Larger uploads are refused before a byte is stored.
    public static let maxSize: UInt64 = 64 << 30

    /// Size and lower-case hex SHA-256 of the file at `path`.
    public static func digest(of path: String) throws(WireError) -> (size: UInt64, sha256: String) {
        let fd = try open(path)
        defer { close(fd) }
        var hasher = SHA256()
        var size: UInt64 = 0
        var buffer = [UInt8](repeating: 0, count: chunkSize)
        while true {
            let count = try read(fd, &buffer, path)
            if count == 0 { break }
            hasher.update(data: buffer[0..<count])
            size += UInt64(count)
        }
        return (size, hex(hasher.finalize()))
    }

    /// Sends the file at `path` on `call`'s channel 0, then END; `progress` gets the bytes sent.
    public static func send(_ path: String, on call: ClientCall, progress: (UInt64) -> Void = { _ in }) async throws {
        let fd = try open(path)
        defer { close(fd) }
        var buffer = [UInt8](repeating: 0, count: chunkSize)
        var sent: UInt64 = 0
        while true {
            let count = try read(fd, &buffer, path)
            if count == 0 { break }
            try await call.send(.stdin, Array(buffer[0..<count])).get()
            sent += UInt64(count)
            progress(sent)
        }
        call.sendEnd(.stdin)
    }

    /// Receives a file announced as `size` bytes with `sha256` from `input` into `destination`
    /// (created here, mode 0600; it must not exist). Throws, removing the file, when the bytes
    /// do not match the announcement.
    public static func receive(
        into destination: String, size: UInt64, sha256: String,
        from input: CreditedStream<StreamInput>, field: String
    ) async throws {
        guard size <= maxSize else {
            throw WireError(.invalidArgument, "\(field): \(size) bytes is more than the \(maxSize >> 30) GiB a transfer may carry", field: field)
        }
        guard sha256.count == 64, sha256.allSatisfy({ $0.isHexDigit && !$0.isUppercase }) else {
            throw WireError(.invalidArgument, "\(field): sha256 must be 64 lower-case hex digits", field: field)
        }
        let fd = Glibc.open(destination, O_WRONLY | O_CREAT | O_EXCL | O_CLOEXEC | O_NOFOLLOW, 0o600)
        guard fd >= 0 else { throw WireError(.kernel, "create \(destination): \(String(cString: strerror(errno)))", stage: "create", errno: errno) }
        var kept = false
        defer {
            close(fd)
            if !kept { unlink(destination) }
        }
        var hasher = SHA256()
        var received: UInt64 = 0
        var ended = false
        for await item in input {
            switch item {
            case .data(.stdin, let bytes):
                received += UInt64(bytes.readableBytes)
                guard received <= size else {
                    throw WireError(.invalidArgument, "\(field): more bytes arrived than the \(size) announced", field: field)
                }
                bytes.withUnsafeReadableBytes { hasher.update(bufferPointer: $0) }
                // Zeros are skipped, not written: a disk image stays as sparse as it was sent.
                if isAllZero(bytes) {
                    guard lseek(fd, off_t(bytes.readableBytes), SEEK_CUR) >= 0 else {
                        throw WireError(.kernel, "seek \(destination): \(String(cString: strerror(errno)))", stage: "lseek", errno: errno)
                    }
                } else {
                    try writeAll(fd: fd, bytes, what: destination)
                }
            case .end(.stdin):
                ended = true
            default:
                continue
            }
            if ended { break }
        }
        guard ended, received == size else {
            throw WireError(.invalidArgument, "\(field): the transfer ended after \(received) of \(size) bytes", field: field)
        }
        let digest = hex(hasher.finalize())
        guard digest == sha256 else {
            throw WireError(.invalidArgument, "\(field): sha256 of the received bytes is \(digest), not the \(sha256) announced", field: field)
        }
        guard ftruncate(fd, off_t(size)) == 0 else {
            throw WireError(.kernel, "truncate \(destination): \(String(cString: strerror(errno)))", stage: "ftruncate", errno: errno)
        }
        guard fsync(fd) == 0 else { throw WireError(.kernel, "fsync \(destination): \(String(cString: strerror(errno)))", stage: "fsync", errno: errno) }
        kept = true
    }

    /// The archive formats a template upload may announce.
    public static let tarFormats = ["tar", "tar.gz", "tar.xz"]

    /// "tar", "tar.gz" or "tar.xz" from a file name; nil for anything else.
    public static func tarFormat(of path: String) -> String? {
        let lower = path.lowercased()
        if lower.hasSuffix(".tar") { return "tar" }
        if lower.hasSuffix(".tar.gz") || lower.hasSuffix(".tgz") { return "tar.gz" }
        if lower.hasSuffix(".tar.xz") { return "tar.xz" }
        return nil
    }

    static func open(_ path: String) throws(WireError) -> Int32 {
        let fd = Glibc.open(path, O_RDONLY | O_CLOEXEC)
        guard fd >= 0 else { throw WireError(.notFound, "cannot open \(path): \(String(cString: strerror(errno)))", field: "file") }
        return fd
    }

    static func read(_ fd: Int32, _ buffer: inout [UInt8], _ path: String) throws(WireError) -> Int {
        while true {
            let count = buffer.withUnsafeMutableBytes { Glibc.read(fd, $0.baseAddress, $0.count) }
            if count >= 0 { return count }
            if errno != EINTR { throw WireError(.kernel, "read \(path): \(String(cString: strerror(errno)))", stage: "read", errno: errno) }
        }
    }

    static func hex(_ digest: SHA256.Digest) -> String { hexString(digest) }

    /// Whether every byte of `bytes` is 0, by memcmp against a block of zeros (a byte loop is
    /// slow in debug builds, and a disk image's holes are most of what a transfer checks).
    static func isAllZero(_ bytes: ByteBuffer) -> Bool {
        bytes.withUnsafeReadableBytes { isAllZero($0) }
    }

    static func isAllZero(_ raw: UnsafeRawBufferPointer) -> Bool {
        guard let base = raw.baseAddress else { return true }
        var offset = 0
        while offset < raw.count {
            let length = min(zeroBlock.count, raw.count - offset)
            if zeroBlock.withUnsafeBytes({ memcmp(base + offset, $0.baseAddress!, length) }) != 0 { return false }
            offset += length
        }
        return true
    }

    static let zeroBlock = [UInt8](repeating: 0, count: 64 << 10)
}
