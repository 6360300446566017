import BerthCore
import Synchronization
import Wire

/// A call's input that can be ended from outside (a receive superseded by a resumed call).
public protocol ResumableInput: AnyObject, Sendable {
    func finishInput()
}

extension ServerStream: ResumableInput {}

/// The migrations this node is receiving, by grant id. A receive runs apart from the call that
/// began it: when that call's connection drops, the receive waits for its source to resume on a
/// new connection (`resume`), and the controller's `migration_abort` ends it at once (`cancel`).
///
/// ```
/// source agent                        target agent
///   | migration_receive {grant} ------->| run: the receive, reading this call's input
///   | DATA … (the connection drops) -X  | input ends without END: waits for a resume
///   | migration_receive {grant,         |
///   |   resume} ----------------------->| resume: the same source? hands the receive this call
///   |<- DATA [1] chunk table, END [1] --|   (what it holds)
///   | DATA … the chunks that differ --->| applied; trailer, END
///   |<- RESPONSE (status) --------------| the receive's result, on the call that resumed it
/// ```
public final class MigrationReceives<Stream: ResumableInput, Outcome: Sendable>: Sendable {
    private struct Receive {
        let source: String
        let work: Task<Outcome, any Error>
        /// The call whose input is read now, and one that resumed before the receive noticed.
        var reading: Stream?
        var resumed: Stream?
        var waiter: CheckedContinuation<Stream?, Never>?
        /// Which wait `waiter` belongs to: a wait's timer ends only its own.
        var wait = 0
    }

    private let receives = Mutex<[String: Receive]>([:])

    public init() {}

    /// Runs `body` as the receive of grant `id` from node `source`, reading `stream` first.
    /// It goes on when this call ends (its connection dropped): only `cancel` ends it early.
    public func run(_ id: String, from source: String, stream: Stream, _ body: @escaping @Sendable () async throws -> Outcome) async throws
        -> Outcome
    {
        // Made under the lock: its removal (a body that fails at once) cannot come before it.
        let work = receives.withLock { receives in
            let work = Task {
                defer { self.receives.withLock { _ = $0.removeValue(forKey: id) } }
                return try await body()
            }
            receives[id] = Receive(source: source, work: work, reading: stream)
            return work
        }
        return try await work.value
    }

    /// Cancels the receive of grant `id`, if one runs.
    public func cancel(_ id: String) {
        let waiter = receives.withLock { receives -> CheckedContinuation<Stream?, Never>? in
            receives[id]?.work.cancel()
            defer { receives[id]?.waiter = nil }
            return receives[id]?.waiter
        }
        waiter?.resume(returning: nil)
    }

    /// The receive's input ended without END: the call that resumes it (nil when none came
    /// within `limit`, or it was cancelled). It now reads that call's input.
    public func awaitResume(_ id: String, within limit: Duration) async -> Stream? {
        let wait = receives.withLock { receives -> Int in
            receives[id]?.wait += 1
            return receives[id]?.wait ?? 0
        }
        let timer = Task {
            try await Task.sleep(for: limit)
            let waiter = receives.withLock { receives -> CheckedContinuation<Stream?, Never>? in
                guard receives[id]?.wait == wait else { return nil }
                defer { receives[id]?.waiter = nil }
                return receives[id]?.waiter
            }
            waiter?.resume(returning: nil)
        }
        defer { timer.cancel() }
        return await withCheckedContinuation { continuation in
            let ready = receives.withLock { receives -> Stream?? in
                guard var receive = receives[id], !receive.work.isCancelled else { return .some(nil) }
                if let resumed = receive.resumed {
                    receive.resumed = nil
                    receive.reading = resumed
                    receives[id] = receive
                    return .some(resumed)
                }
                receive.waiter = continuation
                receives[id] = receive
                return nil
            }
            if let ready { continuation.resume(returning: ready) }
        }
    }

    /// A call from `peer` that resumes the receive of grant `id` on a new connection: hands it
    /// the call's stream and answers with the receive's result. A receive still reading its old
    /// connection (one that went silent rather than closed) stops reading it.
    public func resume(_ id: String, from peer: String, stream: Stream) async throws -> Outcome {
        let (work, waiter, superseded) = try receives.withLock {
            receives -> (Task<Outcome, any Error>, CheckedContinuation<Stream?, Never>?, Stream?) in
            guard var receive = receives[id], receive.source == peer else {
                throw AgentError(.permissionDenied, "no migration under grant \(id.prefix(12)) from \(peer) is waiting to resume")
            }
            let waiter = receive.waiter
            var superseded: Stream?
            if waiter != nil {
                receive.waiter = nil
                receive.reading = stream
            } else {
                superseded = receive.reading
                receive.resumed = stream
            }
            receives[id] = receive
            return (receive.work, waiter, superseded)
        }
        waiter?.resume(returning: stream)
        superseded?.finishInput()
        return try await work.value
    }
}
