import Synchronization
import Testing

@testable import NodeAgent

/// A call's input as a receive reads it: ended from outside when a resumed call supersedes it.
final class FakeInput: ResumableInput {
    let ended = Mutex(false)
    func finishInput() { ended.withLock { $0 = true } }
}

/// Receives outlive the call that began them: a resume hands them a new call, an abort ends them.
@Suite struct MigrationReceivesTests {
    @Test func cancelEndsTheReceiveOfThatGrantOnly() async throws {
        let receives = MigrationReceives<FakeInput, Int>()
        let waiting = Task {
            try await receives.run("g1", from: "n1", stream: FakeInput()) {
                try await Task.sleep(for: .seconds(60)); return 1
            }
        }
        let other = Task {
            try await receives.run("g2", from: "n1", stream: FakeInput()) {
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

    /// The receive waits for its source on a new call; the resumed call gets its result. A
    /// resume from another node, or for no receive, is refused.
    @Test func aResumedCallCarriesTheReceiveOn() async throws {
        let receives = MigrationReceives<FakeInput, String>()
        let first = FakeInput(), second = FakeInput()
        let started = Task {
            try await receives.run("g1", from: "n1", stream: first) {
                guard let next = await receives.awaitResume("g1", within: .seconds(10)) else { return "not resumed" }
                return next === second ? "resumed" : "another input"
            }
        }
        try await Task.sleep(for: .milliseconds(50))
        await #expect(throws: AgentError.self) { try await receives.resume("g1", from: "n3", stream: FakeInput()) }
        await #expect(throws: AgentError.self) { try await receives.resume("g9", from: "n1", stream: FakeInput()) }
        #expect(try await receives.resume("g1", from: "n1", stream: second) == "resumed")
        #expect(try await started.value == "resumed")
        // A resume that comes while the old input is still read ends that input.
        let third = FakeInput()
        let reading = Task {
            try await receives.run("g2", from: "n1", stream: third) {
                while !third.ended.withLock({ $0 }) { try await Task.sleep(for: .milliseconds(10)) }
                return await receives.awaitResume("g2", within: .seconds(10)) != nil ? "resumed" : "not resumed"
            }
        }
        try await Task.sleep(for: .milliseconds(50))
        #expect(try await receives.resume("g2", from: "n1", stream: FakeInput()) == "resumed")
        #expect(try await reading.value == "resumed")
        // None comes: the wait ends at its limit.
        let alone = try await receives.run("g3", from: "n1", stream: FakeInput()) {
            await receives.awaitResume("g3", within: .milliseconds(100)) == nil ? "gave up" : "resumed"
        }
        #expect(alone == "gave up")
    }
}
