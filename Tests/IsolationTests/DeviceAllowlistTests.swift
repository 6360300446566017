import Foundation
import Testing

@testable import Isolation

@Suite struct DeviceAllowlistTests {
    @Test func parsesV1Syntax() throws {
        let rule = try #require(DeviceAllowlist.parse("c 136:* rwm"))
        #expect(rule.type == CChar(UInt8(ascii: "c")) && rule.major == 136 && rule.minor == -1 && rule.access == 7)
        let mknodOnly = try #require(DeviceAllowlist.parse("b *:* m"))
        #expect(mknodOnly.major == -1 && mknodOnly.access == 1)
        for bad in ["", "x 1:3 rwm", "c 1:3", "c 1-3 rwm", "c 1:3 rwx", "c -1:3 r", "cc 1:3 r"] {
            #expect(DeviceAllowlist.parse(bad) == nil, "\(bad)")
        }
        #expect(DeviceAllowlist.rules.allSatisfy { DeviceAllowlist.parse($0) != nil })
    }

    /// The cgroup2 mount of this host: /sys/fs/cgroup on v2, /sys/fs/cgroup/unified on hybrid.
    static var cgroup2Mount: String? {
        let mounts = (try? String(contentsOfFile: "/proc/self/mounts", encoding: .utf8)) ?? ""
        for line in mounts.split(separator: "\n") {
            let fields = line.split(separator: " ")
            if fields.count > 2 && fields[2] == "cgroup2" { return String(fields[1]) }
        }
        return nil
    }

    /// Every VPS's cgroup gets the one program loaded for the rules, whose fd no child inherits.
    @Test(
        .enabled(if: getuid() == 0, "needs root to load a BPF device program"),
        .enabled(if: cgroup2Mount != nil, "needs a cgroup2 mount"))
    func oneLoadedProgramServesEveryCgroup() throws {
        let cgroups = (1...2).map { Self.cgroup2Mount! + "/berth-devshare-\(getpid())-\($0)" }
        defer { for cgroup in cgroups { rmdir(cgroup) } }
        for cgroup in cgroups {
            try FileManager.default.createDirectory(atPath: cgroup, withIntermediateDirectories: false)
            try DeviceAllowlist.attach(toCgroup: cgroup)
        }
        let first = try DeviceAllowlist.program(for: DeviceAllowlist.rules)
        #expect(try DeviceAllowlist.program(for: DeviceAllowlist.rules) == first)
        #expect(fcntl(first, F_GETFD) & FD_CLOEXEC != 0)
        #expect(throws: IsolationError.self) { try DeviceAllowlist.program(for: ["c 1:3 rwm", "x"]) }
    }

    /// The BPF program on a real kernel: allowlisted devices open, others refuse even after mknod.
    @Test(
        .enabled(if: getuid() == 0, "needs root to load a BPF device program"),
        .enabled(if: cgroup2Mount != nil, "needs a cgroup2 mount"))
    func bpfProgramEnforcesTheAllowlist() throws {
        let cgroup = Self.cgroup2Mount! + "/berth-devtest-\(getpid())"
        let scratch = NSTemporaryDirectory() + "berth-devtest-\(getpid())"
        try FileManager.default.createDirectory(atPath: cgroup, withIntermediateDirectories: false)
        try FileManager.default.createDirectory(atPath: scratch, withIntermediateDirectories: true)
        defer {
            try? FileManager.default.removeItem(atPath: scratch)
            for _ in 0..<50 where rmdir(cgroup) != 0 { usleep(20_000) }
        }
        try DeviceAllowlist.attach(toCgroup: cgroup)
        try FileManager.default.createDirectory(atPath: scratch + "/dev", withIntermediateDirectories: true)
        // Opening (not reading) is what the device program decides; a control run outside the
        // cgroup proves that the same opens succeed without it.
        let probe = """
            head -c1 /dev/zero | wc -c
            [ -e \(scratch)/dev/kmsg ] || mknod \(scratch)/dev/kmsg c 1 11 && echo mknod-ok
            ( exec 3< \(scratch)/dev/kmsg ) 2>/dev/null && echo kmsg-open || echo kmsg-denied
            [ -e \(scratch)/dev/blk ] || mknod \(scratch)/dev/blk b 7 0
            ( exec 3< \(scratch)/dev/blk ) 2>/dev/null && echo blk-open || echo blk-denied
            """
        func run(_ script: String) throws -> (Int32, [String]) {
            let process = Process()
            process.executableURL = URL(fileURLWithPath: "/bin/sh")
            process.arguments = ["-c", script]
            let pipe = Pipe()
            process.standardOutput = pipe
            try process.run()
            process.waitUntilExit()
            let output = String(decoding: pipe.fileHandleForReading.readDataToEndOfFile(), as: UTF8.self)
            return (process.terminationStatus, output.split(separator: "\n").map { $0.trimmingCharacters(in: .whitespaces) })
        }
        let control = try run(probe)
        #expect(control.1 == ["1", "mknod-ok", "kmsg-open", "blk-open"])
        let (status, lines) = try run("echo $$ > \(cgroup)/cgroup.procs || exit 90\n" + probe)
        #expect(status == 0)
        #expect(lines == ["1", "mknod-ok", "kmsg-denied", "blk-denied"])
    }
}
