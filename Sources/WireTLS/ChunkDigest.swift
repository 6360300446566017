import Crypto
import NIOCore

/// The SHA-256 of one chunk of an image (`ImageTransfer`), as both ends keep it in their tables
/// and a receiver sends it to a resuming sender.
struct ChunkDigest: Equatable, Sendable {
    let words: (UInt64, UInt64, UInt64, UInt64)

    init(_ digest: SHA256Digest) {
        var buffer = ByteBuffer(bytes: Array(digest))
        words = (buffer.readInteger()!, buffer.readInteger()!, buffer.readInteger()!, buffer.readInteger()!)
    }

    /// The next 32 bytes of `buffer` (nil when fewer are left).
    init?(reading buffer: inout ByteBuffer) {
        guard buffer.readableBytes >= 32 else { return nil }
        words = (buffer.readInteger()!, buffer.readInteger()!, buffer.readInteger()!, buffer.readInteger()!)
    }

    func write(to buffer: inout ByteBuffer) {
        buffer.writeInteger(words.0)
        buffer.writeInteger(words.1)
        buffer.writeInteger(words.2)
        buffer.writeInteger(words.3)
    }

    static func == (a: ChunkDigest, b: ChunkDigest) -> Bool { a.words == b.words }
}
