import BerthCore
import Wire

// Output helpers without Foundation: the CLI runs once per operator command, and not loading
// Foundation (and its ICU data) cuts its start-up time by more than half.
#if canImport(Glibc)
    import Glibc
#endif

func environment(_ key: String) -> String? { getenv(key).map { String(cString: $0) } }

func writeOut(_ text: String, fd: Int32 = 1) {
    var bytes = Array(text.utf8)[...]
    while !bytes.isEmpty {
        let n = bytes.withUnsafeBytes { write(fd, $0.baseAddress, $0.count) }
        if n < 0 { if errno == EINTR { continue }; return }
        bytes = bytes.dropFirst(n)
    }
}

func writeErr(_ text: String) { writeOut(text, fd: 2) }

/// Just enough JSON for status output: keys sorted, two-space indentation.
indirect enum JSON {
    case string(String)
    case int(Int64)
    case bool(Bool)
    case array([JSON])
    case object([String: JSON])

    func render(_ indent: String = "") -> String {
        let inner = indent + "  "
        switch self {
        case .string(let s): return JSON.quote(s)
        case .int(let n): return String(n)
        case .bool(let b): return b ? "true" : "false"
        case .array(let items):
            if items.isEmpty { return "[]" }
            return "[\n" + items.map { inner + $0.render(inner) }.joined(separator: ",\n") + "\n" + indent + "]"
        case .object(let fields):
            if fields.isEmpty { return "{}" }
            return "{\n"
                + fields.keys.sorted().map { inner + JSON.quote($0) + ": " + fields[$0]!.render(inner) }
                .joined(separator: ",\n") + "\n" + indent + "}"
        }
    }

    static func quote(_ s: String) -> String {
        var out = "\""
        for scalar in s.unicodeScalars {
            switch scalar {
            case "\"": out += "\\\""
            case "\\": out += "\\\\"
            case "\n": out += "\\n"
            case "\r": out += "\\r"
            case "\t": out += "\\t"
            default:
                if scalar.value < 0x20 {
                    let hex = String(scalar.value, radix: 16)
                    out += "\\u" + String(repeating: "0", count: 4 - hex.count) + hex
                } else {
                    out.unicodeScalars.append(scalar)
                }
            }
        }
        return out + "\""
    }
}

func printJSON(_ value: JSON) { writeOut(value.render() + "\n") }

/// Left-aligned columns separated by two spaces, no trailing blanks.
func printTable(_ rows: [[String]]) { print(textTable(rows), terminator: "") }

/// An absolute, normalised form of a path given on the command line.
func absolutePath(_ path: String) -> String {
    if let resolved = realpath(path, nil) {
        defer { free(resolved) }
        return String(cString: resolved)
    }
    if path.hasPrefix("/") { return path }
    var buffer = [CChar](repeating: 0, count: 4096)
    guard getcwd(&buffer, buffer.count) != nil else { return path }
    return String(cString: buffer) + "/" + path
}

/// "23.5G": for humans reading capacities (sizes on input stay exact, see ByteSize).
func humanBytes(_ bytes: UInt64) -> String {
    for (suffix, shift) in [("T", 40), ("G", 30), ("M", 20), ("K", 10)] where bytes >= UInt64(1) << shift {
        let value = Double(bytes) / Double(UInt64(1) << shift)
        let tenths = Int((value * 10).rounded())
        return tenths % 10 == 0 ? "\(tenths / 10)\(suffix)" : "\(tenths / 10).\(tenths % 10)\(suffix)"
    }
    return "\(bytes)"
}
