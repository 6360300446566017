import BerthCore

/// The lifecycle of one VPS on this node: its state, and the change in flight that holds it
/// busy. Every state change of a VPS goes through here, and each refusal is the conflict an
/// operator reads; the effects (spawning, cgroups, disks) stay in VPSManager. Pure: unit-tested
/// transition by transition (VPSLifecycleTests).
public struct VPSLifecycle: Equatable, Sendable {
    public private(set) var state: VPSState = .stopped
    /// A `set` in flight (it may await the kernel): a second one waits its turn.
    public private(set) var changing = false

    public init() {}

    /// How a VPS's monitor exit ended it.
    public enum Ending: Equatable, Sendable {
        /// A stop this agent asked for.
        case stoppedAsAsked
        /// From inside: poweroff stops it, anything else (halt, a crash, a lost monitor) fails it.
        case stoppedByItself
        case failed
    }

    /// What a destroy must do first.
    public enum DestroyPlan: Equatable, Sendable {
        case delete
        /// `--force` on a running VPS: kill it, then delete.
        case killThenDelete
    }

    /// A move the table forbids is a bug in the caller: it stops a test build, and a running
    /// agent keeps the state it had rather than crash and leave its VPSs unwatched.
    private mutating func move(to next: VPSState) {
        guard state.canMove(to: next) else {
            assertionFailure("VPS lifecycle: \(state) cannot move to \(next)")
            return
        }
        state = next
    }

    /// A monitor from before this agent still runs the VPS.
    public mutating func adoptRunning() { move(to: .running) }

    /// Why the VPS cannot start now, if it cannot.
    public func checkStart(_ name: String) throws(BerthError) {
        switch state {
        case .running: throw BerthError(.conflict, "VPS \(name) is already running")
        case .starting, .stopping: throw BerthError(.conflict, "VPS \(name) is \(state.rawValue); try again when it is done")
        case .stopped, .failed: return
        }
    }

    public mutating func beginStart(_ name: String) throws(BerthError) {
        try checkStart(name)
        move(to: .starting)
    }

    public mutating func startSucceeded() { move(to: .running) }

    /// Whatever the start did has been undone.
    public mutating func startFailed() { move(to: .stopped) }

    public mutating func beginStop(_ name: String) throws(BerthError) {
        guard state == .running else { throw BerthError(.conflict, "VPS \(name) is \(state.rawValue), not running") }
        move(to: .stopping)
    }

    /// The VPS outlived even SIGKILL: it still runs.
    public mutating func stopFailed() { move(to: .running) }

    public mutating func monitorExited(reason: String) -> Ending {
        if state == .stopping {
            move(to: .stopped)
            return .stoppedAsAsked
        }
        if reason == "poweroff" {
            move(to: .stopped)
            return .stoppedByItself
        }
        move(to: .failed)
        return .failed
    }

    public mutating func beginChange(_ name: String) throws(BerthError) {
        if state == .starting || state == .stopping {
            throw BerthError(.conflict, "VPS \(name) is \(state.rawValue); try again when it is done")
        }
        guard !changing else { throw BerthError(.conflict, "another change to VPS \(name) is in progress; try again when it is done") }
        changing = true
    }

    public mutating func endChange() { changing = false }

    public func destroyPlan(_ name: String, force: Bool) throws(BerthError) -> DestroyPlan {
        switch state {
        case .stopped, .failed: return .delete
        case .running, .stopping, .starting:
            guard force else { throw BerthError(.conflict, "VPS \(name) is \(state.rawValue); stop it first or use --force") }
            return state == .running ? .killThenDelete : .delete
        }
    }
}
