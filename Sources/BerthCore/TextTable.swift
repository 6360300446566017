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
