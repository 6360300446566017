import BerthCore
import Foundation
import Isolation

/// The beancounter file inside each VPS (`/run/beancounters/user_beancounters`): the table of
/// `berth stats NAME`. It lives on a small tmpfs the monitor mounts at `RUN/NAME/beancounters`
/// (in its own mount namespace) and hands the VPS read-only; each rewrite replaces the file, so a reader always sees one whole
/// table. A table that was opened is rewritten within a second (an inotify watch sees the VPS's
/// opens: its read-only mount shares the tmpfs's inodes), any other one every
/// `beancounterInterval` seconds: an idle node does not rewrite hundreds of unread tables.
extension VPSManager {
    func beancounterDirectory(_ name: String) -> String { runDir(name) + "/beancounters" }

    /// Writes NAME's current table, once its monitor has mounted the directory (in its own
    /// mount namespace: the agent reaches it through the monitor's root).
    func writeBeancounters(_ name: String, taken: String? = nil) throws {
        guard let directory = records[name]?.run?.monitorView(beancounterDirectory(name)),
            FileIO.isMountPoint(directory)
        else { return }
        beancounterReaders.watch(name, directory: directory)
        let stats = try stats(name)
        let header = "VPS \(name), taken \(taken ?? Self.timestamp()) (refreshed within 1 s of a read, else every \(beancounterInterval) s)\n"
        do {
            // The VPS's root is not the owner (its ids are mapped): it reads as "other".
            try FileIO.writeAtomically(
                directory + "/" + Rootfs.beancountersFile, Array((header + stats.table).utf8),
                mode: 0o444, durable: false)
        } catch {
            throw AgentError.kernel("writing the beancounter file of \(name)", error)
        }
        beancounterWritten[name] = .now
    }

    /// Made once: building a formatter costs more than the rest of a table (measured at start).
    nonisolated(unsafe) private static let timestampFormatter = ISO8601DateFormatter()
    static func timestamp() -> String { timestampFormatter.string(from: Date()) }

    /// One pass, every second: tables opened since they were written, and tables older than the
    /// interval. A VPS whose file cannot be written is logged and does not hold up the others.
    public func refreshBeancounters() {
        let opened = beancounterReaders.drain()
        let now = ContinuousClock.now
        var taken: String?
        for (name, record) in records where record.state == .running {
            let stale = beancounterWritten[name].map { now - $0 >= .seconds(beancounterInterval) } ?? true
            guard stale || opened.contains(name) else { continue }
            taken = taken ?? Self.timestamp()
            do { try writeBeancounters(name, taken: taken) } catch {
                logger.warning("beancounter file not refreshed", metadata: ["vps": "\(name)", "error": "\(error)"])
            }
        }
    }

    /// The VPS stopped: its tmpfs (and the watch on it) went with its monitor.
    func forgetBeancounters(_ name: String) {
        beancounterReaders.forget(name)
        beancounterWritten[name] = nil
    }
}

/// Which VPSs' tables were opened: one inotify instance, a watch per running VPS's table
/// directory. Used only from the VPSManager actor.
final class BeancounterReaders {
    private let fd = inotify_init1(Int32(IN_NONBLOCK | IN_CLOEXEC))
    private var names: [Int32: String] = [:]
    private var watches: [String: Int32] = [:]

    deinit { if fd >= 0 { close(fd) } }

    func watch(_ name: String, directory: String) {
        guard fd >= 0, watches[name] == nil else { return }
        let wd = inotify_add_watch(fd, directory, UInt32(IN_OPEN))
        guard wd >= 0 else { return }
        names[wd] = name
        watches[name] = wd
    }

    func forget(_ name: String) {
        guard let wd = watches.removeValue(forKey: name) else { return }
        names[wd] = nil
        _ = inotify_rm_watch(fd, wd)  // EINVAL when the unmount already removed it
    }

    /// The VPSs whose table file was opened since the last call.
    func drain() -> Set<String> {
        var opened = Set<String>()
        guard fd >= 0 else { return opened }
        var buffer = [UInt8](repeating: 0, count: 8192)
        while true {
            let count = buffer.withUnsafeMutableBytes { read(fd, $0.baseAddress, $0.count) }
            guard count > 0 else { break }
            var offset = 0
            // struct inotify_event: i32 wd, u32 mask, u32 cookie, u32 len, char name[len].
            while offset + 16 <= count {
                let (wd, mask, length) = buffer.withUnsafeBytes { raw in
                    (
                        raw.loadUnaligned(fromByteOffset: offset, as: Int32.self),
                        raw.loadUnaligned(fromByteOffset: offset + 4, as: UInt32.self),
                        Int(raw.loadUnaligned(fromByteOffset: offset + 12, as: UInt32.self))
                    )
                }
                let nameBytes = buffer[(offset + 16)..<min(count, offset + 16 + length)].prefix { $0 != 0 }
                if String(decoding: nameBytes, as: UTF8.self) == Rootfs.beancountersFile, let vps = names[wd] {
                    opened.insert(vps)
                }
                if mask & UInt32(IN_IGNORED) != 0, let vps = names.removeValue(forKey: wd) {
                    watches[vps] = nil
                }
                offset += 16 + length
            }
        }
        return opened
    }
}
