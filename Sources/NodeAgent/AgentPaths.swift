/// Where the agent keeps things and what it runs.
public struct AgentPaths: Sendable {
    public var dataDir: String
    public var runDir: String
    /// The berth-spawn helper binary.
    public var spawnBinary: String
    /// berth-monitor, which each VPS's monitor becomes once the VPS has booted.
    public var monitorBinary: String
    /// Where lxcfs is mounted; VPSs started while it serves there get its /proc views.
    public var lxcfs: String
    /// Downloaded distribution trees (debootstrap output), kept across template rebuilds and
    /// shared by every data directory on the host.
    public var templateCache: String
    /// Size of the storage pool image the first `create --layout pool` makes (nil: a fifth of the
    /// free space, 5–30 GiB; see StoragePool).
    public var poolSize: UInt64?

    public init(
        dataDir: String, runDir: String, spawnBinary: String, monitorBinary: String, lxcfs: String = "/var/lib/lxcfs",
        templateCache: String = "/var/cache/berth/templates", poolSize: UInt64? = nil
    ) {
        self.dataDir = dataDir
        self.runDir = runDir
        self.spawnBinary = spawnBinary
        self.monitorBinary = monitorBinary
        self.lxcfs = lxcfs
        self.templateCache = templateCache
        self.poolSize = poolSize
    }
}
