import CIsolation
import Foundation
import Isolation

/// Reports process exits to async waiters. One thread polls every watched pidfd; this works
/// for the agent's own children and for monitors adopted after an agent restart alike, and
/// never calls waitpid(-1), so it cannot steal another part of the process's children.
public final class ProcessWatcher: @unchecked Sendable {
    struct Watch {
        let pid: Int32
        let pidfd: Int32
        let continuation: CheckedContinuation<Int32?, Never>
    }

    let lock = NSLock()
    var watches: [Watch] = []
    let wakeFD: Int32
    var thread: Thread?

    public static let shared = ProcessWatcher()

    init() {
        wakeFD = berth_eventfd()
        let thread = Thread { [unowned self] in self.loop() }
        thread.name = "berth-process-watcher"
        thread.start()
        self.thread = thread
    }

    /// Waits for `pid` (identified by `pidfd`, which this call closes) to exit. Returns the
    /// wait status for a child of the agent, nil for an adopted process.
    public func waitForExit(pid: Int32, pidfd: Int32) async -> Int32? {
        await withCheckedContinuation { continuation in
            lock.lock()
            watches.append(Watch(pid: pid, pidfd: pidfd, continuation: continuation))
            lock.unlock()
            var one: UInt64 = 1
            _ = write(wakeFD, &one, 8)
        }
    }

    private func loop() {
        while true {
            lock.lock()
            let current = watches
            lock.unlock()
            var fds = [pollfd(fd: wakeFD, events: Int16(POLLIN), revents: 0)]
            fds += current.map { pollfd(fd: $0.pidfd, events: Int16(POLLIN), revents: 0) }
            if poll(&fds, nfds_t(fds.count), -1) < 0 { continue }
            if fds[0].revents != 0 {
                var value: UInt64 = 0
                _ = read(wakeFD, &value, 8)
            }
            var finished: [Watch] = []
            for (index, watch) in current.enumerated() where fds[index + 1].revents != 0 {
                finished.append(watch)
            }
            if finished.isEmpty { continue }
            lock.lock()
            watches.removeAll { w in finished.contains { $0.pidfd == w.pidfd } }
            lock.unlock()
            for watch in finished {
                var status: Int32 = 0
                let reaped = waitpid(watch.pid, &status, WNOHANG)
                close(watch.pidfd)
                watch.continuation.resume(returning: reaped == watch.pid ? status : nil)
            }
        }
    }
}

/// A finished helper process.
public struct ProcessResult: Sendable {
    public var status: Int32
    public var stdout: String
    public var stderr: String
    public var exitCode: Int32 { InitExit(status: status).shellCode }
}

/// Runs host tools (mke2fs, tar, berth-spawn) through the C spawn shim: the agent never forks
/// by itself, and the child gets exactly the fds it is given.
public enum Subprocess {
    /// Why the spawn shim could not start `path`: `kernel`, stage `spawn`, with the shim's step.
    static func spawnFailure(_ path: String, step: berth_spawn_stage, errno: Int32) -> AgentError {
        let steps: [berth_spawn_stage: String] = [
            BERTH_SPAWN_FORK: "fork", BERTH_SPAWN_SETSID: "setsid", BERTH_SPAWN_DUP: "dup2", BERTH_SPAWN_EXEC: "exec", BERTH_SPAWN_PIDFD: "pidfd_open",
        ]
        return AgentError(.kernel, "cannot run \(path): \(steps[step] ?? "spawn") failed: \(errnoName(errno))", stage: "spawn", errno: errno)
    }

    /// A close-on-exec pipe; the child gets an end only by being handed it in `fds`.
    public static func makePipe() throws -> (read: Int32, write: Int32) {
        var ends: [Int32] = [-1, -1]
        guard berth_pipe_cloexec(&ends) == 0 else { throw AgentError(.kernel, "pipe failed: \(errnoName(errno))", stage: "pipe", errno: errno) }
        return (ends[0], ends[1])
    }

    /// Starts `argv` with `fds[i]` as fd i. Returns pid and pidfd.
    public static func spawn(
        _ argv: [String], fds: [Int32], environment: [String] = ["PATH=/usr/sbin:/usr/bin:/sbin:/bin"],
        newSession: Bool = false
    ) throws -> (pid: Int32, pidfd: Int32) {
        let cArgv = argv.map { strdup($0) } + [nil]
        let cEnv = environment.map { strdup($0) } + [nil]
        defer {
            cArgv.forEach { free($0) }
            cEnv.forEach { free($0) }
        }
        var pidfd: Int32 = -1, stage: Int32 = 0, err: Int32 = 0
        let pid = fds.withUnsafeBufferPointer {
            berth_spawn(argv[0], cArgv, cEnv, $0.baseAddress, Int32(fds.count), newSession ? 1 : 0, &pidfd, &stage, &err)
        }
        if pid < 0 { throw spawnFailure(argv[0], step: berth_spawn_stage(UInt32(stage)), errno: err) }
        if pidfd < 0 { throw spawnFailure(argv[0], step: BERTH_SPAWN_PIDFD, errno: ENOSYS) }
        return (pid, pidfd)
    }

    /// Runs to completion with stdin from /dev/null, capturing stdout and stderr. `onLine` sees
    /// each output line (either stream) as it arrives: progress of long builds.
    public static func run(
        _ argv: [String], input: [UInt8]? = nil, environment: [String]? = nil,
        onLine: (@Sendable (String) -> Void)? = nil
    ) async throws -> ProcessResult {
        let devnull = FileDescriptor(open("/dev/null", O_RDWR | O_CLOEXEC))
        let out = try PipeEnds(), err = try PipeEnds()
        var inPipe = input == nil ? nil : try PipeEnds()
        let stdin = inPipe?.read.raw ?? devnull.raw
        let child =
            try environment.map { try spawn(argv, fds: [stdin, out.write.raw, err.write.raw], environment: $0) }
            ?? spawn(argv, fds: [stdin, out.write.raw, err.write.raw])
        out.write.close()
        err.write.close()
        if let input, let pipe = inPipe.take() {
            pipe.read.close()
            let writer = pipe.write.release()
            Thread.detachNewThread {
                try? FileIO.writeAll(fd: writer, input, stage: "stdin")
                close(writer)
            }
        }
        // Drain both pipes on their own threads so a chatty child cannot fill one and block.
        let (outFD, errFD) = (out.read.release(), err.read.release())
        async let stdout = readToEnd(outFD, onLine: onLine)
        async let stderr = readToEnd(errFD, onLine: onLine)
        let status = await ProcessWatcher.shared.waitForExit(pid: child.pid, pidfd: child.pidfd) ?? 0
        return ProcessResult(status: status, stdout: await stdout, stderr: await stderr)
    }

    /// The first line `fd` delivers (without its newline), or what came before EOF; closes `fd`.
    /// A monitor's report is one line: taking it as it arrives does not wait for the close that
    /// follows it, which a monitor preempted by its VPS's boot may make a timeslice later.
    static func readFirstLine(_ fd: Int32) async -> String {
        let bytes = await drain(fd, stopAfterFirstLine: true)
        return String(decoding: bytes.firstIndex(of: 10).map { bytes[..<$0] } ?? bytes[...], as: UTF8.self)
    }

    static func readToEnd(_ fd: Int32, onLine: (@Sendable (String) -> Void)? = nil) async -> String {
        String(decoding: await drain(fd, onLine: onLine), as: UTF8.self)
    }

    /// Reads `fd` on a thread of its own (a blocking read must not hold one of the pool's) until
    /// EOF, or the first complete line with `stopAfterFirstLine`; hands each complete line to
    /// `onLine` as it arrives, closes `fd` and returns what it read.
    private static func drain(_ fd: Int32, onLine: (@Sendable (String) -> Void)? = nil, stopAfterFirstLine: Bool = false) async -> [UInt8] {
        await withCheckedContinuation { continuation in
            Thread.detachNewThread {
                var bytes: [UInt8] = []
                var chunk = [UInt8](repeating: 0, count: 16384)
                var lineStart = 0
                reading: while true {
                    let count = chunk.withUnsafeMutableBytes { read(fd, $0.baseAddress, $0.count) }
                    if count < 0 && errno == EINTR { continue }
                    if count <= 0 { break }
                    bytes += chunk[..<count]
                    while let newline = bytes[lineStart...].firstIndex(of: 10) {
                        onLine?(String(decoding: bytes[lineStart..<newline], as: UTF8.self))
                        lineStart = newline + 1
                        if stopAfterFirstLine { break reading }
                    }
                }
                close(fd)
                continuation.resume(returning: bytes)
            }
        }
    }
}
