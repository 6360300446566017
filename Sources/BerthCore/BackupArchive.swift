/// A VPS backup (Docs/backup.md): one POSIX tar file that tar and sha256sum can open by hand.
/// Its members, in this order and no others:
///
///     berth-backup.json   the manifest (`BackupManifest`), first, so a reader knows what it
///                         holds before the disk comes (the controller places a restore by it)
///     config.json         the VPS's configuration as its node stored it
///     disk.zst.000000 …   the disk as one zstd stream cut into pieces of `pieceBytes`: the
///                         ext4 image of a loop VPS, or the `btrfs send` stream of a pool VPS's
///                         snapshot (`cat disk.zst.* | zstd -d` gives it back)
///     SHA256SUMS          `sha256sum -c` lines for every member before it, last: an archive cut
///                         short lacks it, and every byte before it is checked against it
///
/// The writer and reader are the agent's; this holds the layout both sides and the CLI share.
public enum BackupArchive {
    public static let format = "berth-backup/1"
    public static let manifestMember = "berth-backup.json"
    public static let configMember = "config.json"
    public static let sumsMember = "SHA256SUMS"
    public static let piecePrefix = "disk.zst."
    /// A disk piece's stored (compressed) size; the last one is shorter.
    public static let pieceBytes = 8 << 20
    /// The manifest and config are small: a larger first member is no Berth backup.
    public static let maxSmallMember: UInt64 = 1 << 20
    public static let block = 512

    public static func pieceMember(_ index: Int) -> String {
        let digits = String(index)
        return piecePrefix + String(repeating: "0", count: max(0, 6 - digits.count)) + digits
    }

    /// The index of a piece's member name, nil for any other name.
    public static func pieceIndex(_ name: String) -> Int? {
        guard name.hasPrefix(piecePrefix) else { return nil }
        let digits = name.dropFirst(piecePrefix.count)
        guard digits.count == 6, digits.allSatisfy({ $0.isASCII && $0.isNumber }) else { return nil }
        return Int(digits)
    }

    /// Zero bytes that follow a member of `size` bytes up to the next block.
    public static func padding(_ size: UInt64) -> Int { Int((UInt64(block) - size % UInt64(block)) % UInt64(block)) }

    /// Two zero blocks: the end of a tar archive.
    public static var end: [UInt8] { [UInt8](repeating: 0, count: 2 * block) }

    /// A ustar header of a regular file (mode 0600, owner 0, `mtime` seconds since 1970).
    public static func header(name: String, size: UInt64, mtime: Int64) -> [UInt8] {
        var header = [UInt8](repeating: 0, count: block)
        func put(_ text: String, at offset: Int, width: Int) {
            for (i, byte) in text.utf8.prefix(width).enumerated() { header[offset + i] = byte }
        }
        func octal(_ value: UInt64, at offset: Int, width: Int) {
            let digits = String(value, radix: 8)
            put(String(repeating: "0", count: max(0, width - 1 - digits.count)) + digits, at: offset, width: width - 1)
        }
        put(name, at: 0, width: 100)
        octal(0o600, at: 100, width: 8)
        octal(0, at: 108, width: 8)
        octal(0, at: 116, width: 8)
        octal(size, at: 124, width: 12)
        octal(UInt64(max(mtime, 0)), at: 136, width: 12)
        header[156] = UInt8(ascii: "0")
        put("ustar", at: 257, width: 6)
        put("00", at: 263, width: 2)
        put("root", at: 265, width: 32)
        put("root", at: 297, width: 32)
        for i in 148..<156 { header[i] = UInt8(ascii: " ") }
        let sum = header.reduce(0) { $0 + UInt64($1) }
        octal(sum, at: 148, width: 7)
        header[154] = 0
        header[155] = UInt8(ascii: " ")
        return header
    }

    public struct Member: Equatable, Sendable {
        public var name: String
        public var size: UInt64
    }

    /// The member a header block announces; nil for a zero block (the archive's end). Refuses
    /// a block that is no ustar header of a regular file, or whose checksum is wrong.
    public static func member(of header: [UInt8]) throws(BerthError) -> Member? {
        guard header.count == block else { throw refusal("a tar header is cut short") }
        if header.allSatisfy({ $0 == 0 }) { return nil }
        guard header[257..<262].elementsEqual("ustar".utf8) else { throw refusal("a member is no ustar header") }
        func field(_ range: Range<Int>) -> String {
            String(decoding: header[range].prefix { $0 != 0 }, as: UTF8.self)
        }
        func number(_ range: Range<Int>) throws(BerthError) -> UInt64 {
            let text = field(range).filter { $0 != " " }
            guard let value = UInt64(text.isEmpty ? "0" : text, radix: 8) else { throw refusal("a tar header's number '\(text)' is not octal") }
            return value
        }
        var unsigned: UInt64 = 0
        for (i, byte) in header.enumerated() { unsigned += (148..<156).contains(i) ? 32 : UInt64(byte) }
        guard try number(148..<156) == unsigned else { throw refusal("a tar header's checksum is wrong (the archive is damaged)") }
        guard header[156] == UInt8(ascii: "0") || header[156] == 0 else {
            throw refusal("member \(field(0..<100)) is not a regular file")
        }
        let prefix = field(345..<500)
        let name = prefix.isEmpty ? field(0..<100) : prefix + "/" + field(0..<100)
        return Member(name: name, size: try number(124..<136))
    }

    /// The manifest member's bytes, read from the start of an archive (the CLI's check before
    /// it sends a file); `read` returns up to the count asked, fewer only at the file's end.
    public static func manifestBytes(_ read: (Int) -> [UInt8]) throws(BerthError) -> [UInt8] {
        let head = read(block)
        guard head.count == block, let first = try member(of: head), first.name == manifestMember, first.size <= maxSmallMember else {
            throw refusal("it does not begin with \(manifestMember)")
        }
        let bytes = read(Int(first.size))
        guard bytes.count == Int(first.size) else { throw refusal("it is cut short in its manifest") }
        return bytes
    }

    public static func refusal(_ why: String) -> BerthError {
        BerthError(.invalidArgument, "file: not a Berth backup (\(format)): \(why)", field: "file")
    }
}

/// What a backup holds, its first member.
public struct BackupManifest: Codable, Sendable, Equatable {
    public var format = BackupArchive.format
    public var vps: String
    /// The node it was taken on, and when (seconds since 1970).
    public var node: String
    public var created: Int64
    /// The snapshot it was read from ("" when it was a stopped VPS's disk as it was).
    public var snapshot = ""
    /// "loop" (the disk is an ext4 image) or "pool" (a `btrfs send` stream).
    public var layout: String
    /// "image" or "layered" (the disk holds only what the VPS changed over its template).
    public var storage: String
    public var template: String
    /// A layered VPS's template's tree digest: the restoring node must hold the same.
    public var templateDigest = ""
    /// The image's size (loop) or the bytes the subvolume referenced (pool).
    public var diskBytes: UInt64
    /// The VPS as its create would describe it: what the controller places a restore by.
    public var spec: VPSSpec

    public init(vps: String, node: String, created: Int64, layout: String, storage: String, template: String, diskBytes: UInt64, spec: VPSSpec) {
        self.vps = vps
        self.node = node
        self.created = created
        self.layout = layout
        self.storage = storage
        self.template = template
        self.diskBytes = diskBytes
        self.spec = spec
    }
}
