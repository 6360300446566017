// libFuzzer target for every decoder that reads bytes from another process: Berth frames,
// the protobuf messages they carry, the spawn spec, the run-state file, the guest spec and
// netlink replies from the kernel.
import CFuzzDriver
import Foundation
import Isolation
import NIOCore
import Wire

@_cdecl("LLVMFuzzerTestOneInput")
public func fuzzOne(_ data: UnsafePointer<UInt8>?, _ size: Int) -> CInt {
    guard let data, size > 0 else { return 0 }
    let bytes = Array(UnsafeBufferPointer(start: data, count: size))
    // The first byte picks the decoder so one corpus covers all of them.
    let body = Array(bytes.dropFirst())
    switch bytes[0] % 7 {
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
    default:
        _ = RunState.decode(String(decoding: body, as: UTF8.self))
        _ = HostProcess.parseStartTime(stat: String(decoding: body, as: UTF8.self))
    }
    return 0
}

var argc = CommandLine.argc
var argv: UnsafeMutablePointer<UnsafeMutablePointer<CChar>?>? = CommandLine.unsafeArgv
exit(LLVMFuzzerRunDriver(&argc, &argv) { data, size in fuzzOne(data, size) })
