import Foundation
import Isolation
import Testing
import Wire

@testable import NodeAgent

@Suite struct ValidationTests {
    @Test func hostnames() throws {
        #expect(try Validation.hostname("web1.example.com") == "web1.example.com")
        for bad in ["", "-a", "a-", "a..b", "a_b", String(repeating: "a", count: 64)] {
            #expect(throws: AgentError.self) { try Validation.hostname(bad) }
        }
    }

    @Test func labels() throws {
        try Validation.label(key: "tenant", value: "acme")
        try Validation.label(key: "example.com/zone", value: "a b")
        #expect(throws: AgentError.self) { try Validation.label(key: "", value: "x") }
        #expect(throws: AgentError.self) { try Validation.label(key: "k", value: "a=b") }
        #expect(throws: AgentError.self) { try Validation.label(key: "k", value: "line\nbreak") }
    }
}

@Suite struct VPSConfigTests {
    func sample() -> VPSConfig {
        var config = VPSConfig(name: "web1", template: "busybox", hostname: "web1", labels: ["tenant": "acme"], onboot: true, stopSignal: 12)
        config.limits.memoryBytes = 1 << 30
        return config
    }

    @Test func roundTrips() throws {
        let config = sample()
        let decoded = try VPSConfig.decode(try config.encoded(), expectedName: "web1", path: "config.json")
        #expect(decoded == config)
    }

    func corruption(_ mutate: (inout [String: Any]) -> Void, expect fragment: String) throws {
        var object = try JSONSerialization.jsonObject(with: try sample().encoded()) as! [String: Any]
        mutate(&object)
        let data = try JSONSerialization.data(withJSONObject: object)
        do {
            _ = try VPSConfig.decode(data, expectedName: "web1", path: "config.json")
            Issue.record("accepted a config with \(fragment)")
        } catch let error as AgentError {
            #expect(error.wireError.code == .corruptState)
            #expect(error.description.contains(fragment), "\(error.description)")
        }
    }

    @Test func rejectsUnknownMissingAndMistypedFields() throws {
        try corruption({ $0["surprise"] = 1 }, expect: "unknown field(s) surprise")
        try corruption(
            {
                var l = $0["limits"] as! [String: Any]; l["turbo"] = true; $0["limits"] = l
            }, expect: "limits.turbo")
        try corruption({ $0["hostname"] = nil }, expect: "missing field hostname")
        try corruption({ $0["onboot"] = "yes" }, expect: "wrong type at onboot")
        try corruption({ $0["schemaVersion"] = 99 }, expect: "schema version 99")
        try corruption({ $0["name"] = "other" }, expect: "does not match")
        try corruption({ $0["hostname"] = "bad_host" }, expect: "host name")
        try corruption({ $0["desiredState"] = "flying" }, expect: "desiredState")
    }

    @Test func rejectsNonJSON() {
        #expect(throws: AgentError.self) { try VPSConfig.decode(Data("{\"name\":".utf8), expectedName: "web1", path: "c") }
        #expect(throws: AgentError.self) { try VPSConfig.decode(Data("[]".utf8), expectedName: "web1", path: "c") }
    }
}

/// Builds tar archives in memory (ustar headers) for the validator.
enum TarBuilder {
    static func header(_ name: String, type: Character = "0", link: String = "", size: Int = 0) -> [UInt8] {
        var h = [UInt8](repeating: 0, count: 512)
        func put(_ text: String, _ at: Int, _ length: Int) {
            for (i, b) in Array(text.utf8).prefix(length).enumerated() { h[at + i] = b }
        }
        put(name, 0, 100)
        put("0000644", 100, 8)
        put("0000000", 108, 8)
        put("0000000", 116, 8)
        put(String(String(size, radix: 8).reversed()).padding(toLength: 11, withPad: "0", startingAt: 0).reversed().map(String.init).joined(), 124, 12)
        put("00000000000", 136, 12)
        h[156] = UInt8(ascii: type.unicodeScalars.first!)
        put(link, 157, 100)
        put("ustar", 257, 6)
        put("00", 263, 2)
        for i in 148..<156 { h[i] = 32 }
        let sum = h.reduce(0) { $0 + Int($1) }
        put(String(String(sum, radix: 8).reversed()).padding(toLength: 6, withPad: "0", startingAt: 0).reversed().map(String.init).joined(), 148, 6)
        h[154] = 0
        return h
    }

    static func archive(_ entries: [(String, Character, String, [UInt8])]) -> [UInt8] {
        var out: [UInt8] = []
        for (name, type, link, data) in entries {
            out += header(name, type: type, link: link, size: data.count)
            out += data + [UInt8](repeating: 0, count: (512 - data.count % 512) % 512)
        }
        return out + [UInt8](repeating: 0, count: 1024)
    }
}

@Suite struct TarValidatorTests {
    @Test func acceptsANormalRootfs() throws {
        let tar = TarBuilder.archive([
            ("./", "5", "", []), ("./bin/busybox", "0", "", [1, 2, 3]), ("./sbin/init", "2", "/bin/busybox", []),
            ("./etc/rel", "2", "../bin/busybox", []), ("./bin/sh", "1", "bin/busybox", []),
        ])
        let entries = try TarValidator.validate(tar)
        #expect(entries.map(\.path) == ["", "bin/busybox", "sbin/init", "etc/rel", "bin/sh"])
    }

    @Test func rejectsEscapes() {
        let cases: [([(String, Character, String, [UInt8])], String)] = [
            ([("/etc/passwd", "0", "", [])], "absolute"),
            ([("a/../../x", "0", "", [])], "'..'"),
            ([("etc/x", "2", "../../etc/shadow", [])], "outside"),
            ([("etc", "2", "/tmp", []), ("etc/evil", "0", "", [])], "through the symlink"),
            ([("x", "1", "/etc/shadow", [])], "absolute"),
            ([("x", "1", "../y", [])], "'..'"),
        ]
        for (entries, fragment) in cases {
            do {
                _ = try TarValidator.validate(TarBuilder.archive(entries))
                Issue.record("accepted \(entries.map(\.0))")
            } catch let error as AgentError {
                #expect(error.description.contains(fragment), "\(error.description)")
                #expect(error.wireError.field == "tarball")
            } catch {
                Issue.record("unexpected \(error)")
            }
        }
    }

    @Test func rejectsGarbageAndTruncation() {
        #expect(throws: AgentError.self) { try TarValidator.validate([UInt8](repeating: 0x41, count: 2048)) }
        var tar = TarBuilder.archive([("big", "0", "", [UInt8](repeating: 1, count: 2000))])
        tar.removeLast(2000)
        #expect(throws: AgentError.self) { try TarValidator.validate(tar) }
        #expect(throws: AgentError.self) { try TarValidator.validate([UInt8](repeating: 0, count: 1024)) }
    }

    @Test func honoursGNULongNames() {
        let long = String(repeating: "d/", count: 60) + "../../../../../../../../../../../../../../../../../../../../../../../../../../../../../../../x"
        let tar = TarBuilder.archive([("././@LongLink", "L", "", Array(long.utf8) + [0]), ("short", "0", "", [])])
        #expect(throws: AgentError.self) { try TarValidator.validate(tar) }
    }
}

@Suite struct NodeSettingsTests {
    func error(_ json: String) -> String {
        do {
            _ = try NodeSettings.parse(Data(json.utf8))
            return "accepted"
        } catch {
            return "\(error)"
        }
    }

    @Test func parsesANodeNetwork() throws {
        let settings = try NodeSettings.parse(
            Data(
                """
                {"network": {"uplink": "eth0", "ranges": ["198.18.0.0/24", "fd00:b17::/64"],
                             "bridges": [{"name": "br0", "gateway4": "198.18.0.1"}]}}
                """.utf8))
        let network = try #require(settings.network)
        #expect(network.uplink == "eth0" && network.ranges.map(\.description) == ["198.18.0.0/24", "fd00:b17::/64"])
        #expect(network.bridge("br0")?.gateway4?.description == "198.18.0.1")
        #expect(try NodeSettings.parse(Data("{}".utf8)).network == nil)
    }

    @Test func namesTheFieldAndTheReason() {
        #expect(error(#"{"network": {"ranges": ["198.18.0.0/24", "198.18.0.128/25"]}}"#).contains("network.ranges[1]: 198.18.0.128/25 overlaps 198.18.0.0/24"))
        #expect(error(#"{"network": {"ranges": ["010.0.0.0/8"]}}"#).contains("network.ranges[0]: '010.0.0.0' has a leading zero"))
        #expect(error(#"{"network": {"ranges": ["198.18.0.1/24"]}}"#).contains("host bits"))
        #expect(error(#"{"network": {"ranges": ["224.0.0.0/4"]}}"#).contains("multicast"))
        #expect(error(#"{"network": {"ranges": ["0.0.0.0/0"]}}"#).contains("network.ranges[0]"))
        #expect(error(#"{"network": {"ranges": []}}"#).contains("network.ranges"))
        #expect(error(#"{"network": {"ranges": ["198.18.0.0/24"], "uplink": "a/b"}}"#).contains("network.uplink"))
        #expect(error(#"{"network": {"ranges": ["198.18.0.0/24"], "mtu": 9000}}"#).contains("network.mtu: unknown setting"))
        #expect(error(#"{"netwrok": {}}"#).contains("netwrok: unknown setting"))
        #expect(
            error(#"{"network": {"ranges": ["198.18.0.0/24"], "bridges": [{"name": "b", "gateway4": "fd00::1"}]}}"#).contains("network.bridges[0].gateway4"))
        #expect(error(#"{"network": {"ranges": ["198.18.0.0/24"], "bridges": [{"name": "b"}, {"name": "b"}]}}"#).contains("listed twice"))
        #expect(error("[1]").contains("not a JSON object"))
    }

    @Test func vpsAddressesComeFromTheNodeRanges() throws {
        let network = try #require(
            try NodeSettings.parse(
                Data(#"{"network": {"ranges": ["198.18.0.0/24", "fd00:b17::/64"], "bridges": [{"name": "br0", "gateway4": "198.18.0.1"}]}}"#.utf8)
            ).network)
        #expect(try Validation.vpsAddress("198.18.0.10", field: "ip", network: network).description == "198.18.0.10")
        #expect(try Validation.vpsAddress("fd00:b17:0::0a", field: "ip", network: network).description == "fd00:b17::a")
        for (bad, reason) in [
            ("198.18.1.1", "outside"), ("198.18.0.0", "network or broadcast"), ("198.18.0.255", "network or broadcast"),
            ("198.18.0.1", "bridge gateway"), ("010.0.0.1", "leading zero"), ("0.0.0.0", "unspecified"), ("ff02::1", "multicast"),
        ] {
            do {
                _ = try Validation.vpsAddress(bad, field: "ip", network: network)
                Issue.record("\(bad) accepted")
            } catch {
                #expect("\(error)".contains(reason), "\(bad): \(error)")
                #expect("\(error)".hasPrefix("ip: "))
            }
        }
    }

    @Test func hostInterfaceNamesFitIFNAMSIZ() {
        #expect(VPSManager.hostInterfaceName(for: "web1") == "bv-web1")
        #expect(VPSManager.hostInterfaceName(for: "twelve-chars") == "bv-twelve-chars")
        let long = VPSManager.hostInterfaceName(for: "a-much-longer-vps-name")
        #expect(long.count == 15 && long.hasPrefix("bv-a-muc-"))
        #expect(long != VPSManager.hostInterfaceName(for: "a-much-longer-vps-name2"))
    }
}

@Suite struct DebianTemplateTests {
    @Test func validatesEveryFieldBeforeDownloading() throws {
        let ok = try DebianTemplateRequest(include: ["openssh-server", "less", "libstdc++6", "openssh-server"]).validated()
        #expect(ok.include == ["less", "libstdc++6", "openssh-server"])
        #expect(ok.cacheFileName == "debootstrap-bookworm-minbase+less+libstdc++6+openssh-server.tar")
        #expect(try DebianTemplateRequest().validated().cacheFileName == "debootstrap-bookworm-minbase.tar")
        // Base packages named again do not make a second cache.
        #expect(try DebianTemplateRequest(include: ["dbus"]).validated().cacheFileName == "debootstrap-bookworm-minbase.tar")
        let cases: [(DebianTemplateRequest, String)] = [
            (DebianTemplateRequest(include: ["Not_A_Package"]), "include"),
            (DebianTemplateRequest(include: ["-rf"]), "include"),
            (DebianTemplateRequest(include: ["a"]), "include"),
            (DebianTemplateRequest(include: ["x/../../etc"]), "include"),
            (DebianTemplateRequest(mirror: "ftp://198.18.0.1/debian"), "mirror"),
            (DebianTemplateRequest(mirror: "http://"), "mirror"),
            (DebianTemplateRequest(mirror: "http://198.18.0.1/debian --no-check-gpg"), "mirror"),
            (DebianTemplateRequest(name: "../x"), "name"),
        ]
        for (request, field) in cases {
            do {
                _ = try request.validated()
                Issue.record("accepted \(request)")
            } catch let error as WireErrorConvertible {
                #expect(error.wireError.field == field)
                #expect(error.wireError.code == .invalidArgument)
            }
        }
    }

    /// The tree preparation on a miniature debootstrap result.
    @Test func preparedTreeHasNoIdentityAndMasksUnits() throws {
        let tree = FileManager.default.temporaryDirectory.appendingPathComponent("berth-deb-\(getpid())").path
        defer { try? FileManager.default.removeItem(atPath: tree) }
        for dir in ["etc/network", "var/lib/dbus", "etc/systemd/system"] {
            try FileManager.default.createDirectory(atPath: tree + "/" + dir, withIntermediateDirectories: true)
        }
        try "7ef7a3c99ba14089abf804bbd12982e3\n".write(toFile: tree + "/etc/machine-id", atomically: true, encoding: .utf8)
        try "7ef7a3c99ba14089abf804bbd12982e3\n".write(toFile: tree + "/var/lib/dbus/machine-id", atomically: true, encoding: .utf8)
        try TemplateStore.prepareDebianTree(tree)
        #expect(try String(contentsOfFile: tree + "/etc/machine-id", encoding: .utf8) == "")
        #expect(!FileManager.default.fileExists(atPath: tree + "/var/lib/dbus/machine-id"))
        for unit in TemplateStore.debianMaskedUnits.keys {
            #expect(try FileManager.default.destinationOfSymbolicLink(atPath: tree + "/etc/systemd/system/" + unit) == "/dev/null")
        }
        #expect(TemplateStore.debianMaskedUnits.values.allSatisfy { !$0.isEmpty })
    }
}

@Suite struct UserNamespaceSettingsTests {
    @Test func idRangesAreAlignedAndNeverShared() throws {
        let first = try IDMapPool.allocate(excluding: [], reserved: [])
        #expect(first == IDMapPool.start)
        let second = try IDMapPool.allocate(excluding: [first], reserved: [])
        #expect(second == first + IDMap.defaultCount)
        #expect(try IDMapPool.allocate(excluding: [second], reserved: []) == first)
        // A subuid range overlapping the first slot by one id pushes allocation past it.
        #expect(try IDMapPool.allocate(excluding: [], reserved: [(UInt64(first) + 65535, 1)]) == second)
        let file = NSTemporaryDirectory() + "berth-subuid-\(getpid())"
        defer { try? FileManager.default.removeItem(atPath: file) }
        try "root:100000:65536\nalice:2147483648:65536\n".write(toFile: file, atomically: true, encoding: .utf8)
        #expect(IDMapPool.hostReserved(files: [file]).map { $0.0 } == [100000, 2147483648])
        #expect(IDMapPool.isSlotBase(second) && !IDMapPool.isSlotBase(second + 1) && !IDMapPool.isSlotBase(0))
    }

    @Test func capabilitySettingsNameTheFieldAndTheReason() throws {
        #expect(try Validation.capabilities(["NET_ADMIN": "off", "sys_nice": "on"]) == ["cap_net_admin": "off", "cap_sys_nice": "on"])
        for (input, reason) in [
            (["nosuch": "on"], "not a Linux capability"), (["net_raw": "yes"], "on or off"),
            (["sys_module": "on"], "never granted"),
        ] {
            do {
                _ = try Validation.capabilities(input)
                Issue.record("accepted \(input)")
            } catch let error as AgentError {
                #expect(error.wireError.field == "capability")
                #expect(error.description.contains(reason))
            }
        }
    }

    @Test func configKeepsTheUserNamespaceSettings() throws {
        var config = VPSConfig(name: "web1", template: "busybox", hostname: "web1", stopSignal: 12)
        config.idmapBase = IDMapPool.start + IDMap.defaultCount
        config.capabilities = ["cap_net_admin": "off"]
        let decoded = try VPSConfig.decode(try config.encoded(), expectedName: "web1", path: "t")
        #expect(decoded == config)
        #expect(!decoded.isPrivileged && decoded.capabilityOverrides == ["cap_net_admin": false])
        config.idmapBase = 12345
        #expect(throws: AgentError.self) { try VPSConfig.decode(try config.encoded(), expectedName: "web1", path: "t") }
    }

    /// A template shared by a layered VPS is neither replaced (at the final rename of a build or
    /// import) nor removed until the last such VPS lets go of it.
    @Test func sharedTemplateIsNeitherReplacedNorRemoved() throws {
        let dataDir = NSTemporaryDirectory() + "berth-templates-\(getpid())"
        defer { try? FileManager.default.removeItem(atPath: dataDir) }
        let templates = TemplateStore(dataDir: dataDir, cacheDir: dataDir + "/cache")
        func install() throws {
            let staging = templates.root + "/.staging"
            try FileManager.default.createDirectory(atPath: staging + "/rootfs", withIntermediateDirectories: true)
            try templates.install(
                staging: staging,
                info: TemplateInfo(
                    name: "t", source: "test", createdAt: Date(timeIntervalSince1970: 0),
                    stopSignal: 12, sizeBytes: 0))
        }
        try install()
        templates.share("t", with: "web1")
        templates.share("t", with: "web2")
        for attempt in [install, { try templates.remove("t") }, { try templates.requireReplaceable("t") }] {
            do {
                try attempt()
                Issue.record("a shared template was replaced or removed")
            } catch let error as AgentError {
                #expect(error.wireError.field == "template")
                #expect(error.description.contains("web1, web2"))
            }
        }
        templates.unshare("t", with: "web1")
        templates.unshare("t", with: "web2")
        try install()
        try templates.remove("t")
        #expect(templates.info("t") == nil)
    }

    /// A config from before layered storage is an image VPS; an unknown storage kind is a broken config.
    @Test func configStorageKind() throws {
        var config = VPSConfig(name: "web1", template: "busybox", hostname: "web1", stopSignal: 12)
        let old = try VPSConfig.decode(try config.encoded(), expectedName: "web1", path: "t")
        #expect(old.storage == nil && !old.isLayered)
        config.storage = .layered
        let layered = try VPSConfig.decode(try config.encoded(), expectedName: "web1", path: "t")
        #expect(layered.isLayered && layered == config)
        let text = String(decoding: try config.encoded(), as: UTF8.self).replacingOccurrences(of: "\"layered\"", with: "\"zfs\"")
        #expect(throws: (any Error).self) { try VPSConfig.decode(Data(text.utf8), expectedName: "web1", path: "t") }
    }

    /// A config from before pool layouts is a loop VPS; an unknown layout is a broken config.
    @Test func configDiskLayout() throws {
        var config = VPSConfig(name: "web1", template: "busybox", hostname: "web1", stopSignal: 12)
        #expect(try !VPSConfig.decode(try config.encoded(), expectedName: "web1", path: "t").isPooled)
        config.layout = .pool
        let pooled = try VPSConfig.decode(try config.encoded(), expectedName: "web1", path: "t")
        #expect(pooled.isPooled && pooled == config)
        let text = String(decoding: try config.encoded(), as: UTF8.self).replacingOccurrences(of: "\"pool\"", with: "\"zfs\"")
        #expect(throws: (any Error).self) { try VPSConfig.decode(Data(text.utf8), expectedName: "web1", path: "t") }
    }

    /// The pool's block device is the source of the mount that holds its directory, the
    /// deepest one; a pool on a filesystem without a device of its own names none.
    @Test func poolDeviceFromMountinfo() {
        let mountinfo = """
            22 1 254:0 / / rw,relatime shared:1 - ext4 /dev/vda rw
            40 22 0:45 / /var/lib/berth/pool rw,nosuid,nodev shared:20 - btrfs /dev/loop3 rw,space_cache=v2
            41 22 0:46 / /var/lib/berth/pool-other rw - btrfs /dev/loop4 rw
            50 22 0:50 / /srv/tmp rw - tmpfs tmpfs rw
            """
        #expect(StoragePool.mountSource(of: "/var/lib/berth/pool", mountinfo: mountinfo) == "/dev/loop3")
        #expect(StoragePool.mountSource(of: "/var/lib/berth/pool/vps/web1", mountinfo: mountinfo) == "/dev/loop3")
        #expect(StoragePool.mountSource(of: "/var/lib/berth/poolx", mountinfo: mountinfo) == "/dev/vda")
        #expect(StoragePool.mountSource(of: "/srv/tmp/pool", mountinfo: mountinfo) == nil)
    }

    /// A new pool image takes a fifth of the free space, at least 5 GiB and at most 30 GiB.
    @Test func poolDefaultSize() {
        #expect(StoragePool.defaultSize(freeBytes: 1 << 30) == 5 << 30)
        #expect(StoragePool.defaultSize(freeBytes: 100 << 30) == 20 << 30)
        #expect(StoragePool.defaultSize(freeBytes: 1 << 40) == 30 << 30)
    }
}

@Suite struct HeartbeatDeadlineTests {
    /// A heartbeat lost to a blip is sent again inside the lease: with the cluster tests' 5 s
    /// fence a 5 s deadline let a 1 s cut fence the VPS.
    @Test func aLostHeartbeatIsSentAgainWellInsideTheLease() {
        // The retry (the lost beat went an interval after the last answered one, and gave up
        // after the deadline and the client's 1 s grace) comes with half the lease to spare.
        for (interval, fence) in [(1, 5), (1, 10), (2, 10), (1, 3)] {
            let beat = Duration.seconds(interval), lease = Duration.seconds(fence)
            let deadline = ClusterMember.heartbeatDeadline(interval: beat, fenceAfter: lease)
            let retry: Duration = beat + deadline + .seconds(1)
            let spare: Duration = (lease - beat - .seconds(1)) / 2
            #expect(retry <= lease - spare)
        }
        #expect(ClusterMember.heartbeatDeadline(interval: .seconds(1), fenceAfter: .seconds(5)) == .milliseconds(1500))
        #expect(ClusterMember.heartbeatDeadline(interval: .seconds(1), fenceAfter: .seconds(10)) == .seconds(4))
        #expect(ClusterMember.heartbeatDeadline(interval: .seconds(1), fenceAfter: .seconds(60)) == .seconds(5))
        // No lease (HA off, or quarantined): the old 5 s.
        #expect(ClusterMember.heartbeatDeadline(interval: .seconds(1), fenceAfter: nil) == .seconds(5))
    }
}
