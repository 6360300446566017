import Foundation
import Testing
import Wire

@testable import Placement

@Suite struct IPPoolMathTests {
    @Test func validatesAndCanonicalisesPools() throws {
        let pool = try IPPoolMath.validatePool(name: "web", cidr: "fd00:b17:0::/64", gateway: "fd00:b17::0001")
        #expect(pool.cidr == "fd00:b17::/64")
        #expect(pool.gateway == "fd00:b17::1")
        for (cidr, gateway) in [
            ("198.18.0.1/24", ""), ("010.0.0.0/8", ""), ("198.18.0.0/33", ""), ("198.18.0.0/24", "198.18.1.1"),
            ("198.18.0.0/31", ""), ("198.18.0.0", ""), ("198.18.0.0/024", ""), ("198.18.0.0/24", "fd00::1"),
        ] {
            #expect(throws: WireError.self) { try IPPoolMath.validatePool(name: "p", cidr: cidr, gateway: gateway) }
        }
        #expect(throws: WireError.self) { try IPPoolMath.validatePool(name: "Bad Name", cidr: "198.18.0.0/24", gateway: "") }
    }

    @Test func handsOutTheLowestFreeAddressesSkippingNetworkAndBroadcast() throws {
        #expect(try IPPoolMath.free(cidr: "198.18.0.0/30", excluding: [], count: 5) == ["198.18.0.1", "198.18.0.2"])
        #expect(try IPPoolMath.free(cidr: "198.18.0.0/29", excluding: ["198.18.0.1", "198.18.0.3"], count: 2) == ["198.18.0.2", "198.18.0.4"])
        #expect(try IPPoolMath.free(cidr: "fd00:b17::/64", excluding: ["fd00:b17::1"], count: 2) == ["fd00:b17::2", "fd00:b17::3"])
        #expect(IPPoolMath.size(cidr: "198.18.0.0/24") == 254)
        #expect(IPPoolMath.overlap("198.18.0.0/24", "198.18.0.128/25"))
        #expect(!IPPoolMath.overlap("198.18.0.0/24", "198.18.1.0/24"))
        #expect(!IPPoolMath.overlap("198.18.0.0/24", "fd00:b17::/64"))
    }
}

@Suite struct ClusterConfigFileTests {
    @Test func parsesEveryKeyAndRejectsUnknownOnes() throws {
        let settings = try ClusterConfigFile.parse(Data(#"{"strategy": "binpack", "cpuOvercommit": 2, "heartbeatIntervalMs": 500, "downAfterMs": 2000}"#.utf8))
        #expect(settings.policy.strategy == .binpack)
        #expect(settings.policy.cpuOvercommit == 2)
        #expect(settings.heartbeatInterval == .milliseconds(500))
        #expect(settings.downAfter == .milliseconds(2000))
        for bad in [
            #"{"stratgy": "spread"}"#, #"{"strategy": "random"}"#, #"{"cpuOvercommit": 0}"#,
            #"{"heartbeatIntervalMs": 1000, "downAfterMs": 1500}"#, "[]", "{",
        ] {
            #expect(throws: WireError.self) { try ClusterConfigFile.parse(Data(bad.utf8)) }
        }
    }
}
