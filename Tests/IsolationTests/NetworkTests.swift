import BerthCore
import Foundation
import Testing

@testable import Isolation

@Suite struct MACAddressTests {
    @Test func formatsAndParses() {
        #expect(MACAddress.format([0x02, 0xb7, 0, 0x0a, 0xff, 1]) == "02:b7:00:0a:ff:01")
        #expect(MACAddress.parse("02:b7:00:0a:ff:01") == [0x02, 0xb7, 0, 0x0a, 0xff, 1])
        #expect(MACAddress.parse("02:b7:00:0a:ff") == nil && MACAddress.parse("02:b7:00:0a:ff:0g") == nil)
    }
}

/// rtnetlink and nfnetlink requests byte for byte (no root, no kernel).
@Suite struct NetlinkMessageTests {
    @Test func addressAdd() throws {
        let message = RouteMessages.address(true, index: 5, address: try IPAddress("198.18.0.10"), prefixLength: 32)
        #expect(
            message.encoded(sequence: 7) == [
                40, 0, 0, 0, 20, 0, 0x05, 0x05, 7, 0, 0, 0, 0, 0, 0, 0,  // nlmsghdr: RTM_NEWADDR, REQUEST|ACK|REPLACE|CREATE
                2, 32, 0, 0, 5, 0, 0, 0,  // ifaddrmsg: AF_INET /32 on ifindex 5
                8, 0, 2, 0, 198, 18, 0, 10,  // IFA_LOCAL
                8, 0, 1, 0, 198, 18, 0, 10,  // IFA_ADDRESS
            ])
        let v6 = RouteMessages.address(true, index: 2, address: try IPAddress("fd00:b17::10"), prefixLength: 128)
        let bytes = v6.encoded(sequence: 1)
        #expect(bytes.count == 16 + 8 + 20 + 8)
        #expect(Array(bytes[16..<24]) == [10, 128, 0, 0, 2, 0, 0, 0])
        #expect(Array(bytes[44..<52]) == [8, 0, 8, 0, 2, 0, 0, 0])  // IFA_FLAGS = IFA_F_NODAD
        let delete = RouteMessages.address(false, index: 2, address: try IPAddress("fd00:b17::10"), prefixLength: 128).encoded(sequence: 1)
        #expect(delete[4] == 21 && delete[6] == 0x05 && delete[7] == 0 && delete.count == 44)
    }

    @Test func defaultRouteOnlink() throws {
        let message = RouteMessages.route(
            true, destination: CIDR(address: try IPAddress("0.0.0.0"), prefixLength: 0), index: 2,
            gateway: try IPAddress("169.254.0.1"), onlink: true)
        #expect(
            message.encoded(sequence: 3) == [
                44, 0, 0, 0, 24, 0, 0x05, 0x05, 3, 0, 0, 0, 0, 0, 0, 0,  // RTM_NEWROUTE
                2, 0, 0, 0, 254, 183, 0, 1, 4, 0, 0, 0,  // rtmsg: main table, proto 183, universe, unicast, RTNH_F_ONLINK
                8, 0, 5, 0, 169, 254, 0, 1,  // RTA_GATEWAY
                8, 0, 4, 0, 2, 0, 0, 0,  // RTA_OIF
            ])
        let host = RouteMessages.route(true, destination: CIDR(address: try IPAddress("198.18.0.10"), prefixLength: 32), index: 9).encoded(sequence: 1)
        #expect(Array(host[16..<28]) == [2, 32, 0, 0, 254, 183, 253, 1, 0, 0, 0, 0])  // link scope, no flags
        #expect(Array(host[28..<36]) == [8, 0, 1, 0, 198, 18, 0, 10])  // RTA_DST
    }

    @Test func neighbourEntries() throws {
        let proxy = RouteMessages.proxyNeighbour(true, index: 3, address: try IPAddress("198.18.0.10"))
        #expect(
            proxy.encoded(sequence: 9) == [
                36, 0, 0, 0, 28, 0, 0x05, 0x05, 9, 0, 0, 0, 0, 0, 0, 0,  // RTM_NEWNEIGH
                2, 0, 0, 0, 3, 0, 0, 0, 0x80, 0, 0x08, 0,  // ndmsg: NUD_PERMANENT, NTF_PROXY
                8, 0, 1, 0, 198, 18, 0, 10,  // NDA_DST
            ])
        let permanent = RouteMessages.neighbour(true, index: 4, address: try IPAddress("169.254.0.1"), mac: [6, 0xb7, 1, 2, 3, 4]).encoded(sequence: 1)
        #expect(Array(permanent[16..<28]) == [2, 0, 0, 0, 4, 0, 0, 0, 0x80, 0, 0, 0])
        #expect(Array(permanent[36..<48]) == [10, 0, 2, 0, 6, 0xb7, 1, 2, 3, 4, 0, 0])  // NDA_LLADDR, padded
    }

    @Test func vethPairWithPeerInAnotherNamespace() {
        let message = RouteMessages.createVeth(
            host: "bv-a", hostMAC: [6, 0xb7, 0, 0, 0, 1], peer: "eth0",
            peerMAC: [2, 0xb7, 0, 0, 0, 1], peerNetnsFD: 7)
        let ifinfo: [UInt8] = [0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0]
        var expected: [UInt8] = [128, 0, 0, 0, 16, 0, 0x05, 0x06, 1, 0, 0, 0, 0, 0, 0, 0]  // RTM_NEWLINK, REQUEST|ACK|EXCL|CREATE
        expected += ifinfo
        expected += [9, 0, 3, 0] + Array("bv-a".utf8) + [0, 0, 0, 0]  // IFLA_IFNAME
        expected += [10, 0, 1, 0, 6, 0xb7, 0, 0, 0, 1, 0, 0]  // IFLA_ADDRESS
        expected += [72, 0, 18, 0x80]  // IFLA_LINKINFO (nested)
        expected += [9, 0, 1, 0] + Array("veth".utf8) + [0, 0, 0, 0]  //   IFLA_INFO_KIND
        expected += [56, 0, 2, 0x80]  //   IFLA_INFO_DATA
        expected += [52, 0, 1, 0x80] + ifinfo  //     VETH_INFO_PEER + ifinfomsg
        expected += [9, 0, 3, 0] + Array("eth0".utf8) + [0, 0, 0, 0]  //       IFLA_IFNAME
        expected += [10, 0, 1, 0, 2, 0xb7, 0, 0, 0, 1, 0, 0]  //       IFLA_ADDRESS
        expected += [8, 0, 28, 0, 7, 0, 0, 0]  //       IFLA_NET_NS_FD
        #expect(message.encoded(sequence: 1) == expected)
    }

    @Test func nftablesSetElementBatch() throws {
        // Keys are `ifname . ether_addr . ipv4_addr` concatenations, laid out as
        // `nft --debug=netlink add element inet t s { "bv12" . 02:b7:00:00:00:01 . 198.18.0.2 }` prints them:
        // 16 bytes of name, the MAC padded to 8, the address.
        let elements = NFTables.elements(interface: "bv12", mac: [2, 0xb7, 0, 0, 0, 1], addresses: [try IPAddress("198.18.0.2")], bridged: false)
        let prefix = Array("bv12".utf8) + [UInt8](repeating: 0, count: 12) + [2, 0xb7, 0, 0, 0, 1, 0, 0]
        #expect(
            elements == [
                .init(family: .inet, set: "src4", key: prefix + [198, 18, 0, 2]),
                .init(family: .arp, set: "src4", key: prefix + [198, 18, 0, 2]),
            ])
        let batch = NFTables.batch(true, [elements[0]])
        #expect(batch.count == 3)
        // BATCH_BEGIN, res_id NFTABLES (big endian)
        #expect(batch[0].encoded(sequence: 1) == [20, 0, 0, 0, 0x10, 0, 1, 0, 1, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 10])
        #expect(batch[2].type == 0x11)
        var body: [UInt8] = [1, 0, 0, 0]  // nfgenmsg: NFPROTO_INET
        body += [10, 0, 1, 0] + Array("berth".utf8) + [0, 0, 0]  // NFTA_SET_ELEM_LIST_TABLE "berth\0" + pad
        body += [9, 0, 2, 0] + Array("src4".utf8) + [0, 0, 0, 0]  // NFTA_SET_ELEM_LIST_SET
        body += [44, 0, 3, 0x80, 40, 0, 1, 0x80, 36, 0, 1, 0x80, 32, 0, 1, 0] + prefix + [198, 18, 0, 2]
        #expect(batch[1].type == 0x0a0c && batch[1].flags == 0x405)  // NFT_MSG_NEWSETELEM, REQUEST|ACK|CREATE
        #expect(batch[1].body == body)
        #expect(NFTables.batch(false, [elements[0]])[1].type == 0x0a0e)
        // Bridged VPSs are filtered in the bridge table only; IPv6 keys carry 16 address bytes.
        let bridged = NFTables.elements(interface: "bv-c", mac: [2, 0xb7, 0, 0, 0, 2], addresses: [try IPAddress("fd00:b17::5")], bridged: true)
        #expect(bridged.map(\.family) == [.bridge] && bridged.map(\.set) == ["src6"] && bridged[0].key.count == 40)
    }

    @Test func rulesetCarriesRunningElements() throws {
        let elements = NFTables.elements(
            interface: "bv-web", mac: [2, 0xb7, 0, 0, 0, 1], addresses: [try IPAddress("198.18.0.2"), try IPAddress("fd00:b17::2")], bridged: false)
        let text = NFTables.ruleset(elements: elements)
        #expect(text.contains("elements = { \"bv-web\" . 02:b7:00:00:00:01 . 198.18.0.2 }"))
        #expect(text.contains("elements = { \"bv-web\" . 02:b7:00:00:00:01 . fd00:b17::2 }"))
        #expect(text.contains("delete table inet berth") && text.contains("delete table arp berth") && text.contains("delete table bridge berth"))
        #expect(!NFTables.ruleset(elements: []).contains("elements"))
    }

    @Test func parsesErrorsWithExtendedAck() {
        // NLMSG_ERROR, flags NLM_F_CAPPED|NLM_F_ACK_TLVS, error -ENETDOWN, echoed header with seq 4,
        // then NLMSGERR_ATTR_MSG "Nexthop device is not up".
        let text = Array("Nexthop device is not up".utf8) + [0]
        var reply: [UInt8] = []
        let attrLength = 4 + text.count
        let length = 16 + 4 + 16 + ((attrLength + 3) & ~3)
        reply += [UInt8(length), 0, 0, 0, 2, 0, 0x00, 0x03, 4, 0, 0, 0, 0, 0, 0, 0]
        reply += [0x9c, 0xff, 0xff, 0xff]  // -100
        reply += [44, 0, 0, 0, 24, 0, 5, 5, 4, 0, 0, 0, 0, 0, 0, 0]
        reply += [UInt8(attrLength), 0, 1, 0] + text
        while reply.count % 4 != 0 { reply.append(0) }
        let parsed = NetlinkReply.parse(reply)
        #expect(parsed == [NetlinkReply(sequence: 4, errno: 100, message: "Nexthop device is not up")])
        let ack: [UInt8] = [36, 0, 0, 0, 2, 0, 0, 1, 5, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 20, 0, 0, 0, 20, 0, 5, 5, 5, 0, 0, 0, 0, 0, 0, 0]
        #expect(NetlinkReply.parse(ack) == [NetlinkReply(sequence: 5, errno: 0, message: nil)])
        #expect(NetlinkReply.parse([1, 2, 3]).isEmpty)
    }
}

@Suite struct GuestSpecTests {
    @Test func roundTripsAndRejectsJunk() throws {
        let link = GuestSpec.Link(
            bridge: "br0", hostInterface: "bv-web", mac: [2, 0xb7, 1, 2, 3, 4],
            addresses: [CIDR(address: try IPAddress("198.18.1.5"), prefixLength: 24)],
            gateway4: try IPAddress("198.18.1.1"), uplink: "eth0")
        let spec = GuestSpec(hostname: "web.example", link: link, nameservers: [try IPAddress("198.18.0.53")], searchDomains: ["example"])
        #expect(try GuestSpec.decode(spec.encode()) == spec)
        #expect(link.hostMAC == [0xfe, 0xb7, 1, 2, 3, 4])
        #expect(link.allowedSources.map(\.description) == ["198.18.1.5", "fe80::b7:1ff:fe02:304"])
        for bad in ["hostname=x\nmac=zz", "hostname=x\nwhat=1", "mac=02:b7:00:00:00:01\nhostname=x", "", "hostname=x\naddress=1.2.3.4"] {
            #expect(throws: IsolationError.self, "\(bad)") { try GuestSpec.decode(bad) }
        }
    }

    @Test func hostsKeepsOperatorLinesAndReplacesOurs() throws {
        var spec = GuestSpec(hostname: "web.example")
        spec.link = GuestSpec.Link(
            bridge: nil, hostInterface: "bv-web", mac: [2, 0, 0, 0, 0, 1],
            addresses: [CIDR(address: try IPAddress("198.18.0.5"), prefixLength: 32)])
        let existing = "127.0.0.1 localhost\n10.1.1.1 db # mine\n198.18.0.4\told\t# managed by berth\n"
        let text = GuestFiles.hosts(existing: existing, spec: spec)
        #expect(text == "127.0.0.1 localhost\n::1\tlocalhost ip6-localhost ip6-loopback\n10.1.1.1 db # mine\n198.18.0.5\tweb.example web\t# managed by berth\n")
        #expect(GuestFiles.hosts(existing: nil, spec: GuestSpec(hostname: "a")).contains("127.0.1.1\ta\t# managed by berth"))
    }

    @Test func writesThroughRootFDWithoutFollowingSymlinks() throws {
        let root = FileManager.default.temporaryDirectory.appendingPathComponent("berth-guest-\(getpid())").path
        let outside = root + "-outside"
        defer { try? FileManager.default.removeItem(atPath: root); try? FileManager.default.removeItem(atPath: outside) }
        try FileManager.default.createDirectory(atPath: root + "/etc", withIntermediateDirectories: true)
        try "secret\n".write(toFile: outside, atomically: true, encoding: .utf8)
        try FileManager.default.createSymbolicLink(atPath: root + "/etc/resolv.conf", withDestinationPath: outside)
        #expect(mkfifo(root + "/etc/hosts", 0o644) == 0)
        let fd = open(root, O_PATH | O_DIRECTORY)
        defer { close(fd) }
        try GuestFiles.write(GuestSpec(hostname: "h", nameservers: [try IPAddress("198.18.0.53")]), rootFD: fd)
        #expect(try String(contentsOfFile: outside, encoding: .utf8) == "secret\n")
        #expect(try String(contentsOfFile: root + "/etc/resolv.conf", encoding: .utf8).contains("nameserver 198.18.0.53"))
        #expect(try String(contentsOfFile: root + "/etc/hostname", encoding: .utf8) == "h\n")
        let attributes = try FileManager.default.attributesOfItem(atPath: root + "/etc/hosts")
        #expect(attributes[.type] as? FileAttributeType == .typeRegular)
    }

    /// A template ships an empty machine-id; the first start writes one, later starts keep it.
    @Test func machineIDIsWrittenOnceAndKept() throws {
        let root = FileManager.default.temporaryDirectory.appendingPathComponent("berth-mid-\(getpid())").path
        defer { try? FileManager.default.removeItem(atPath: root) }
        try FileManager.default.createDirectory(atPath: root + "/etc", withIntermediateDirectories: true)
        try "".write(toFile: root + "/etc/machine-id", atomically: true, encoding: .utf8)
        let fd = open(root, O_PATH | O_DIRECTORY)
        defer { close(fd) }
        try GuestFiles.write(GuestSpec(hostname: "h"), rootFD: fd)
        let first = try String(contentsOfFile: root + "/etc/machine-id", encoding: .utf8)
        #expect(GuestFiles.isMachineID(first))
        try GuestFiles.write(GuestSpec(hostname: "h2"), rootFD: fd)
        #expect(try String(contentsOfFile: root + "/etc/machine-id", encoding: .utf8) == first)
        #expect(GuestFiles.newMachineID() != GuestFiles.newMachineID())
        for bad in ["", "uninitialized\n", String(repeating: "A", count: 32) + "\n", String(repeating: "a", count: 32)] {
            #expect(!GuestFiles.isMachineID(bad))
        }
    }
}
