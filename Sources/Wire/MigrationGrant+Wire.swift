import BerthCore

extension MigrationGrant {
    public init(_ wire: Berth_V1_MigrationGrant) {
        self.init(id: wire.id, vps: wire.vps, source: wire.source, target: wire.target, expiresUnix: wire.expiresUnix)
    }
}

extension Berth_V1_MigrationGrant {
    public init(_ grant: MigrationGrant) {
        self.init()
        id = grant.id
        vps = grant.vps
        source = grant.source
        target = grant.target
        expiresUnix = grant.expiresUnix
    }
}
