import BerthCore
import Foundation

extension BackupManifest {
    /// A manifest as a backup's first member holds it; refused, naming the file, when it cannot
    /// be read or is of another format.
    public static func decoded(_ bytes: Data) throws(BerthError) -> BackupManifest {
        let decoder = JSONDecoder()
        let manifest: BackupManifest
        do {
            manifest = try decoder.decode(BackupManifest.self, from: bytes)
        } catch {
            throw BackupArchive.refusal("its manifest cannot be read (\(error))")
        }
        guard manifest.format == BackupArchive.format else {
            throw BerthError(.invalidArgument, "file: the archive's format is '\(manifest.format)'; this version reads \(BackupArchive.format)", field: "file")
        }
        return manifest
    }
}

extension Berth_V1_RestoreBackupRequest {
    /// The VPS a restore makes: the name asked, else the one in the archive.
    public var restoredName: String {
        name.isEmpty ? ((try? BackupManifest.decoded(manifest))?.vps ?? "") : name
    }
}
