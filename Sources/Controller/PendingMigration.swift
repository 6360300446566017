/// A migration as the VPS's row records it while it runs (the `vps.migration` column, JSON), so
/// that a controller stopped mid-way settles it at its next start: before the commit the VPS is
/// the source's (the target's copy goes), after it the target's (the source's copy goes); a VPS
/// that was running runs again where it is (Docs/migration.md, "A controller that stops").
public struct PendingMigration: Codable, Sendable, Equatable {
    public var grantID: String
    public var source: String
    public var target: String
    /// Whether the migration stopped a running VPS (so it must run again at the end).
    public var wasRunning: Bool

    public init(grantID: String, source: String, target: String, wasRunning: Bool) {
        self.grantID = grantID
        self.source = source
        self.target = target
        self.wasRunning = wasRunning
    }
}
