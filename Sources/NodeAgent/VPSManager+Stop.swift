import BerthCore
import CIsolation
import Foundation
import Isolation
import Logging

/// A VPS's monitor exiting, stops asked for, and what a stopped VPS leaves.
extension VPSManager {
    func watchMonitor(_ name: String, record: VPSRecord, pid: Int32, pidfd: Int32) {
        let generation = record.generation
        Task {
            _ = await ProcessWatcher.shared.waitForExit(pid: pid, pidfd: pidfd)
            self.monitorExited(name, record: record, generation: generation)
        }
    }

    /// The record as well as the generation: a VPS destroyed with --force while starting and
    /// created again under its name is a new record, which an old monitor's exit must not touch.
    func monitorExited(_ name: String, record watched: VPSRecord, generation: Int) {
        guard let record = records[name], record === watched, record.generation == generation else { return }
        let fence = fenceReason(name)
        let reason = fence ?? exitReason(name) ?? "monitor exited unexpectedly"
        record.lastExit = reason
        record.run = nil
        cleanupAfterExit(name)
        let waiters = record.exitWaiters.values
        record.exitWaiters.removeAll()
        waiters.forEach { $0.resume() }
        if fence != nil {
            // Still wanted running: it starts again if the controller renews the lease and the
            // VPS is still this node's.
            record.fenced = true
            _ = record.lifecycle.monitorExited(reason: reason)
            logger.warning("VPS fenced: the node's lease lapsed", metadata: ["vps": "\(name)"])
            return
        }
        // Stopped as asked, or from inside (poweroff/halt), or crashed.
        guard record.lifecycle.monitorExited(reason: reason) != .stoppedAsAsked else { return }
        record.config.desiredState = .stopped
        try? store.save(record.config)
        logger.notice("VPS stopped by itself", metadata: ["vps": "\(name)", "reason": "\(reason)"])
    }

    func exitRecord(_ name: String) -> HelperProtocol.ExitRecord? {
        FileIO.read(runDir(name) + "/" + RunState.exitFile).flatMap(HelperProtocol.ExitRecord.init(text:))
    }

    func exitReason(_ name: String) -> String? { exitRecord(name)?.reason }

    /// Removes what a stopped VPS leaves: stray processes, its cgroup, its run directory and a
    /// root mount whose monitor died. Idempotent.
    func cleanupAfterExit(_ name: String) {
        let monitorDetached = exitRecord(name)?.networkDetached ?? false
        if !monitorDetached, let config = records[name]?.config, let link = guestSpec(config).link {
            // The monitor removes these itself; this covers a monitor that died mid-way.
            NetworkSetup.detach(link, removeInterface: false)
        }
        if cgroups.exists(name) {
            try? cgroups.killAll(name)
            do { try cgroups.destroy(name) } catch {
                logger.warning("cannot remove cgroup", metadata: ["vps": "\(name)", "error": "\(error)"])
            }
        }
        // Left in the host's namespace only by a monitor of an earlier version (today's mount in
        // their own). The root first: a layered VPS's overlay holds its disk mount busy.
        for mounted in [store.rootPath(name), store.diskMountPath(name)] where FileIO.isMountPoint(mounted) {
            if umount2(mounted, 0) != 0 { umount2(mounted, Int32(MNT_DETACH)) }
        }
        if FileIO.isMountPoint(beancounterDirectory(name)) { umount2(beancounterDirectory(name), Int32(MNT_DETACH)) }
        forgetBeancounters(name)
        try? FileManager.default.removeItem(atPath: runDir(name))
    }

    public func stop(_ name: String, timeout: UInt32, kill: Bool) async throws {
        _ = try Name.validate(name)
        let record = try record(name)
        try record.lifecycle.beginStop(name)
        let run = runDir(name)
        _ = FileManager.default.createFile(atPath: run + "/" + RunState.stopRequestFile, contents: nil)
        if kill {
            try? cgroups.killAll(name)
        } else if let state = RunState.read(runDir: run), state.initAlive {
            Glibc.kill(state.initPid, record.config.stopSignal)
        }
        let grace = kill ? 5 : Double(timeout == 0 ? 30 : timeout)
        if !(await waitUntilStopped(record, seconds: grace)) {
            logger.notice("clean stop timed out, killing", metadata: ["vps": "\(name)"])
            try? cgroups.killAll(name)
            if !(await waitUntilStopped(record, seconds: 10)) {
                record.lifecycle.stopFailed()
                throw AgentError(.deadlineExceeded, "VPS \(name) did not stop even after SIGKILL")
            }
        }
        record.config.desiredState = .stopped
        try? store.save(record.config)
        logger.info("stopped VPS", metadata: ["vps": "\(name)", "reason": "\(record.lastExit)"])
    }

    /// Waits for the monitor's exit (told by `monitorExited`, not polled) or `seconds`.
    func waitUntilStopped(_ record: VPSRecord, seconds: Double) async -> Bool {
        let monitorRunning = { record.state == .stopping && record.run != nil }
        if monitorRunning() {
            let ticket = record.nextExitTicket
            record.nextExitTicket += 1
            let timer = Task {
                try? await Task.sleep(for: .seconds(seconds))
                if !Task.isCancelled { self.endExitWait(record, ticket: ticket) }
            }
            await withCheckedContinuation { record.exitWaiters[ticket] = $0 }
            timer.cancel()
        }
        return !monitorRunning()
    }

    func endExitWait(_ record: VPSRecord, ticket: Int) {
        record.exitWaiters.removeValue(forKey: ticket)?.resume()
    }

    public func restart(_ name: String) async throws -> VPSView {
        _ = try Name.validate(name)
        let record = try record(name)
        if record.state == .running { try await stop(name, timeout: 0, kill: false) }
        return try await start(name)
    }
}
