import BerthCore
import Foundation
import Wire

/// Mutating VPS calls as operations: recorded with their progress and result, so that the same
/// operation id (a retry after a lost connection, or another client) re-attaches to one (or gets
/// its result) instead of doing it twice; `operation show/list` read them back. `Result` is what
/// the calls answer; the journal keeps it, and their errors, as the codec's bytes.
final class OperationJournal<Result: Sendable>: Sendable {
    /// How results and errors are kept: bytes the RPC layer writes and reads back (see
    /// Records+Wire.swift); the journal does not look inside them.
    struct Codec: Sendable {
        let encode: @Sendable (Result) throws -> Data
        /// Unreadable bytes read as an empty result.
        let decode: @Sendable (Data) -> Result
        let encodeError: @Sendable (any Error) -> Data
        let decodeError: @Sendable (Data) -> any Error
    }

    let store: ClusterStore
    let codec: Codec

    init(store: ClusterStore, codec: Codec) throws {
        self.store = store
        self.codec = codec
        // Operations a controller crash left running can never finish.
        try store.abandonRunningOperations(
            error: codec.encodeError(WireError(.unavailable, "the controller restarted while this operation ran; check the VPS's status")))
    }

    /// Runs `work` as the operation `requestedID` (a random id when empty), or follows the one
    /// already recorded under that id.
    func run(
        id requestedID: String, kind: String, subject: String, by caller: Caller, stream: ServerStream,
        work: @escaping @Sendable () async throws -> Result
    ) async throws -> Result {
        let id = requestedID.isEmpty ? randomHex(bytes: 12) : requestedID
        try Self.validate(id)
        let owner = caller.operationOwner
        if try !store.beginOperation(id: id, kind: kind, subject: subject, owner: owner) {
            return try await reattach(id: id, kind: kind, subject: subject, owner: owner, stream: stream)
        }
        stream.progress("operation \(id)")
        let store = self.store
        let codec = self.codec
        stream.onProgress = { step in try? store.operationProgress(id: id, step) }
        // The work is not a child of this call: a lost connection (or the caller's deadline) must
        // not abort an operation half-way; it runs to its end and a retry re-attaches to it.
        let task = Task {
            do {
                let response = try await work()
                try? store.finishOperation(id: id, result: codec.encode(response), error: nil)
                return response
            } catch {
                try? store.finishOperation(id: id, result: nil, error: codec.encodeError(error))
                throw error
            }
        }
        return try await task.value
    }

    static func validate(_ id: String) throws(WireError) {
        let allowed = id.utf8.allSatisfy { (48...57).contains($0) || (65...90).contains($0) || (97...122).contains($0) || $0 == 45 || $0 == 95 }
        guard (1...64).contains(id.utf8.count), allowed else {
            throw WireError(.invalidArgument, "operation-id: '\(id)' must be 1-64 of letters, digits, '-' and '_'", field: "operation-id")
        }
    }

    /// Follows an operation that another call started (or finished) until it ends.
    func reattach(id: String, kind: String, subject: String, owner: String, stream: ServerStream) async throws -> Result {
        var lastStep = ""
        while true {
            guard let operation = try store.operation(id) else {
                throw WireError(.notFound, "operation-id: no operation \(id)", field: "operation-id")
            }
            guard operation.owner == owner, operation.kind == kind, operation.subject == subject else {
                throw WireError(.conflict, "operation-id: \(id) names another operation (ids are chosen once per operation)", field: "operation-id")
            }
            if operation.progress != lastStep && !operation.progress.isEmpty {
                lastStep = operation.progress
                stream.progress(lastStep)
            }
            switch operation.state {
            case "succeeded": return codec.decode(operation.result ?? Data())
            case "failed": throw codec.decodeError(operation.error ?? Data())
            default: try await Task.sleep(for: .milliseconds(200))
            }
        }
    }

    /// One operation the caller may read, once it ended or `waitMs` (at most 30 s) passed.
    func show(_ id: String, waitMs: UInt32, to caller: Caller) async throws -> OperationRecord {
        guard waitMs <= 30_000 else { throw WireError(.invalidArgument, "wait: at most 30 s per call", field: "wait") }
        let deadline = ContinuousClock.now + .milliseconds(Int(waitMs))
        while true {
            guard let operation = try store.operation(id), caller.mayRead(operationOf: operation.owner) else {
                throw WireError(.notFound, "id: no operation \(id)", field: "id")
            }
            if operation.state != "running" || ContinuousClock.now >= deadline { return operation }
            try await Task.sleep(for: .milliseconds(200))
        }
    }

    /// The 200 most recent operations the caller may read.
    func recent(to caller: Caller) throws -> [OperationRecord] {
        try store.recentOperations(limit: 200).filter { caller.mayRead(operationOf: $0.owner) }
    }
}
