/// The agent's second message to the monitor, on the cgroup pipe after the spec: the VPS's
/// cgroups exist and carry their limits. The monitor mounts the disk while the agent makes
/// them, and moves init into them only after this. Nothing at all (EOF) means the agent gave
/// up: the monitor undoes its mounts and exits.
public struct CgroupsReady: Equatable, Sendable {
    /// Control-file writes made once the disk's loop device exists, before init runs (I/O
    /// limits); `CgroupWrite.devicePlaceholder` in a value becomes the device's "MAJ:MIN".
    public var deviceWrites: [CgroupWrite]

    public init(deviceWrites: [CgroupWrite] = []) { self.deviceWrites = deviceWrites }

    public func encode() -> String {
        (["cgroups=ready"] + deviceWrites.map { "device-write=" + SpawnSpec.escape($0.path + "\t" + $0.value) })
            .joined(separator: "\n") + "\n"
    }

    public static func decode(_ text: String) throws(IsolationError) -> CgroupsReady {
        var lines = text.split(separator: "\n", omittingEmptySubsequences: true)[...]
        guard lines.popFirst() == "cgroups=ready" else {
            throw IsolationError(
                .invalidSpec,
                text.isEmpty
                    ? "the agent gave up before the VPS's cgroups were ready"
                    : "the cgroup message does not start with cgroups=ready")
        }
        var ready = CgroupsReady()
        for line in lines {
            guard line.hasPrefix("device-write=") else { throw IsolationError(.invalidSpec, "the cgroup message has an unknown line: \(line)") }
            let parts = try SpawnSpec.unescape(String(line.dropFirst("device-write=".count)))
                .split(separator: "\t", maxSplits: 1, omittingEmptySubsequences: false)
            guard parts.count == 2, parts[0].hasPrefix("/") else { throw IsolationError(.invalidSpec, "a device-write is not PATH<TAB>VALUE") }
            ready.deviceWrites.append(CgroupWrite(path: String(parts[0]), value: String(parts[1])))
        }
        return ready
    }
}
