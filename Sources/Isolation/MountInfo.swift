/// One line of /proc/PID/mountinfo:
/// "ID PARENT MAJ:MIN ROOT MOUNTPOINT OPTS [OPTIONAL...] - TYPE SOURCE SUPEROPTS".
public struct MountEntry: Sendable, Equatable {
    public let mountPoint: String
    public let type: String
    public let source: String
    public let superOptions: [String]

    /// Every well-formed line of a mountinfo text, in order.
    public static func parse(mountinfo: String) -> [MountEntry] {
        mountinfo.split(separator: "\n").compactMap { line in
            let halves = line.split(separator: " - ", maxSplits: 1).map { $0.split(separator: " ") }
            guard halves.count == 2, halves[0].count >= 5, halves[1].count >= 3 else { return nil }
            return MountEntry(
                mountPoint: String(halves[0][4]), type: String(halves[1][0]), source: String(halves[1][1]),
                superOptions: halves[1][2].split(separator: ",").map(String.init))
        }
    }
}
