import BerthCore
import Foundation
import Logging
import Synchronization
import Wire

/// `berth node drain` and `berth node restore` (Docs/migration.md, "Drain and restore"). A drain
/// cordons the node, then moves its VPSs away as migrations, a few at a time, placing each as a
/// create would; what cannot move yet is retried until the deadline. It is kept in the `drain`
/// table after every step, so a restarted controller resumes it. It ends `drained` only when no
/// VPS runs on the node; at the deadline, with `force`, the VPSs still running there are stopped,
/// without it the drain ends `incomplete` and lists them.
final class Drains: Sendable {
    let store: ClusterStore
    let migrations: Migrations
    let transport: any MigrationTransport
    let states: DrainStates
    let logger: Logger
    /// The drains this controller is running, with their current record.
    let running = Mutex([String: DrainRecord]())
    /// How long a drain waits before trying again the VPSs it could not move.
    let retryInterval: Duration

    static let defaultDeadlineSeconds: UInt32 = 3600
    static let defaultMaxParallel = 2

    init(
        store: ClusterStore, migrations: Migrations, transport: any MigrationTransport, states: DrainStates, logger: Logger,
        retryInterval: Duration = .seconds(2)
    ) {
        self.store = store
        self.migrations = migrations
        self.transport = transport
        self.states = states
        self.logger = logger
        self.retryInterval = retryInterval
    }

    // MARK: - drain

    /// Starts a drain of `node`, or, when one runs already, follows it (a retry re-attaches).
    func start(_ node: String, deadlineSeconds: UInt32, force: Bool, mode: String, maxParallel: UInt32, by caller: Caller) throws -> DrainRecord {
        guard try store.node(node) != nil else { throw BerthError(.notFound, "node: no node named \(node) (see `berth node list`)", field: "node") }
        let mode = try Migrations.mode(mode)
        guard maxParallel <= 32 else { throw BerthError(.invalidArgument, "max-parallel: at most 32 moves at once", field: "max-parallel") }
        guard deadlineSeconds <= 7 * 86400 else { throw BerthError(.invalidArgument, "deadline: at most 7 days", field: "deadline") }
        if let existing = try store.drain(node), existing.state.isActive { return existing }
        _ = try store.setCordoned(node, true)
        let items = try store.vpses().filter { $0.node == node }.map { DrainRecord.Item(vps: $0.name, state: .pending) }
        let drain = DrainRecord(
            node: node, state: .running,
            deadlineUnix: Self.now + Int64(deadlineSeconds == 0 ? Self.defaultDeadlineSeconds : deadlineSeconds),
            force: force, mode: mode, maxParallel: maxParallel == 0 ? Self.defaultMaxParallel : Int(maxParallel),
            startedBy: caller.name, items: items)
        try store.saveDrain(drain)
        states.set(node, .running)
        try? store.addEvent(kind: "node.draining", subject: node, message: "\(items.count) VPSs to move", actor: caller.actor)
        logger.notice("draining node", metadata: ["node": "\(node)", "vpses": "\(items.count)", "by": "\(caller.name)"])
        launch(drain)
        return drain
    }

    /// Resumes the drains a stopped controller left running.
    func resume() {
        for drain in (try? store.drains()) ?? [] where drain.state.isActive {
            logger.notice("resuming the drain of a node", metadata: ["node": "\(drain.node)"])
            launch(drain)
        }
    }

    /// No new moves; those under way finish or roll back, then the drain ends `cancelled`.
    func cancel(_ node: String, by caller: Caller) throws -> DrainRecord {
        guard var drain = try store.drain(node), drain.state.isActive else {
            throw BerthError(.notFound, "node: no drain of \(node) is running", field: "node")
        }
        drain.state = .cancelling
        update(node) { $0.state = .cancelling }
        try store.saveDrain(running.withLock { $0[node] } ?? drain)
        try? store.addEvent(kind: "node.drain-cancelling", subject: node, message: "", actor: caller.actor)
        return drain
    }

    /// Follows the drain of `node` until it ends, telling `progress` each VPS's change.
    func follow(_ node: String, progress: @Sendable (String) -> Void) async throws -> DrainRecord {
        var shown: [String: DrainRecord.Item] = [:]
        while true {
            guard let drain = try running.withLock({ $0[node] }) ?? store.drain(node) else {
                throw BerthError(.notFound, "node: no drain of \(node)", field: "node")
            }
            for item in drain.items where shown[item.vps] != item {
                shown[item.vps] = item
                progress(Self.describe(item))
            }
            if !drain.state.isActive { return drain }
            try await Task.sleep(for: .milliseconds(200))
        }
    }

    static func describe(_ item: DrainRecord.Item) -> String {
        switch item.state {
        case .done: return "\(item.vps): moved to \(item.to)"
        case .moving: return "\(item.vps): moving" + (item.to.isEmpty ? "" : " to \(item.to)") + (item.reason.isEmpty ? "" : ": \(item.reason)")
        case .pending: return "\(item.vps): pending"
        case .blocked, .failed, .stopped: return "\(item.vps): \(item.state.rawValue): \(item.reason)"
        }
    }

    /// A move's step as its VPS's line shows it: the target once chosen, then each pass (bytes
    /// and rate) and the stop; nil for the steps the line leaves out.
    static func shownStep(_ step: String) -> (to: String?, step: String)? {
        if step.hasPrefix("migrating "), let to = step.range(of: " to ") {
            return (String(step[to.upperBound...].prefix { $0 != " " }), "")
        }
        if step.hasPrefix("stopping ") { return (nil, step) }
        guard let said = Migrations.sourceSaid(step), said.hasPrefix("pass ") || said.hasPrefix("stopping ") else { return nil }
        return (nil, String(said))
    }

    private func launch(_ drain: DrainRecord) {
        let fresh = running.withLock { running -> Bool in
            guard running[drain.node] == nil else { return false }
            running[drain.node] = drain
            return true
        }
        guard fresh else { return }
        Task { await self.run(drain.node) }
    }

    /// Changes the running drain's record in memory and stores it.
    private func update(_ node: String, _ change: (inout DrainRecord) -> Void) {
        let drain = running.withLock { running -> DrainRecord? in
            guard var drain = running[node] else { return nil }
            change(&drain)
            running[node] = drain
            return drain
        }
        if let drain { try? store.saveDrain(drain) }
    }

    private func setItem(_ node: String, _ item: DrainRecord.Item) {
        update(node) { drain in
            if let index = drain.items.firstIndex(where: { $0.vps == item.vps }) { drain.items[index] = item } else { drain.items.append(item) }
        }
    }

    private func finish(_ node: String, _ state: DrainRecord.State, _ message: String) {
        update(node) { $0.state = state }
        states.set(node, state)
        running.withLock { _ = $0.removeValue(forKey: node) }
        try? store.addEvent(kind: "node.\(state.rawValue)", subject: node, message: message)
        logger.notice("drain ended", metadata: ["node": "\(node)", "state": "\(state.rawValue)", "detail": "\(message)"])
    }

    private func run(_ node: String) async {
        while true {
            guard let drain = running.withLock({ $0[node] }) else { return }
            if drain.state == .cancelling {
                finish(node, .cancelled, "cancelled; \(drain.items.filter { $0.state == .done }.count) VPSs had moved")
                return
            }
            let here = ((try? store.vpses()) ?? []).filter { $0.node == node }
            if here.isEmpty {
                finish(node, .drained, "no VPS is left on \(node)")
                return
            }
            if Self.now >= drain.deadlineUnix {
                await endAtDeadline(node, drain, here)
                return
            }
            await movePass(node, drain, here)
            // Whatever is still here could not move in this pass: once none of it runs, the
            // node is drained (stopped VPSs that fit nowhere stay, listed with the reason).
            let left = ((try? store.vpses()) ?? []).filter { $0.node == node }
            if !left.isEmpty && left.allSatisfy({ $0.status.state != "running" }) && running.withLock({ $0[node]?.state }) == .running {
                finish(node, .drained, "no VPS runs on \(node); \(left.count) stopped VPSs could not move and stay there")
                return
            }
            if !left.isEmpty { try? await Task.sleep(for: retryInterval) }
        }
    }

    /// Moves the VPSs of `here`, at most `maxParallel` at once; stops starting moves once the
    /// drain is cancelled.
    private func movePass(_ node: String, _ drain: DrainRecord, _ here: [VPSRecord]) async {
        let caller = Caller(identity: CertificateIdentity(role: .admin, name: drain.startedBy, serial: ""))
        await withTaskGroup(of: Void.self) { group in
            var inFlight = 0
            for record in here {
                if running.withLock({ $0[node]?.state }) != .running { break }
                if inFlight >= drain.maxParallel {
                    await group.next()
                    inFlight -= 1
                }
                inFlight += 1
                group.addTask { await self.move(record, from: node, mode: drain.mode, by: caller) }
            }
        }
    }

    private func move(_ record: VPSRecord, from node: String, mode: String, by caller: Caller) async {
        setItem(node, DrainRecord.Item(vps: record.name, state: .moving))
        do {
            // The move's steps (the target chosen, each pass with its bytes and rate, the stop)
            // show on the VPS's line of the drain.
            let status = try await migrations.migrate(record.name, to: "", mode: mode, by: caller, drainedFrom: node) { step in
                guard let shown = Self.shownStep(step) else { return }
                self.update(node) { drain in
                    guard let index = drain.items.firstIndex(where: { $0.vps == record.name && $0.state == .moving }) else { return }
                    if let to = shown.to { drain.items[index].to = to }
                    drain.items[index].reason = shown.step
                }
            }
            setItem(node, DrainRecord.Item(vps: record.name, state: .done, to: status.node))
        } catch let error as BerthError {
            let blocked = error.code == .noCapacity
            setItem(node, DrainRecord.Item(vps: record.name, state: blocked ? .blocked : .failed, reason: error.message))
        } catch {
            setItem(node, DrainRecord.Item(vps: record.name, state: .failed, reason: "\(error)"))
        }
    }

    /// The deadline passed with VPSs still on the node.
    private func endAtDeadline(_ node: String, _ drain: DrainRecord, _ here: [VPSRecord]) async {
        let stillRunning = here.filter { $0.status.state == "running" }
        guard !stillRunning.isEmpty else {
            finish(node, .drained, "no VPS runs on \(node); \(here.count) stopped VPSs could not move and stay there")
            return
        }
        guard drain.force, let nodeRecord = try? store.node(node) else {
            finish(
                node, .incomplete, "the deadline passed with \(stillRunning.count) VPSs running on \(node): \(stillRunning.map(\.name).joined(separator: ", "))"
            )
            return
        }
        var failures: [String] = []
        for record in stillRunning {
            do {
                var status = try await transport.stop(record.name, on: nodeRecord)
                status.node = node
                try? store.updateStatus(record.name, status)
                let reason = running.withLock { $0[node]?.items.first { $0.vps == record.name }?.reason } ?? ""
                setItem(
                    node,
                    DrainRecord.Item(vps: record.name, state: .stopped, reason: "stopped at the deadline (--force)" + (reason.isEmpty ? "" : "; \(reason)")))
            } catch {
                failures.append("\(record.name): \(error)")
            }
        }
        if failures.isEmpty {
            finish(node, .drained, "the deadline passed: \(stillRunning.count) VPSs that could not move were stopped (--force)")
        } else {
            finish(node, .incomplete, "the deadline passed; stopping failed for \(failures.joined(separator: "; "))")
        }
    }

    /// `node uncordon` of a draining node is refused (the drain would go on moving VPSs away);
    /// of a drained one it ends the drain's record, as `node restore --skip` does.
    func checkUncordon(_ node: String) throws {
        guard let drain = try store.drain(node) else { return }
        guard !drain.state.isActive else {
            throw BerthError(
                .conflict, "node: \(node) is being drained; cancel the drain (berth node drain \(node) --cancel) or use berth node restore", field: "node")
        }
        try store.removeDrain(node)
        states.set(node, nil)
    }

    // MARK: - restore

    /// Uncordons `node` and moves back the VPSs a drain took from it (unless `skip`). Refused
    /// while its drain runs, unless `cancelDrain`, which cancels it and waits for it to end.
    func restore(_ node: String, skip: Bool, cancelDrain: Bool, by caller: Caller, progress: @escaping @Sendable (String) -> Void) async throws
        -> DrainRecord
    {
        guard try store.node(node) != nil else { throw BerthError(.notFound, "node: no node named \(node) (see `berth node list`)", field: "node") }
        if let drain = try store.drain(node), drain.state.isActive {
            guard cancelDrain else {
                throw BerthError(
                    .conflict,
                    "node: \(node) is being drained; cancel the drain first (berth node drain \(node) --cancel) or restore with --cancel-drain",
                    field: "node")
            }
            _ = try cancel(node, by: caller)
            progress("cancelling the drain of \(node)")
            _ = try await follow(node) { _ in }
        }
        _ = try store.setCordoned(node, false)
        try store.removeDrain(node)
        states.set(node, nil)
        try? store.addEvent(kind: "node.restored", subject: node, message: skip ? "uncordoned only" : "", actor: caller.actor)
        var result = DrainRecord(node: node, state: .drained, deadlineUnix: 0, force: false, mode: "cold", maxParallel: 1, startedBy: caller.name)
        guard !skip else { return result }
        let back = try store.vpses().filter { $0.origin == node && $0.node != node }
        for record in back {
            progress("\(record.name): moving back from \(record.node)")
            do {
                _ = try await migrations.migrate(record.name, to: node, mode: "", by: caller) { _ in }
                result.items.append(DrainRecord.Item(vps: record.name, state: .done, to: node))
                progress("\(record.name): back on \(node)")
            } catch {
                let reason = (error as? BerthError)?.message ?? "\(error)"
                result.items.append(DrainRecord.Item(vps: record.name, state: .failed, reason: reason))
                progress("\(record.name): failed: \(reason)")
            }
        }
        return result
    }

    static var now: Int64 { Int64(Date().timeIntervalSince1970) }
}
