// libFuzzer target for every decoder that reads bytes from another process: Berth frames,
// the protobuf messages they carry, the spawn spec, the run-state file, the guest spec,
// netlink replies from the kernel, and the cluster's text formats (roles, join tokens,
// HOST:PORT, IP pools, the controller's config file).
import BerthCore
import CFuzzDriver
import Foundation
import Isolation
import NIOCore
import Placement
import Wire

@_cdecl("LLVMFuzzerTestOneInput")
public func fuzzOne(_ data: UnsafePointer<UInt8>?, _ size: Int) -> CInt {
    guard let data, size > 0 else { return 0 }
    let bytes = Array(UnsafeBufferPointer(start: data, count: size))
    // The first byte picks the decoder so one corpus covers all of them.
    let body = Array(bytes.dropFirst())
    switch bytes[0] % 10 {
    case 0:
        var buffer = ByteBuffer(bytes: body)
        while let frame = try? FrameParser.parse(&buffer, maxPayload: 1 << 16) {
            var out = ByteBuffer()
            FrameParser.write(frame, into: &out)
            var again = out
            let reparsed = try? FrameParser.parse(&again, maxPayload: 1 << 16)
            precondition(reparsed == frame, "frame did not round-trip")
        }
    case 1:
        if let request = try? Berth_V1_Request(serializedBytes: body) {
            let encoded: [UInt8] = (try? request.serializedBytes()) ?? []
            precondition((try? Berth_V1_Request(serializedBytes: encoded)) == request, "request did not round-trip")
        }
    case 2:
        _ = try? Berth_V1_Response(serializedBytes: body)
        _ = try? Berth_V1_ErrorReply(serializedBytes: body)
        _ = try? Berth_V1_Hello(serializedBytes: body)
    case 3:
        if let spec = try? SpawnSpec.decode(String(decoding: body, as: UTF8.self)) {
            precondition((try? SpawnSpec.decode(spec.encode())) == spec, "spawn spec did not round-trip")
        }
    case 5:
        if let spec = try? GuestSpec.decode(String(decoding: body, as: UTF8.self)) {
            precondition((try? GuestSpec.decode(spec.encode())) == spec, "guest spec did not round-trip")
        }
    case 6:
        _ = NetlinkReply.parse(body)
    case 7:
        let text = String(decoding: body, as: UTF8.self)
        if let token = try? JoinTokenText(parsing: text) {
            precondition((try? JoinTokenText(parsing: token.text)) == token, "join token did not round-trip")
        }
        if let role = try? Role(parsing: text) {
            precondition((try? Role(parsing: role.description)) == role, "role did not round-trip")
        }
        _ = try? HostPort(parsing: text, field: "f")
    case 8:
        let parts = String(decoding: body, as: UTF8.self).split(separator: "\n", maxSplits: 2, omittingEmptySubsequences: false).map(String.init)
        if let pool = try? IPPoolMath.validatePool(name: "p", cidr: parts[0], gateway: parts.count > 1 ? parts[1] : "") {
            precondition((try? IPPoolMath.validatePool(name: "p", cidr: pool.cidr, gateway: pool.gateway)) == pool, "pool did not round-trip")
            _ = try? IPPoolMath.free(cidr: pool.cidr, excluding: [], count: 3)
            _ = IPPoolMath.size(cidr: pool.cidr)
        }
        _ = IPPoolMath.canonical(parts[0])
    case 9:
        _ = try? ClusterConfigFile.parse(Data(body))
    default:
        _ = RunState.decode(String(decoding: body, as: UTF8.self))
        _ = HostProcess.parseStartTime(stat: String(decoding: body, as: UTF8.self))
    }
    return 0
}

var argc = CommandLine.argc
var argv: UnsafeMutablePointer<UnsafeMutablePointer<CChar>?>? = CommandLine.unsafeArgv
exit(LLVMFuzzerRunDriver(&argc, &argv) { data, size in fuzzOne(data, size) })
