import Foundation
import Isolation
import Wire

/// The beancounter file inside each VPS (`/run/berth/user_beancounters`): the table of
/// `berth stats NAME`, rewritten by the agent every `beancounterInterval` seconds while the VPS
/// runs. It lives on a small tmpfs the monitor mounts at `RUN/NAME/beancounters` and hands the
/// VPS read-only; each rewrite replaces the file, so a reader always sees one whole table.
extension VPSManager {
    func beancounterDirectory(_ name: String) -> String { runDir(name) + "/beancounters" }

    /// Writes NAME's current table, once its monitor has mounted the directory.
    func writeBeancounters(_ name: String) throws {
        let directory = beancounterDirectory(name)
        guard FileIO.isMountPoint(directory) else { return }
        let stats = try stats(name)
        let refresh = beancounterInterval > 0 ? "every \(beancounterInterval) s" : "at start only"
        let header = "VPS \(name), taken \(ISO8601DateFormatter().string(from: Date())) (refreshed \(refresh))\n"
        do {
            // The VPS's root is not the owner (its ids are mapped): it reads as "other".
            try FileIO.writeAtomically(directory + "/" + Rootfs.beancountersFile, Array((header + stats.table).utf8),
                                       mode: 0o444, durable: false)
        } catch {
            throw AgentError.kernel("writing the beancounter file of \(name)", error)
        }
    }

    /// One refresh of every running VPS's file; a VPS whose file cannot be written is logged and
    /// does not hold up the others.
    public func refreshBeancounters() {
        for (name, record) in records where record.state == .running {
            do { try writeBeancounters(name) } catch {
                logger.warning("beancounter file not refreshed", metadata: ["vps": "\(name)", "error": "\(error)"])
            }
        }
    }
}
