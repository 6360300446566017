import BerthCore

/// A VPS as callers see it at one moment: its configuration, where it is in its lifecycle, how it
/// last stopped and, while it runs, its init. The RPC layer turns it into the wire's status.
public struct VPSView: Sendable {
    public var config: VPSConfig
    public var state: VPSState
    public var node: String
    /// How the VPS last stopped ("poweroff", "killed by SIGKILL", ...), or why its config is broken.
    public var lastExit: String
    /// Host pid of init and when it booted, while the VPS runs.
    public var initPid: Int32?
    public var bootedAt: Int64?
    /// The VPS's snapshots: how many, and the bytes they hold of their own.
    public var snapshots = 0
    public var snapshotBytes: UInt64 = 0
    /// HA (Docs/ha.md): the replication interval, how each replica's last round went, and
    /// whether its monitor enforces the node's lease now.
    public var replicationIntervalSeconds: Int?
    public var replicas: [VPSManager.ReplicaState] = []
    public var fenceArmed = false
}
