import Foundation
import Wire

public struct ControllerSettings: Sendable {
    public var heartbeatInterval: Duration = .seconds(1)
    public var downAfter: Duration = .seconds(5)
    public var policy = SchedulerPolicy()
    /// HA (Docs/ha.md): a node's lease runs `fenceAfter` from each heartbeat it sent (its HA
    /// VPSs are killed there when it lapses); the controller fails them over once it has heard
    /// nothing for `failoverAfter`, at least `failoverMargin` later. At most `failoverRatePercent`
    /// of the HA VPSs (at least one) fail over per `failoverWindow`.
    public var fenceAfter: Duration = .seconds(10)
    public var failoverAfter: Duration = .seconds(15)
    public var failoverRatePercent = 10
    public var failoverWindow: Duration = .seconds(600)
    public var failover = true
    public static let failoverMargin: Duration = .seconds(2)
    /// How many events the log keeps (the oldest go first, once a minute); a client asking for
    /// events pruned before it read them is told so (Docs/cluster.md "Operations and events").
    public var eventRetention = 100_000
    /// Where uploads (template tarballs on their way to nodes) are kept while they are relayed.
    public var uploadDirectory = "/tmp"

    public init() {}
}

/// The controller's `--config` JSON. Every key is optional; unknown keys are an error (a typo
/// must not silently fall back to a default).
///
///     {"strategy": "spread", "cpuOvercommit": 4, "memoryOvercommit": 1, "diskOvercommit": 1,
///      "heartbeatIntervalMs": 1000, "downAfterMs": 5000}
public enum ClusterConfigFile {
    static let keys: Set<String> = [
        "strategy", "cpuOvercommit", "memoryOvercommit", "diskOvercommit", "heartbeatIntervalMs", "downAfterMs", "fenceAfterMs", "failoverAfterMs",
        "failoverRatePercent", "failoverWindowMs", "failover", "eventRetention",
    ]

    public static func load(path: String) throws(WireError) -> ControllerSettings {
        guard let data = FileManager.default.contents(atPath: path) else {
            throw WireError(.invalidArgument, "config: cannot read \(path)", field: "config")
        }
        return try parse(data)
    }

    public static func parse(_ data: Data) throws(WireError) -> ControllerSettings {
        guard let object = (try? JSONSerialization.jsonObject(with: data)) as? [String: Any] else {
            throw WireError(.invalidArgument, "config: not a JSON object", field: "config")
        }
        if let unknown = object.keys.sorted().first(where: { !keys.contains($0) }) {
            throw WireError(.invalidArgument, "config: unknown key \"\(unknown)\" (known: \(keys.sorted().joined(separator: ", ")))", field: unknown)
        }
        var settings = ControllerSettings()
        if let value = object["strategy"] {
            guard let text = value as? String, let strategy = SchedulerPolicy.Strategy(rawValue: text) else {
                throw WireError(.invalidArgument, "strategy: must be \"spread\" or \"binpack\"", field: "strategy")
            }
            settings.policy.strategy = strategy
        }
        func ratio(_ key: String) throws(WireError) -> Double? {
            guard let value = object[key] else { return nil }
            guard let number = value as? Double, number >= 0.1, number <= 100 else {
                throw WireError(.invalidArgument, "\(key): must be a number from 0.1 to 100", field: key)
            }
            return number
        }
        if let r = try ratio("cpuOvercommit") { settings.policy.cpuOvercommit = r }
        if let r = try ratio("memoryOvercommit") { settings.policy.memoryOvercommit = r }
        if let r = try ratio("diskOvercommit") { settings.policy.diskOvercommit = r }
        func milliseconds(_ key: String, _ range: ClosedRange<Int>) throws(WireError) -> Duration? {
            guard let value = object[key] else { return nil }
            guard let number = value as? Int, range.contains(number) else {
                throw WireError(.invalidArgument, "\(key): must be an integer from \(range.lowerBound) to \(range.upperBound)", field: key)
            }
            return .milliseconds(number)
        }
        if let d = try milliseconds("heartbeatIntervalMs", 100...60_000) { settings.heartbeatInterval = d }
        if let d = try milliseconds("downAfterMs", 300...600_000) { settings.downAfter = d }
        guard settings.downAfter >= settings.heartbeatInterval * 2 else {
            throw WireError(
                .invalidArgument, "downAfterMs: must be at least twice heartbeatIntervalMs, or one late heartbeat marks a node down", field: "downAfterMs")
        }
        if let d = try milliseconds("fenceAfterMs", 1000...600_000) { settings.fenceAfter = d }
        if let d = try milliseconds("failoverAfterMs", 1000...3_600_000) { settings.failoverAfter = d }
        if let d = try milliseconds("failoverWindowMs", 1000...86_400_000) { settings.failoverWindow = d }
        if let value = object["failoverRatePercent"] {
            guard let number = value as? Int, (1...100).contains(number) else {
                throw WireError(.invalidArgument, "failoverRatePercent: must be an integer from 1 to 100", field: "failoverRatePercent")
            }
            settings.failoverRatePercent = number
        }
        if let value = object["eventRetention"] {
            guard let number = value as? Int, (10...100_000_000).contains(number) else {
                throw WireError(.invalidArgument, "eventRetention: must be an integer from 10 to 100000000", field: "eventRetention")
            }
            settings.eventRetention = number
        }
        if let value = object["failover"] {
            guard let on = value as? Bool else { throw WireError(.invalidArgument, "failover: must be true or false", field: "failover") }
            settings.failover = on
        }
        try settings.checkLeaseTimes()
        return settings
    }
}

extension ControllerSettings {
    /// The fence must come before the failover by a margin (Docs/ha.md), and after more than
    /// two heartbeats' time, or one late heartbeat would fence a node.
    public func checkLeaseTimes() throws(WireError) {
        guard fenceAfter >= heartbeatInterval * 3 else {
            throw WireError(
                .invalidArgument, "fenceAfterMs: must be at least three heartbeat intervals, or a late heartbeat fences a node", field: "fenceAfterMs")
        }
        guard failoverAfter >= fenceAfter + Self.failoverMargin else {
            throw WireError(
                .invalidArgument,
                "failoverAfterMs: must be at least fenceAfterMs + \(Self.failoverMargin), so a lost node's HA VPSs are fenced before they run elsewhere",
                field: "failoverAfterMs")
        }
    }
}
