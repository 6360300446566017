import BerthCore
import Testing

@testable import NodeAgent

/// Every move of a VPS's lifecycle, and every refusal with the conflict an operator reads.
@Suite struct VPSLifecycleTests {
    /// A lifecycle brought to `state` through the moves that lead there.
    static func at(_ state: VPSState) -> VPSLifecycle {
        var lifecycle = VPSLifecycle()
        switch state {
        case .stopped: break
        case .starting: try! lifecycle.beginStart("v")
        case .running: lifecycle.adoptRunning()
        case .stopping: lifecycle.adoptRunning(); try! lifecycle.beginStop("v")
        case .failed: lifecycle.adoptRunning(); _ = lifecycle.monitorExited(reason: "halt")
        }
        #expect(lifecycle.state == state)
        return lifecycle
    }

    @Test func startBootsOrRollsBack() throws {
        for from in [VPSState.stopped, .failed] {
            var booted = Self.at(from)
            try booted.beginStart("v")
            #expect(booted.state == .starting)
            booted.startSucceeded()
            #expect(booted.state == .running)
            var undone = Self.at(from)
            try undone.beginStart("v")
            undone.startFailed()
            #expect(undone.state == .stopped)
        }
    }

    @Test(arguments: [(VPSState.running, "already running"), (.starting, "starting; try again"), (.stopping, "stopping; try again")])
    func startIsRefusedWhileBusyOrRunning(_ state: VPSState, _ says: String) {
        var lifecycle = Self.at(state)
        let error = #expect(throws: BerthError.self) { try lifecycle.beginStart("web1") }
        #expect(error?.code == .conflict)
        #expect(error?.message.contains(says) == true)
        #expect(lifecycle.state == state)
    }

    @Test func stopEndsAsAskedOrFallsBackToRunning() throws {
        var stopped = Self.at(.running)
        try stopped.beginStop("v")
        #expect(stopped.monitorExited(reason: "killed by SIGTERM") == .stoppedAsAsked)
        #expect(stopped.state == .stopped)
        var stubborn = Self.at(.running)
        try stubborn.beginStop("v")
        stubborn.stopFailed()
        #expect(stubborn.state == .running)
    }

    @Test(arguments: [VPSState.stopped, .starting, .stopping, .failed])
    func stopNeedsARunningVPS(_ state: VPSState) {
        var lifecycle = Self.at(state)
        let error = #expect(throws: BerthError.self) { try lifecycle.beginStop("web1") }
        #expect(error?.message == "VPS web1 is \(state.rawValue), not running")
        #expect(lifecycle.state == state)
    }

    /// poweroff inside stops a VPS; halt, a crash or a lost monitor fail it.
    @Test func aVPSThatEndsByItself() {
        var poweredOff = Self.at(.running)
        #expect(poweredOff.monitorExited(reason: "poweroff") == .stoppedByItself)
        #expect(poweredOff.state == .stopped)
        for reason in ["halt", "killed by SIGKILL", "monitor failed: poll failed"] {
            var crashed = Self.at(.running)
            #expect(crashed.monitorExited(reason: reason) == .failed)
            #expect(crashed.state == .failed)
        }
    }

    @Test func oneChangeAtATimeAndNoneWhileStartingOrStopping() throws {
        for state in [VPSState.stopped, .running, .failed] {
            var lifecycle = Self.at(state)
            try lifecycle.beginChange("v")
            let second = #expect(throws: BerthError.self) { try lifecycle.beginChange("v") }
            #expect(second?.message.contains("another change") == true)
            lifecycle.endChange()
            try lifecycle.beginChange("v")
        }
        for state in [VPSState.starting, .stopping] {
            var lifecycle = Self.at(state)
            #expect(throws: BerthError.self) { try lifecycle.beginChange("v") }
            #expect(!lifecycle.changing)
        }
    }

    @Test func destroyNeedsForceUnlessStopped() throws {
        #expect(try Self.at(.stopped).destroyPlan("v", force: false) == .delete)
        #expect(try Self.at(.failed).destroyPlan("v", force: false) == .delete)
        for state in [VPSState.running, .starting, .stopping] {
            let error = #expect(throws: BerthError.self) { try Self.at(state).destroyPlan("web1", force: false) }
            #expect(error?.message == "VPS web1 is \(state.rawValue); stop it first or use --force")
        }
        #expect(try Self.at(.running).destroyPlan("v", force: true) == .killThenDelete)
        #expect(try Self.at(.stopping).destroyPlan("v", force: true) == .delete)
    }

    /// The table the lifecycle enforces: exactly these moves, nothing else.
    @Test func theStateTable() {
        let allowed: Set<String> = [
            "stopped>starting", "failed>starting", "starting>running", "starting>stopped", "running>stopping",
            "stopping>stopped", "stopping>running", "running>stopped", "running>failed", "stopped>running",
        ]
        for from in VPSState.allCases {
            for to in VPSState.allCases {
                #expect(from.canMove(to: to) == allowed.contains("\(from)>\(to)"), "\(from) → \(to)")
            }
        }
    }
}
