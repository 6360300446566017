/// What the controller allows once: VPS `vps` moves from node `source` to node `target` before
/// `expiresUnix` (seconds). The target accepts one transfer naming `id`, and only from
/// `source`'s certificate (Docs/migration.md, "The grant").
public struct MigrationGrant: Sendable, Equatable {
    public var id: String
    public var vps: String
    public var source: String
    public var target: String
    public var expiresUnix: Int64

    public init(id: String, vps: String, source: String, target: String, expiresUnix: Int64) {
        self.id = id
        self.vps = vps
        self.source = source
        self.target = target
        self.expiresUnix = expiresUnix
    }

    /// Whether the grant still holds at `nowUnix`.
    public func isLive(at nowUnix: Int64) -> Bool { nowUnix < expiresUnix }
}
