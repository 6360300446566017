import Testing

@testable import BerthCore

/// P.Haul's rules for a warm migration's passes while the VPS runs.
@Suite struct PrecopyTests {
    let mib: UInt64 = 1 << 20
    let rate = Double(100 << 20)  // 100 MiB/s

    @Test func aShrinkingLargeDeltaGetsAnotherPass() {
        #expect(Precopy.another(after: 1, delta: 256 * mib, previous: nil, bytesPerSecond: rate))
        #expect(Precopy.another(after: 2, delta: 64 * mib, previous: 256 * mib, bytesPerSecond: rate))
    }

    @Test func aDeltaTheWireTakesInUnderHalfASecondIsLeftForTheLastPass() {
        #expect(!Precopy.another(after: 2, delta: 49 * mib, previous: 256 * mib, bytesPerSecond: rate))
        #expect(Precopy.another(after: 2, delta: 51 * mib, previous: 256 * mib, bytesPerSecond: rate))
    }

    @Test func aDeltaThatNoLongerShrinksByATenthEndsThePasses() {
        #expect(!Precopy.another(after: 3, delta: 91 * mib, previous: 100 * mib, bytesPerSecond: rate))
        #expect(Precopy.another(after: 3, delta: 89 * mib, previous: 100 * mib, bytesPerSecond: rate))
    }

    @Test func atMostEightPassesInAllAndNoneWithoutARate() {
        #expect(Precopy.another(after: 6, delta: 200 * mib, previous: 400 * mib, bytesPerSecond: rate))
        #expect(!Precopy.another(after: 7, delta: 200 * mib, previous: 400 * mib, bytesPerSecond: rate))
        #expect(!Precopy.another(after: 1, delta: 0, previous: nil, bytesPerSecond: nil))
    }
}
