/// Parses operator sizes: a whole number with an optional K/M/G/T suffix (powers of 1024,
/// case-insensitive, optional trailing "B" or "iB"). Anything else is an error naming the field.
public enum ByteSize {
    public static func parse(_ text: String, field: String, allowZero: Bool = false) throws(BerthError) -> UInt64 {
        var digits = Substring(text.trimmingSpaces)
        var shift: UInt64 = 0
        let upper = digits.uppercased()
        for suffix in ["IB", "B"] where upper.hasSuffix(suffix) && digits.count > suffix.count {
            digits = digits.dropLast(suffix.count)
            break
        }
        if let last = digits.last, let s = ["K": 10, "M": 20, "G": 30, "T": 40][String(last).uppercased()] {
            shift = UInt64(s)
            digits = digits.dropLast()
        }
        guard !digits.isEmpty, digits.allSatisfy({ $0.isASCII && $0.isNumber }), let value = UInt64(digits) else {
            throw BerthError(
                .invalidArgument, "\(field): '\(text)' is not a size (use a whole number with an optional K, M, G or T suffix, e.g. 512M)", field: field)
        }
        guard value.leadingZeroBitCount >= Int(shift) else {
            throw BerthError(.invalidArgument, "\(field): '\(text)' is too large", field: field)
        }
        let bytes = value << shift
        if bytes == 0 && !allowZero {
            throw BerthError(.invalidArgument, "\(field): must be greater than zero", field: field)
        }
        return bytes
    }

    public static func format(_ bytes: UInt64) -> String {
        for (suffix, shift) in [("T", 40), ("G", 30), ("M", 20), ("K", 10)] where bytes >= (1 << shift) && bytes % (1 << shift) == 0 {
            return "\(bytes >> shift)\(suffix)"
        }
        return "\(bytes)"
    }

    /// A size for people to read, not to parse: in the largest binary unit it reaches, with
    /// one decimal ("11.5 MiB", "512 B").
    public static func approximate(_ bytes: Double) -> String {
        for (unit, shift) in [("TiB", 40), ("GiB", 30), ("MiB", 20), ("KiB", 10)] where bytes >= Double(UInt64(1) << shift) {
            let tenths = Int((bytes / Double(UInt64(1) << shift) * 10).rounded())
            return "\(tenths / 10).\(tenths % 10) \(unit)"
        }
        return "\(Int(bytes.rounded())) B"
    }
}

extension String {
    /// Without leading and trailing spaces (Foundation's trimming, without Foundation).
    var trimmingSpaces: String {
        var s = Substring(self)
        while let f = s.first, f == " " { s = s.dropFirst() }
        while let l = s.last, l == " " { s = s.dropLast() }
        return String(s)
    }
}
