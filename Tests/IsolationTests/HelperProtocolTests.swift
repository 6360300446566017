import Foundation
import Testing

@testable import Isolation

/// The agent ⇄ berth-spawn ⇄ berth-monitor contract: each message survives its own encoder and
/// decoder, and the C monitor's header says what the Swift side says.
@Suite struct HelperProtocolTests {
    @Test func startReportsRoundTrip() {
        let reports: [HelperProtocol.StartReport] = [
            .started(monitorPid: 4242, initPid: 4243),
            .failed(stage: "mount /x", errno: 2, message: "no such file"),
        ]
        for report in reports { #expect(HelperProtocol.StartReport(line: report.line) == report) }
        // A message with a newline or a tab stays one report line with four fields.
        let awkward = HelperProtocol.StartReport.failed(stage: "a\tb", errno: 1, message: "two\nlines\tand a tab")
        #expect(HelperProtocol.StartReport(line: awkward.line) == .failed(stage: "a b", errno: 1, message: "two lines and a tab"))
        for garbage in ["", "ok", "ok 1", "ok x 2", "error\tstage\tnot-a-number\tm", "fine 1 2"] {
            #expect(HelperProtocol.StartReport(line: garbage) == nil, "\(garbage)")
        }
    }

    /// What berth-spawn hands berth-monitor comes back from berth-monitor as it went, with
    /// init's status in front (berth-monitor writes the same options, see main.c resume).
    @Test func handOffRoundTrips() throws {
        let handOff = HelperProtocol.HandOff(
            selfExecutable: 7, monitorProgram: 14, runDir: "/run/berth/vps/web1", initPid: 99, master: 8, slave: 9,
            listener: 10, signals: 11, client: -1, spec: 12, history: 13, capacity: 65536)
        let back = [HelperProtocol.HandOff.Option.status, "256"] + handOff.monitorArguments
        let (resumed, status) = try #require(HelperProtocol.HandOff.resumed(back))
        #expect(resumed == handOff && status == 256)
        #expect(handOff.descriptors == [7, 14, 8, 9, 10, 11, 12, 13])
        // A berth-monitor of an earlier version passes no --monitor back: berth-spawn then tries the path.
        var older = back
        if let at = older.firstIndex(of: HelperProtocol.HandOff.Option.monitorProgram) { older.removeSubrange(at...(at + 1)) }
        #expect(HelperProtocol.HandOff.resumed(older)?.handOff.monitorProgram == -1)
        #expect(HelperProtocol.HandOff.resumed(Array(back.dropLast(2))) == nil)
    }

    @Test func exitRecordsRoundTrip() throws {
        let record = HelperProtocol.ExitRecord(reason: "poweroff", time: 1_700_000_000, networkDetached: true)
        #expect(HelperProtocol.ExitRecord(text: record.text) == record)
        #expect(HelperProtocol.ExitRecord(text: "time=5\n") == nil)
        let lease = HelperProtocol.LeaseRecord(epoch: 3, expires: 123_456_789_000)
        #expect(HelperProtocol.LeaseRecord(text: lease.text) == lease)
        #expect(HelperProtocol.LeaseRecord(text: "epoch=3\n") == nil)
        // What berth-monitor's give_up writes (main.c): the reason and the time, no network line.
        let fromC = try #require(HelperProtocol.ExitRecord(text: "reason=monitor failed: poll failed\ntime=12\n"))
        #expect(fromC == HelperProtocol.ExitRecord(reason: "monitor failed: poll failed", time: 12))
    }

    @Test func startDescriptorsSitWhereBerthSpawnReadsThem() {
        let table = HelperProtocol.StartDescriptor.table(stdin: 100, stdout: 101, stderr: 102, spec: 103, report: 104, cgroupsReady: 105)
        #expect(table == [100, 101, 102, 103, 104, 105])
        #expect([HelperProtocol.StartDescriptor.spec, HelperProtocol.StartDescriptor.report, HelperProtocol.StartDescriptor.cgroupsReady] == [3, 4, 5])
    }

    /// Every constant of Sources/berth-monitor/helper_protocol.h against its Swift twin; a
    /// constant in the header that this test does not know fails too.
    @Test func theCHeaderSaysWhatTheSwiftSideSays() throws {
        let header = URL(fileURLWithPath: #filePath).deletingLastPathComponent().deletingLastPathComponent().deletingLastPathComponent()
            .appendingPathComponent("Sources/berth-monitor/helper_protocol.h")
        let text = try String(contentsOf: header, encoding: .utf8)
        var defined: [String: String] = [:]
        for line in text.split(separator: "\n") where line.hasPrefix("#define BERTH_") && !line.hasPrefix("#define BERTH_HELPER_PROTOCOL_H") {
            let words = line.split(separator: " ", maxSplits: 2).map(String.init)
            guard words.count == 3 else { continue }
            defined[words[1]] = words[2].hasPrefix("\"") ? String(words[2].dropFirst().dropLast()) : words[2]
        }
        typealias Option = HelperProtocol.HandOff.Option
        let swift: [String: String] = [
            "BERTH_OPTION_RUN_DIR": Option.runDir, "BERTH_OPTION_SELF": Option.selfExecutable, "BERTH_OPTION_MONITOR": Option.monitorProgram,
            "BERTH_OPTION_INIT": Option.initPid,
            "BERTH_OPTION_MASTER": Option.master, "BERTH_OPTION_SLAVE": Option.slave, "BERTH_OPTION_LISTENER": Option.listener,
            "BERTH_OPTION_SIGNALS": Option.signals, "BERTH_OPTION_CLIENT": Option.client, "BERTH_OPTION_SPEC": Option.spec,
            "BERTH_OPTION_HISTORY": Option.history, "BERTH_OPTION_CAPACITY": Option.capacity, "BERTH_OPTION_STATUS": Option.status,
            "BERTH_RESUME_COMMAND": HelperProtocol.HandOff.resumeCommand,
            "BERTH_MINIMUM_CAPACITY": String(HelperProtocol.HandOff.minimumCapacity),
            "BERTH_HISTORY_MEMFD_NAME": HelperProtocol.HandOff.historyMemfdName,
            "BERTH_EXIT_FILE": RunState.exitFile,
            "BERTH_EXIT_REASON_KEY": HelperProtocol.ExitRecord.reasonKey,
            "BERTH_EXIT_TIME_KEY": HelperProtocol.ExitRecord.timeKey,
            "BERTH_EXIT_MONITOR_FAILED": HelperProtocol.ExitRecord.monitorFailed,
            "BERTH_LEASE_FILE": HelperProtocol.LeaseRecord.file, "BERTH_LEASE_ARMED_FILE": HelperProtocol.LeaseRecord.armedFile,
            "BERTH_LEASE_FENCED_FILE": HelperProtocol.LeaseRecord.fencedFile,
            "BERTH_LEASE_CAPABLE_FILE": HelperProtocol.LeaseRecord.capableFile, "BERTH_LEASE_EPOCH_KEY": HelperProtocol.LeaseRecord.epochKey,
            "BERTH_LEASE_EXPIRES_KEY": HelperProtocol.LeaseRecord.expiresKey,
            "BERTH_LEASE_CHECK_MILLISECONDS": String(HelperProtocol.LeaseRecord.checkMilliseconds),
            "BERTH_STOP_REQUEST_FILE": RunState.stopRequestFile,
        ]
        #expect(defined == swift)
    }
}

/// An owned descriptor is closed once: when its owner ends, or never when it was handed on.
/// Judged by the other end of a pipe (EOF once every write end is closed), not by descriptor
/// numbers, which a test running in parallel may reuse at once.
@Suite struct FileDescriptorTests {
    /// A non-blocking duplicate of a pipe's read end: 0 from `read` means every write end is closed.
    static func watcher(_ readEnd: Int32) -> Int32 {
        let fd = fcntl(readEnd, F_DUPFD_CLOEXEC, 0)
        _ = fcntl(fd, F_SETFL, O_NONBLOCK)
        return fd
    }

    static func writersClosed(_ watcher: Int32) -> Bool {
        var byte: UInt8 = 0
        return read(watcher, &byte, 1) == 0
    }

    @Test func closesWhenItsOwnerEnds() throws {
        var watcher: Int32 = -1
        do {
            let ends = try PipeEnds()
            watcher = Self.watcher(ends.read.raw)
            #expect(!Self.writersClosed(watcher))
        }
        #expect(Self.writersClosed(watcher))
        close(watcher)
    }

    @Test func closesOnAThrownErrorAndNotWhenReleased() throws {
        struct Failure: Error {}
        var ends: [Int32] = [-1, -1]
        #expect(pipe(&ends) == 0)
        let watcher = Self.watcher(ends[0])
        close(ends[0])
        #expect(throws: Failure.self) {
            let owned = FileDescriptor(ends[1])
            let valid = owned.isValid
            #expect(valid)
            throw Failure()
        }
        #expect(Self.writersClosed(watcher))
        close(watcher)
        #expect(pipe(&ends) == 0)
        let second = Self.watcher(ends[0])
        close(ends[0])
        let handed = FileDescriptor(ends[1]).release()
        #expect(!Self.writersClosed(second))
        close(handed)
        #expect(Self.writersClosed(second))
        close(second)
    }
}
