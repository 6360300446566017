import BerthCore
import CIsolation
import Foundation
import Isolation
import Logging

/// An agent start: VPSs that ran on are re-adopted, the rest cleaned up, onboot ones started.
extension VPSManager {
    /// Re-adopts running VPSs, notices the ones that exited while no agent ran, cleans their
    /// leftovers, and — on the first agent start after a host boot — starts `onboot` VPSs.
    public func recover() async {
        removeCutMigrations()
        // Templates installed before digests were kept get theirs now, off the actor: a
        // layered VPS's migration would otherwise read a whole tree inside it.
        let templates = self.templates
        Task.detached(priority: .background) {
            for template in templates.list() where template.digest == nil { _ = try? templates.digest(template.name) }
        }
        for name in store.names() {
            let config: VPSConfig
            do {
                config = try store.load(name)
            } catch {
                broken[name] = "\(error)"
                logger.error("cannot load VPS config", metadata: ["vps": "\(name)", "error": "\(error)"])
                continue
            }
            let record = VPSRecord(config: config)
            records[name] = record
            removeUnrecordedSnapshots(name, pooled: config.isPooled)
            if config.isLayered { templates.share(config.template, with: name) }
            if let run = RunState.read(runDir: runDir(name)), run.monitorAlive {
                record.run = run
                record.lifecycle.adoptRunning()
                let pidfd = berth_pidfd_open(run.monitorPid, 0)
                if pidfd >= 0 { watchMonitor(name, record: record, pid: run.monitorPid, pidfd: pidfd) }
                logger.info("re-adopted running VPS", metadata: ["vps": "\(name)", "pid": "\(run.initPid)"])
                // An agent that died during a snapshot's instant left its VPS frozen.
                thawAfterSnapshot(record)
                // An agent that stopped right after a start (a migration's target) may not have
                // announced the addresses yet: the LAN would still send them to the source.
                announceAddresses(of: record)
            } else {
                record.fenced = fenceReason(name) != nil
                record.lastExit = fenceReason(name) ?? exitReason(name) ?? ""
                cleanupAfterExit(name)
                removeRebuildLeftovers(name)
                if config.desiredState == .running {
                    logger.notice("VPS stopped while the agent was down", metadata: ["vps": "\(name)", "reason": "\(record.lastExit)"])
                }
            }
        }
        if hostBootedSinceLastAgent() {
            for record in records.values where record.config.onboot && record.state == .stopped {
                // An HA VPS waits for the controller's lease (it may run elsewhere by now);
                // the renewal starts it if it is still this node's.
                if record.config.isHA && !leaseIsCurrent() {
                    record.fenced = true
                    continue
                }
                do {
                    _ = try await start(record.config.name)
                    logger.info("started onboot VPS", metadata: ["vps": "\(record.config.name)"])
                } catch {
                    logger.error("onboot start failed", metadata: ["vps": "\(record.config.name)", "error": "\(error)"])
                }
            }
        }
    }

    /// /run is empty after a host boot: a boot-id marker there tells a restart from a reboot.
    func hostBootedSinceLastAgent() -> Bool {
        let bootID = (FileIO.read("/proc/sys/kernel/random/boot_id") ?? "").trimmed
        let marker = paths.runDir + "/agent.boot-id"
        let previous = (FileIO.read(marker) ?? "").trimmed
        try? FileIO.writeAtomically(marker, Array((bootID + "\n").utf8), mode: 0o644)
        return previous != bootID
    }

    /// A migration's receive cut short by this agent's own end leaves a VPS directory with a
    /// partial `disk.img.incoming` and no config: it was never this node's VPS, so it goes.
    func removeCutMigrations() {
        // A pool migration's snapshots (this node sent) or received subvolumes (it received).
        if let pool = try? mountedPool() {
            for entry in FileIO.listDirectory(pool.directory) where entry.hasPrefix("migrate-") || entry.hasPrefix("incoming-") {
                deleteSubvolumes(in: pool.directory + "/" + entry)
                logger.notice("removed what a cut pool migration left", metadata: ["path": "\(pool.directory)/\(entry)"])
            }
        }
        for name in FileIO.listDirectory(store.vpsRoot) where !FileIO.exists(store.configPath(name)) {
            guard FileIO.exists(store.diskPath(name) + ".incoming") else { continue }
            // A pool VPS's receive cut between taking its subvolume and saving its config.
            if let pool = try? mountedPool(), FileIO.exists(pool.volume(name)) { try? deleteVolume(name, in: pool) }
            do {
                try FileManager.default.removeItem(atPath: store.directory(name))
                logger.notice("removed what a cut migration left", metadata: ["vps": "\(name)"])
            } catch {
                logger.error("cannot remove what a cut migration left", metadata: ["vps": "\(name)", "error": "\(error)"])
            }
        }
    }
}
