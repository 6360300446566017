/// When a warm migration stops copying while the VPS runs (P.Haul's rules): each pass sends
/// what changed during the one before, and the VPS is stopped for the last pass once another
/// would gain too little.
public enum Precopy {
    /// Passes in all, the last (with the VPS stopped) included.
    public static let maxPasses = 8
    /// A pass must send at least this much less than the one before for another to be worth it.
    public static let minShrink = 0.10
    /// A delta the wire takes in less than this is left for the last pass.
    public static let smallEnoughSeconds = 0.5

    /// Whether to make another pass while the VPS runs, after pass `pass` (1-based) sent
    /// `delta` bytes at `bytesPerSecond` (the pass's own rate; nil or 0: it sent nothing), the
    /// pass before it `previous` (nil after the first).
    public static func another(after pass: Int, delta: UInt64, previous: UInt64?, bytesPerSecond: Double?) -> Bool {
        guard pass + 1 < maxPasses else { return false }
        guard let rate = bytesPerSecond, rate > 0, Double(delta) / rate >= smallEnoughSeconds else { return false }
        if let previous, Double(delta) > Double(previous) * (1 - minShrink) { return false }
        return true
    }
}
