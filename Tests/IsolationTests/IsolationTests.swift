import BerthCore
import Foundation
import Testing

@testable import Isolation

/// A throw-away directory standing in for a cgroupfs mount.
final class FakeTree {
    let root: String
    init() {
        root = NSTemporaryDirectory() + "berth-cgroup-\(getpid())-\(UInt32.random(in: 0...UInt32.max))"
        try! FileManager.default.createDirectory(atPath: root, withIntermediateDirectories: true)
    }
    deinit { try? FileManager.default.removeItem(atPath: root) }
    func write(_ path: String, _ text: String) {
        let full = root + "/" + path
        try! FileManager.default.createDirectory(atPath: (full as NSString).deletingLastPathComponent, withIntermediateDirectories: true)
        try! text.write(toFile: full, atomically: false, encoding: .utf8)
    }
    func read(_ path: String) -> String? { try? String(contentsOfFile: root + "/" + path, encoding: .utf8) }
}

@Suite struct CgroupV2Tests {
    /// cgroupfs creates the control files of a new directory itself; the fake needs them made.
    func prepareLeaf(_ tree: FakeTree, _ name: String) {
        for file in ["memory.max", "memory.swap.max", "pids.max", "cpu.weight", "cpu.max", "cpuset.cpus", "cgroup.procs"] {
            tree.write("berth/\(name)/\(file)", "")
        }
    }

    @Test func createEnablesControllersOnEveryAncestorButNotTheLeaf() throws {
        let tree = FakeTree()
        tree.write("cgroup.controllers", "cpuset cpu io memory hugetlb pids rdma misc\n")
        tree.write("cgroup.subtree_control", "memory\n")
        tree.write("berth/cgroup.controllers", "cpuset cpu io memory pids\n")
        tree.write("berth/cgroup.subtree_control", "")
        let driver = CgroupV2Driver(root: tree.root, parent: "berth", attachDeviceFilter: false)
        try driver.create("web1")
        #expect(tree.read("cgroup.subtree_control") == "+cpu +cpuset +pids +io")
        #expect(tree.read("berth/cgroup.subtree_control") == "+cpu +cpuset +memory +pids +io")
        #expect(FileManager.default.fileExists(atPath: tree.root + "/berth/web1"))
        #expect(tree.read("berth/web1/cgroup.subtree_control") == nil)
        #expect(driver.procsFiles("web1") == [tree.root + "/berth/web1/cgroup.procs"])
    }

    @Test func lxcfsSeesTheControllersOfPidOnesCgroup() {
        let tree = FakeTree()
        tree.write("cgroup.controllers", "cpuset cpu io memory hugetlb pids\n")
        tree.write("process_api/cgroup.controllers", "memory\n")
        func seen(_ pidOneCgroup: String) -> Set<String>? {
            CgroupV2Driver.controllersSeenByLxcfs(root: tree.root, pidOneCgroup: pidOneCgroup)
        }
        // systemd's PID 1 lives in /init.scope: lxcfs takes the root's controllers.
        #expect(seen("0::/init.scope\n") == ["cpuset", "cpu", "io", "memory", "hugetlb", "pids"])
        #expect(seen("0::/\n")?.contains("cpuset") == true)
        // A PID 1 placed deeper (as on the lent cgroup-v2 machine) leaves lxcfs blind to cpuset.
        #expect(seen("0::/process_api\n") == ["memory"])
        #expect(seen("12:cpuset:/\n1:name=systemd:/\n") == nil)
        #expect(seen("0::/gone\n") == nil)
    }

    @Test func appliesLimitsInV2Units() throws {
        let tree = FakeTree()
        prepareLeaf(tree, "web1")
        let driver = CgroupV2Driver(root: tree.root, parent: "berth")
        try driver.apply(
            "web1",
            cgroupLimits(
                memoryBytes: 1 << 30, swapBytes: 512 << 20, pids: 300, cpuUnits: 2000,
                cpuLimitPercent: 150, cpus: "0-1"))
        #expect(tree.read("berth/web1/memory.max") == "1073741824")
        #expect(tree.read("berth/web1/memory.swap.max") == "536870912")
        #expect(tree.read("berth/web1/pids.max") == "300")
        #expect(tree.read("berth/web1/cpu.weight") == "200")
        #expect(tree.read("berth/web1/cpu.max") == "150000 100000")
        #expect(tree.read("berth/web1/cpuset.cpus") == "0-1")
    }

    @Test func ioLimitsNameTheDevice() throws {
        let tree = FakeTree()
        prepareLeaf(tree, "v")
        tree.write("berth/v/io.max", "")
        tree.write("berth/v/io.bfq.weight", "")
        let driver = CgroupV2Driver(root: tree.root, parent: "berth")
        let writes = try driver.ioSettings("v", cgroupLimits(ioWeight: 300, ioBytesPerSecond: 4 << 20), device: "7:3")
        #expect(
            writes == [
                CgroupWrite(path: tree.root + "/berth/v/io.bfq.weight", value: "300"),
                CgroupWrite(path: tree.root + "/berth/v/io.max", value: "7:3 rbps=4194304 wbps=4194304 riops=max wiops=max"),
            ])
        tree.write("berth/w/cgroup.procs", "")
        #expect(throws: IsolationError.self) { try driver.ioSettings("w", cgroupLimits(ioBytesPerSecond: 1 << 20), device: "7:4") }
        #expect(try driver.ioSettings("w", cgroupLimits(), device: "7:4").isEmpty)
    }

    @Test func unlimitedIsMax() throws {
        let tree = FakeTree()
        prepareLeaf(tree, "v")
        let driver = CgroupV2Driver(root: tree.root, parent: "berth")
        try driver.apply("v", cgroupLimits())
        #expect(tree.read("berth/v/memory.max") == "max")
        #expect(tree.read("berth/v/memory.swap.max") == "max")
        #expect(tree.read("berth/v/pids.max") == "max")
        #expect(tree.read("berth/v/cpu.weight") == "100")
        #expect(tree.read("berth/v/cpu.max") == "max 100000")
    }

    @Test func aMissingControllerIsFineForDefaultsButNotForARequestedLimit() throws {
        let tree = FakeTree()
        tree.write("berth/v/cgroup.procs", "")
        tree.write("berth/v/pids.max", "")
        let driver = CgroupV2Driver(root: tree.root, parent: "berth", attachDeviceFilter: false)
        try driver.apply("v", cgroupLimits(pids: 50))
        #expect(tree.read("berth/v/pids.max") == "50")
        #expect(tree.read("berth/v/memory.max") == nil)
        #expect(throws: IsolationError.self) { try driver.apply("v", cgroupLimits(memoryBytes: 1 << 30, pids: 50)) }
    }

    /// A VPS's cgroup-v2 accounting files, as the kernel writes them.
    static func usageTree() -> FakeTree {
        let tree = FakeTree()
        tree.write("berth/v/memory.current", "4096\n")
        tree.write("berth/v/memory.peak", "8192\n")
        tree.write("berth/v/memory.max", "8192\n")
        tree.write("berth/v/memory.events", "low 0\nhigh 0\nmax 3\noom 1\noom_kill 1\n")
        tree.write("berth/v/memory.swap.current", "512\n")
        tree.write("berth/v/memory.swap.max", "1024\n")
        tree.write("berth/v/pids.current", "7\n")
        tree.write("berth/v/pids.max", "64\n")
        tree.write("berth/v/cpu.stat", "usage_usec 1500\nuser_usec 1000\nnr_throttled 4\nthrottled_usec 9\n")
        tree.write("berth/v/io.stat", "7:3 rbytes=100 wbytes=200 rios=1 wios=2 dbytes=0 dios=0\n8:0 rbytes=1 wbytes=0 rios=1 wios=0\n")
        return tree
    }

    @Test func usageReadsBeancounterFields() {
        let tree = Self.usageTree()
        let usage = CgroupV2Driver(root: tree.root, parent: "berth").usage("v")
        #expect(usage.ioBytes == 301 && usage.ioOperations == 4 && usage.oomKills == 1)
        #expect(usage.memoryBytes == 4096)
        #expect(usage.memoryPeakBytes == 8192)
        #expect(usage.memoryFailcount == 3)
        #expect(usage.pids == 7)
        #expect(usage.cpuNanoseconds == 1_500_000)
    }

    @Test func aScrapeReadsWhatMetricsExportAndLeavesSwapAlone() {
        let tree = Self.usageTree()
        let driver = CgroupV2Driver(root: tree.root, parent: "berth", attachDeviceFilter: false)
        let scrape = driver.usage("v", scope: .scrape)
        #expect(scrape.memoryBytes == 4096 && scrape.memoryLimitBytes == 8192 && scrape.memoryFailcount == 3 && scrape.oomKills == 1)
        #expect(scrape.pids == 7 && scrape.cpuNanoseconds == 1_500_000 && scrape.cpuThrottledPeriods == 4 && scrape.cpuThrottledNanoseconds == 9000)
        #expect(scrape.swapBytes == 0 && scrape.swapLimitBytes == nil && scrape.pidsLimit == nil)
        let full = driver.usage("v")
        #expect(full.swapBytes == 512 && full.swapLimitBytes == 1024 && full.pidsLimit == 64)
        #expect(full.memoryBytes == scrape.memoryBytes && full.cpuThrottledNanoseconds == scrape.cpuThrottledNanoseconds)
    }

    @Test func detectsModeFromTheFilesystemType() {
        // A plain directory is not cgroup2: treated as v1 hierarchies.
        let tree = FakeTree()
        #expect(CgroupMode.detect(root: tree.root) == .v1(root: tree.root))
    }
}

@Suite struct CgroupV1Tests {
    @Test func createInheritsCpusetAndWritesTheDeviceAllowlist() throws {
        let tree = FakeTree()
        for controller in ["cpu", "cpuset", "memory", "devices", "pids"] { tree.write("\(controller)/.keep", "") }
        tree.write("cpuset/cpuset.cpus", "0-1\n")
        tree.write("cpuset/cpuset.mems", "0\n")
        // Files the kernel would create in a new cgroup.
        for file in [
            "cpuset/berth/v/cpuset.cpus", "cpuset/berth/v/cpuset.mems", "devices/berth/v/devices.deny",
            "devices/berth/v/devices.allow", "cpuset/berth/cpuset.cpus", "cpuset/berth/cpuset.mems",
        ] {
            tree.write(file, "")
        }
        let driver = CgroupV1Driver(root: tree.root, parent: "berth")
        try driver.create("v")
        #expect(tree.read("cpuset/berth/cpuset.cpus") == "0-1")
        #expect(tree.read("cpuset/berth/v/cpuset.mems") == "0")
        #expect(tree.read("devices/berth/v/devices.deny") == "a")
        // Each rule is its own write; the fake file keeps the last one.
        #expect(tree.read("devices/berth/v/devices.allow") == DeviceAllowlist.rules.last)
        #expect(Set(driver.procsFiles("v").map { ($0 as NSString).pathComponents.dropLast(3).last! }) == ["cpu", "cpuset", "memory", "devices", "pids"])
    }

    @Test func convertsLimitsForV1() throws {
        let tree = FakeTree()
        for file in [
            "memory/berth/v/memory.limit_in_bytes", "memory/berth/v/memory.memsw.limit_in_bytes",
            "pids/berth/v/pids.max", "cpu/berth/v/cpu.shares", "cpu/berth/v/cpu.cfs_period_us", "cpu/berth/v/cpu.cfs_quota_us",
        ] {
            tree.write(file, "")
        }
        let driver = CgroupV1Driver(root: tree.root, parent: "berth")
        try driver.apply("v", cgroupLimits(memoryBytes: 256 << 20, swapBytes: 128 << 20, pids: 64, cpuUnits: 2000, cpuLimitPercent: 50))
        #expect(tree.read("memory/berth/v/memory.limit_in_bytes") == String(256 << 20))
        #expect(tree.read("memory/berth/v/memory.memsw.limit_in_bytes") == String(384 << 20))
        #expect(tree.read("pids/berth/v/pids.max") == "64")
        #expect(tree.read("cpu/berth/v/cpu.shares") == "2048")
        #expect(tree.read("cpu/berth/v/cpu.cfs_quota_us") == "50000")
        try driver.apply("v", cgroupLimits())
        #expect(tree.read("memory/berth/v/memory.limit_in_bytes") == "-1")
        #expect(tree.read("cpu/berth/v/cpu.cfs_quota_us") == "-1")
        #expect(tree.read("pids/berth/v/pids.max") == "max")
    }

    /// A hybrid host's layout: joined cpu,cpuacct with alias links, a named systemd hierarchy,
    /// a cgroup2 mount that must stay out of the VPS, and a mount elsewhere that is not ours.
    @Test func guestMountsMirrorTheHostsV1Hierarchies() {
        let mountinfo = """
            31 23 0:28 / /sys/fs/cgroup rw,relatime - tmpfs tmpfs rw,mode=755
            32 31 0:29 / /sys/fs/cgroup/cpu,cpuacct rw,nosuid,nodev,noexec,relatime shared:9 - cgroup cgroup rw,cpu,cpuacct
            35 31 0:32 / /sys/fs/cgroup/memory rw,relatime - cgroup cgroup rw,memory
            40 31 0:37 / /sys/fs/cgroup/systemd rw,relatime - cgroup cgroup rw,xattr,release_agent=/lib/systemd/systemd-cgroups-agent,name=systemd
            41 31 0:38 / /sys/fs/cgroup/unified rw,relatime - cgroup2 cgroup2 rw,nsdelegate
            50 23 0:39 / /mnt/other rw,relatime - cgroup cgroup rw,pids
            51 31 0:40 / /sys/fs/cgroup/net_cls rw,relatime - cgroup cgroup rw,net_cls
            """
        // net_cls is mounted but not joined: the VPS would sit at its root, so it is left out.
        let mounts = CgroupV1Driver(root: "/sys/fs/cgroup", parent: "berth")
            .guestMounts(mountinfo: mountinfo, joined: ["cpu,cpuacct", "memory", "systemd"])
        #expect(
            mounts == [
                CgroupGuestMount(type: "cgroup", directory: "cpu,cpuacct", options: "cpu,cpuacct", writable: false, aliases: ["cpu", "cpuacct"]),
                CgroupGuestMount(type: "cgroup", directory: "memory", options: "memory", writable: false),
                CgroupGuestMount(type: "cgroup", directory: "systemd", options: "none,name=systemd", writable: true),
            ])
        for mount in mounts { #expect(CgroupGuestMount.parse(mount.specText) == mount) }
        #expect(
            CgroupV2Driver(root: "/sys/fs/cgroup", parent: "berth").guestMounts() == [
                CgroupGuestMount(type: "cgroup2", directory: "", options: "", writable: true)
            ])
    }

    /// favordynmods goes onto the cgroup2 superblock with every option it has (a reconfigure
    /// clears the flags it is not given); a v1-only host gets a named hierarchy; a host that has
    /// it anywhere is left alone.
    @Test func favordynmodsPlanKeepsTheCgroup2OptionsItHas() {
        let hybrid = """
            32 31 0:29 / /sys/fs/cgroup/cpu rw,nosuid,nodev,noexec,relatime shared:9 - cgroup cgroup rw,cpu
            41 31 0:38 / /sys/fs/cgroup/unified rw,nosuid,nodev,noexec,relatime - cgroup2 cgroup2 rw,nsdelegate,memory_recursiveprot
            """
        #expect(
            CgroupMigrationTuning.plan(mountinfo: hybrid)
                == .reconfigureCgroup2(mountPoint: "/sys/fs/cgroup/unified", options: ["nsdelegate", "memory_recursiveprot", "favordynmods"]))
        let unified = "30 1 0:26 / /sys/fs/cgroup rw,nosuid - cgroup2 cgroup2 rw"
        #expect(CgroupMigrationTuning.plan(mountinfo: unified) == .reconfigureCgroup2(mountPoint: "/sys/fs/cgroup", options: ["favordynmods"]))
        let v1Only = """
            32 31 0:29 / /sys/fs/cgroup/cpu rw,relatime - cgroup cgroup rw,cpu
            35 31 0:32 / /sys/fs/cgroup/memory rw,relatime - cgroup cgroup rw,memory
            """
        #expect(CgroupMigrationTuning.plan(mountinfo: v1Only) == .mountNamedHierarchy)
        let done = v1Only + "\n60 31 0:50 / /run/berth/cgroup-favordynmods rw - cgroup berth-favordynmods rw,favordynmods,name=berth-favordynmods"
        #expect(CgroupMigrationTuning.plan(mountinfo: done) == .alreadyOn(mountPoint: "/run/berth/cgroup-favordynmods"))
    }

    /// A VPS's systemd leaves slices and scopes below the VPS cgroup: removal goes deepest first.
    @Test func destroyRemovesCgroupsTheVPSMadeBelowItsOwn() throws {
        let tree = FakeTree()
        try FileManager.default.createDirectory(atPath: tree.root + "/systemd/berth/v/system.slice/cron.service", withIntermediateDirectories: true)
        try FileManager.default.createDirectory(atPath: tree.root + "/systemd/berth/v/init.scope", withIntermediateDirectories: true)
        try CgroupV1Driver(root: tree.root, parent: "berth").destroy("v")
        #expect(!FileManager.default.fileExists(atPath: tree.root + "/systemd/berth/v"))
        #expect(FileManager.default.fileExists(atPath: tree.root + "/systemd/berth"))
    }

    /// Delegation hands the VPS's root only the directory and the files that create and move.
    @Test func delegationChownsOnlyTheDelegationFiles() throws {
        guard getuid() == 0 else { return }
        let tree = FakeTree()
        for file in ["cgroup.procs", "cgroup.threads", "cgroup.subtree_control", "memory.max", "pids.max"] { tree.write("berth/v/\(file)", "") }
        try CgroupV2Driver(root: tree.root, parent: "berth", attachDeviceFilter: false).delegate("v", uid: 1_000_000, gid: 1_000_000)
        func owner(_ path: String) -> uid_t { var st = stat(); lstat(tree.root + "/" + path, &st); return st.st_uid }
        #expect(owner("berth/v") == 1_000_000)
        #expect(owner("berth/v/cgroup.procs") == 1_000_000 && owner("berth/v/cgroup.subtree_control") == 1_000_000)
        #expect(owner("berth/v/memory.max") == 0 && owner("berth/v/pids.max") == 0)
        tree.write("systemd/berth/v/tasks", "")
        tree.write("memory/berth/v/memory.limit_in_bytes", "")
        try CgroupV1Driver(root: tree.root, parent: "berth").delegate("v", uid: 1_000_000, gid: 1_000_000)
        #expect(owner("systemd/berth/v/tasks") == 1_000_000)
        #expect(owner("memory/berth/v/memory.limit_in_bytes") == 0)
    }

    /// After an in-VPS reboot on v2 the last boot's slices go and its controllers are disabled.
    @Test func resetEmptiesTheSubtreeAndDisablesItsControllers() throws {
        let tree = FakeTree()
        try FileManager.default.createDirectory(atPath: tree.root + "/berth/v/system.slice/cron.service", withIntermediateDirectories: true)
        tree.write("berth/v/cgroup.subtree_control", "memory pids\n")
        try resetCgroupSubtree(tree.root + "/berth/v")
        #expect(!FileManager.default.fileExists(atPath: tree.root + "/berth/v/system.slice"))
        #expect(tree.read("berth/v/cgroup.subtree_control") == "-memory -pids")
    }

    @Test func v2PidsIncludeTheVPSsOwnChildCgroups() {
        let tree = FakeTree()
        tree.write("berth/v/cgroup.procs", "")
        tree.write("berth/v/init.scope/cgroup.procs", "1234\n")
        tree.write("berth/v/system.slice/cron.service/cgroup.procs", "1300\n1301\n")
        #expect(Set(CgroupV2Driver(root: tree.root, parent: "berth", attachDeviceFilter: false).pids("v")) == [1234, 1300, 1301])
    }

    @Test func usageDerivesSwapAndReadsUnlimitedAsNil() {
        let tree = FakeTree()
        tree.write("memory/.keep", ""); tree.write("pids/.keep", ""); tree.write("cpu/.keep", ""); tree.write("cpuacct/.keep", "")
        tree.write("memory/berth/v/memory.usage_in_bytes", "1000\n")
        tree.write("memory/berth/v/memory.max_usage_in_bytes", "4000\n")
        tree.write("memory/berth/v/memory.limit_in_bytes", "8192\n")
        tree.write("memory/berth/v/memory.failcnt", "2\n")
        tree.write("memory/berth/v/memory.memsw.usage_in_bytes", "1500\n")
        tree.write("memory/berth/v/memory.memsw.limit_in_bytes", "12288\n")
        tree.write("pids/berth/v/pids.current", "3\n")
        tree.write("pids/berth/v/pids.max", "max\n")
        tree.write("pids/berth/v/pids.events", "max 5\n")
        tree.write("cpu/berth/v/cpu.stat", "nr_periods 10\nnr_throttled 4\nthrottled_time 900\n")
        tree.write("cpuacct/berth/v/cpuacct.usage", "123456\n")
        let usage = CgroupV1Driver(root: tree.root, parent: "berth").usage("v")
        #expect(usage.memoryBytes == 1000 && usage.memoryPeakBytes == 4000 && usage.memoryLimitBytes == 8192 && usage.memoryFailcount == 2)
        #expect(usage.swapBytes == 500)
        #expect(usage.swapLimitBytes == 4096)
        #expect(usage.pids == 3 && usage.pidsLimit == nil && usage.pidsFailcount == 5)
        #expect(usage.cpuThrottledPeriods == 4 && usage.cpuThrottledNanoseconds == 900)
        #expect(usage.cpuNanoseconds == 123456)
        let scrape = CgroupV1Driver(root: tree.root, parent: "berth").usage("v", scope: .scrape)
        #expect(scrape.memoryBytes == 1000 && scrape.memoryLimitBytes == 8192 && scrape.pidsFailcount == 5 && scrape.cpuNanoseconds == 123456)
        #expect(scrape.swapBytes == 0 && scrape.swapLimitBytes == nil)
        tree.write("memory/berth/v/memory.limit_in_bytes", "9223372036854771712\n")
        #expect(CgroupV1Driver(root: tree.root, parent: "berth").usage("v").memoryLimitBytes == nil)
    }

    @Test func unitConversionsKeepRatios() {
        #expect(Limits.cpuShares(units: 1000) == 1024)
        #expect(Limits.cpuShares(units: 2000) == 2 * Limits.cpuShares(units: 1000))
        #expect(Limits.cpuWeight(units: 1000) == 100)
        #expect(Limits.cpuWeight(units: 1) == 1)
        #expect(Limits.cpuWeight(units: 500_000) == 10_000)
        #expect(Limits.cfsQuota(percent: 200) == 200_000)
    }
}

@Suite struct SpawnProtocolTests {
    @Test func specRoundTripsIncludingAwkwardValues() throws {
        var spec = SpawnSpec(
            name: "web1", diskImage: "/var/lib/berth/vps/web1/disk.img", rootPath: "/r", runDir: "/run/berth/web1",
            hostname: "web1", cgroupProcsFiles: ["/sys/fs/cgroup/a/cgroup.procs", "/b"],
            initArgv: ["/sbin/init", "--with=equals", "line\nbreak", "50%"], environment: ["A=1", "PCT=%20"])
        spec.openFilesLimit = 4096
        spec.lxcfs = "/var/lib/lxcfs"
        spec.beancounters = "/var/lib/berth/vps/web1/beancounters"
        spec.idmap = IDMap(hostBase: 1_065_536)
        spec.layer = SharedLayer(template: "/var/lib/berth/templates/busybox/rootfs", diskMount: "/var/lib/berth/vps/web1/disk")
        spec.monitorBinary = "/run/berth/berth-monitor"
        spec.volume = PoolVolume(subvolume: "/var/lib/berth/pool/vps/web 1%", device: "/dev/loop7")
        spec.cgroupMounts = [
            CgroupGuestMount(type: "cgroup", directory: "cpu,cpuacct", options: "cpu,cpuacct", writable: false, aliases: ["cpu", "cpuacct"]),
            CgroupGuestMount(type: "cgroup", directory: "systemd", options: "none,name=systemd", writable: true),
        ]
        let decoded = try SpawnSpec.decode(spec.encode())
        #expect(decoded == spec)
        #expect(!spec.encode().contains("line\nbreak"))
    }

    @Test func cgroupsReadyRoundTripsAndEmptyMeansGiveUp() throws {
        let ready = CgroupsReady(deviceWrites: [
            CgroupWrite(path: "/sys/fs/cgroup/blkio/berth/web1/blkio.throttle.read_bps_device", value: "{device} 1048576"),
            CgroupWrite(path: "/sys/fs/cgroup/berth/web 1%/io.max", value: "{device} rbps=max\twbps=1"),
        ])
        #expect(try CgroupsReady.decode(ready.encode()) == ready)
        #expect(try CgroupsReady.decode(CgroupsReady().encode()) == CgroupsReady())
        // EOF alone: the agent could not make the cgroups, and the monitor must not boot.
        for broken in [
            "", "device-write=/a%09b\n", "cgroups=ready\ndevice-write=relative%09b\n",
            "cgroups=ready\ndevice-write=/no-tab\n", "cgroups=ready\nsurprise=1\n",
        ] {
            #expect(throws: IsolationError.self) { try CgroupsReady.decode(broken) }
        }
    }

    // "": what the agent closes the spec pipe on when it gives up before sending one (the
    // monitor must then exit untouched).
    @Test(arguments: [
        "", "name=x\n", "garbage\n", "name=a\nname=b\n", "surprise=1\n",
        "name=v\ndisk=/d\nroot=/r\nrun=/x\nhostname=h\ninit=/sbin/init\nring=1\n",
        "name=v\ndisk=/d\nroot=/r\nrun=/x\nhostname=h\ninit=%zz\n",
        "name=v\ndisk=/d\nroot=/r\nrun=/x\nhostname=h\ninit=/sbin/init\ncgroupfs=cgroup ../etc cpu ro -\n",
        "name=v\ndisk=/d\nroot=/r\nrun=/x\nhostname=h\ninit=/sbin/init\ncgroupfs=cgroup . cpu ro -\n",
        "name=v\ndisk=/d\nroot=/r\nrun=/x\nhostname=h\ninit=/sbin/init\ncgroupfs=tmpfs x cpu rw -\n",
        "name=v\ndisk=/d\nroot=/r\nrun=/x\nhostname=h\ninit=/sbin/init\nidmap=0 65536\n",
        "name=v\ndisk=/d\nroot=/r\nrun=/x\nhostname=h\ninit=/sbin/init\nbeancounters=relative/dir\n",
        "name=v\ndisk=/d\nroot=/r\nrun=/x\nhostname=h\ninit=/sbin/init\nidmap=4294967000 65536\n",
        "name=v\ndisk=/d\nroot=/r\nrun=/x\nhostname=h\ninit=/sbin/init\nlayer=/t/rootfs\n",
        "name=v\ndisk=/d\nroot=/r\nrun=/x\nhostname=h\ninit=/sbin/init\nlayer=t/rootfs\ndiskmount=/d/disk\n",
        "name=v\ndisk=/d\nroot=/r\nrun=/x\nhostname=h\ninit=/sbin/init\nmonitor=berth-monitor\n",
        "name=v\ndisk=/d\nroot=/r\nrun=/x\nhostname=h\ninit=/sbin/init\nvolume=pool/vps/v\n",
        "name=v\ndisk=/d\nroot=/r\nrun=/x\nhostname=h\ninit=/sbin/init\nvolumedevice=/dev/loop1\n",
        "name=v\ndisk=/d\nroot=/r\nrun=/x\nhostname=h\ninit=/sbin/init\nvolume=/p/vps/v\nvolumedevice=/etc/passwd\n",
    ])
    func rejectsBrokenSpecs(_ text: String) {
        #expect(throws: IsolationError.self) { try SpawnSpec.decode(text) }
    }

    @Test func idMapLines() {
        let map = IDMap(hostBase: 1_000_000)
        #expect(map.mapLine == "0 1000000 65536\n")
        #expect(IDMap.parse(map.specText) == map)
        #expect(IDMap.parse("1000000") == nil)
        #expect(IDMap.parse("1000000 0") == nil)
    }

    /// Userns VPSs keep everything but the host-global five; privileged ones the "Ours" column.
    @Test func capabilityPolicy() throws {
        #expect(try Capabilities.dropList(userns: true, overrides: [:]) == Capabilities.usernsDrop)
        #expect(try Capabilities.dropList(userns: false, overrides: [:]) == Capabilities.baselineDrop)
        let relaxed = try Capabilities.dropList(userns: false, overrides: ["cap_sys_nice": true, "cap_net_raw": false])
        #expect(!relaxed.contains("cap_sys_nice") && relaxed.contains("cap_net_raw"))
        #expect(throws: IsolationError.self) { try Capabilities.dropList(userns: true, overrides: ["cap_sys_module": true]) }
        #expect(Capabilities.canonicalName("NET_ADMIN") == "cap_net_admin")
        #expect(Capabilities.canonicalName("cap_sys_admin") == "cap_sys_admin")
        #expect(Capabilities.canonicalName("net admin") == nil)
        #expect(Capabilities.canonicalName("cap_nonsense") == nil)
        for name in Capabilities.baselineDrop + Capabilities.usernsDrop { #expect(Capabilities.canonicalName(name) == name) }
    }

    @Test func runStateRoundTrips() {
        let state = RunState(monitorPid: 10, monitorStart: 20, initPid: 11, initStart: 21, bootedAt: 1_700_000_000)
        #expect(RunState.decode(state.encode()) == state)
        #expect(RunState.decode("monitor=1\n") == nil)
    }

    @Test func procStatStartTimeSurvivesHostileComm() {
        let stat = "1234 (evil) name) S 1 1234 1234 0 -1 4194560 100 0 0 0 1 2 0 0 20 0 1 0 987654 1000 10"
        #expect(HostProcess.parseStartTime(stat: stat) == 987654)
        #expect(HostProcess.startTime(pid: getpid()) != nil)
    }

    @Test func initExitClassification() {
        #expect(InitExit(status: 1).isRebootRequest)  // killed by SIGHUP
        #expect(InitExit(status: 2).reason == "poweroff")  // killed by SIGINT
        #expect(InitExit(status: 3 << 8) == .exited(3))
        #expect(InitExit(status: 3 << 8).shellCode == 3)
        #expect(InitExit(status: 9).shellCode == 137)
    }

    @Test func errorsCarryStageAndErrno() {
        let error = IsolationError.sys("mount /proc", errno: EPERM)
        #expect(error.stage == "mount /proc")
        #expect(error.errno == EPERM)
        #expect(error.message.contains("EPERM"))
    }

    @Test func consoleRingKeepsTheNewestBytes() {
        var ring = ConsoleRing(capacity: 8)
        ring.append(Array("abc".utf8)[...])
        #expect(ring.contents() == Array("abc".utf8))
        ring.append(Array("defghij".utf8)[...])
        #expect(ring.contents() == Array("cdefghij".utf8))
        ring.append(Array("0123456789XY".utf8)[...])
        #expect(ring.contents() == Array("456789XY".utf8))
    }

    @Test func atomicWriteReplacesTheWholeFile() {
        let path = NSTemporaryDirectory() + "berth-atomic-\(getpid())"
        try? FileIO.writeAtomically(path, Array("one".utf8))
        try? FileIO.writeAtomically(path, Array("two".utf8))
        #expect(FileIO.read(path) == "two")
        #expect(!FileManager.default.fileExists(atPath: path + ".tmp"))
        unlink(path)
    }

    /// One read answers a control file shorter than the first read's buffer; a longer one (or
    /// one exactly its size) is read on to the end. The kernel's own files as well as plain ones.
    @Test(arguments: [0, 17, 511, 512, 513, 4095, 4096, 4097, 20_000])
    func controlFilesReadWhole(size: Int) {
        let path = NSTemporaryDirectory() + "berth-control-\(getpid())-\(size)"
        let text = String((0..<size).map { Character(UnicodeScalar(UInt8(97 + $0 % 26))) })
        try? FileIO.writeAtomically(path, Array(text.utf8))
        #expect(FileIO.read(path, control: true) == text)
        unlink(path)
        #expect(FileIO.read(path, control: true) == nil)
        let mountinfo = FileIO.read("/proc/self/mountinfo")
        #expect(mountinfo != nil && FileIO.read("/proc/self/mountinfo", control: true) == mountinfo)
    }
}

/// Limits with only the cgroup values a driver test sets (BerthCore's `Limits` has no
/// memberwise initialiser: its stored form is read and checked, not built by hand).
func cgroupLimits(
    memoryBytes: UInt64? = nil, swapBytes: UInt64? = nil, pids: UInt32? = nil, cpuUnits: UInt32? = nil,
    cpuLimitPercent: UInt32? = nil, cpus: String? = nil, ioWeight: UInt32? = nil, ioBytesPerSecond: UInt64? = nil
) -> Limits {
    var limits = Limits()
    limits.memoryBytes = memoryBytes
    limits.swapBytes = swapBytes
    limits.pids = pids
    limits.cpuUnits = cpuUnits
    limits.cpuLimitPercent = cpuLimitPercent
    limits.cpus = cpus
    limits.ioWeight = ioWeight
    limits.ioBytesPerSecond = ioBytesPerSecond
    return limits
}
