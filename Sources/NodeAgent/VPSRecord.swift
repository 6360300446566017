import BerthCore
import Isolation

/// One VPS as the agent holds it: its checkpointed config, its lifecycle, its run.
final class VPSRecord {
    var config: VPSConfig
    /// Every change of `state` goes through here.
    var lifecycle = VPSLifecycle()
    var state: VPSState { lifecycle.state }
    var run: RunState?
    var lastExit = ""
    /// Its monitor fenced it when the node's lease lapsed (it starts again if the lease is
    /// renewed and the VPS is still this node's).
    var fenced = false
    /// Bumped on every start so a late exit notice of an earlier run is ignored.
    var generation = 0
    /// Stops waiting for the monitor's exit, by ticket; resumed when it exits or their time is up.
    var exitWaiters: [Int: CheckedContinuation<Void, Never>] = [:]
    var nextExitTicket = 0

    init(config: VPSConfig) { self.config = config }
}
