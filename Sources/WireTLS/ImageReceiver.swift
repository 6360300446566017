import Crypto
import NIOCore
import Wire

#if canImport(Glibc)
    import Glibc
#endif

/// The receiving end of an image transfer (`ImageTransfer`): applies chunk records to a new
/// file and keeps the digest of every chunk it holds. A connection that drops leaves it as it
/// was after its last whole record, so that the sender can resume on a new connection: it is
/// told the table (`tableRecords`) and sends what differs from it.
public final class ImageReceiver: @unchecked Sendable {
    public enum Outcome: Sendable, Equatable {
        /// The trailer matched and END followed.
        case whole
        /// The input ended without END (its connection dropped).
        case cut
    }

    let destination: String
    let size: UInt64
    let field: String
    let fd: Int32
    var table: [ChunkDigest?]
    var kept = false

    /// Creates `destination` (mode 0600; it must not exist), sized `size`. The file is removed
    /// unless `keep` is called.
    public init(into destination: String, size: UInt64, field: String) throws {
        guard size <= FileTransfer.maxSize else {
            throw WireError(.invalidArgument, "\(field): \(size) bytes is more than the \(FileTransfer.maxSize >> 30) GiB a transfer may carry", field: field)
        }
        fd = Glibc.open(destination, O_WRONLY | O_CREAT | O_EXCL | O_CLOEXEC | O_NOFOLLOW, 0o600)
        guard fd >= 0 else { throw ImageTransfer.failure("create \(destination)", stage: "create") }
        guard ftruncate(fd, off_t(size)) == 0 else {
            let error = ImageTransfer.failure("size \(destination)", stage: "ftruncate")
            close(fd)
            unlink(destination)
            throw error
        }
        self.destination = destination
        self.size = size
        self.field = field
        table = Array(repeating: nil, count: ImageTransfer.chunkCount(size))
    }

    deinit {
        close(fd)
        if !kept { unlink(destination) }
    }

    /// The chunks it holds, for a sender that resumes (`ImageTransfer.tableRecords`).
    public var tableRecords: ByteBuffer { ImageTransfer.tableRecords(table) }

    /// Applies the records on `input` until the trailer and END (`whole`), or until the input
    /// ends without END (`cut`: a partial record is dropped, the whole ones stay). Throws when
    /// the stream is damaged, or when the caller is cancelled.
    public func apply(_ input: CreditedStream<StreamInput>) async throws -> Outcome {
        func refused(_ why: String) -> WireError { WireError(.invalidArgument, "\(field): \(why); nothing was kept", field: field) }
        var pending = ByteBuffer()
        var whole = false
        loop: for await item in input {
            switch item {
            case .data(.stdin, var bytes):
                guard !whole else { throw refused("bytes arrived after the image's trailer") }
                pending.writeBuffer(&bytes)
                while pending.readableBytes >= ImageTransfer.headerSize, !whole {
                    let offset = pending.getInteger(at: pending.readerIndex, as: UInt64.self)!
                    let word = pending.getInteger(at: pending.readerIndex + 8, as: UInt32.self)!
                    if offset == ImageTransfer.trailerOffset {
                        guard word == SHA256.byteCount else { throw refused("a trailer of \(word) bytes") }
                        guard pending.readableBytes >= ImageTransfer.headerSize + SHA256.byteCount else { break }
                        let digest = Array(pending.getBytes(at: pending.readerIndex + ImageTransfer.headerSize, length: SHA256.byteCount)!)
                        guard digest == ImageTransfer.tableDigest(table) else {
                            throw refused("the chunk digests of the received image do not match the sender's")
                        }
                        pending.moveReaderIndex(forwardBy: ImageTransfer.headerSize + SHA256.byteCount)
                        whole = true
                        break
                    }
                    let zeros = word & ImageTransfer.zerosFlag != 0
                    let length = Int(word & ~ImageTransfer.zerosFlag)
                    let chunk = UInt64(ImageTransfer.chunkSize)
                    guard offset < size, offset % chunk == 0 else {
                        throw refused("a record at \(offset), which is not the start of a chunk of the \(size)-byte image")
                    }
                    let index = Int(offset / chunk)
                    guard length == ImageTransfer.chunkLength(index, size: size) else {
                        throw refused("a record of \(length) bytes for chunk \(index), which holds \(ImageTransfer.chunkLength(index, size: size))")
                    }
                    if zeros {
                        try ImageTransfer.clear(fd, offset: offset, length: length, destination)
                        table[index] = nil
                        pending.moveReaderIndex(forwardBy: ImageTransfer.headerSize)
                        continue
                    }
                    guard pending.readableBytes >= ImageTransfer.headerSize + length else { break }
                    let (fd, destination) = (self.fd, self.destination)
                    let digest = try pending.withUnsafeReadableBytes { raw throws(WireError) -> ChunkDigest in
                        let bytes = UnsafeRawBufferPointer(rebasing: raw[ImageTransfer.headerSize..<(ImageTransfer.headerSize + length)])
                        try ImageTransfer.write(fd, bytes, at: offset, destination)
                        return ChunkDigest(SHA256.hash(data: bytes))
                    }
                    table[index] = digest
                    pending.moveReaderIndex(forwardBy: ImageTransfer.headerSize + length)
                }
                pending.discardReadBytes()
            case .end(.stdin):
                guard whole, pending.readableBytes == 0 else {
                    throw refused(whole ? "bytes arrived after the image's trailer" : "the transfer ended before the image's trailer")
                }
                return .whole
            default:
                continue
            }
        }
        if Task.isCancelled {
            throw WireError(.cancelled, "\(field): the transfer was aborted (by the controller); nothing was kept", field: field)
        }
        return .cut
    }

    /// Makes the file durable and keeps it.
    public func keep() throws {
        guard fsync(fd) == 0 else { throw ImageTransfer.failure("fsync \(destination)", stage: "fsync") }
        kept = true
    }
}
