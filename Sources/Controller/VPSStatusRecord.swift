import BerthCore

/// A VPS's status as its node last reported it (a heartbeat, or its answer to a call), kept in
/// the VPS's record (the `vps.status` column, as JSON, so the Codable names are a stored
/// format). Its wire form is converted in Records+Wire.swift.
public struct VPSStatusRecord: Codable, Sendable, Equatable {
    public var name = ""
    /// A `VPSState`, or one of the controller's own: `creating` (placed, the node has not
    /// answered yet) and `unknown` (its node is down).
    public var state = ""
    public var hostname = ""
    public var ips: [String] = []
    public var template = ""
    public var node = ""
    /// The host pid of the VPS's init while it runs, else 0.
    public var pid: Int32 = 0
    public var labels: [String: String] = [:]
    public var onboot = false
    /// nil until its node has reported them: a VPS being created shows none rather than the
    /// defaults.
    public var limits: Limits?
    /// How the VPS last stopped ("poweroff", "killed by SIGKILL", ...), or why its config is broken.
    public var lastExit = ""
    public var startedAtUnix: Int64 = 0
    /// "routed", "bridged:BRIDGE" or "" (loopback only).
    public var net = ""
    public var hostInterface = ""
    public var mac = ""
    public var nameservers: [String] = []
    public var searchDomains: [String] = []
    public var privileged = false
    /// "HOSTBASE:COUNT" of its user namespace; "" when privileged.
    public var idmap = ""
    public var capabilities: [String: String] = [:]
    public var storage = ""
    public var layout = ""
    /// Its snapshots on its node, how many and what they hold (optional: rows stored before
    /// snapshots existed still read).
    public var snapshots: Int?
    public var snapshotBytes: UInt64?
    /// HA (Docs/ha.md), as the primary's agent reports it (optional, as above).
    public var ha: Bool?
    public var replicationIntervalSeconds: Int?
    public var replicas: [ReplicaRecord]?
    public var fenceArmed: Bool?

    /// One replica as the primary last sent it.
    public struct ReplicaRecord: Codable, Sendable, Equatable {
        public var node: String
        /// When the snapshot it holds was taken: the recovery point (0: none complete yet).
        public var replicatedUnixMs: Int64
        public var bytesSent: UInt64
        public var totalBytesSent: UInt64
        public var error: String
    }

    public init(name: String = "", state: String = "") {
        self.name = name
        self.state = state
    }
}
