/// Columns padded to their widest cell, two spaces apart, no trailing blanks: the CLI's tables
/// and the beancounter file inside a VPS share this one layout.
public func textTable(_ rows: [[String]]) -> String {
    let columns = rows.map(\.count).max() ?? 0
    let widths = (0..<columns).map { column in rows.map { column < $0.count ? $0[column].count : 0 }.max() ?? 0 }
    var text = ""
    for row in rows {
        var line = row.enumerated().map { cell in
            cell.element + String(repeating: " ", count: max(0, widths[cell.offset] - cell.element.count))
        }.joined(separator: "  ")
        while line.last == " " { line.removeLast() }
        text += line + "\n"
    }
    return text
}

extension Berth_V1_VpsStats {
    /// `berth stats NAME` as text: one row per resource and the cumulative CPU time. The agent
    /// writes the same text into the VPS as its beancounter file.
    public var table: String {
        let rows = [["RESOURCE", "HELD", "PEAK", "LIMIT", "FAILCNT"]] + counters.map {
            [$0.resource, String($0.held), String($0.peak),
             $0.limit == Berth_V1_ResourceCounter.unlimited ? "unlimited" : String($0.limit), String($0.failcnt)]
        }
        return textTable(rows) + "cpu time: \(cpuNanoseconds / 1_000_000) ms\n"
    }
}
