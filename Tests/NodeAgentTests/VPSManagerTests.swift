import BerthCore
import Foundation
import Isolation
import Logging
import Synchronization
import Testing

@testable import NodeAgent

/// A cgroup driver that keeps its cgroups in memory and can be told to fail.
final class FakeCgroups: CgroupDriver, @unchecked Sendable {
    struct State {
        var existing: Set<String> = []
        var applied: [String: Limits] = [:]
        var failCreate = false
    }
    let state = Mutex(State())
    var modeName: String { "fake" }

    func create(_ name: String) throws(IsolationError) {
        try state.withLock { (state: inout State) throws(IsolationError) in
            if state.failCreate { throw IsolationError(.syscall, "mkdir: EACCES", stage: "mkdir", errno: EACCES) }
            state.existing.insert(name)
        }
    }
    func apply(_ name: String, _ limits: Limits) throws(IsolationError) { state.withLock { $0.applied[name] = limits } }
    func procsFiles(_ name: String) -> [String] { [] }
    func pids(_ name: String) -> [Int32] { [] }
    func killAll(_ name: String) throws(IsolationError) {}
    func freeze(_ name: String, timeoutMs: Int) throws(IsolationError) {}
    func thaw(_ name: String) throws(IsolationError) {}
    func destroy(_ name: String) throws(IsolationError) { _ = state.withLock { $0.existing.remove(name) } }
    func exists(_ name: String) -> Bool { state.withLock { $0.existing.contains(name) } }
    func usage(_ name: String, scope: UsageScope) -> CgroupUsage { CgroupUsage() }
    func list() -> [String] { state.withLock { Array($0.existing) } }
    func ioSettings(_ name: String, _ io: Limits, device: String) throws(IsolationError) -> [CgroupWrite] { [] }
    func guestMounts() -> [CgroupGuestMount] { [] }
    func delegate(_ name: String, uid: UInt32, gid: UInt32) throws(IsolationError) {}
}

/// The manager built without root or a kernel to spare: a temporary data directory, the fake
/// cgroups, and a berth-spawn that does not exist (the launcher that fails). What each refused or
/// failed operation leaves is checked on disk.
@Suite(.serialized) struct VPSManagerTests {
    struct Node {
        let dir: String
        let manager: VPSManager
        let cgroups: FakeCgroups
        var store: ConfigStore { ConfigStore(dataDir: dir + "/data") }

        func savedConfig(_ name: String) throws -> VPSConfig { try store.load(name) }
    }

    /// A node holding one stopped VPS `web1` (memory 256M), re-adopted from its saved config.
    func withNode(settings: NodeSettings = NodeSettings(), _ body: (Node) async throws -> Void) async throws {
        let dir = FileManager.default.temporaryDirectory.appendingPathComponent("berth-manager-\(getpid())-\(UInt32.random(in: 0...UInt32.max))").path
        defer { try? FileManager.default.removeItem(atPath: dir) }
        for sub in ["data/vps/web1", "data/templates", "run"] {
            try FileManager.default.createDirectory(atPath: dir + "/" + sub, withIntermediateDirectories: true)
        }
        var limits = Limits()
        limits.memoryBytes = 256 << 20
        try ConfigStore(dataDir: dir + "/data").save(VPSConfig(name: "web1", template: "busybox", hostname: "web1", limits: limits, stopSignal: SIGUSR2))
        _ = FileManager.default.createFile(atPath: dir + "/data/vps/web1/disk.img", contents: Data(count: 4096))
        let cgroups = FakeCgroups()
        let manager = VPSManager(
            paths: AgentPaths(
                dataDir: dir + "/data", runDir: dir + "/run", spawnBinary: dir + "/missing/berth-spawn",
                monitorBinary: dir + "/missing/berth-monitor"),
            nodeName: "n1", cgroups: cgroups, logger: Logger(label: "test"), settings: settings, onlineCPUs: 4)
        await manager.recover()
        try await body(Node(dir: dir, manager: manager, cgroups: cgroups))
    }

    @Test func aStartWhoseHelperCannotRunLeavesTheVPSAsItWas() async throws {
        try await withNode { (node: Node) async throws in
            for _ in 0..<2 {  // the first failure leaves nothing busy: the second fails the same way
                let error = await #expect(throws: AgentError.self) { try await node.manager.start("web1") }
                #expect(error?.wireError.code == .kernel)
                #expect(error?.wireError.stage == "spawn")
            }
            #expect(try await node.manager.status("web1").state == .stopped)
            #expect(try node.savedConfig("web1").desiredState == .stopped)
            #expect(node.cgroups.list().isEmpty)
            #expect(!FileManager.default.fileExists(atPath: node.dir + "/run/web1"))
        }
    }

    /// Puts a stand-in `berth-spawn` where the manager runs its helper: a shell script that
    /// speaks the start protocol (HelperProtocol.StartDescriptor) and fails at a chosen step.
    static func standInHelper(_ node: Node, _ body: String) async throws {
        let path = await node.manager.paths.spawnBinary
        let script = "#!/bin/sh\n" + body + "\n"
        try Data(script.utf8).write(to: URL(fileURLWithPath: path))
        chmod(path, 0o755)
    }

    /// What a failed start must leave: the VPS stopped and startable, its desired state as it
    /// was, no cgroup, no run directory.
    static func expectUntouched(_ node: Node) async throws {
        #expect(try await node.manager.status("web1").state == .stopped)
        #expect(try node.savedConfig("web1").desiredState == .stopped)
        #expect(node.cgroups.list().isEmpty)
        #expect(!FileManager.default.fileExists(atPath: node.dir + "/run/web1"))
    }

    /// The helper got its spec and the cgroups, then reports a failed step: its stage and errno
    /// reach the caller, and what the agent made for the start (the cgroup) is gone.
    @Test func aStartTheHelperReportsFailedIsUndone() async throws {
        try await withNode { (node: Node) async throws in
            try await Self.standInHelper(
                node,
                """
                /bin/cat <&3 > "$0.spec"
                /bin/cat <&5 > "$0.ready"
                printf 'error\tmount\t5\tmounting the disk failed: EIO\n' >&4
                exit 1
                """)
            let error = await #expect(throws: AgentError.self) { try await node.manager.start("web1") }
            #expect(error?.wireError.stage == "mount" && error?.wireError.errno == 5)
            #expect(error?.wireError.message.contains("mounting the disk failed") == true)
            let spawnPath = await node.manager.paths.spawnBinary
            // It really was sent the spec and the cgroups' go-ahead before it failed.
            #expect(FileIO.read(spawnPath + ".spec")?.contains("web1") == true)
            #expect(FileIO.read(spawnPath + ".ready") != nil)
            #expect(node.cgroups.state.withLock { $0.applied["web1"] } != nil)
            try await Self.expectUntouched(node)
        }
    }

    /// A helper that dies without a report: the start fails with what it logged.
    @Test func aHelperThatExitsWithoutAReportFailsTheStart() async throws {
        try await withNode { (node: Node) async throws in
            try await Self.standInHelper(node, "/bin/cat <&3 >/dev/null\necho 'segfaulted somewhere' >&2\nexit 139")
            let error = await #expect(throws: AgentError.self) { try await node.manager.start("web1") }
            #expect(error?.wireError.stage == "spawn")
            #expect(error?.wireError.message.contains("exited without a status: segfaulted somewhere") == true)
            try await Self.expectUntouched(node)
        }
    }

    /// The cgroups cannot be made: the helper is told by EOF alone (no go-ahead), exits, and
    /// the start fails with the cgroup's error; nothing is left.
    @Test func aStartWhoseCgroupsCannotBeMadeEndsTheHelper() async throws {
        try await withNode { (node: Node) async throws in
            node.cgroups.state.withLock { $0.failCreate = true }
            try await Self.standInHelper(
                node,
                """
                /bin/cat <&3 >/dev/null
                /bin/cat <&5 > "$0.ready"
                printf 'error\tcgroups\t0\tno go-ahead\n' >&4
                exit 1
                """)
            let error = await #expect(throws: AgentError.self) { try await node.manager.start("web1") }
            #expect(error?.wireError.message.contains("setting up the cgroup of web1") == true)
            #expect(error?.wireError.errno == EACCES)
            let spawnPath = await node.manager.paths.spawnBinary
            #expect(FileIO.read(spawnPath + ".ready") == "")  // EOF alone: no go-ahead was sent
            node.cgroups.state.withLock { $0.failCreate = false }
            try await Self.expectUntouched(node)
        }
    }

    /// A template as `template import` leaves it: metadata and a tree (or, to break the disk
    /// build, a plain file where the tree belongs).
    static func addTemplate(_ node: Node, _ name: String, treeIsAFile: Bool = false) throws {
        let dir = node.dir + "/data/templates/" + name
        try FileManager.default.createDirectory(atPath: dir, withIntermediateDirectories: true)
        if treeIsAFile {
            _ = FileManager.default.createFile(atPath: dir + "/rootfs", contents: Data("not a tree".utf8))
        } else {
            try FileManager.default.createDirectory(atPath: dir + "/rootfs/sbin", withIntermediateDirectories: true)
            _ = FileManager.default.createFile(atPath: dir + "/rootfs/sbin/init", contents: Data("#!/bin/sh\n".utf8))
        }
        let encoder = JSONEncoder()
        encoder.dateEncodingStrategy = .iso8601
        let info = TemplateInfo(name: name, source: "test", createdAt: Date(), stopSignal: SIGTERM, sizeBytes: 4096)
        try encoder.encode(info).write(to: URL(fileURLWithPath: dir + "/template.json"))
    }

    /// The disk cannot be built (real mke2fs, no root needed): the create fails with the tool's
    /// error and leaves no directory, record or reservation, so the same name and addresses are
    /// created at once from a good template.
    @Test func aCreateWhoseDiskFailsLeavesNothing() async throws {
        let network = NodeSettings.Network(uplink: nil, ranges: [try CIDR("198.18.7.0/24")], bridges: [])
        try await withNode(settings: NodeSettings(network: network)) { (node: Node) async throws in
            guard FileManager.default.isExecutableFile(atPath: "/sbin/mke2fs") else {
                print("skip: /sbin/mke2fs is not installed (e2fsprogs)")
                return
            }
            try Self.addTemplate(node, "broken", treeIsAFile: true)
            try Self.addTemplate(node, "tiny")
            var spec = VPSSpec(name: "web2", template: "broken")
            spec.limits.diskBytes = 32 << 20
            spec.ips = ["198.18.7.2"]
            spec.net = "routed"
            let error = await #expect(throws: AgentError.self) { try await node.manager.create(spec) }
            #expect(error?.wireError.code == .kernel && error?.wireError.stage == "mke2fs")
            #expect(!FileManager.default.fileExists(atPath: node.dir + "/data/vps/web2"))
            #expect(await node.manager.list(all: true).vpses.map(\.config.name) == ["web1"])
            spec.template = "tiny"
            let created = try await node.manager.create(spec)
            #expect(created.state == .stopped && created.config.network?.ips.map(\.description) == ["198.18.7.2"])
            #expect(try node.savedConfig("web2").template == "tiny")
        }
    }

    /// A migration grant is taken once, by the node it names, before it expires; nothing else
    /// opens the transfer.
    @Test func aMigrationGrantIsSingleUseAndForItsSourceOnly() async throws {
        try await withNode { (node: Node) async throws in
            let later = VPSManager.nowUnix + 600
            let grant = MigrationGrant(id: "g1", vps: "web2", source: "n2", target: "n1", expiresUnix: later)
            try await node.manager.expectMigration(grant)
            let stranger = await #expect(throws: AgentError.self) { try await node.manager.claimMigration("g1", from: "n3") }
            #expect(stranger?.wireError.code == .permissionDenied && stranger?.wireError.message.contains("for node n2, not n3") == true)
            #expect(try await node.manager.claimMigration("g1", from: "n2") == grant)
            let reused = await #expect(throws: AgentError.self) { try await node.manager.claimMigration("g1", from: "n2") }
            #expect(reused?.wireError.code == .permissionDenied)
            let unknown = await #expect(throws: AgentError.self) { try await node.manager.claimMigration("nope", from: "n2") }
            #expect(unknown?.wireError.code == .permissionDenied)
            // A grant for another node, an expired one, or for a name this node holds is refused.
            var other = grant
            other.target = "n5"
            await #expect(throws: AgentError.self) { try await node.manager.expectMigration(other) }
            var expired = grant
            expired.expiresUnix = VPSManager.nowUnix - 1
            await #expect(throws: AgentError.self) { try await node.manager.expectMigration(expired) }
            var taken = grant
            taken.vps = "web1"
            let exists = await #expect(throws: AgentError.self) { try await node.manager.expectMigration(taken) }
            #expect(exists?.wireError.code == .alreadyExists)
        }
    }

    /// A transfer that fails (a bad digest, a cut connection) keeps nothing of the VPS; one that
    /// succeeds leaves it stopped, with this node's interface and an id range of its own.
    @Test func aReceivedVPSIsKeptOnlyWhenWhole() async throws {
        let network = NodeSettings.Network(uplink: nil, ranges: [try CIDR("198.18.7.0/24")], bridges: [])
        try await withNode(settings: NodeSettings(network: network)) { (node: Node) async throws in
            try Self.addTemplate(node, "tiny")
            var config = VPSConfig(name: "web2", template: "tiny", hostname: "web2", limits: Limits(), stopSignal: SIGTERM)
            config.network = VPSConfig.Network(bridge: nil, ips: ["198.18.7.9"], mac: "02:b7:00:00:00:01", hostInterface: "bv-elsewhere")
            config.desiredState = .running
            let sent = Array(try config.encoded())
            let grant = MigrationGrant(id: "g2", vps: "web2", source: "n2", target: "n1", expiresUnix: VPSManager.nowUnix + 600)
            let cut = await #expect(throws: BerthError.self) {
                _ = try await node.manager.receiveMigration(grant, config: sent) { disk in
                    guard case .image(let path) = disk else { throw BerthError(.internalError, "a loop VPS received as \(disk)") }
                    _ = FileManager.default.createFile(atPath: path, contents: Data(count: 4096))
                    throw BerthError(.invalidArgument, "disk: the transfer ended after 4096 of 8192 bytes", field: "disk")
                }
            }
            #expect(cut?.field == "disk")
            #expect(!FileManager.default.fileExists(atPath: node.dir + "/data/vps/web2"))
            #expect(await node.manager.list(all: true).vpses.map(\.config.name) == ["web1"])
            let view = try await node.manager.receiveMigration(grant, config: sent) { disk in
                guard case .image(let path) = disk else { throw BerthError(.internalError, "a loop VPS received as \(disk)") }
                _ = FileManager.default.createFile(atPath: path, contents: Data(count: 8192))
            }
            #expect(view.state == .stopped)
            let saved = try node.savedConfig("web2")
            #expect(saved.desiredState == .stopped && saved.network?.ips == ["198.18.7.9"])
            #expect(saved.network?.hostInterface != "bv-elsewhere" && saved.idmapBase != nil)
            #expect(FileIO.read(node.dir + "/data/vps/web2/disk.img")?.utf8.count == 8192)
            // The controller's abort deletes a copy received under that grant, and only that one.
            try await node.manager.abortMigration(grant)
            #expect(!FileManager.default.fileExists(atPath: node.dir + "/data/vps/web2"))
            var other = grant
            other.vps = "web1"
            try await node.manager.abortMigration(other)
            #expect(try await node.manager.status("web1").state == .stopped)
        }
    }

    /// A layered VPS's disk is only its upper layer: it is taken in only over a template with
    /// the digest the source sent, and then shares that template (which can no longer go).
    @Test func aLayeredVPSIsReceivedOnlyOverTheSameTemplate() async throws {
        try await withNode { (node: Node) async throws in
            try Self.addTemplate(node, "tiny")
            var config = VPSConfig(name: "web3", template: "tiny", hostname: "web3", limits: Limits(), stopSignal: SIGTERM)
            config.storage = .layered
            let sent = Array(try config.encoded())
            let grant = MigrationGrant(id: "g4", vps: "web3", source: "n2", target: "n1", expiresUnix: VPSManager.nowUnix + 600)
            let receive: (MigrationDisk) async throws -> Void = { disk in
                guard case .image(let path) = disk else { throw BerthError(.internalError, "a loop VPS received as \(disk)") }
                _ = FileManager.default.createFile(atPath: path, contents: Data(count: 8192))
            }
            let other = await #expect(throws: AgentError.self) {
                _ = try await node.manager.receiveMigration(grant, config: sent, templateDigest: String(repeating: "0", count: 64), receiveDisk: receive)
            }
            #expect(other?.wireError.code == .conflict && other?.wireError.field == "template")
            #expect(other?.wireError.message.contains("is not the one VPS web3 is layered over on n2") == true)
            #expect(!FileManager.default.fileExists(atPath: node.dir + "/data/vps/web3"))
            let digest = try #require(try TemplateStore(dataDir: node.dir + "/data").digest("tiny"))
            #expect(try await node.manager.receiveMigration(grant, config: sent, templateDigest: digest, receiveDisk: receive).state == .stopped)
            let shared = await #expect(throws: AgentError.self) { try await node.manager.templates.remove("tiny") }
            #expect(shared?.wireError.message.contains("shared layer of layered VPS web3") == true)
            try await node.manager.destroy("web3", force: true)
        }
    }

    /// The source holds a VPS whose disk it is sending: start, set and destroy are refused.
    @Test func aVPSBeingSentIsBusy() async throws {
        try await withNode { (node: Node) async throws in
            let grant = MigrationGrant(id: "g3", vps: "web1", source: "n1", target: "n2", expiresUnix: VPSManager.nowUnix + 600)
            let (config, disk, templateDigest) = try await node.manager.beginMigrationOut(grant, warm: false)
            #expect(
                String(decoding: config, as: UTF8.self).contains("\"web1\"") && disk == .image(node.dir + "/data/vps/web1/disk.img") && templateDigest.isEmpty)
            let again = await #expect(throws: AgentError.self) { try await node.manager.beginMigrationOut(grant, warm: true) }
            #expect(again?.wireError.code == .conflict)
            for attempt in [
                { try await _ = node.manager.start("web1") }, { try await node.manager.destroy("web1", force: true) },
                { try await _ = node.manager.set(VPSChange(name: "web1")) },
            ] as [() async throws -> Void] {
                let busy = await #expect(throws: AgentError.self) { try await attempt() }
                #expect(busy?.wireError.message == "VPS web1 is busy: it is being migrated to another node")
            }
            await node.manager.endMigrationOut("web1")
            try await node.manager.destroy("web1", force: false)
        }
    }

    @Test func badSetInputChangesNothingAndGoodInputIsSaved() async throws {
        try await withNode { (node: Node) async throws in
            let before = try node.savedConfig("web1")
            var bad = VPSChange(name: "web1")
            bad.limits.memoryBytes = 1 << 20
            bad.labels = ["tier": "gold"]
            let error = await #expect(throws: BerthError.self) { try await node.manager.set(bad) }
            #expect(error?.field == "memory")
            #expect(try node.savedConfig("web1") == before)
            var good = VPSChange(name: "web1")
            good.limits.memoryBytes = 512 << 20
            good.limits.swapBytes = 0
            good.labels = ["tier": "gold"]
            let outcome = try await node.manager.set(good)
            #expect(outcome.appliedLive.isEmpty)
            let saved = try node.savedConfig("web1")
            #expect(saved.limits.memoryBytes == 512 << 20 && saved.limits.swapBytes == 0 && saved.labels == ["tier": "gold"])
            // A second set after the first is done is not refused as concurrent.
            _ = try await node.manager.set(VPSChange(name: "web1"))
        }
    }

    @Test func refusalsNameTheConflict() async throws {
        try await withNode { (node: Node) async throws in
            let stop = await #expect(throws: BerthError.self) { try await node.manager.stop("web1", timeout: 1, kill: false) }
            #expect(stop?.message == "VPS web1 is stopped, not running")
            let missing = await #expect(throws: AgentError.self) { try await node.manager.status("web2") }
            #expect(missing?.wireError.code == .notFound)
            let create = await #expect(throws: AgentError.self) { try await node.manager.create(VPSSpec(name: "web2", template: "nothing")) }
            #expect(create?.wireError.code == .notFound)
            #expect(!FileManager.default.fileExists(atPath: node.dir + "/data/vps/web2"))
        }
    }

    @Test func destroyRemovesAStoppedVPS() async throws {
        try await withNode { (node: Node) async throws in
            try await node.manager.destroy("web1", force: false)
            #expect(!FileManager.default.fileExists(atPath: node.dir + "/data/vps/web1"))
            let error = await #expect(throws: AgentError.self) { try await node.manager.status("web1") }
            #expect(error?.wireError.code == .notFound)
        }
    }

    /// `node show` sums every VPS's commitment (BerthCore's rule).
    @Test func nodeCapacityCountsWhatVPSsCommit() async throws {
        try await withNode { (node: Node) async throws in
            let capacity = await node.manager.nodeInfo()
            #expect(capacity.committed == Commitment(cpuPercent: 0, memoryBytes: 256 << 20, diskBytes: Limits.defaultDiskBytes))
            #expect(capacity.vpsTotal == 1 && capacity.vpsRunning == 0 && capacity.cpus == 4)
        }
    }

    /// A node runs at most its limit of migrations at once; an ended one frees its slot.
    @Test func migrationSlotsRefuseBeyondTheLimit() throws {
        let slots = MigrationSlots(limit: 2)
        try slots.acquire(node: "n1")
        try slots.acquire(node: "n1")
        let refused = #expect(throws: BerthError.self) { try slots.acquire(node: "n1") }
        #expect(refused?.code == .noCapacity && refused?.message.contains("--max-migrations") == true)
        slots.release()
        try slots.acquire(node: "n1")
        #expect(slots.inUse == 2)
    }
}

/// A template's digest is the same for the same tree wherever and whenever it was made.
@Suite struct TemplateDigestTests {
    @Test func theSameTreeHasTheSameDigestAndAnyChangeAnother() throws {
        let base = FileManager.default.temporaryDirectory.appendingPathComponent("berth-digest-\(getpid())-\(UInt32.random(in: 0...UInt32.max))").path
        defer { try? FileManager.default.removeItem(atPath: base) }
        func tree(_ name: String, init content: String = "#!/bin/sh\n", mode: mode_t = 0o755) throws -> String {
            let root = base + "/" + name
            try FileManager.default.createDirectory(atPath: root + "/sbin", withIntermediateDirectories: true)
            _ = FileManager.default.createFile(atPath: root + "/sbin/init", contents: Data(content.utf8))
            chmod(root + "/sbin/init", mode)
            try FileManager.default.createSymbolicLink(atPath: root + "/init", withDestinationPath: "sbin/init")
            return root
        }
        let first = try TemplateStore.treeDigest(try tree("a"))
        usleep(1_100_000)  // other times: they do not count
        #expect(try TemplateStore.treeDigest(try tree("b")) == first)
        #expect(try TemplateStore.treeDigest(try tree("c", init: "#!/bin/sh \n")) != first)
        #expect(try TemplateStore.treeDigest(try tree("d", mode: 0o700)) != first)
        #expect(first.count == 64)
    }
}
