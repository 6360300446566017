// Conventions of the generated messages that both ends rely on.

extension Berth_V1_ResourceCounter {
    /// The "no limit" value, as in OpenVZ's /proc/user_beancounters (LONG_MAX).
    public static let unlimited = UInt64(Int64.max)
}
