import BerthCore
import Isolation
import Wire

/// Input checks shared by every entry point; each failure names the field and the rule.
public enum Validation {
    /// RFC 1123 host name: dot-separated labels of letters, digits and '-', at most 253 bytes.
    public static func hostname(_ value: String, field: String = "hostname") throws -> String {
        guard !value.isEmpty, value.utf8.count <= 253 else { throw AgentError.invalid(field, "must be 1 to 253 characters") }
        for label in value.split(separator: ".", omittingEmptySubsequences: false) {
            let bytes = Array(label.utf8)
            guard !bytes.isEmpty, bytes.count <= 63 else { throw AgentError.invalid(field, "'\(value)' has an empty or over-long label") }
            guard bytes.allSatisfy({ ($0 >= 0x61 && $0 <= 0x7a) || ($0 >= 0x41 && $0 <= 0x5a) || ($0 >= 0x30 && $0 <= 0x39) || $0 == 0x2d }),
                bytes.first != 0x2d, bytes.last != 0x2d
            else {
                throw AgentError.invalid(field, "'\(value)' is not a valid host name (letters, digits and inner '-' per label)")
            }
        }
        return value
    }

    /// Label keys like Kubernetes/Nomad: `[A-Za-z0-9][A-Za-z0-9._/-]*`, values printable, no '='.
    public static func label(key: String, value: String) throws {
        let keyBytes = Array(key.utf8)
        guard !keyBytes.isEmpty, keyBytes.count <= 63,
            keyBytes.allSatisfy({
                ($0 >= 0x61 && $0 <= 0x7a) || ($0 >= 0x41 && $0 <= 0x5a) || ($0 >= 0x30 && $0 <= 0x39) || $0 == 0x2e || $0 == 0x5f || $0 == 0x2d || $0 == 0x2f
            })
        else {
            throw AgentError.invalid("label", "key '\(key)' must be 1-63 characters of letters, digits, '.', '_', '-', '/'")
        }
        guard value.utf8.count <= 255, value.utf8.allSatisfy({ $0 >= 0x20 && $0 != 0x7f && $0 != 0x3d }) else {
            throw AgentError.invalid("label", "value of '\(key)' must be at most 255 printable characters without '='")
        }
    }

    /// Linux interface names: 1-15 bytes, no '/', ':', whitespace (dev_valid_name).
    public static func interfaceName(_ value: String, field: String) throws -> String {
        let bytes = Array(value.utf8)
        guard !bytes.isEmpty, bytes.count <= 15, value != ".", value != "..",
            bytes.allSatisfy({ $0 > 0x20 && $0 < 0x7f && $0 != 0x2f && $0 != 0x3a })
        else {
            throw AgentError.invalid(field, "'\(value)' is not an interface name (1-15 characters, no '/', ':' or spaces)")
        }
        return value
    }

    /// A host-assigned VPS address: valid, unicast, inside one of the node's ranges, not the
    /// network or broadcast address of that range, not a bridge gateway.
    public static func vpsAddress(_ text: String, field: String, network: NodeSettings.Network) throws -> IPAddress {
        let address: IPAddress
        do throws(AddressError) { address = try IPAddress(text) } catch { throw AgentError.invalid(field, error.message) }
        if let why = address.unusableForVPS { throw AgentError.invalid(field, "\(address) \(why)") }
        guard let range = network.range(containing: address) else {
            throw AgentError.invalid(field, "\(address) is outside this node's address ranges (\(network.ranges.map(\.description).joined(separator: ", ")))")
        }
        if address.isV4 && range.prefixLength <= 30 {
            if address == range.network || address == range.lastAddress {
                throw AgentError.invalid(field, "\(address) is the network or broadcast address of \(range)")
            }
        }
        if network.bridges.contains(where: { $0.gateway4 == address || $0.gateway6 == address }) {
            throw AgentError.invalid(field, "\(address) is a bridge gateway of this node")
        }
        return address
    }

    /// Resolver addresses may be anywhere (they are only written into /etc/resolv.conf).
    public static func nameserver(_ text: String) throws -> IPAddress {
        let address: IPAddress
        do throws(AddressError) { address = try IPAddress(text) } catch { throw AgentError.invalid("nameserver", error.message) }
        guard !address.isUnspecified, !address.isMulticast else { throw AgentError.invalid("nameserver", "\(address) cannot be a resolver") }
        return address
    }

    /// resolv.conf allows six search domains; each is a host name.
    public static func searchDomains(_ values: [String]) throws -> [String] {
        guard values.count <= 6 else { throw AgentError.invalid("searchdomain", "at most 6 search domains (resolv.conf)") }
        return try values.map { try hostname($0, field: "searchdomain") }
    }

    /// `--capability NAME:on|off` settings: names canonicalised to libcap's ("cap_net_admin"),
    /// values "on" or "off", and never one of the capabilities no VPS gets.
    public static func capabilities(_ values: [String: String]) throws -> [String: String] {
        var result: [String: String] = [:]
        for (name, value) in values {
            guard let canonical = Capabilities.canonicalName(name) else {
                throw AgentError.invalid("capability", "'\(name)' is not a Linux capability (see capabilities(7))")
            }
            guard value == "on" || value == "off" else {
                throw AgentError.invalid("capability", "\(name): '\(value)' must be on or off")
            }
            if value == "on" && Capabilities.neverGranted.contains(canonical) {
                throw AgentError.invalid("capability", "\(canonical) is never granted to a VPS: it is host-global on a mainline kernel")
            }
            result[canonical] = value
        }
        return result
    }
}
