import BerthCore
import Logging
import Placement
import Wire
import WireTLS

/// The controller's RPC surface: every call is looked up in the call table (`ControllerCall`),
/// authorised from the caller's verified certificate (`Authorisation`), run as an operation when
/// it mutates a VPS (`OperationJournal`) and handed to its handler (ServedCall+Handlers.swift),
/// which converts between the wire and the parts below.
public final class ControllerService: WireService {
    let store: ClusterStore
    let links: AgentLinks
    public let liveness: Liveness
    let nodes: SchedulerView
    let ledger: PlacementLedger
    let journal: OperationJournal<Berth_V1_Response>
    let heartbeats: Heartbeats
    let enrolment: Enrolment
    let templates: TemplateDistribution
    let vps: VPSCalls
    let migrations: Migrations
    let drains: Drains
    let ha: HighAvailability
    let writes: BackgroundWrites
    let eventRetention: Int
    let logger: Logger

    public init(
        store: ClusterStore, ca: ClusterCA, links: AgentLinks, settings: ControllerSettings,
        registry: PeerRegistry, logger: Logger
    ) throws {
        self.store = store
        self.links = links
        eventRetention = settings.eventRetention
        self.logger = logger
        liveness = Liveness(downAfter: settings.downAfter)
        let drainStates = DrainStates(try store.drains())
        nodes = SchedulerView(store: store, liveness: liveness, drains: drainStates)
        let placed = try store.vpses()
        for record in placed {
            if let damage = record.damage { logger.error("stored VPS record is damaged", metadata: ["vps": "\(record.name)", "damage": "\(damage)"]) }
        }
        ledger = PlacementLedger(policy: settings.policy, source: nodes, placed: placed.map(\.placed))
        journal = try OperationJournal(store: store, codec: .wire)
        writes = BackgroundWrites(logger: logger)
        let replicas = ReplicaIndex(placed)
        heartbeats = try Heartbeats(
            store: store, liveness: liveness, registry: registry, settings: settings, epochs: links.epochs, replicas: replicas, writes: writes,
            logger: logger)
        enrolment = Enrolment(store: store, ca: ca, heartbeats: heartbeats, logger: logger)
        templates = TemplateDistribution(store: store, liveness: liveness, uploadDirectory: settings.uploadDirectory, logger: logger)
        vps = VPSCalls(store: store, liveness: liveness, links: links, ledger: ledger, heartbeats: heartbeats, logger: logger)
        ha = HighAvailability(
            store: store, liveness: liveness, nodes: nodes, ledger: ledger, heartbeats: heartbeats, index: replicas, epochs: links.epochs,
            settings: settings, transport: links, logger: logger)
        migrations = Migrations(store: store, ledger: ledger, vps: vps, transport: links, logger: logger)
        migrations.afterMove.withLock { [ha] in $0 = { name in await ha.protect(name) } }
        drains = Drains(store: store, migrations: migrations, transport: links, states: drainStates, logger: logger)
    }

    /// Set by the server once it listens (see `Enrolment.controllerRotation`).
    func setControllerRotation(_ rotation: @escaping @Sendable () async throws -> (new: String, old: String)) {
        enrolment.controllerRotation.withLock { $0 = rotation }
    }

    public func watchLiveness() async { await heartbeats.watchLiveness() }

    /// Fails HA VPSs over from lost nodes and keeps their replicas placed, until cancelled.
    public func watchFailover() async { await ha.watch() }

    /// Keeps the event log at `eventRetention` events, pruning once a minute until cancelled.
    public func pruneEvents() async {
        while !Task.isCancelled {
            if let pruned = try? store.pruneEvents(keeping: eventRetention), pruned > 0 {
                logger.info("events pruned", metadata: ["count": "\(pruned)", "kept": "\(eventRetention)"])
            }
            try? await Task.sleep(for: .seconds(60))
        }
    }

    /// Drains a stopped controller left running go on (called once the server listens).
    public func resumeDrains() { drains.resume() }

    /// Settles migrations a stopped controller left half done, until cancelled.
    public func settleMigrations() async { await migrations.watchInterrupted() }

    /// A heartbeat is answered on the connection's event loop: it is decided in memory and its
    /// store writes go to `BackgroundWrites`, so neither a busy cooperative pool (two threads
    /// on a small controller, held by calls waiting for SQLite) nor a slow disk can delay it
    /// into a false "down", which with HA would be a false failover.
    public func handlesOnEventLoop(_ request: Berth_V1_Request) -> Bool {
        if case .heartbeat = request.call { return true }
        return false
    }

    public func handle(_ request: Berth_V1_Request, stream: ServerStream) async throws -> Berth_V1_Response {
        // A connection without a certificate may enrol and nothing else, whatever the call.
        if stream.peer == .anonymous {
            guard case .enroll = request.call else {
                throw WireError(.unauthenticated, "a client certificate from the cluster CA is required (only enrolment works without one)")
            }
        }
        guard let call = request.call else {
            throw WireError(.invalidArgument, "the request names no call (is the client newer than this controller?)")
        }
        let entry = ControllerCall.of(call)
        let caller = try Authorisation.authorise(stream.peer, entry.access, call: entry.name)
        let served = ServedCall(service: self, request: request, caller: caller, stream: stream)
        // The event is written with the work: an operation replayed by its id writes none.
        let work: @Sendable () async throws -> Berth_V1_Response = {
            let response = try await entry.handler(served)
            if let event = entry.event {
                try? self.store.addEvent(kind: event.kind, subject: event.subject, message: event.message, actor: caller.actor)
            }
            return response
        }
        guard let subject = entry.operationSubject else { return try await work() }
        return try await journal.run(id: request.operationID, kind: entry.name, subject: subject, by: caller, stream: stream, work: work)
    }

    /// A node as `node list` and `node show` answer it.
    func clusterNode(_ node: NodeRecord) -> Berth_V1_ClusterNode {
        Berth_V1_ClusterNode(node, state: nodes.state(of: node), liveness: liveness, vpsCount: ledger.vpsCount(on: node.name))
    }
}
