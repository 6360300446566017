import BerthCore

public enum Placement: Sendable, Hashable {
    case node(String)
    case noFit([Rejection: Int])

    /// "no node fits: 8 insufficient memory, 3 cordoned, 1 anti-affinity" (largest count first).
    public var explanation: String {
        switch self {
        case .node(let name): return "placed on \(name)"
        case .noFit(let counts):
            if counts.isEmpty { return "no node fits: the cluster has no nodes" }
            let parts = counts.sorted { $0.value != $1.value ? $0.value > $1.value : $0.key < $1.key }.map { "\($0.value) \($0.key.rawValue)" }
            return "no node fits: " + parts.joined(separator: ", ")
        }
    }
}
