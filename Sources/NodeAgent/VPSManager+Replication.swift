import BerthCore
import CIsolation
import Foundation
import Isolation

/// Replicas of HA VPSs (Docs/ha.md), both ends. The primary takes a read-only snapshot of the
/// VPS's subvolume every interval (`pool/replication/NAME/rMILLIS`) and sends it to each replica
/// node as a `btrfs send` difference from the last one that node confirmed. A replica node holds
/// what it received under a standing grant from the controller (`DATA/replicas/NAME.json`, the
/// snapshots in `pool/replicas/NAME/`), keeping its last complete snapshot until the next one is
/// whole; the controller promotes it into the VPS when the primary's node is lost.
extension VPSManager {
    /// How a replication to one target went, as `status` shows it.
    public struct ReplicaState: Codable, Sendable, Equatable {
        public var node: String
        /// The snapshot the target confirmed last (the parent of the next difference).
        public var snapshot: String?
        /// When that snapshot was taken: the recovery point.
        public var takenUnixMs: Int64 = 0
        public var bytesSent: UInt64 = 0
        public var totalBytesSent: UInt64 = 0
        public var error: String = ""
    }

    /// One round's snapshot and what goes with it.
    public struct ReplicationRound: Sendable {
        public var snapshot: String
        public var takenUnixMs: Int64
        public var config: [UInt8]
        public var templateDigest: String
        public var diskBytes: UInt64
    }

    /// What a replica node holds of one VPS.
    struct ReplicaHolding: Codable, Sendable, Equatable {
        var vps: String
        var source: String
        var snapshot: String?
        var takenUnixMs: Int64?
        var templateDigest = ""
        /// What the VPS's disk held when the snapshot was taken (the primary's quota group: a
        /// received snapshot's own group counts only the blocks it does not share).
        var diskBytes: UInt64?
    }

    var replicaDirectory: String { paths.dataDir + "/replicas" }
    private func holdingPath(_ vps: String) -> String { replicaDirectory + "/" + vps + ".json" }
    private func holdingConfig(_ vps: String) -> String { replicaDirectory + "/" + vps + ".config" }
    private func replicationStatePath(_ name: String) -> String { store.directory(name) + "/replication.json" }
    static func replicationSnapshots(_ pool: StoragePool, _ name: String) -> String { pool.directory + "/replication/" + name }
    static func replicaSnapshots(_ pool: StoragePool, _ vps: String) -> String { pool.directory + "/replicas/" + vps }

    // MARK: - the primary

    /// The controller's plan for `name` (`replicate_set`): its replica targets and interval, or
    /// none (HA off). The fence of a running VPS is armed or disarmed at once.
    public func setReplication(_ name: String, ha: Bool, intervalSeconds: Int, targets: [VPSConfig.Replication.Target]) throws -> VPSView {
        let name = try Name.validate(name)
        let record = try record(name)
        if ha {
            guard record.config.isPooled else {
                throw AgentError.invalid("ha", "VPS \(name) has a loop disk: replication needs --layout pool (btrfs snapshots)")
            }
            guard intervalSeconds >= 10 else { throw AgentError.invalid("replication-interval", "\(intervalSeconds) s is below the 10 s minimum") }
        }
        var config = record.config
        config.replication = ha ? VPSConfig.Replication(intervalSeconds: intervalSeconds, targets: targets) : nil
        if record.state == .running { try setFence(of: config, running: true) }
        try store.save(config)
        record.config = config
        var states = replicationStates[name] ?? loadReplicationStates(name)
        states = states.filter { state in targets.contains { $0.node == state.node } }
        replicationStates[name] = states
        if !ha, let pool = try? mountedPool() { deleteSubvolumes(in: Self.replicationSnapshots(pool, name)) }
        logger.info("replication plan", metadata: ["vps": "\(name)", "ha": "\(ha)", "targets": "\(targets.map(\.node))", "interval": "\(intervalSeconds)"])
        return view(record)
    }

    /// HA VPSs whose replication is due (the interval since the last attempt has passed), not
    /// already under way.
    public func replicationDue(now: ContinuousClock.Instant = .now) -> [(name: String, plan: VPSConfig.Replication)] {
        records.values.compactMap { record in
            guard let plan = record.config.replication, !plan.targets.isEmpty, !replicating.contains(record.config.name),
                !migratingOut.contains(record.config.name)
            else { return nil }
            if let last = lastReplication[record.config.name], now - last < .seconds(plan.intervalSeconds) { return nil }
            return (record.config.name, plan)
        }
    }

    /// A read-only snapshot to send (`pool/replication/NAME/rMILLIS`), the config and the
    /// template digest with it; the VPS is marked as replicating until `endReplication`.
    public func beginReplication(_ name: String) async throws -> ReplicationRound {
        let record = try record(name)
        guard !replicating.contains(name) else { throw AgentError(.conflict, "VPS \(name) is already being replicated", field: "name") }
        // A node cut off from the controller may no longer be the VPS's: it sends nothing.
        guard leaseIsCurrent() else {
            lastReplication[name] = .now
            throw AgentError(.conflict, "this node's lease has lapsed: no replication until the controller renews it")
        }
        replicating.insert(name)
        lastReplication[name] = .now
        do {
            let pool = try await storagePool(creating: false)
            let directory = Self.replicationSnapshots(pool, name)
            try FileIO.makeDirectories(directory, mode: 0o700)
            let taken = Int64(Date().timeIntervalSince1970 * 1000)
            let snapshot = directory + "/r\(taken)"
            try await tool([try VolumeTransfer.tool(), "subvolume", "snapshot", "-r", pool.volume(name), snapshot], stage: "btrfs snapshot")
            guard let config = FileManager.default.contents(atPath: store.configPath(name)) else {
                throw AgentError(.corruptState, "\(store.configPath(name)) cannot be read")
            }
            let digest = record.config.isLayered ? (try templates.digest(record.config.template) ?? "") : ""
            return ReplicationRound(
                snapshot: snapshot, takenUnixMs: taken, config: Array(config), templateDigest: digest, diskBytes: pool.usage(name)?.used ?? 0)
        } catch {
            replicating.remove(name)
            throw error
        }
    }

    /// The snapshot `target` confirmed last, if this node still has it (the parent of the next
    /// difference); nil: send it whole.
    public func replicationParent(_ name: String, target: String) -> String? {
        guard let snapshot = (replicationStates[name] ?? loadReplicationStates(name)).first(where: { $0.node == target })?.snapshot,
            let pool = try? mountedPool()
        else { return nil }
        let path = Self.replicationSnapshots(pool, name) + "/" + snapshot
        return FileIO.exists(path) ? path : nil
    }

    public func replicationSent(_ name: String, target: String, snapshot: String, takenUnixMs: Int64, bytes: UInt64) {
        var states = replicationStates[name] ?? loadReplicationStates(name)
        var state = states.first { $0.node == target } ?? ReplicaState(node: target)
        state.snapshot = FileIO.baseName(snapshot)
        state.takenUnixMs = takenUnixMs
        state.bytesSent = bytes
        state.totalBytesSent += bytes
        state.error = ""
        states.removeAll { $0.node == target }
        states.append(state)
        replicationStates[name] = states
    }

    public func replicationFailed(_ name: String, target: String, error: String) {
        var states = replicationStates[name] ?? loadReplicationStates(name)
        var state = states.first { $0.node == target } ?? ReplicaState(node: target)
        state.error = error
        states.removeAll { $0.node == target }
        states.append(state)
        replicationStates[name] = states
        logger.warning("replication failed", metadata: ["vps": "\(name)", "target": "\(target)", "error": "\(error)"])
    }

    /// The round is over: what it learned is saved, and every snapshot no target still needs as
    /// a parent is deleted.
    public func endReplication(_ name: String) {
        replicating.remove(name)
        let states = replicationStates[name] ?? []
        if let data = try? JSONEncoder.berth.encode(states), records[name] != nil {
            try? FileIO.writeAtomically(replicationStatePath(name), Array(data), durable: false)
        }
        guard let pool = try? mountedPool() else { return }
        let directory = Self.replicationSnapshots(pool, name)
        let needed = Set(states.compactMap(\.snapshot))
        for entry in FileIO.listDirectory(directory) where !needed.contains(entry) {
            _ = berth_btrfs_subvolume_delete(directory, entry)
        }
    }

    func loadReplicationStates(_ name: String) -> [ReplicaState] {
        FileManager.default.contents(atPath: replicationStatePath(name)).flatMap { try? JSONDecoder.berth.decode([ReplicaState].self, from: $0) } ?? []
    }

    func replicaStates(_ name: String) -> [ReplicaState] {
        guard let plan = records[name]?.config.replication else { return [] }
        let states = replicationStates[name] ?? loadReplicationStates(name)
        return plan.targets.map { target in states.first { $0.node == target.node } ?? ReplicaState(node: target.node) }
    }

    /// A destroyed or migrated-away VPS's replication snapshots.
    func removeReplicationSnapshots(_ name: String) {
        replicationStates[name] = nil
        guard let pool = try? mountedPool() else { return }
        deleteSubvolumes(in: Self.replicationSnapshots(pool, name))
    }

    // MARK: - a replica node

    /// `replica_expect`: replicas of `vps` from `source` are welcome here (kept across agent
    /// restarts); `source` "" withdraws that and deletes what this node holds of it.
    public func expectReplicas(of vps: String, from source: String) throws {
        let vps = try Name.validate(vps)
        if source.isEmpty {
            dropReplica(vps)
            return
        }
        try Name.validate(source, field: "source")
        guard source != nodeName else { throw AgentError.invalid("source", "a node holds no replica of its own VPS") }
        try FileIO.makeDirectories(replicaDirectory, mode: 0o700)
        if let held = loadHolding(vps), held.source == source { return }
        // Another primary: what this node holds came from the one before, and is no parent
        // of the new one's snapshots (nor fresher than them); the new one sends whole.
        dropReplica(vps)
        try saveHolding(ReplicaHolding(vps: vps, source: source))
    }

    /// Checks that `peer` may send replicas of `vps` here and that the parent it names is held.
    public func beginReplicaReceive(_ vps: String, from peer: String, parent: String) async throws -> (directory: String, holding: String?) {
        let vps = try Name.validate(vps)
        if !parent.isEmpty { try Name.validate(parent, field: "parent") }
        guard let holding = loadHolding(vps), holding.source == peer else {
            throw AgentError(.permissionDenied, "node \(nodeName) holds no replica grant for \(vps) from \(peer)")
        }
        guard !receivingReplicas.contains(vps) else { throw AgentError(.conflict, "a replica of \(vps) is already being received", field: "vps") }
        receivingReplicas.insert(vps)
        let pool: StoragePool
        do { pool = try await storagePool(creating: true) } catch {
            receivingReplicas.remove(vps)
            throw error
        }
        let directory = Self.replicaSnapshots(pool, vps)
        if !parent.isEmpty {
            guard FileIO.exists(directory + "/" + parent) else {
                receivingReplicas.remove(vps)
                throw AgentError(.notFound, "the replica of \(vps) on \(nodeName) has no snapshot \(parent) to apply a difference to", field: "parent")
            }
        }
        do { try FileIO.makeDirectories(directory, mode: 0o700) } catch {
            receivingReplicas.remove(vps)
            throw error
        }
        return (directory, holding.snapshot)
    }

    /// The snapshot `snapshot` arrived whole: it becomes the replica, the older ones go.
    public func replicaReceived(_ vps: String, snapshot: String, takenUnixMs: Int64, config: [UInt8], templateDigest: String, diskBytes: UInt64) throws {
        defer { receivingReplicas.remove(vps) }
        guard var holding = loadHolding(vps), let pool = try? mountedPool() else { return }
        let directory = Self.replicaSnapshots(pool, vps)
        guard FileIO.exists(directory + "/" + snapshot) else {
            throw AgentError.invalid("snapshot", "the stream ended before snapshot \(snapshot) was whole; the last replica stays")
        }
        try FileIO.writeAtomically(holdingConfig(vps), config)
        holding.snapshot = snapshot
        holding.takenUnixMs = takenUnixMs
        holding.templateDigest = templateDigest
        holding.diskBytes = diskBytes
        try saveHolding(holding)
        for entry in FileIO.listDirectory(directory) where entry != snapshot { _ = berth_btrfs_subvolume_delete(directory, entry) }
    }

    /// A receive failed: what it left goes, the last complete replica stays.
    public func replicaReceiveFailed(_ vps: String, snapshot: String) {
        receivingReplicas.remove(vps)
        guard let pool = try? mountedPool(), loadHolding(vps)?.snapshot != snapshot else { return }
        _ = berth_btrfs_subvolume_delete(Self.replicaSnapshots(pool, vps), snapshot)
    }

    /// `replica_promote`: the newest replica of `vps` becomes the VPS on this node (stopped; the
    /// caller starts it), HA with no targets until the controller's next plan. The replica goes.
    public func promoteReplica(_ vps: String) async throws -> VPSView {
        let vps = try Name.validate(vps)
        // Promoted already (a retry after a lost answer or a failed start): the VPS as it is.
        if let record = records[vps], loadHolding(vps)?.snapshot == nil { return view(record) }
        guard let holding = loadHolding(vps), let snapshot = holding.snapshot else {
            throw AgentError(.notFound, "node \(nodeName) holds no complete replica of \(vps)", field: "vps")
        }
        guard let data = FileManager.default.contents(atPath: holdingConfig(vps)) else {
            throw AgentError(.corruptState, "\(holdingConfig(vps)) cannot be read")
        }
        var config = try VPSConfig.decode(data, expectedName: vps, path: "the replica's config of \(vps)", received: true)
        config.replication = VPSConfig.Replication(intervalSeconds: config.replication?.intervalSeconds ?? 60, targets: [])
        let pool = try await storagePool(creating: false)
        let source = Self.replicaSnapshots(pool, vps) + "/" + snapshot
        let btrfs = try VolumeTransfer.tool()
        let copyReplica: (MigrationDisk) async throws -> Void = { disk in
            guard case .volume(let incoming) = disk else { return }
            try await self.tool([btrfs, "subvolume", "snapshot", "-r", source, incoming + "/" + snapshot], stage: "btrfs snapshot")
        }
        let view = try await takeIn(
            vps, config: config, templateDigest: holding.templateDigest, from: holding.source, transfer: "promote-" + snapshot, lastSnapshot: nil,
            stillWanted: {}, receiveDisk: copyReplica)
        dropReplica(vps)
        logger.notice(
            "replica promoted", metadata: ["vps": "\(vps)", "from": "\(holding.source)", "recovery-point-ms": "\(holding.takenUnixMs ?? 0)"])
        return view
    }

    /// The VPSs this node holds replicas of, and when each one's snapshot was taken (0: none
    /// complete yet); heartbeats report them, the controller fails over to the freshest.
    public func heldReplicas() -> [(vps: String, takenUnixMs: Int64)] {
        heldReplicaNames().map { ($0, loadHolding($0)?.takenUnixMs ?? 0) }
    }

    func heldReplicaNames() -> [String] {
        FileIO.listDirectory(replicaDirectory).filter { $0.hasSuffix(".json") }.map { String($0.dropLast(5)) }.sorted()
    }

    /// What the replicas held here hold: each one's VPS disk as it was at its snapshot.
    func replicaBytes() -> UInt64 {
        heldReplicaNames().reduce(0) { $0 + (loadHolding($1)?.diskBytes ?? 0) }
    }

    public func dropReplicas(_ names: [String]) { for name in names { dropReplica(name) } }

    func dropReplica(_ vps: String) {
        guard !receivingReplicas.contains(vps) else { return }
        unlink(holdingPath(vps))
        unlink(holdingConfig(vps))
        if let pool = try? mountedPool() { deleteSubvolumes(in: Self.replicaSnapshots(pool, vps)) }
    }

    private func loadHolding(_ vps: String) -> ReplicaHolding? {
        FileManager.default.contents(atPath: holdingPath(vps)).flatMap { try? JSONDecoder.berth.decode(ReplicaHolding.self, from: $0) }
    }

    private func saveHolding(_ holding: ReplicaHolding) throws {
        try FileIO.writeAtomically(holdingPath(holding.vps), Array(try JSONEncoder.berth.encode(holding)))
    }
}
