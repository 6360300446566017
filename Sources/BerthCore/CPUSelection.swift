/// `--cpus` as operators give it: a count ("2") or a cpuset list ("0-1,3"). The agent stores the
/// list; a count of one is stored as "0", the only list that reads like a count.
public enum CPUSelection {
    /// How many CPUs `text` selects: a number from 1 up is a count, anything else a list (a CPU
    /// named twice counts once).
    public static func count(_ text: String) -> Int {
        if let count = Int(text), count >= 1 { return count }
        var cpus = Set<Int>()
        for part in text.split(separator: ",") {
            let bounds = part.split(separator: "-").compactMap { Int($0) }
            if bounds.count == 2, bounds[0] <= bounds[1], bounds[1] - bounds[0] < 1 << 16 {
                cpus.formUnion(bounds[0]...bounds[1])
            } else if let cpu = bounds.first {
                cpus.insert(cpu)
            }
        }
        return cpus.count
    }

    /// `text` checked: a count becomes the list of the first CPUs when `onlineCPUs` is known,
    /// and either form must fit the node's CPUs.
    public static func checked(_ text: String, onlineCPUs: Int?) throws(BerthError) -> String {
        func invalid(_ message: String) -> BerthError { BerthError(.invalidArgument, "cpus: \(message)", field: "cpus") }
        if let count = Int(text) {
            guard count >= 1 else { throw invalid("\(count) is not a CPU count (1 or more)") }
            guard let onlineCPUs else { return text }
            guard count <= onlineCPUs else { throw invalid("\(count) CPUs requested but this node has \(onlineCPUs)") }
            return count == 1 ? "0" : "0-\(count - 1)"
        }
        for part in text.split(separator: ",", omittingEmptySubsequences: false) {
            let bounds = part.split(separator: "-", omittingEmptySubsequences: false)
            guard (1...2).contains(bounds.count), let low = Int(bounds[0]), let high = Int(bounds.last!), low >= 0, low <= high else {
                throw invalid("'\(text)' is neither a CPU count nor a CPU list like 0-1,3")
            }
            if let onlineCPUs, high >= onlineCPUs {
                throw invalid("CPU \(high) does not exist on this node (it has CPUs 0-\(onlineCPUs - 1))")
            }
        }
        return text
    }
}
