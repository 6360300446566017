import BerthCore
import Foundation
import Isolation

/// The node's lease and the fence of its HA VPSs (Docs/ha.md). The controller renews the lease
/// with every heartbeat it answers; the agent leaves it in `RUN/lease` for the monitors, which
/// kill their HA VPS once it lapses, whether this agent still runs or not. The lease's epoch is
/// the fencing token: it rises when the controller fails VPSs over away from this node, and a
/// call carrying an older one is refused.
extension VPSManager {
    var leasePath: String { paths.runDir + "/" + HelperProtocol.LeaseRecord.file }

    /// The lease as the agent last wrote it (nil: this node has none: no controller answered yet).
    public func currentLease() -> HelperProtocol.LeaseRecord? {
        FileIO.read(leasePath).flatMap(HelperProtocol.LeaseRecord.init(text:))
    }

    /// The controller answered a heartbeat sent at `sentAt` (CLOCK_BOOTTIME ns): the lease runs
    /// until `sentAt + fenceAfter`, counted from the send so it lapses here no later than the
    /// controller's own count from the receipt. Returns whether the epoch rose (VPSs were failed
    /// over away from this node meanwhile).
    @discardableResult
    public func renewLease(epoch: UInt64, sentAt: UInt64, fenceAfterMs: UInt32) throws -> Bool {
        let previous = currentLease()?.epoch ?? 0
        // An answer with an older epoch comes from a controller that no longer decides for
        // this node (Docs/ha.md): it renews nothing.
        guard epoch >= previous else {
            logger.warning("a heartbeat answer with an older lease epoch was ignored", metadata: ["epoch": "\(epoch)", "node-epoch": "\(previous)"])
            return false
        }
        let lease = HelperProtocol.LeaseRecord(epoch: epoch, expires: sentAt + UInt64(fenceAfterMs) * 1_000_000)
        do {
            try FileIO.writeAtomically(leasePath, Array(lease.text.utf8), mode: 0o644, durable: false)
        } catch {
            throw AgentError.kernel("writing the node's lease", error)
        }
        return epoch > previous && previous > 0
    }

    public func leaseIsCurrent() -> Bool {
        guard let lease = currentLease() else { return false }
        return HelperProtocol.LeaseRecord.boottimeNow() < lease.expires
    }

    /// A call that carries an epoch older than this node's was meant for an ownership that has
    /// ended (a delayed call, a stale controller).
    public func checkEpoch(_ epoch: UInt64) throws {
        guard epoch > 0, let current = currentLease()?.epoch, epoch < current else { return }
        throw AgentError(
            .conflict, "the call carries lease epoch \(epoch), older than this node's \(current): it was meant for VPSs failed over since (Docs/ha.md)")
    }

    /// An HA VPS runs only under a current lease: after a lapse the controller may already have
    /// started it elsewhere.
    func checkLeaseAllowsStart(_ config: VPSConfig) throws {
        guard config.isHA, !leaseIsCurrent() else { return }
        throw AgentError(
            .conflict,
            "VPS \(config.name) is HA and this node's lease has lapsed (no controller answer within the fence time): it may be running on another node; it starts again once the controller renews the lease and confirms it is still this node's"
        )
    }

    /// Arms (HA) or disarms the monitor's fence of `config`'s VPS. `running`: its monitor runs
    /// already, and must be one that enforces fences (booted by this version or later).
    func setFence(of config: VPSConfig, running: Bool = false) throws {
        let armed = runDir(config.name) + "/" + HelperProtocol.LeaseRecord.armedFile
        if config.isHA {
            try checkLeaseAllowsStart(config)
            if running && !FileIO.exists(runDir(config.name) + "/" + HelperProtocol.LeaseRecord.capableFile) {
                throw AgentError(
                    .conflict,
                    "VPS \(config.name) runs under a monitor older than fencing: restart it once, then make it HA (an unfenced VPS must not fail over)",
                    field: "ha")
            }
            guard FileManager.default.createFile(atPath: armed, contents: nil) else {
                throw AgentError(.kernel, "cannot arm the fence of \(config.name) (\(armed))", stage: "fence")
            }
        } else {
            unlink(armed)
        }
    }

    /// berth-spawn reports the boot just before it becomes the monitor, whose first act is the
    /// `fence-capable` mark. A started HA VPS is reported running only once the mark is there:
    /// the controller fails over only a VPS it knows fenced, and a node cut off a moment after
    /// the start must not leave it unsure (Docs/ha.md).
    func awaitFenceCapableMark(_ name: String) async {
        let mark = runDir(name) + "/" + HelperProtocol.LeaseRecord.capableFile
        for _ in 0..<200 {
            if FileIO.exists(mark) { return }
            try? await Task.sleep(for: .milliseconds(10))
        }
        logger.warning("the monitor left no fence-capable mark within 2 s: the controller will not fail this VPS over", metadata: ["vps": "\(name)"])
    }

    /// The fence file is there and the monitor is one that reads it.
    func fenceArmed(_ name: String) -> Bool {
        FileIO.exists(runDir(name) + "/" + HelperProtocol.LeaseRecord.armedFile)
            && FileIO.exists(runDir(name) + "/" + HelperProtocol.LeaseRecord.capableFile)
    }

    /// Why the monitor fenced the VPS, read before its run directory goes; nil when it did not.
    func fenceReason(_ name: String) -> String? {
        FileIO.read(runDir(name) + "/" + HelperProtocol.LeaseRecord.fencedFile).map { "fenced: " + $0.trimmed }
    }

    /// The controller failed these VPSs over to other nodes while this one was cut off: their
    /// copies here are stale and must never run again. Each is killed if it still runs (its
    /// fence should have done it) and deleted. Returns the names deleted.
    public func dropSuperseded(_ names: [String]) async -> [String] {
        var dropped: [String] = []
        for name in names where records[name] != nil {
            do {
                try await destroy(name, force: true)
                dropped.append(name)
                logger.notice("stale copy deleted: the VPS was failed over to another node", metadata: ["vps": "\(name)"])
            } catch {
                logger.error("cannot delete a stale copy of a failed-over VPS", metadata: ["vps": "\(name)", "error": "\(error)"])
            }
        }
        return dropped
    }

    /// After a renewed lease: the HA VPSs fenced during the lapse that are still this node's
    /// (the controller did not fail them over: not among `superseded`) and still wanted running
    /// start again. One whose start fails stays marked and is tried at the next renewal.
    public func restartFenced(except superseded: Set<String>) async {
        for record in records.values
        where record.fenced && record.config.isHA && record.state != .running && record.config.desiredState == .running
            && !superseded.contains(record.config.name)
        {
            do {
                _ = try await start(record.config.name)
                record.fenced = false
                logger.notice("fenced VPS started again: the lease is renewed and it is still this node's", metadata: ["vps": "\(record.config.name)"])
            } catch {
                logger.error("cannot start a fenced VPS again", metadata: ["vps": "\(record.config.name)", "error": "\(error)"])
            }
        }
    }
}
