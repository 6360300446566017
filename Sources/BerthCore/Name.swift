/// The names of VPSs, templates, nodes, tenants, IP pools and certificate holders:
/// `[a-z0-9][a-z0-9-]{0,62}`, safe as a path component, a cgroup name, a host name label, a
/// certificate subject and part of a network interface name. Every layer checks names here.
public enum Name {
    /// Why `text` is not a name, or nil when it is one.
    public static func problem(_ text: String) -> String? {
        let bytes = Array(text.utf8)
        guard let first = bytes.first else { return "must not be empty" }
        guard bytes.count <= 63 else { return "'\(text)' is longer than 63 characters" }
        func lowerAlphanumeric(_ byte: UInt8) -> Bool { (0x61...0x7a).contains(byte) || (0x30...0x39).contains(byte) }
        guard lowerAlphanumeric(first) else { return "'\(text)' must start with a lowercase letter or digit" }
        guard bytes.allSatisfy({ lowerAlphanumeric($0) || $0 == 0x2d }) else {
            return "'\(text)' may contain only lowercase letters, digits and '-'"
        }
        return nil
    }

    public static func isValid(_ text: String) -> Bool { problem(text) == nil }

    /// `text`, or `invalid-argument` naming `field` and the rule it breaks.
    @discardableResult
    public static func validate(_ text: String, field: String = "name") throws(BerthError) -> String {
        if let problem = problem(text) { throw BerthError(.invalidArgument, "\(field): \(problem)", field: field) }
        return text
    }
}
