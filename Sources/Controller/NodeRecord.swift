import BerthCore

/// A node as the controller remembers it across restarts. Liveness is not stored: it is judged
/// on the controller's monotonic clock from heartbeats (see `Liveness`).
public struct NodeRecord: Sendable, Equatable {
    public var name: String
    public var address: String
    public var labels: [String: String]
    /// Its last report (capacity and commitments); empty until it has sent one.
    public var info: NodeReport
    public var cordoned: Bool
    public var certificateSerial: String

    public init(name: String, address: String, labels: [String: String], info: NodeReport, cordoned: Bool, certificateSerial: String) {
        self.name = name
        self.address = address
        self.labels = labels
        self.info = info
        self.cordoned = cordoned
        self.certificateSerial = certificateSerial
    }
}
