import Synchronization

/// The migrations this node is receiving, by grant id, so that the controller's
/// `migration_abort` ends one at once: a transfer whose source went silent (a cut link) would
/// otherwise wait on its connection until TCP gives up, many minutes later.
public final class MigrationReceives: Sendable {
    private let cancels = Mutex<[String: @Sendable () -> Void]>([:])

    public init() {}

    /// Runs `body` as the receive of grant `id`, until it ends or `cancel(id)`.
    public func run<T: Sendable>(_ id: String, _ body: @escaping @Sendable () async throws -> T) async throws -> T {
        let work = Task { try await body() }
        cancels.withLock { $0[id] = { work.cancel() } }
        defer { cancels.withLock { _ = $0.removeValue(forKey: id) } }
        return try await withTaskCancellationHandler {
            try await work.value
        } onCancel: {
            work.cancel()
        }
    }

    /// Cancels the receive of grant `id`, if one runs.
    public func cancel(_ id: String) {
        cancels.withLock { $0[id] }?()
    }
}
