import BerthCore

/// What `berth set` asks to change on a VPS; empty fields leave things as they are.
public struct VPSChange: Sendable, Equatable {
    public var name: String
    public var limits = LimitsUpdate()
    public var hostname = ""
    public var ipAdd: [String] = []
    public var ipDel: [String] = []
    public var nameservers: [String] = []
    public var searchDomains: [String] = []
    /// nil: unchanged.
    public var onboot: Bool?
    /// A value of "" removes the label.
    public var labels: [String: String] = [:]
    /// Capability name → "on" | "off"; takes effect at the next start.
    public var capabilities: [String: String] = [:]

    public init(name: String) { self.name = name }
}
