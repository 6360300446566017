/// Checks a tar archive before anything of it is unpacked: no absolute paths, no "..", no
/// symlink or hard link that leads outside the archive's root, no entry that would be written
/// through a symlink. Reads ustar, GNU (long names) and pax headers.
public struct TarValidator {
    public struct Entry: Equatable {
        public var path: String
        public var type: UInt8
        public var link: String
    }

    public static func validate(_ bytes: [UInt8]) throws -> [Entry] {
        var entries: [Entry] = []
        var offset = 0
        var longName: String?
        var longLink: String?
        var symlinks = Set<String>()
        while offset + 512 <= bytes.count {
            let header = bytes[offset..<offset + 512]
            if header.allSatisfy({ $0 == 0 }) { break }
            guard verifyChecksum(header) else { throw invalid("header at byte \(offset) has a bad checksum (not a tar file?)") }
            let size = try number(header, 124, 12)
            let type = header[header.startIndex + 156]
            let dataStart = offset + 512
            guard size <= UInt64(bytes.count - dataStart) else { throw invalid("entry at byte \(offset) runs past the end of the archive") }
            let data = Array(bytes[dataStart..<dataStart + Int(size)])
            offset = dataStart + Int((size + 511) / 512 * 512)
            switch type {
            case UInt8(ascii: "L"): longName = cString(data[...]); continue
            case UInt8(ascii: "K"): longLink = cString(data[...]); continue
            case UInt8(ascii: "x"):
                let pax = parsePax(data)
                if let p = pax["path"] { longName = p }
                if let l = pax["linkpath"] { longLink = l }
                continue
            case UInt8(ascii: "g"): continue
            default: break
            }
            var name =
                longName
                ?? {
                    let prefix = cString(header[header.startIndex + 345..<header.startIndex + 500])
                    let base = cString(header[header.startIndex..<header.startIndex + 100])
                    let magic = cString(header[header.startIndex + 257..<header.startIndex + 262])
                    return magic == "ustar" && !prefix.isEmpty ? prefix + "/" + base : base
                }()
            let link = longLink ?? cString(header[header.startIndex + 157..<header.startIndex + 257])
            longName = nil
            longLink = nil
            let path = try normalise(name, what: "path")
            name = path
            // Writing below a path the archive itself made a symlink would follow that link.
            var parent = path
            while let slash = parent.lastIndex(of: "/") {
                parent = String(parent[..<slash])
                if symlinks.contains(parent) { throw invalid("'\(path)' would be written through the symlink '\(parent)'") }
            }
            switch type {
            case UInt8(ascii: "2"):
                if !link.hasPrefix("/") {
                    // Relative targets resolve from the link's own directory and must stay inside.
                    let dir = path.contains("/") ? String(path[..<path.lastIndex(of: "/")!]) : ""
                    _ = try normalise(dir.isEmpty ? link : dir + "/" + link, what: "symlink '\(path)' -> '\(link)'", allowDotDot: true)
                }
                // Absolute targets are resolved inside the VPS root by the VPS; the host never follows them.
                symlinks.insert(path)
            case UInt8(ascii: "1"):
                _ = try normalise(link, what: "hard link '\(path)' -> '\(link)'")
            default:
                break
            }
            entries.append(Entry(path: path, type: type, link: link))
        }
        if entries.isEmpty { throw invalid("the archive holds no entries") }
        return entries
    }

    static func invalid(_ why: String) -> AgentError { AgentError.invalid("tarball", why) }

    /// "./a/b/" → "a/b"; rejects absolute paths and (unless resolving a link target) any "..".
    static func normalise(_ raw: String, what: String, allowDotDot: Bool = false) throws -> String {
        if raw.hasPrefix("/") { throw invalid("\(what): absolute path '\(raw)' is not allowed") }
        var parts: [Substring] = []
        for component in raw.split(separator: "/") {
            if component == "." || component.isEmpty { continue }
            if component == ".." {
                guard allowDotDot else { throw invalid("\(what): '..' in '\(raw)' is not allowed") }
                guard !parts.isEmpty else { throw invalid("\(what) points outside the root") }
                parts.removeLast()
                continue
            }
            parts.append(component)
        }
        return parts.joined(separator: "/")
    }

    static func cString(_ bytes: ArraySlice<UInt8>) -> String {
        let end = bytes.firstIndex(of: 0) ?? bytes.endIndex
        return String(decoding: bytes[bytes.startIndex..<end], as: UTF8.self)
    }

    static func number(_ header: ArraySlice<UInt8>, _ at: Int, _ length: Int) throws -> UInt64 {
        let field = header[header.startIndex + at..<header.startIndex + at + length]
        if let first = field.first, first & 0x80 != 0 {
            // GNU base-256 for sizes over 8 GiB.
            var value: UInt64 = UInt64(first & 0x7f)
            for byte in field.dropFirst() {
                guard value < (1 << 55) else { throw invalid("entry size overflows") }
                value = value << 8 | UInt64(byte)
            }
            return value
        }
        let text = cString(field).trimmingCharacters(in: " ")
        if text.isEmpty { return 0 }
        guard let value = UInt64(text, radix: 8) else { throw invalid("bad octal number '\(text)' in a header") }
        return value
    }

    static func verifyChecksum(_ header: ArraySlice<UInt8>) -> Bool {
        guard let stored = try? number(header, 148, 8) else { return false }
        var sum: UInt64 = 0
        for (index, byte) in header.enumerated() {
            sum += (148..<156).contains(index) ? 32 : UInt64(byte)
        }
        return sum == stored
    }

    static func parsePax(_ data: [UInt8]) -> [String: String] {
        var result: [String: String] = [:]
        var index = 0
        while index < data.count {
            guard let space = data[index...].firstIndex(of: 0x20),
                let length = Int(String(decoding: data[index..<space], as: UTF8.self)),
                length > 0, index + length <= data.count
            else { break }
            let record = data[(space + 1)..<(index + length - 1)]
            if let eq = record.firstIndex(of: 0x3d) {
                result[String(decoding: record[record.startIndex..<eq], as: UTF8.self)] =
                    String(decoding: record[(eq + 1)...], as: UTF8.self)
            }
            index += length
        }
        return result
    }
}

extension String {
    func trimmingCharacters(in set: Character) -> String {
        var s = Substring(self)
        while s.first == set { s = s.dropFirst() }
        while s.last == set { s = s.dropLast() }
        return String(s)
    }
}
