import BerthCore
import Crypto
import Foundation
import Isolation
import Wire

/// A template's identity across nodes: a layered VPS's disk holds only its upper layer, so it
/// may move only to a node whose template tree is the same (Docs/migration.md).
extension TemplateStore {
    /// `name`'s digest: from its metadata, or (a template installed before digests were kept)
    /// computed now and written there. Nil when there is no such template.
    public func digest(_ name: String) throws -> String? {
        guard var info = info(name) else { return nil }
        if let digest = info.digest { return digest }
        info.digest = try Self.treeDigest(rootfs(name))
        try FileIO.writeAtomically(metadataPath(name), Array(try info.metadata()), mode: 0o644)
        return info.digest
    }

    /// SHA-256 over the tree under `root`, in path order: each entry's relative path, type,
    /// mode, owner and group, and a file's bytes or a link's target. Times are left out, so two
    /// nodes that built or imported the same template get the same digest.
    static func treeDigest(_ root: String) throws -> String {
        var hasher = SHA256()
        var buffer = [UInt8](repeating: 0, count: 1 << 20)
        func visit(_ relative: String) throws {
            let path = relative.isEmpty ? root : root + "/" + relative
            var info = stat()
            guard lstat(path, &info) == 0 else {
                throw AgentError(.kernel, "reading template tree \(path): \(errnoName(errno))", stage: "lstat", errno: errno)
            }
            hasher.update(data: Array("\(relative)\0\(info.st_mode)\0\(info.st_uid)\0\(info.st_gid)\0".utf8))
            switch info.st_mode & S_IFMT {
            case S_IFDIR:
                let entries = (try? FileManager.default.contentsOfDirectory(atPath: path)) ?? []
                for entry in entries.sorted() { try visit(relative.isEmpty ? entry : relative + "/" + entry) }
            case S_IFLNK:
                let target = (try? FileManager.default.destinationOfSymbolicLink(atPath: path)) ?? ""
                hasher.update(data: Array(target.utf8))
            case S_IFREG:
                let fd = open(path, O_RDONLY | O_CLOEXEC | O_NOFOLLOW)
                guard fd >= 0 else { throw AgentError(.kernel, "reading template file \(path): \(errnoName(errno))", stage: "open", errno: errno) }
                defer { close(fd) }
                while true {
                    let count = buffer.withUnsafeMutableBytes { read(fd, $0.baseAddress, $0.count) }
                    if count < 0 && errno == EINTR { continue }
                    guard count >= 0 else { throw AgentError(.kernel, "reading template file \(path): \(errnoName(errno))", stage: "read", errno: errno) }
                    if count == 0 { break }
                    hasher.update(data: buffer[0..<count])
                }
            default:
                hasher.update(data: Array("\(info.st_rdev)".utf8))
            }
        }
        try visit("")
        return hexString(hasher.finalize())
    }
}
