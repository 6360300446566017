import BerthCore
import Foundation
import Logging
import Placement
import Synchronization

/// `berth migrate NAME [--to NODE] [--mode warm|cold]` (Docs/migration.md). The source agent
/// sends the VPS's config and disk straight to the target agent under a single-use grant: a
/// warm migration copies while the VPS runs and has the source stop it for the last pass, a
/// cold one stops it first. Then one store write moves the record (the commit point), the VPS
/// starts on the target if it was running, and only then is the source's copy deleted. Before the commit
/// every failure leaves the VPS on its source as it was; after it, a target that cannot start
/// the VPS hands it back.
final class Migrations: Sendable {
    let store: ClusterStore
    let ledger: PlacementLedger
    let vps: VPSCalls
    let transport: any MigrationTransport
    let logger: Logger
    /// Runs after a move committed: an HA VPS's replicas follow it (`HighAvailability.protect`).
    let afterMove = Mutex<(@Sendable (String) async -> Void)?>(nil)
    /// How long a grant holds: a copy that has not begun by then is refused by the target.
    static let grantLifetimeSeconds: Int64 = 600

    init(store: ClusterStore, ledger: PlacementLedger, vps: VPSCalls, transport: any MigrationTransport, logger: Logger) {
        self.store = store
        self.ledger = ledger
        self.vps = vps
        self.transport = transport
        self.logger = logger
    }

    /// The mode a caller asked for: warm unless cold is asked (a stopped VPS is copied once,
    /// whichever it is).
    static func mode(_ asked: String) throws -> String {
        switch asked {
        case "", "warm": return "warm"
        case "cold": return "cold"
        default: throw BerthError(.invalidArgument, "mode: '\(asked)' is not a migration mode (warm, cold)", field: "mode")
        }
    }

    /// `drainedFrom`: the move is a drain's; the VPS remembers the node it came from (its first
    /// origin, if a drain moved it before) for `node restore`. Any other move forgets its origin.
    func migrate(
        _ name: String, to wanted: String, mode asked: String, by caller: Caller, drainedFrom: String? = nil,
        progress: @escaping @Sendable (String) -> Void
    ) async throws -> VPSStatusRecord {
        let mode = try Self.mode(asked)
        _ = try vps.visibleVPS(name, to: caller)
        try vps.hold(name, "being migrated")
        defer { vps.release(name) }
        // Read again under the hold: a move that ended meanwhile may have changed its node.
        let record = try vps.visibleVPS(name, to: caller)
        guard record.phase == .ready else {
            throw BerthError(.conflict, "name: \(name) is still being created on \(record.node)", field: "name")
        }
        let source: NodeRecord
        do { source = try vps.placedNode(record) } catch let error as BerthError where error.code == .unavailable {
            throw BerthError(.unavailable, "\(error.message): a VPS is migrated from a live node (bringing back the VPSs of a dead node is failover's job)")
        }
        if !wanted.isEmpty {
            guard wanted != source.name else { throw BerthError(.invalidArgument, "to: \(name) is already on \(wanted)", field: "to") }
            guard try store.node(wanted) != nil else {
                throw BerthError(.notFound, "to: no node named \(wanted) (see `berth node list`)", field: "to")
            }
        }

        // The target's share is reserved as a create's would be, with every filter a create has.
        let cost = record.spec.placementRequest
        let (chosen, _) = try ledger.place(name, cost, pinnedTo: wanted.isEmpty ? nil : wanted, excluding: [source.name], field: "to") { $0 }
        guard let target = try store.node(chosen) else { throw BerthError(.corruptState, "node \(chosen) vanished") }
        let reservedOnTarget = PlacedVPS(name: name, node: target.name, cost: cost, group: record.spec.antiAffinity)
        let grant = MigrationGrant(
            id: Self.grantID(), vps: name, source: source.name, target: target.name,
            expiresUnix: Int64(Date().timeIntervalSince1970) + Self.grantLifetimeSeconds)

        // Before the commit point: any failure puts everything back as it was.
        var wasRunning = false
        var pending = PendingMigration(grantID: grant.id, source: source.name, target: target.name, wasRunning: false)
        let passes = Mutex<[String]>([])
        let received: VPSStatusRecord
        do {
            try store.setMigration(name, pending)
            try await transport.expect(grant, on: target)
            let current = try await transport.status(name, on: source)
            guard current.state == "running" || current.state == "stopped" else {
                throw BerthError(.conflict, "\(name) is \(current.state) on \(source.name); migrate it once it is running or stopped", field: "name")
            }
            let warm = mode == "warm" && current.state == "running"
            let how = warm ? "warm" : current.state == "running" ? "cold" : "stopped"
            logger.info(
                "migrating VPS", metadata: ["vps": "\(name)", "from": "\(source.name)", "to": "\(target.name)", "mode": "\(how)", "by": "\(caller.name)"])
            try? store.addEvent(kind: "vps.migrating", subject: name, message: "from \(source.name) to \(target.name) (\(how))", actor: caller.actor)
            progress("migrating \(name) from \(source.name) to \(target.name) (\(how))")
            if current.state == "running" {
                // Recorded before any stop (the controller's, or the source's before a warm
                // migration's last pass): a controller that dies during it still knows to
                // start the VPS again.
                wasRunning = true
                pending.wasRunning = true
                try store.setMigration(name, pending)
            }
            if current.state == "running" && !warm {
                progress("stopping \(name) on \(source.name)")
                var stopped = try await transport.stop(name, on: source)
                stopped.node = source.name
                try? store.updateStatus(name, stopped)
            }
            received = try await transport.send(grant, to: target, from: source, warm: warm) { step in
                // The passes' summaries go into the event the move ends with.
                if let summary = Self.passSummary(step) { passes.withLock { $0.append(summary) } }
                progress(step)
            }
        } catch {
            ledger.remove(reservedOnTarget)
            // What cannot be undone now (a node down) stays recorded: `settleInterrupted` does
            // it once the node answers.
            var undone = (try? await transport.abort(grant, on: target)) != nil
            var restarted = ""
            if wasRunning {
                // A warm migration that failed before its last pass never stopped the VPS.
                if let status = try? await transport.status(name, on: source), status.state == "running" {
                    restarted = ", still running"
                } else if let status = try? await transport.start(name, on: source) {
                    try? store.updateStatus(name, status)
                    restarted = ", running again"
                } else {
                    undone = false
                    restarted = ", stopped until \(source.name) answers again (then it is started)"
                }
            }
            if undone { try? store.setMigration(name, nil) }
            try? store.addEvent(kind: "vps.migration-failed", subject: name, message: "to \(target.name): \(error)")
            throw Self.failed(error, "migrating \(name) to \(target.name) failed; it stays on \(source.name)\(restarted)")
        }

        // The commit point: one write moves the VPS to the target.
        var moved = record
        moved.node = target.name
        moved.status = received
        moved.status.node = target.name
        moved.origin = drainedFrom.map { record.origin.isEmpty ? $0 : record.origin } ?? ""
        moved.migration = pending
        do {
            try store.updateVPS(moved)
        } catch {
            ledger.remove(reservedOnTarget)
            try? await transport.abort(grant, on: target)
            if wasRunning, let status = try? await transport.start(name, on: source) { try? store.updateStatus(name, status) }
            try? store.setMigration(name, nil)
            throw error
        }
        ledger.remove(record.placed)
        try? store.addEvent(
            kind: "vps.migrated", subject: name,
            message: "from \(source.name) to \(target.name)\(passes.withLock { $0.isEmpty ? "" : "; " + $0.joined(separator: "; ") })",
            actor: caller.actor)
        progress("moved to \(target.name)")

        var final = moved.status
        if wasRunning {
            do {
                final = try await transport.start(name, on: target)
                final.node = target.name
                try? store.updateStatus(name, final)
            } catch let lost as BerthError where lost.code == .unavailable {
                // The target went away during its start: whether the VPS runs there is not known,
                // so the source's copy must not start. The move stays recorded (committed) and
                // settles once the target answers: started there if it is not running, the
                // source's copy deleted.
                try? store.addEvent(
                    kind: "vps.migration-pending", subject: name, message: "\(target.name) did not answer its start; settled once it answers: \(lost.message)")
                throw Self.failed(
                    lost, "\(name) moved to \(target.name), which did not answer its start; it is started there once \(target.name) answers again")
            } catch {
                try await handBack(record, from: target, to: source, reservedOnTarget: reservedOnTarget, because: error)
            }
        }
        // Only now is the source's copy no longer needed. If it cannot be deleted now, the
        // migration stays recorded and `settleInterrupted` deletes it once the source answers.
        do {
            try await transport.destroy(name, on: source)
            try? store.setMigration(name, nil)
        } catch {
            logger.error("the source's copy of a migrated VPS was not deleted", metadata: ["vps": "\(name)", "node": "\(source.name)", "error": "\(error)"])
            try? store.addEvent(
                kind: "vps.migration-leftover", subject: name, message: "the stopped copy on \(source.name) is deleted once it answers: \(error)")
            progress("warning: the stopped copy on \(source.name) was not deleted yet: \(error)")
        }
        if let follow = afterMove.withLock({ $0 }) { await follow(name) }
        return final
    }

    // MARK: - a controller that stopped mid-way

    /// Every 2 s: settles the migrations recorded in VPS rows that no running call holds.
    func watchInterrupted() async {
        while !Task.isCancelled {
            await settleInterrupted()
            try? await Task.sleep(for: .seconds(2))
        }
    }

    /// Settles each recorded migration no call holds (a controller stopped during it, or the
    /// source was unreachable at its end), once both its nodes are up.
    func settleInterrupted() async {
        for record in (try? store.vpses()) ?? [] where record.migration != nil {
            guard (try? vps.hold(record.name, "settling an interrupted migration")) != nil else { continue }
            await settle(record)
            vps.release(record.name)
        }
    }

    /// The row's node is where the VPS lives: before the commit the source, after it the
    /// target. The other node's copy goes (never a running one), and a VPS the migration had
    /// stopped is started where it lives.
    func settle(_ record: VPSRecord) async {
        guard let pending = record.migration, let source = try? store.node(pending.source), let target = try? store.node(pending.target),
            vps.liveness.isAlive(source.name), vps.liveness.isAlive(target.name)
        else { return }
        let name = record.name
        let committed = record.node == target.name
        let (home, other) = committed ? (target, source) : (source, target)
        do {
            if !committed {
                let grant = MigrationGrant(id: pending.grantID, vps: name, source: source.name, target: target.name, expiresUnix: 0)
                try await transport.abort(grant, on: target)
            }
            if let copy = try? await transport.status(name, on: other) {
                guard !["running", "starting", "stopping"].contains(copy.state) else {
                    logger.critical(
                        "a VPS runs on two nodes after an interrupted migration", metadata: ["vps": "\(name)", "nodes": "\(home.name) \(other.name)"])
                    try? store.addEvent(
                        kind: "vps.migration-conflict", subject: name, message: "\(copy.state) on \(other.name) as well as placed on \(home.name)")
                    return
                }
                try await transport.destroy(name, on: other)
            }
            var detail = "on \(home.name); the copy on \(other.name) is gone"
            if pending.wasRunning {
                let state = try await transport.status(name, on: home).state
                // A stop the stopped controller asked for may still be under way: next round.
                guard state != "stopping" && state != "starting" else { return }
                if state != "running" {
                    var started = try await transport.start(name, on: home)
                    started.node = home.name
                    try? store.updateStatus(name, started)
                    detail += "; running again"
                }
            }
            try store.setMigration(name, nil)
            logger.notice("settled an interrupted migration", metadata: ["vps": "\(name)", "node": "\(home.name)"])
            try? store.addEvent(kind: "vps.migration-settled", subject: name, message: detail)
        } catch {
            logger.warning("settling an interrupted migration failed; trying again", metadata: ["vps": "\(name)", "error": "\(error)"])
        }
    }

    /// After the commit the target could not start the VPS: the record goes back to the source
    /// (whose copy was kept for this), the target's copy is deleted, and the VPS starts where it was.
    func handBack(_ record: VPSRecord, from target: NodeRecord, to source: NodeRecord, reservedOnTarget: PlacedVPS, because error: any Error) async throws {
        try store.updateVPS(record)
        ledger.remove(reservedOnTarget)
        ledger.add(record.placed)
        try? await transport.destroy(record.name, on: target)
        var restarted = ""
        if let status = try? await transport.start(record.name, on: source) {
            try? store.updateStatus(record.name, status)
            restarted = ", running again"
        }
        try? store.addEvent(
            kind: "vps.migration-failed", subject: record.name, message: "the start on \(target.name) failed, handed back to \(source.name): \(error)")
        throw Self.failed(error, "\(record.name) did not start on \(target.name) and was handed back to \(source.name)\(restarted)")
    }

    /// A source's summary of one pass ("n1: pass 2 while web1 runs: 11.5 MiB …") or of its
    /// resumes on new connections, without the node; nil for other steps, the progress within a
    /// pass ("n1: pass 2: 64.0 MiB of …") too.
    static func passSummary(_ step: String) -> String? {
        guard let said = sourceSaid(step) else { return nil }
        if said.hasPrefix("resumed ") { return String(said) }
        let words = said.split(separator: " ", maxSplits: 2)
        guard words.count == 3, words[0] == "pass", Int(words[1]) != nil else { return nil }
        return String(said)
    }

    /// What a node said in a step the agents' calls relay ("n1: pass 2 …" → "pass 2 …"); nil for
    /// the controller's own steps, which name no node.
    static func sourceSaid(_ step: String) -> Substring? {
        guard let colon = step.firstIndex(of: ":") else { return nil }
        return step[step.index(after: colon)...].drop { $0 == " " }
    }

    /// The error as it was, with what became of the VPS in front of its message.
    static func failed(_ error: any Error, _ context: String) -> BerthError {
        guard let known = error as? BerthError else { return BerthError(.internalError, "\(context): \(error)") }
        var wrapped = known
        wrapped.message = "\(context): \(known.message)"
        return wrapped
    }

    static func grantID() -> String {
        (0..<16).map { _ in String(format: "%02x", UInt8.random(in: 0...255)) }.joined()
    }
}
