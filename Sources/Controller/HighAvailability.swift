import BerthCore
import Foundation
import Logging
import Placement
import Synchronization

/// What HA asks of the agents (its RPC edge: `AgentLinks+Replication.swift`).
protocol ReplicaTransport: Sendable {
    /// The primary's plan: replicate `vps` to `targets` every `interval` seconds (or stop: `ha` false).
    func plan(_ vps: String, ha: Bool, interval: Int, targets: [NodeRecord], on node: NodeRecord) async throws
    /// A replica node takes replicas of `vps` from `source` ("" : it drops what it holds).
    func expectReplicas(of vps: String, from source: String, on node: NodeRecord) async throws
    /// The replica node makes the VPS from its newest replica, and starts it if asked.
    func promote(_ vps: String, start: Bool, on node: NodeRecord) async throws -> VPSStatusRecord
}

/// High availability (Docs/ha.md): replicas of HA VPSs on other nodes, and the failover that
/// brings an HA VPS back on one of them when its node is lost. Safe by construction: a lost
/// node's lease (renewed only by heartbeats this controller answers) has lapsed, and its
/// monitors have killed its HA VPSs, `failoverAfter - fenceAfter` before any runs elsewhere; the
/// failover's transaction raises the node's lease epoch, so the node, when it comes back, never
/// starts its stale copies (it deletes them). A rate limit and a majority rule keep a controller
/// that lost the network from evacuating the fleet.
final class HighAvailability: Sendable {
    let store: ClusterStore
    let liveness: Liveness
    let nodes: SchedulerView
    let ledger: PlacementLedger
    let heartbeats: Heartbeats
    let index: ReplicaIndex
    let epochs: LeaseEpochs
    let settings: ControllerSettings
    let transport: any ReplicaTransport
    let logger: Logger
    private let recentFailovers = Mutex<[ContinuousClock.Instant]>([])
    /// Things said once until they change: no majority; a VPS that cannot fail over (and why).
    private let said = Mutex<Set<String>>([])
    /// Failed-over VPSs whose promotion has not succeeded yet (retried every tick).
    private let unpromoted = Mutex<Set<String>>([])
    private let lastProtectRound = Mutex<ContinuousClock.Instant?>(nil)

    init(
        store: ClusterStore, liveness: Liveness, nodes: SchedulerView, ledger: PlacementLedger, heartbeats: Heartbeats, index: ReplicaIndex,
        epochs: LeaseEpochs, settings: ControllerSettings, transport: any ReplicaTransport, logger: Logger
    ) {
        self.store = store
        self.liveness = liveness
        self.nodes = nodes
        self.ledger = ledger
        self.heartbeats = heartbeats
        self.index = index
        self.epochs = epochs
        self.settings = settings
        self.transport = transport
        self.logger = logger
    }

    // MARK: - replicas

    /// `create|set --ha`: the VPS's replicas placed (as many as asked, on ready nodes other
    /// than its own and each other's, that could hold it: the create's filters), every replica
    /// node told whose replicas to take, and the primary given the plan. Returns what it did,
    /// for the caller's progress.
    @discardableResult
    func protect(_ name: String) async -> [String] {
        guard var record = try? store.vps(name), record.spec.ha, record.phase == .ready, record.migration == nil else { return [] }
        var lines: [String] = []
        let wanted = record.spec.replicas
        var placed = record.spec.replicaNodes.filter { $0 != record.node && !lost($0) }
        if placed.count > wanted { placed = Array(placed.prefix(wanted)) }
        if placed.count < wanted {
            // A replica is where the VPS runs after a failover: it must fit there as a create would.
            let request = record.spec.placementRequest
            let scheduler = Scheduler(policy: settings.policy)
            let candidates = ((try? nodes.placementNodes()) ?? [])
                .map { ledger.snapshot($0) }
                .filter { $0.state == .ready && $0.name != record.node && !placed.contains($0.name) && !lost($0.name) }
                .filter { scheduler.rejection(of: $0, for: request) == nil }
                .sorted { ($0.vpsCount, $0.name) < ($1.vpsCount, $1.name) }
            for candidate in candidates where placed.count < wanted {
                placed.append(candidate.name)
                lines.append("replica of \(name) on \(candidate.name)")
            }
            if placed.count < wanted {
                let line = "only \(placed.count) of \(wanted) replica(s) of \(name) placed: no other ready node can hold one"
                lines.append(line)
                if sayOnce("short:\(name):\(placed.count)") { try? store.addEvent(kind: "vps.replica-missing", subject: name, message: line) }
            }
        }
        let dropped = record.spec.replicaNodes.filter { !placed.contains($0) }
        record.spec.replicaNodes = placed
        do {
            try store.updateVPS(record)
        } catch {
            return lines + ["the replicas of \(name) could not be recorded: \(error)"]
        }
        index.update(record)
        // Grants first (the primary's first round finds them), the source named again after a move.
        var targets: [NodeRecord] = []
        for node in placed {
            guard let target = try? store.node(node) else { continue }
            targets.append(target)
            guard liveness.isAlive(node) else { continue }
            do { try await transport.expectReplicas(of: name, from: record.node, on: target) } catch {
                lines.append("\(node) was not told to take replicas of \(name): \(error)")
            }
        }
        for node in dropped where liveness.isAlive(node) {
            if let gone = try? store.node(node) { try? await transport.expectReplicas(of: name, from: "", on: gone) }
        }
        if let primary = try? store.node(record.node), liveness.isAlive(primary.name) {
            do {
                try await transport.plan(name, ha: true, interval: record.spec.replicationIntervalSeconds, targets: targets, on: primary)
            } catch {
                lines.append("\(record.node) was not given the replication plan of \(name): \(error)")
            }
        }
        return lines
    }

    /// `set --ha on|off --replicas N --replication-interval S`: the record changed and checked
    /// (as a create's would be), then the replicas placed or dropped.
    func configure(_ name: String, ha: String, replicas: Int?, interval: Int?, by caller: Caller) async throws -> [String] {
        guard var record = try store.vps(name), caller.sees(vpsOf: record.tenant) else {
            throw BerthError(.notFound, "name: no VPS named \(name) in the cluster", field: "name")
        }
        let before = record
        switch ha {
        case "": break
        case "on": record.spec.ha = true
        case "off": record.spec.ha = false
        default: throw BerthError(.invalidArgument, "ha: '\(ha)' is not on or off", field: "ha")
        }
        if let replicas { record.spec.replicas = replicas }
        if let interval { record.spec.replicationIntervalSeconds = interval }
        guard record.spec.ha || (replicas == nil && interval == nil) else {
            throw BerthError(.invalidArgument, "replicas: \(name) is not HA (set --ha on first)", field: "replicas")
        }
        try record.spec.checkHA()
        if !record.spec.ha { record.spec.replicaNodes = [] }
        try store.updateVPS(record)
        index.update(record)
        guard record.spec.ha else {
            await unprotect(before, destroyed: false)
            try? store.addEvent(kind: "vps.ha-off", subject: name, message: "", actor: caller.actor)
            return ["\(name) is no longer HA; its replicas are dropped"]
        }
        return await protect(name)
    }

    /// HA off (or the VPS destroyed): its replica nodes drop what they hold (those that are down
    /// are told by their next heartbeat's answer), and its primary stops replicating.
    func unprotect(_ record: VPSRecord, destroyed: Bool) async {
        var cleared = record
        cleared.spec.replicaNodes = []
        if destroyed { index.remove(record.name) } else { index.update(cleared) }
        for node in record.spec.replicaNodes where liveness.isAlive(node) {
            if let target = try? store.node(node) { try? await transport.expectReplicas(of: record.name, from: "", on: target) }
        }
        if !destroyed, let primary = try? store.node(record.node), liveness.isAlive(primary.name) {
            try? await transport.plan(record.name, ha: false, interval: record.spec.replicationIntervalSeconds, targets: [], on: primary)
        }
    }

    // MARK: - failover

    /// The watch: every 250 ms, the HA VPSs of nodes silent for `failoverAfter` fail over;
    /// promotions that failed are retried; replicas are placed again where theirs were lost;
    /// stale copies deleted by their nodes are forgotten.
    func watch() async {
        let clock = ContinuousClock()
        while !Task.isCancelled {
            let before = clock.now
            try? await Task.sleep(for: .milliseconds(250))
            // A controller that did not run for a while (a stalled host, a suspended VM)
            // heard no heartbeat meanwhile: that is no evidence against its nodes. Only the
            // sleep's overrun counts, not a round's own calls.
            let overrun = clock.now - before - .milliseconds(250)
            if overrun > .seconds(2) {
                if let known = try? store.nodes() { liveness.restartWindows(known.map(\.name)) }
                logger.warning("the controller did not run for \(overrun): every node gets a fresh window before any failover")
            }
            guard settings.failover else { continue }
            await tick()
        }
    }

    /// One round of the watch (tests call it directly). The VPS records are read only when
    /// there is something to do (a lost node, a promotion to retry, a stale copy, the 10 s
    /// round of replica placement): a large fleet's rows are not decoded four times a second.
    func tick() async {
        guard let known = try? store.nodes() else { return }
        let lostNodes = Set(known.map(\.name).filter(lost))
        // Between rounds: a node heard again is no longer being failed over away from.
        heartbeats.releaseQuarantine(except: lostNodes)
        announceLapsedLeases(known.map(\.name))
        // A promotion whose new node was lost meanwhile fails over again, from that node.
        unpromoted.withLock { names in
            names = names.filter { name in (try? store.vps(name)).flatMap { $0 }.map { !lostNodes.contains($0.node) } ?? false }
        }
        let retry = unpromoted.withLock { Array($0) }
        let protectDue = lastProtectRound.withLock { last in last.map { ContinuousClock.now - $0 >= .seconds(10) } ?? true }
        guard !lostNodes.isEmpty || !retry.isEmpty || protectDue || index.hasStaleCopies, let records = try? store.vpses() else { return }
        for name in retry {
            if let record = records.first(where: { $0.name == name }) { await promote(record) }
        }
        // A promotion a controller restart cut short: the VPS is placed on a node that holds
        // its replica but does not report the VPS.
        for record in records where record.spec.ha && !record.spec.staleCopiesOn.isEmpty && liveness.isAlive(record.node) {
            if let reported = heartbeats.lastReported(by: record.node), !reported.contains(record.name),
                heartbeats.replicaTaken(of: record.name, on: record.node) != nil, !retry.contains(record.name)
            {
                await promote(record)
            }
        }
        if !lostNodes.isEmpty {
            let alive = known.filter { liveness.isAlive($0.name) && !lostNodes.contains($0.name) }.count
            if alive * 2 <= known.count {
                if sayOnce("no-majority") {
                    let line = "no failover: this controller sees \(alive) of \(known.count) nodes, not a majority (is it the one cut off?)"
                    logger.error("\(line)")
                    try? store.addEvent(kind: "failover.refused", subject: "controller", message: line)
                }
            } else {
                if unsay("no-majority") {
                    // Nodes come back one by one after a controller lost sight of most: the
                    // ones not heard yet get a window before they count as lost.
                    liveness.restartWindows(known.map(\.name))
                    try? store.addEvent(
                        kind: "failover.majority", subject: "controller", message: "sees a majority of the nodes again: every node gets a window to check in")
                    return
                }
                for record in records
                where record.spec.ha && lostNodes.contains(record.node) && record.phase == .ready && record.migration == nil
                    && !unpromoted.withLock({ $0.contains(record.name) })
                {
                    // Heard from again while this round ran: its VPS is fenced, and runs again there.
                    guard lost(record.node) else { continue }
                    await failOver(record, knownHA: records.filter(\.spec.ha).count)
                }
            }
        }
        forgetDeletedStaleCopies(records)
        if protectDue { await reprotect(records, lostNodes: lostNodes) }
    }

    /// The events of a lease that lapsed (`fenceAfter` without a renewal): the node's, and one
    /// per HA VPS placed there, whose monitor kills it now. Said once per lapse.
    private func announceLapsedLeases(_ nodes: [String]) {
        for node in nodes {
            guard let silent = liveness.millisecondsSinceHeartbeat(node) else { continue }
            guard Duration.milliseconds(Int64(silent)) > settings.fenceAfter else {
                unsay("lapsed:\(node)")
                continue
            }
            let fenced = index.haVPSs(on: node)
            guard !fenced.isEmpty, sayOnce("lapsed:\(node)") else { continue }
            let line =
                "no renewal for \(settings.fenceAfter): the monitors there fence \(fenced.joined(separator: ", ")); failover after \(settings.failoverAfter)"
            logger.warning("node lease lapsed", metadata: ["node": "\(node)", "vps": "\(fenced.joined(separator: ","))"])
            try? store.addEvent(kind: "node.lease-lapsed", subject: node, message: line)
            for vps in fenced {
                try? store.addEvent(kind: "vps.fenced", subject: vps, message: "on \(node): the node's lease lapsed, its monitor kills it there")
            }
        }
    }

    /// A node silent for longer than `failoverAfter` (its lease has lapsed there with margin).
    func lost(_ node: String) -> Bool {
        guard let silent = liveness.millisecondsSinceHeartbeat(node) else { return false }
        return Duration.milliseconds(Int64(silent)) > settings.failoverAfter
    }

    private func failOver(_ stale: VPSRecord, knownHA: Int) async {
        let name = stale.name
        // The record as it is now: an earlier failover of this round awaited its promotion.
        guard let record = try? store.vps(name), record.node == stale.node, record.spec.ha else { return }
        // A VPS that ran without an armed fence (booted by a monitor older than fencing) may
        // still run on its node: it waits for that node.
        if record.status.state == "running" && record.status.fenceArmed != true {
            if sayOnce("unfenced:\(name)") {
                let line = "\(name) cannot fail over: its node never reported its fence armed (restart it once to arm it)"
                logger.error("\(line)")
                try? store.addEvent(kind: "failover.impossible", subject: name, message: line)
            }
            return
        }
        let allowed = max(1, knownHA * settings.failoverRatePercent / 100)
        let now = ContinuousClock.now
        let admitted = recentFailovers.withLock { recent -> Bool in
            recent.removeAll { now - $0 > settings.failoverWindow }
            guard recent.count < allowed else { return false }
            recent.append(now)
            return true
        }
        guard admitted else {
            if sayOnce("rate:\(name)") {
                let line = "\(name) waits: \(allowed) failover(s) per \(settings.failoverWindow) already happened (failoverRatePercent)"
                logger.warning("\(line)")
                try? store.addEvent(kind: "failover.deferred", subject: name, message: line)
            }
            return
        }
        // The freshest complete replica on a node that is ready now, as the replica nodes
        // themselves report it (the lost primary's last word may be older).
        let candidates = record.spec.replicaNodes.compactMap { node -> (String, Int64)? in
            guard let state = try? store.node(node), nodes.state(of: state) == .ready,
                let taken = heartbeats.replicaTaken(of: name, on: node), taken > 0
            else { return nil }
            return (node, taken)
        }
        guard let (target, recoveryPoint) = candidates.max(by: { $0.1 < $1.1 }) else {
            recentFailovers.withLock { _ = $0.popLast() }
            if sayOnce("none:\(name)") {
                let line = "\(name) cannot fail over: none of its replicas (\(record.spec.replicaNodes.joined(separator: ", "))) is complete on a ready node"
                logger.error("\(line)")
                try? store.addEvent(kind: "failover.impossible", subject: name, message: line)
            }
            return
        }
        let lostFor = liveness.millisecondsSinceHeartbeat(record.node) ?? 0
        let age = Double(Int64(Date().timeIntervalSince1970 * 1000) - recoveryPoint) / 1000
        var moved = record
        moved.node = target
        if !moved.spec.staleCopiesOn.contains(record.node) { moved.spec.staleCopiesOn.append(record.node) }
        moved.spec.replicaNodes.removeAll { $0 == target }
        moved.status.node = target
        let line = String(
            format: "from %@ to %@ (no heartbeat from %@ for %.1f s); recovery point %@ (%.1f s before the failover)", record.node, target, record.node,
            Double(lostFor) / 1000, Self.isoTime(recoveryPoint), age)
        do {
            let epoch = try store.failOver(moved, from: record.node, event: line)
            epochs.raised(record.node, to: epoch)
        } catch {
            recentFailovers.withLock { _ = $0.popLast() }
            logger.error("failover not recorded", metadata: ["vps": "\(name)", "error": "\(error)"])
            return
        }
        unsay("none:\(name)")
        unsay("rate:\(name)")
        index.update(moved)
        ledger.remove(record.placed)
        ledger.add(moved.placed)
        logger.warning("VPS failed over", metadata: ["vps": "\(name)", "from": "\(record.node)", "to": "\(target)"])
        unpromoted.withLock { _ = $0.insert(name) }
        await promote(moved)
    }

    /// The new node makes the VPS from its replica and starts it (if it ran); then it is
    /// protected again with a replica in place of the one promoted.
    private func promote(_ record: VPSRecord) async {
        guard let node = try? store.node(record.node), liveness.isAlive(node.name) else { return }
        let wasRunning = record.status.state != "stopped"
        do {
            var status = try await transport.promote(record.name, start: wasRunning, on: node)
            status.node = node.name
            try? store.updateStatus(record.name, status)
            unpromoted.withLock { _ = $0.remove(record.name) }
            try? store.addEvent(kind: "vps.promoted", subject: record.name, message: "its replica on \(node.name) is the VPS, \(status.state)")
            logger.notice("replica promoted", metadata: ["vps": "\(record.name)", "node": "\(node.name)", "state": "\(status.state)"])
        } catch {
            if sayOnce("promote:\(record.name)") {
                try? store.addEvent(kind: "vps.promotion-failed", subject: record.name, message: "on \(node.name): \(error) (retried)")
            }
            return
        }
        unsay("promote:\(record.name)")
        for line in await protect(record.name) { logger.info("\(line)") }
    }

    /// A replica on a lost node is no replica: another is placed (every 10 s at most).
    private func reprotect(_ records: [VPSRecord], lostNodes: Set<String>) async {
        lastProtectRound.withLock { $0 = .now }
        for record in records where record.spec.ha && record.phase == .ready && !lostNodes.contains(record.node) {
            let short = record.spec.replicaNodes.count < record.spec.replicas
            let onLost = record.spec.replicaNodes.contains(where: lostNodes.contains)
            guard short || onLost else { continue }
            if onLost, var updated = try? store.vps(record.name), updated.node == record.node {
                updated.spec.replicaNodes.removeAll(where: lostNodes.contains)
                try? store.updateVPS(updated)
                index.update(updated)
                try? store.addEvent(
                    kind: "vps.replica-lost", subject: record.name,
                    message: "replica on \(record.spec.replicaNodes.filter(lostNodes.contains).joined(separator: ", ")) lost with its node")
            }
            await protect(record.name)
        }
    }

    /// A stale copy its node no longer reports has been deleted there.
    private func forgetDeletedStaleCopies(_ records: [VPSRecord]) {
        for record in records {
            for node in record.spec.staleCopiesOn {
                guard liveness.isAlive(node), let reported = heartbeats.lastReported(by: node), !reported.contains(record.name) else { continue }
                guard var current = try? store.vps(record.name), current.spec.staleCopiesOn.contains(node) else { continue }
                current.spec.staleCopiesOn.removeAll { $0 == node }
                try? store.updateVPS(current)
                index.update(current)
                try? store.addEvent(kind: "vps.stale-copy-deleted", subject: record.name, message: "\(node) deleted its stale copy")
            }
        }
    }

    private func sayOnce(_ key: String) -> Bool { said.withLock { $0.insert(key).inserted } }
    /// Forgets a thing said; whether it had been said.
    @discardableResult
    private func unsay(_ key: String) -> Bool { said.withLock { $0.remove(key) != nil } }

    static func isoTime(_ unixMs: Int64) -> String {
        let formatter = ISO8601DateFormatter()
        return formatter.string(from: Date(timeIntervalSince1970: Double(unixMs) / 1000))
    }
}
