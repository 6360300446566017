import Testing

@testable import NodeAgent

/// The controller's abort ends a receive that waits on a silent source.
@Suite struct MigrationReceivesTests {
    @Test func cancelEndsTheReceiveOfThatGrantOnly() async throws {
        let receives = MigrationReceives()
        let waiting = Task { try await receives.run("g1") { try await Task.sleep(for: .seconds(60)) } }
        let other = Task {
            try await receives.run("g2") {
                try await Task.sleep(for: .milliseconds(300)); return 7
            }
        }
        try await Task.sleep(for: .milliseconds(50))
        let began = ContinuousClock.now
        receives.cancel("g1")
        receives.cancel("unknown")
        await #expect(throws: CancellationError.self) { try await waiting.value }
        #expect(ContinuousClock.now - began < .seconds(5))
        #expect(try await other.value == 7)
    }
}
