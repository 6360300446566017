/// An endpoint as operators write it: `HOST:PORT`, or `[V6]:PORT` for an IPv6 address.
public struct HostPort: Sendable, Equatable, CustomStringConvertible {
    public var host: String
    public var port: Int

    public init(host: String, port: Int) {
        self.host = host
        self.port = port
    }

    /// `anyPort` admits port 0, "pick a free one", for listeners. An IPv6 address without
    /// brackets is refused rather than split at its last colon (`fd00::1:80` is ambiguous).
    public init(parsing text: String, field: String, anyPort: Bool = false) throws(BerthError) {
        let host: Substring
        let portText: Substring
        if text.hasPrefix("[") {
            guard let close = text.firstIndex(of: "]"), text[text.index(after: close)...].hasPrefix(":") else {
                throw BerthError(.invalidArgument, "\(field): \"\(text)\" is not [ADDRESS]:PORT", field: field)
            }
            host = text[text.index(after: text.startIndex)..<close]
            portText = text[text.index(close, offsetBy: 2)...]
        } else {
            guard let colon = text.lastIndex(of: ":") else {
                throw BerthError(.invalidArgument, "\(field): \"\(text)\" is not HOST:PORT", field: field)
            }
            host = text[..<colon]
            portText = text[text.index(after: colon)...]
            guard !host.contains(":") else {
                throw BerthError(.invalidArgument, "\(field): \"\(text)\": write an IPv6 address in brackets, [ADDRESS]:PORT", field: field)
            }
        }
        guard !host.isEmpty, !portText.isEmpty, portText.utf8.allSatisfy({ (0x30...0x39).contains($0) }), portText.utf8.count <= 5,
            let port = Int(portText), ((anyPort ? 0 : 1)...65535).contains(port)
        else {
            throw BerthError(.invalidArgument, "\(field): \"\(text)\" is not HOST:PORT with a port from \(anyPort ? 0 : 1) to 65535", field: field)
        }
        self.init(host: String(host), port: port)
    }

    /// An endpoint a record stored: as `init(parsing:)` reads it, except that an IPv6 address
    /// without brackets, which versions before the bracket rule accepted and split at the last
    /// colon, is read back the same way (the address was checked when it was stored).
    public init(stored text: String, field: String) throws(BerthError) {
        do {
            try self.init(parsing: text, field: field)
        } catch {
            guard !text.hasPrefix("["), let colon = text.lastIndex(of: ":"), text[..<colon].contains(":"),
                (try? IPAddress(String(text[..<colon])))?.isV4 == false
            else { throw error }
            try self.init(parsing: "[\(text[..<colon])]\(text[colon...])", field: field)
        }
    }

    /// The form `init(parsing:)` reads back: IPv6 addresses in brackets.
    public var description: String { host.contains(":") ? "[\(host)]:\(port)" : "\(host):\(port)" }
}
