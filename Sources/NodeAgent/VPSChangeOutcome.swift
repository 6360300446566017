import BerthCore

/// What a `set` did: the VPS as it is now, what took effect live and what waits for a restart.
public struct VPSChangeOutcome: Sendable {
    public var vps: VPSView
    public var appliedLive: [String]
    public var needsRestart: [String]
}
