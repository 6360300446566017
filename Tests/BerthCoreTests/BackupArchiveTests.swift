import Testing

@testable import BerthCore

@Suite struct BackupArchiveTests {
    @Test func headersRoundTripAndMatchTarsChecksumRule() throws {
        let header = BackupArchive.header(name: "disk.zst.000042", size: 8 << 20, mtime: 1_765_000_000)
        #expect(header.count == 512)
        let member = try #require(try BackupArchive.member(of: header))
        #expect(member == BackupArchive.Member(name: "disk.zst.000042", size: 8 << 20))
        #expect(BackupArchive.pieceIndex(member.name) == 42)
        #expect(BackupArchive.pieceMember(7) == "disk.zst.000007")
        #expect(BackupArchive.pieceIndex("disk.zst.7") == nil)
        #expect(BackupArchive.pieceIndex("config.json") == nil)
        #expect(BackupArchive.padding(512) == 0)
        #expect(BackupArchive.padding(513) == 511)
        // The end of the archive reads as no member.
        #expect(try BackupArchive.member(of: [UInt8](repeating: 0, count: 512)) == nil)
    }

    @Test func damagedOrForeignHeadersAreRefusedByName() {
        var header = BackupArchive.header(name: "config.json", size: 10, mtime: 0)
        header[3] ^= 0x20
        #expect(throws: BerthError.self) { try BackupArchive.member(of: header) }
        do {
            _ = try BackupArchive.member(of: header)
        } catch {
            #expect(error.field == "file")
            #expect(error.message.contains("checksum"))
        }
        var directory = BackupArchive.header(name: "x/", size: 0, mtime: 0)
        directory[156] = UInt8(ascii: "5")
        #expect(throws: BerthError.self) { try BackupArchive.member(of: directory) }
        #expect(throws: BerthError.self) { try BackupArchive.member(of: [UInt8](repeating: 1, count: 100)) }
    }

    @Test func theManifestMustComeFirst() throws {
        let json = Array(#"{"format":"berth-backup/1"}"#.utf8)
        var file = BackupArchive.header(name: BackupArchive.manifestMember, size: UInt64(json.count), mtime: 0) + json
        var offset = 0
        let read: (Int) -> [UInt8] = { count in
            let slice = Array(file[offset..<min(offset + count, file.count)])
            offset += slice.count
            return slice
        }
        #expect(try BackupArchive.manifestBytes(read) == json)
        file = BackupArchive.header(name: "config.json", size: 2, mtime: 0) + [1, 2]
        offset = 0
        #expect(throws: BerthError.self) { try BackupArchive.manifestBytes(read) }
        // Cut inside the manifest.
        file = BackupArchive.header(name: BackupArchive.manifestMember, size: 100, mtime: 0) + [1, 2]
        offset = 0
        #expect(throws: BerthError.self) { try BackupArchive.manifestBytes(read) }
    }
}
