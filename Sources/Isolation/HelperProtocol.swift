#if canImport(Glibc)
    import Glibc
#endif

/// The contract between the agent, `berth-spawn` and `berth-monitor`, in one place: which
/// descriptor carries what, the start report, the hand-off arguments and the exit record, each
/// with its one encoder and one decoder. Docs/architecture.md §4 draws the sequence.
/// `Sources/berth-monitor/helper_protocol.h` holds the same constants for the C monitor;
/// `HelperProtocolTests` checks that both say the same.
public enum HelperProtocol {
    /// The descriptors `berth-spawn start` gets from the agent, besides stdin, stdout and stderr.
    public enum StartDescriptor {
        /// The SpawnSpec text, then EOF (EOF alone: give up untouched).
        public static let spec: Int32 = 3
        /// One `StartReport` line back to the agent.
        public static let report: Int32 = 4
        /// The CgroupsReady text once the VPS's cgroups exist, then EOF (EOF alone: undo, exit).
        public static let cgroupsReady: Int32 = 5

        /// The descriptor table of `berth-spawn start`, indexed by the number each gets.
        public static func table(stdin: Int32, stdout: Int32, stderr: Int32, spec: Int32, report: Int32, cgroupsReady: Int32) -> [Int32] {
            var table = [Int32](repeating: -1, count: Int(Self.cgroupsReady) + 1)
            (table[0], table[1], table[2]) = (stdin, stdout, stderr)
            table[Int(Self.spec)] = spec
            table[Int(Self.report)] = report
            table[Int(Self.cgroupsReady)] = cgroupsReady
            return table
        }
    }

    /// What `berth-spawn start` tells the agent on `StartDescriptor.report`: one line.
    public enum StartReport: Equatable, Sendable {
        /// Init runs; this process (the monitor) and init.
        case started(monitorPid: Int32, initPid: Int32)
        /// Nothing runs; the step that failed, its errno and why.
        case failed(stage: String, errno: Int32, message: String)

        public var line: String {
            switch self {
            case .started(let monitor, let initPid):
                return "ok \(monitor) \(initPid)\n"
            case .failed(let stage, let errno, let message):
                let oneLine = String(message.map { $0 == "\n" || $0 == "\t" ? " " : $0 })
                let cleanStage = String(stage.map { $0 == "\n" || $0 == "\t" ? " " : $0 })
                return "error\t\(cleanStage)\t\(errno)\t\(oneLine)\n"
            }
        }

        /// The report in `line` (its first line), or nil when it is none.
        public init?(line: String) {
            let first = line.split(separator: "\n", maxSplits: 1, omittingEmptySubsequences: false).first.map(String.init) ?? ""
            let words = first.split(separator: " ", omittingEmptySubsequences: false)
            if words.count == 3, words[0] == "ok", let monitor = Int32(words[1]), let initPid = Int32(words[2]) {
                self = .started(monitorPid: monitor, initPid: initPid)
                return
            }
            let fields = first.split(separator: "\t", maxSplits: 3, omittingEmptySubsequences: false).map(String.init)
            guard fields.count == 4, fields[0] == "error", let errno = Int32(fields[2]) else { return nil }
            self = .failed(stage: fields[1], errno: errno, message: fields[3])
        }
    }

    /// The descriptors and facts a running VPS's monitor hands on: berth-spawn to berth-monitor
    /// once init runs, berth-monitor back to `berth-spawn resume` once init exits. Descriptors
    /// travel by number (both ends keep them open across exec).
    public struct HandOff: Equatable, Sendable {
        /// berth-spawn's own executable (O_PATH), run again by berth-monitor.
        public var selfExecutable: Int32
        /// berth-monitor as opened and checked before the first boot, run again at each reboot:
        /// the agent's copy of it may be gone by then (an agent that stopped takes it along).
        /// -1 from a berth-monitor of an earlier version, which does not pass it back.
        public var monitorProgram: Int32
        public var runDir: String
        public var initPid: Int32
        public var master: Int32
        public var slave: Int32
        public var listener: Int32
        public var signals: Int32
        /// The attached console client, or -1.
        public var client: Int32
        /// The SpawnSpec text in a memfd.
        public var spec: Int32
        /// The console's history in a memfd, oldest byte first.
        public var history: Int32
        public var capacity: Int

        public init(
            selfExecutable: Int32, monitorProgram: Int32 = -1, runDir: String, initPid: Int32, master: Int32, slave: Int32, listener: Int32,
            signals: Int32, client: Int32, spec: Int32, history: Int32, capacity: Int
        ) {
            self.selfExecutable = selfExecutable
            self.monitorProgram = monitorProgram
            self.runDir = runDir
            self.initPid = initPid
            self.master = master
            self.slave = slave
            self.listener = listener
            self.signals = signals
            self.client = client
            self.spec = spec
            self.history = history
            self.capacity = capacity
        }

        /// The least ring berth-monitor accepts.
        public static let minimumCapacity = 4096
        /// `berth-spawn resume`: the sub-command berth-monitor runs when init exited.
        public static let resumeCommand = "resume"
        /// What berth-monitor names its history memfd (the same on both sides, for /proc readers).
        public static let historyMemfdName = "berth-console-history"

        /// The option names, as both programs spell them.
        public enum Option {
            public static let runDir = "--run-dir"
            public static let selfExecutable = "--self"
            public static let monitorProgram = "--monitor"
            public static let initPid = "--init"
            public static let master = "--master"
            public static let slave = "--slave"
            public static let listener = "--listener"
            public static let signals = "--signals"
            public static let client = "--client"
            public static let spec = "--spec"
            public static let history = "--history"
            public static let capacity = "--capacity"
            /// init's wait status, on the way back only.
            public static let status = "--status"
        }

        /// berth-monitor's arguments after its program name.
        public var monitorArguments: [String] {
            [
                Option.runDir, runDir, Option.selfExecutable, String(selfExecutable), Option.monitorProgram, String(monitorProgram),
                Option.initPid, String(initPid),
                Option.master, String(master), Option.slave, String(slave), Option.listener, String(listener),
                Option.signals, String(signals), Option.client, String(client), Option.spec, String(spec),
                Option.history, String(history), Option.capacity, String(capacity),
            ]
        }

        /// The descriptors a hand-off passes (they must not be close-on-exec).
        public var descriptors: [Int32] {
            [selfExecutable, monitorProgram, master, slave, listener, signals, client, spec, history].filter { $0 >= 0 }
        }

        /// What `berth-spawn resume` got from berth-monitor (the words after `resume`): the
        /// hand-off and init's wait status, or nil when an option is missing or not a number.
        public static func resumed(_ arguments: [String]) -> (handOff: HandOff, status: Int32)? {
            var values: [String: String] = [:]
            var index = 0
            while index + 1 < arguments.count {
                values[arguments[index]] = arguments[index + 1]
                index += 2
            }
            func number(_ key: String) -> Int32? { values[key].flatMap { Int32($0) } }
            guard let status = number(Option.status), let runDir = values[Option.runDir], let selfFD = number(Option.selfExecutable),
                let initPid = number(Option.initPid), let master = number(Option.master), let slave = number(Option.slave),
                let listener = number(Option.listener), let signals = number(Option.signals), let client = number(Option.client),
                let spec = number(Option.spec), let history = number(Option.history),
                let capacity = number(Option.capacity), Int(capacity) >= minimumCapacity
            else { return nil }
            return (
                HandOff(
                    selfExecutable: selfFD, monitorProgram: number(Option.monitorProgram) ?? -1, runDir: runDir, initPid: initPid, master: master, slave: slave,
                    listener: listener,
                    signals: signals, client: client, spec: spec, history: history, capacity: Int(capacity)), status
            )
        }
    }

    /// What the monitor leaves in RUN/NAME/exit when a VPS ends (`RunState.exitFile`): why, when,
    /// and whether it already undid the VPS's network. Written by berth-spawn's teardown and by
    /// berth-monitor when it cannot hand the VPS back; read by the agent.
    public struct ExitRecord: Equatable, Sendable {
        public var reason: String
        public var time: Int64
        public var networkDetached: Bool

        public init(reason: String, time: Int64, networkDetached: Bool = false) {
            self.reason = reason
            self.time = time
            self.networkDetached = networkDetached
        }

        public static let reasonKey = "reason="
        public static let timeKey = "time="
        public static let networkDetachedLine = "network=detached"
        /// The reason's prefix when the monitor itself failed.
        public static let monitorFailed = "monitor failed: "

        public var text: String {
            "\(Self.reasonKey)\(String(reason.map { $0 == "\n" ? " " : $0 }))\n\(Self.timeKey)\(time)\n"
                + (networkDetached ? Self.networkDetachedLine + "\n" : "")
        }

        public init?(text: String) {
            var reason: String?
            var time: Int64 = 0
            var detached = false
            for line in text.split(separator: "\n") {
                if line.hasPrefix(Self.reasonKey) { reason = String(line.dropFirst(Self.reasonKey.count)) }
                if line.hasPrefix(Self.timeKey) { time = Int64(line.dropFirst(Self.timeKey.count)) ?? 0 }
                if line == Self.networkDetachedLine { detached = true }
            }
            guard let reason else { return nil }
            self.init(reason: reason, time: time, networkDetached: detached)
        }
    }

    /// The node's lease as the agent leaves it for the monitors of its HA VPSs (Docs/ha.md):
    /// `RUN/lease`, rewritten after every heartbeat the controller answered. A monitor whose
    /// VPS's run directory holds `fence` reads it every 200 ms and, once CLOCK_BOOTTIME has
    /// passed `expires` (or the file is gone or unreadable), kills the VPS (`fenced` says why;
    /// `stop-requested` keeps it from booting again) whether the agent runs or not.
    public struct LeaseRecord: Equatable, Sendable {
        public var epoch: UInt64
        /// CLOCK_BOOTTIME nanoseconds after which the lease has lapsed.
        public var expires: UInt64

        public init(epoch: UInt64, expires: UInt64) {
            self.epoch = epoch
            self.expires = expires
        }

        /// In the agent's run directory (the parent of every VPS's).
        public static let file = "lease"
        /// In a VPS's run directory: its monitor enforces the lease.
        public static let armedFile = "fence"
        /// Left in a VPS's run directory by the monitor that fenced it.
        public static let fencedFile = "fenced"
        /// Left in a VPS's run directory by a monitor that enforces the fence (a VPS booted by
        /// an older monitor has none, and cannot be made HA until it restarts).
        public static let capableFile = "fence-capable"
        public static let epochKey = "epoch="
        public static let expiresKey = "expires="
        /// How often a monitor looks.
        public static let checkMilliseconds = 200

        public var text: String { "\(Self.epochKey)\(epoch)\n\(Self.expiresKey)\(expires)\n" }

        public init?(text: String) {
            var epoch: UInt64?, expires: UInt64?
            for line in text.split(separator: "\n") {
                if line.hasPrefix(Self.epochKey) { epoch = UInt64(line.dropFirst(Self.epochKey.count)) }
                if line.hasPrefix(Self.expiresKey) { expires = UInt64(line.dropFirst(Self.expiresKey.count)) }
            }
            guard let epoch, let expires else { return nil }
            self.init(epoch: epoch, expires: expires)
        }

        /// CLOCK_BOOTTIME now, in nanoseconds: it runs on through a suspend, as a lease must.
        public static func boottimeNow() -> UInt64 {
            var now = timespec()
            clock_gettime(CLOCK_BOOTTIME, &now)
            return UInt64(now.tv_sec) * 1_000_000_000 + UInt64(now.tv_nsec)
        }
    }
}
