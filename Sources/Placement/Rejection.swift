import BerthCore

/// Why nodes were filtered out, counted per reason, for "no node fits: …" messages.
public enum Rejection: String, Sendable, CaseIterable, Comparable {
    case down, cordoned, draining, drained, constraint = "constraint mismatch", antiAffinity = "anti-affinity"
    case template = "missing template", addresses = "addresses outside its network.ranges"
    case cpu = "insufficient cpu", memory = "insufficient memory", disk = "insufficient disk"

    public static func < (a: Rejection, b: Rejection) -> Bool { a.rawValue < b.rawValue }
}
