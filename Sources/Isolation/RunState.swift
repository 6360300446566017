/// Files in a VPS's run directory that let any agent instance find a running VPS again.
/// Written by the monitor (berth-spawn); read by the agent.
public struct RunState: Equatable, Sendable {
    public var monitorPid: Int32
    public var monitorStart: UInt64
    public var initPid: Int32
    public var initStart: UInt64
    public var bootedAt: Int64

    public init(monitorPid: Int32, monitorStart: UInt64, initPid: Int32, initStart: UInt64, bootedAt: Int64) {
        self.monitorPid = monitorPid
        self.monitorStart = monitorStart
        self.initPid = initPid
        self.initStart = initStart
        self.bootedAt = bootedAt
    }

    public static let stateFile = "state"
    public static let exitFile = "exit"
    /// Console output of the last boot, kept next to the disk image after the VPS stopped.
    public static let consoleLogFile = "console.log"
    public static let stopRequestFile = "stop-requested"
    public static let consoleSocket = "console.sock"

    public func encode() -> String {
        "monitor=\(monitorPid)\nmonitor_start=\(monitorStart)\ninit=\(initPid)\ninit_start=\(initStart)\nbooted_at=\(bootedAt)\n"
    }

    public static func decode(_ text: String) -> RunState? {
        var values: [String: String] = [:]
        for line in text.split(separator: "\n") {
            guard let eq = line.firstIndex(of: "=") else { return nil }
            values[String(line[..<eq])] = String(line[line.index(after: eq)...])
        }
        guard let monitor = values["monitor"].flatMap({ Int32($0) }), let monitorStart = values["monitor_start"].flatMap({ UInt64($0) }),
            let initPid = values["init"].flatMap({ Int32($0) }), let initStart = values["init_start"].flatMap({ UInt64($0) })
        else { return nil }
        return RunState(
            monitorPid: monitor, monitorStart: monitorStart, initPid: initPid, initStart: initStart,
            bootedAt: values["booted_at"].flatMap { Int64($0) } ?? 0)
    }

    public static func read(runDir: String) -> RunState? {
        FileIO.read(runDir + "/" + stateFile).flatMap(decode)
    }

    /// `path` as the monitor sees it, while it runs: a VPS's disk, overlay and beancounter
    /// tmpfs are mounted in the monitor's own mount namespace, not in the host's.
    public func monitorView(_ path: String) -> String? {
        monitorAlive ? "/proc/\(monitorPid)/root" + path : nil
    }

    /// The monitor is alive and is the same process that wrote this state.
    public var monitorAlive: Bool { HostProcess.isAlive(pid: monitorPid, startTime: monitorStart) }
    public var initAlive: Bool { HostProcess.isAlive(pid: initPid, startTime: initStart) }
}
