import BerthCore
import CIsolation
import Foundation
import Isolation
import Logging

/// Joining a running VPS (exec, console), the helper binaries, id ranges.
extension VPSManager {
    /// What berth-spawn exec needs to join `name`.
    func joinTarget(_ name: String) throws -> (run: RunState, cgroupFiles: [String]) {
        _ = try Name.validate(name)
        let record = try record(name)
        guard record.state == .running, let run = RunState.read(runDir: runDir(name)), run.initAlive else {
            throw AgentError(.conflict, "VPS \(name) is not running")
        }
        return (run, cgroups.procsFiles(name))
    }

    /// Where the read-only bind of a helper binary goes: the run directory, under its own name.
    static func helperCopy(of binary: String, runDir: String) -> String { runDir + "/" + FileIO.baseName(binary) }

    /// A read-only bind of a helper binary at `target`, run instead of the original: a process
    /// in a VPS that reaches the helper through /proc/PID/exe (CVE-2019-5736) cannot open it for
    /// writing (EROFS), even in a privileged VPS where it is host root.
    static func readOnlyHelper(_ binary: String, at target: String) throws {
        // A previous agent's bind: replace it, the binary may have been upgraded since (monitors
        // still running from it keep it alive; a lazy unmount does not disturb them).
        for _ in 0..<16 where umount2(target, Int32(MNT_DETACH)) == 0 {}
        if !FileIO.exists(target) {
            let fd = open(target, O_WRONLY | O_CREAT | O_EXCL | O_CLOEXEC, 0o755)
            guard fd >= 0 else { throw AgentError(.kernel, "cannot create \(target): \(errnoName(errno))", stage: "create", errno: errno) }
            close(fd)
        }
        guard mount(binary, target, nil, UInt(MS_BIND), nil) == 0,
            mount("", target, nil, UInt(MS_BIND | MS_REMOUNT | MS_RDONLY | MS_NOSUID | MS_NODEV), nil) == 0
        else {
            throw AgentError(.kernel, "cannot bind \(binary) read-only at \(target): \(errnoName(errno))", stage: "mount", errno: errno)
        }
    }

    /// Detaches the helper's read-only bind when the agent exits (processes started from it keep
    /// running); the next agent makes a fresh one.
    public nonisolated func releaseHelper() {
        for helper in [paths.spawnBinary, paths.monitorBinary] where FileIO.directory(of: helper) == paths.runDir {
            for _ in 0..<16 where umount2(helper, Int32(MNT_DETACH)) == 0 {}
            unlink(helper)
        }
    }

    /// The lowest free id range of this node (saved configs and creates in flight).
    func allocateIdmap() throws -> UInt32 {
        var used = pendingIdmaps
        for record in records.values { if let base = record.config.idmapBase { used.insert(base) } }
        // A broken config still owns its range: its files may be in use again after a fix.
        for name in broken.keys {
            // Unreadable as a config, maybe still running: its range stays taken if it names one.
            if let data = FileManager.default.contents(atPath: store.configPath(name)),
                let object = try? JSONSerialization.jsonObject(with: data) as? [String: Any],
                let base = object["idmapBase"] as? NSNumber
            {
                used.insert(base.uint32Value)
            }
        }
        return try IDMapPool.allocate(excluding: used)
    }

    func consoleSocket(_ name: String) throws -> String {
        _ = try joinTarget(name)
        return runDir(name) + "/" + RunState.consoleSocket
    }

    /// What the console showed during the VPS's last run, kept by its monitor when it stopped:
    /// a failed boot's last words. Empty for a VPS that never ran.
    func consoleLog(_ name: String) throws -> [UInt8] {
        _ = try Name.validate(name)
        _ = try record(name)
        let fd = open(store.directory(name) + "/" + RunState.consoleLogFile, O_RDONLY | O_NOFOLLOW | O_CLOEXEC)
        guard fd >= 0 else { return [] }
        defer { close(fd) }
        return FileIO.readAll(fd: fd) ?? []
    }
}
