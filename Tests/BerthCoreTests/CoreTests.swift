import Testing

@testable import BerthCore

@Suite struct AddressTests {
    @Test func parsesStrictly() throws {
        #expect(try IPAddress("198.18.0.10").bytes == [198, 18, 0, 10])
        #expect(try IPAddress("fd00:b17::10").description == "fd00:b17::10")
        #expect(try IPAddress("FD00:0B17:0000::0010").description == "fd00:b17::10")
        for bad in ["010.0.0.1", "1.2.3", "1.2.3.4.5", "256.1.1.1", "1.2.3.-4", "", " 1.2.3.4", "1..2.3", "fd00::b17::1", "fe80::1%eth0", "0x1.2.3.4"] {
            #expect(throws: AddressError.self, "\(bad)") { try IPAddress(bad) }
        }
        if case .failure(let error) = IPAddress.parse("010.0.0.1") { #expect(error.message.contains("leading zero")) }
    }

    @Test func classifiesAddressesAVPSCannotHave() throws {
        let unusable = [
            "0.0.0.0", "127.0.0.1", "224.0.0.1", "239.1.1.1", "169.254.0.1", "255.255.255.255", "240.0.0.1",
            "::", "::1", "ff02::1", "fe80::1", "::ffff:198.18.0.1",
        ]
        for text in unusable { #expect(try IPAddress(text).unusableForVPS != nil, "\(text)") }
        for text in ["198.18.0.1", "fd00:b17::1", "10.0.0.1"] { #expect(try IPAddress(text).unusableForVPS == nil, "\(text)") }
    }

    @Test func cidrRangesRejectHostBitsAndOverlap() throws {
        let a = try CIDR("198.18.0.0/24"), b = try CIDR("198.18.0.128/25"), c = try CIDR("198.18.1.0/24")
        #expect(a.overlaps(b) && b.overlaps(a) && !a.overlaps(c))
        #expect(a.network.description == "198.18.0.0" && a.lastAddress.description == "198.18.0.255" && b.lastAddress.description == "198.18.0.255")
        let inside = try IPAddress("198.18.0.255"), outside = try IPAddress("198.18.1.0")
        #expect(a.contains(inside) && !a.contains(outside))
        #expect(!a.contains(try IPAddress("fd00:b17::1")))
        #expect(try CIDR("fd00:b17::/64").contains(try IPAddress("fd00:b17::ffff")))
        for bad in ["198.18.0.1/24", "198.18.0.0/33", "198.18.0.0", "198.18.0.0/024", "fd00::/129", "198.18.0.0/-1"] {
            #expect(throws: AddressError.self, "\(bad)") { try CIDR(bad) }
        }
    }

    @Test func linkLocalFromMAC() {
        #expect(IPAddress.linkLocal(mac: [0x02, 0xb7, 0xfc, 0x77, 0xa6, 0x06]).description == "fe80::b7:fcff:fe77:a606")
    }

    /// Pools count and step through addresses as numbers, in both families.
    @Test func addressesAsNumbers() throws {
        let v4 = try IPAddress("198.18.0.10"), v6 = try IPAddress("fd00:b17::ffff")
        #expect(IPAddress(value: v4.value + 1, v4: true).description == "198.18.0.11")
        #expect(IPAddress(value: v6.value + 1, v4: false).description == "fd00:b17::1:0")
        #expect(try CIDR("198.18.0.0/24").size == 256 && CIDR("::/0").size == UInt128.max)
    }
}

@Suite struct NameTests {
    @Test(arguments: ["web1", "a", "0", "a-b-c", String(repeating: "x", count: 63)])
    func acceptsNames(_ name: String) throws {
        #expect(try Name.validate(name) == name)
    }

    @Test(arguments: ["", "-a", "Web", "a_b", "a.b", "a b", "ä", "../x", String(repeating: "x", count: 64)])
    func rejectsNames(_ name: String) {
        #expect(throws: BerthError.self) { try Name.validate(name) }
        #expect(!Name.isValid(name))
    }

    @Test func nameErrorsSayWhichField() {
        let error = #expect(throws: BerthError.self) { try Name.validate("Bad", field: "template") }
        #expect(error?.field == "template")
        #expect(error?.code == .invalidArgument)
        #expect(error?.message.hasPrefix("template: ") == true)
        #expect(error?.message.contains("lowercase") == true)
    }
}

@Suite struct ByteSizeTests {
    @Test(arguments: [
        ("512", UInt64(512)), ("1K", 1024), ("1k", 1024), ("2M", 2 << 20), ("3G", 3 << 30),
        ("1T", 1 << 40), ("10GB", 10 << 30), ("10GiB", 10 << 30), (" 5M ", 5 << 20),
    ])
    func parsesSizes(_ text: String, _ bytes: UInt64) throws {
        #expect(try ByteSize.parse(text, field: "memory") == bytes)
    }

    @Test(arguments: ["-1", "0", "1.5.G", "1.5G", "", "G", "12Q", "99999999999T", "0x10", "١٢"])
    func rejectsBadSizes(_ text: String) {
        #expect(throws: BerthError.self) { try ByteSize.parse(text, field: "memory") }
    }

    @Test func errorNamesTheField() {
        do {
            _ = try ByteSize.parse("1.5.G", field: "swap")
            Issue.record("accepted 1.5.G")
        } catch {
            #expect(error.field == "swap")
            #expect(error.message.hasPrefix("swap:"))
            #expect(error.code == .invalidArgument)
        }
    }

    @Test func formats() {
        #expect(ByteSize.format(2 << 30) == "2G")
        #expect(ByteSize.format(1536) == "1536")
        #expect(ByteSize.format(3 << 20) == "3M")
    }

    @Test func approximatesForPeople() {
        #expect(ByteSize.approximate(11_776 * 1024) == "11.5 MiB")
        #expect(ByteSize.approximate(512) == "512 B")
        #expect(ByteSize.approximate(Double(3 << 30)) == "3.0 GiB")
        #expect(ByteSize.approximate(1023.6) == "1024 B")
    }
}

@Suite struct LimitsTests {
    @Test func anUpdateChangesOnlyWhatItNames() throws {
        var base = Limits()
        base.memoryBytes = 512 << 20
        base.pids = 100
        var update = LimitsUpdate()
        update.memoryBytes = 1 << 30
        let merged = try base.merging(update, onlineCPUs: 4)
        #expect(merged.memoryBytes == 1 << 30 && merged.pids == 100 && merged.diskBytes == Limits.defaultDiskBytes)
    }

    /// vzctl's `--swap 0`: no swap, which only a limit on memory can mean.
    @Test func swapZeroMeansNoSwap() throws {
        var base = Limits()
        base.memoryBytes = 512 << 20
        base.swapBytes = 256 << 20
        var update = LimitsUpdate()
        update.swapBytes = 0
        #expect(try base.merging(update, onlineCPUs: 4).swapBytes == 0)
        let error = #expect(throws: BerthError.self) { try Limits().merging(update, onlineCPUs: 4) }
        #expect(error?.field == "swap")
    }

    static func update(_ change: (inout LimitsUpdate) -> Void) -> LimitsUpdate {
        var update = LimitsUpdate()
        change(&update)
        return update
    }

    @Test(arguments: [
        ("memory", update { $0.memoryBytes = 1 << 20 }),
        ("pids", update { $0.pids = 7 }),
        ("cpu-units", update { $0.cpuUnits = 7 }),
        ("cpu-limit", update { $0.cpuLimitPercent = 401 }),
        ("cpus", update { $0.cpus = "0-4" }),
        ("files", update { $0.files = 63 }),
        ("disk", update { $0.diskBytes = 1 << 20 }),
        ("disk-inodes", update { $0.diskInodes = 1 }),
        ("io-weight", update { $0.ioWeight = 1001 }),
        ("io-bps", update { $0.ioBytesPerSecond = 1 }),
        ("io-iops", update { $0.ioOperationsPerSecond = 1 }),
    ])
    func outOfBoundsValuesNameTheirFlag(_ field: String, _ update: LimitsUpdate) {
        let error = #expect(throws: BerthError.self) { try Limits().merging(update, onlineCPUs: 4) }
        #expect(error?.field == field)
        #expect(error?.message.hasPrefix("\(field): ") == true)
    }

    /// Without the node's CPU count (the controller before placement) CPU values are kept as
    /// given; with it a count becomes the list of the first CPUs.
    @Test func cpuSelections() throws {
        #expect(try CPUSelection.checked("2", onlineCPUs: 4) == "0-1")
        #expect(try CPUSelection.checked("1", onlineCPUs: 4) == "0")
        #expect(try CPUSelection.checked("0-1,3", onlineCPUs: 4) == "0-1,3")
        #expect(try CPUSelection.checked("8", onlineCPUs: nil) == "8")
        for bad in ["0", "5", "0-4", "3-1", "a", "1,,2", "-1"] {
            #expect(throws: BerthError.self) { try CPUSelection.checked(bad, onlineCPUs: 4) }
        }
        #expect(CPUSelection.count("0") == 1)
        #expect(CPUSelection.count("0-1,3") == 3)
        #expect(CPUSelection.count("2-5,7,9-10") == 7)
        #expect(CPUSelection.count("3") == 3)
        #expect(CPUSelection.count("0,0") == 1 && CPUSelection.count("0-3,2") == 4)
    }

    /// One rule for the scheduler's ledger and the agent's `node show`: a cap counts as itself,
    /// a pin as its CPUs, an uncapped unpinned VPS as none; memory with swap; the disk.
    @Test func whatAVPSCommits() {
        var limits = Limits()
        #expect(limits.commitment == Commitment(cpuPercent: 0, memoryBytes: 0, diskBytes: 2 << 30))
        limits.cpus = "0-1"
        #expect(limits.commitment.cpuPercent == 200)
        limits.cpuLimitPercent = 50
        limits.memoryBytes = 512 << 20
        limits.swapBytes = 128 << 20
        limits.diskBytes = 10 << 30
        #expect(limits.commitment == Commitment(cpuPercent: 50, memoryBytes: 640 << 20, diskBytes: 10 << 30))
        #expect(limits.commitment + limits.commitment == Commitment(cpuPercent: 100, memoryBytes: 1280 << 20, diskBytes: 20 << 30))
    }
}
