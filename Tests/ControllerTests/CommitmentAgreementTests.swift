import BerthCore
import Testing
import Wire

@testable import Controller
@testable import Placement

/// The scheduler and `node show` charge a VPS the same: the controller from the create request
/// it keeps (a `--cpus` count, no disk given), the agent from the limits it stored after checking
/// them against its CPUs (the count made a list, the default disk filled in).
@Suite struct CommitmentAgreementTests {
    static func limits(_ change: (inout Berth_V1_Limits) -> Void) -> Berth_V1_Limits {
        var limits = Berth_V1_Limits()
        change(&limits)
        return limits
    }

    @Test(arguments: [
        limits { _ in },
        limits { $0.cpuLimitPct = 150 },
        limits { $0.cpus = "2" },
        limits { $0.cpus = "0,2-3" },
        limits {
            $0.cpus = "1"; $0.cpuLimitPct = 40
        },
        limits {
            $0.memoryBytes = 512 << 20; $0.swapBytes = 0
        },
        limits {
            $0.memoryBytes = 512 << 20; $0.swapBytes = 256 << 20; $0.diskBytes = 10 << 30
        },
    ])
    func controllerAndAgentAgree(_ wire: Berth_V1_Limits) throws {
        var request = Berth_V1_CreateRequest()
        request.limits = wire
        let scheduler = VPSSpec(request).cost
        let stored = try Limits().merging(wire.update, onlineCPUs: 4)
        let agent = stored.commitment
        #expect(scheduler.cpuMillis == agent.cpuPercent * 10)
        #expect(scheduler.memoryBytes == agent.memoryBytes)
        #expect(scheduler.diskBytes == agent.diskBytes)
        // Once the agent's answer replaces the request's limits, the charge does not move.
        request.limits = Berth_V1_Limits(stored)
        #expect(VPSSpec(request).cost == scheduler)
    }
}
