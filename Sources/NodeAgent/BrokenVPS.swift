import BerthCore

/// A VPS directory whose config could not be read: listed so an operator sees it, never touched.
public struct BrokenVPS: Sendable {
    public var name: String
    public var reason: String
}
