import BerthCore
import NIOCore
import Wire

extension AgentLinks {
    /// Relays one call to a node's agent: the caller's stream input goes to the agent, the
    /// agent's progress, stream bytes and final response come back. Cancelling our call cancels
    /// theirs. Not isolated to the actor: relays run side by side, only the link lookup is shared.
    nonisolated func forward(_ original: Berth_V1_Request, to node: NodeRecord, stream: ServerStream) async throws -> Berth_V1_Response {
        var request = original
        request.leaseEpoch = epochs.epoch(of: node.name)
        let client = try await client(for: node)
        let call = try await client.start(request)
        let input = Task {
            for await item in stream.input {
                switch item {
                case .data(let channel, let bytes): _ = try? await call.send(channel, Array(bytes.readableBytesView)).get()
                case .end(let channel): call.sendEnd(channel)
                }
            }
        }
        defer { input.cancel() }
        return try await withTaskCancellationHandler {
            for await event in call.events {
                switch event {
                case .data(let channel, let bytes): try await stream.send(channel, bytes)
                case .end(let channel): try await stream.sendEnd(channel)
                case .progress(let progress): stream.progress(progress.step, done: progress.done, total: progress.total)
                case .response(let response): return response
                case .failure(let error): throw error
                }
            }
            throw WireError(.unavailable, "node \(node.name) closed the connection during the call")
        } onCancel: {
            call.cancel()
        }
    }
}
