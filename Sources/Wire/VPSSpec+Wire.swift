import BerthCore

extension VPSSpec {
    /// A create request's settings, its limits as BerthCore's `Limits` (unchecked: the agent and
    /// the controller check them first; a stored old row is taken as it was).
    public init(_ request: Berth_V1_CreateRequest) {
        self.init(name: request.name, template: request.template)
        hostname = request.hostname
        ips = request.ips
        nameservers = request.nameservers
        searchDomains = request.searchdomains
        limits = Limits(request.limits)
        net = request.net
        onboot = request.onboot
        labels = request.labels
        privileged = request.privileged
        capabilities = request.capabilities
        storage = request.storage
        layout = request.layout
        pinnedNode = request.node
        constraints = request.constraints
        antiAffinity = request.antiAffinity
        ha = request.ha
        if request.replicas > 0 { replicas = Int(request.replicas) }
        if request.replicationIntervalS > 0 { replicationIntervalSeconds = Int(request.replicationIntervalS) }
    }
}
