import CIsolation

/// How much of a VPS's accounting a reader needs. A Prometheus scrape reads every running VPS
/// at once and exports no swap or pids peak/limit figures: skipping those files cuts a sweep's
/// reads by about a third.
public enum UsageScope: Sendable {
    case full
    /// What `/metrics` exports: memory (usage, peak, limit, failures, OOM kills), pids and their
    /// failures, CPU time and throttling, I/O bytes. The other fields stay zero or nil.
    case scrape
}
