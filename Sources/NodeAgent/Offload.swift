import Dispatch

/// Blocking work (a disk copy, a freeze's wait) on a thread of Dispatch's, not of the
/// cooperative pool, whose two threads on a small node also serve every call and heartbeat.
enum Offload {
    private static let queue = DispatchQueue(label: "berth.offload", attributes: .concurrent)

    static func run<T: Sendable>(_ work: @escaping @Sendable () throws -> T) async throws -> T {
        try await withCheckedThrowingContinuation { continuation in
            queue.async { continuation.resume(with: Result { try work() }) }
        }
    }
}
