import BerthCore

/// What `berth create` asks of this node, as the agent's RPC layer read it off the wire
/// (AgentService+Wire.swift). Nothing here is checked yet: `VPSManager.create` validates it all
/// before it changes anything.
public struct VPSCreation: Sendable, Equatable {
    public var name: String
    public var template: String
    /// "" = the name.
    public var hostname = ""
    public var ips: [String] = []
    public var nameservers: [String] = []
    public var searchDomains: [String] = []
    public var limits = LimitsUpdate()
    /// "" or "routed", or "bridged:BRIDGE".
    public var net = ""
    public var onboot = false
    public var labels: [String: String] = [:]
    public var privileged = false
    /// Capability name → "on" | "off".
    public var capabilities: [String: String] = [:]
    /// "" (image), "image" or "layered".
    public var storage = ""
    /// "" (the node's default), "loop" or "pool".
    public var layout = ""

    public init(name: String, template: String) {
        self.name = name
        self.template = template
    }
}
