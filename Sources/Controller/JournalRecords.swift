import Foundation

/// A VPS call run as an operation (`OperationJournal`), as the `operation` table keeps it. Its
/// result and error are bytes the RPC layer wrote (`OperationJournal.Codec`); the journal and
/// the store do not look inside them.
public struct OperationRecord: Sendable, Equatable {
    public var id: String
    /// The call ("create", "start", ...).
    public var kind: String
    /// The VPS it acts on.
    public var subject: String
    /// Who started it (`Caller.operationOwner`): only they re-attach to it.
    public var owner: String
    /// running, succeeded or failed.
    public var state: String
    /// The last progress step.
    public var progress: String
    /// Set once it failed.
    public var error: Data?
    /// Set once it succeeded.
    public var result: Data?
    /// Seconds since 1970.
    public var started: Double
    public var finished: Double?

    public init(
        id: String, kind: String, subject: String, owner: String, state: String, progress: String, error: Data?, result: Data?, started: Double,
        finished: Double?
    ) {
        self.id = id
        self.kind = kind
        self.subject = subject
        self.owner = owner
        self.state = state
        self.progress = progress
        self.error = error
        self.result = result
        self.started = started
        self.finished = finished
    }
}

/// One entry of the cluster's event log (`berth events`).
public struct EventRecord: Sendable, Equatable {
    public var id: Int64
    /// Seconds since 1970.
    public var at: Double
    /// "node.down", "vps.created", ...
    public var kind: String
    /// The node, VPS or serial it is about.
    public var subject: String
    public var message: String
    /// "ROLE/NAME" of the certificate whose call it was; "" for what the controller did itself.
    public var actor: String

    public init(id: Int64, at: Double, kind: String, subject: String, message: String, actor: String = "") {
        self.id = id
        self.at = at
        self.kind = kind
        self.subject = subject
        self.message = message
        self.actor = actor
    }
}
