#if canImport(Glibc)
    import Glibc
#endif

/// One netlink request: the message type and flags, and its body (the family header followed by
/// attributes). Sequence numbers are assigned when a batch is sent.
public struct NetlinkMessage: Equatable, Sendable {
    public var type: UInt16
    public var flags: UInt16
    public var body: [UInt8]

    public init(type: UInt16, flags: UInt16, body: [UInt8]) {
        self.type = type
        self.flags = flags
        self.body = body
    }

    public var wantsAck: Bool { flags & Netlink.ack != 0 }

    /// nlmsghdr { u32 len, u16 type, u16 flags, u32 seq, u32 pid = 0 } + body, padded to 4.
    public func encoded(sequence: UInt32) -> [UInt8] {
        var out: [UInt8] = []
        out.appendLittleEndian(UInt32(16 + body.count))
        out.appendLittleEndian(type)
        out.appendLittleEndian(flags)
        out.appendLittleEndian(sequence)
        out.appendLittleEndian(UInt32(0))
        out += body
        out.padTo4()
        return out
    }
}

/// Netlink attribute encoding (struct nlattr / rtattr: u16 length, u16 type, payload padded to 4).
public struct NetlinkAttributes: Sendable {
    public private(set) var bytes: [UInt8] = []

    public init() {}

    public mutating func put(_ type: UInt16, _ payload: [UInt8]) {
        bytes.appendLittleEndian(UInt16(4 + payload.count))
        bytes.appendLittleEndian(type)
        bytes += payload
        bytes.padTo4()
    }

    public mutating func put(_ type: UInt16, u8 value: UInt8) { put(type, [value]) }

    public mutating func put(_ type: UInt16, u32 value: UInt32) {
        var payload: [UInt8] = []
        payload.appendLittleEndian(value)
        put(type, payload)
    }

    /// A NUL-terminated string, as the kernel's NLA_STRING/NLA_NUL_STRING policies expect.
    public mutating func put(_ type: UInt16, string: String) { put(type, Array(string.utf8) + [0]) }

    /// A nested attribute; NLA_F_NESTED marks it for strict kernel parsers.
    public mutating func nest(_ type: UInt16, _ build: (inout NetlinkAttributes) -> Void) {
        var inner = NetlinkAttributes()
        build(&inner)
        put(type | Netlink.nestedFlag, inner.bytes)
    }

    /// Raw bytes inside a nest (a family header placed before attributes, as veth's peer needs).
    public mutating func raw(_ payload: [UInt8]) { bytes += payload }
}

public enum Netlink {
    public static let request: UInt16 = 0x1
    public static let ack: UInt16 = 0x4
    public static let replace: UInt16 = 0x100
    public static let exclusive: UInt16 = 0x200
    public static let create: UInt16 = 0x400
    public static let nestedFlag: UInt16 = 0x8000

    static let messageError: UInt16 = 2
    static let messageDone: UInt16 = 3
    static let routeProtocol: Int32 = 0
    static let netfilterProtocol: Int32 = 12
}

/// A netlink socket in the network namespace of the thread that opened it. Requests go out in
/// one sendmsg; every request that asked for an ack is answered before `perform` returns.
public final class NetlinkSocket {
    let fd: Int32
    var sequence: UInt32 = 1

    public init(protocol proto: Int32, stage: String = "open a netlink socket") throws(IsolationError) {
        fd = try check(stage) { socket(AF_NETLINK, Int32(SOCK_RAW.rawValue) | Int32(SOCK_CLOEXEC.rawValue), proto) }
        var one: Int32 = 1
        // Extended acks carry the kernel's reason as text ("Nexthop device is not up").
        _ = setsockopt(fd, 270 /* SOL_NETLINK */, 11 /* NETLINK_EXT_ACK */, &one, socklen_t(MemoryLayout<Int32>.size))
        // No bind: the kernel binds the socket to a unique port on the first send.
    }

    public static func route() throws(IsolationError) -> NetlinkSocket { try NetlinkSocket(protocol: Netlink.routeProtocol, stage: "open an rtnetlink socket") }
    public static func netfilter() throws(IsolationError) -> NetlinkSocket {
        try NetlinkSocket(protocol: Netlink.netfilterProtocol, stage: "open an nfnetlink socket")
    }

    deinit { close(fd) }

    /// Sends `messages` and waits for their acks. The first failure is thrown unless its errno is
    /// in `ignoring` (teardown ignores ENOENT/ESRCH/ENODEV: already gone is the goal).
    public func perform(_ messages: [NetlinkMessage], stage: String, ignoring: Set<Int32> = []) throws(IsolationError) {
        var wire: [UInt8] = []
        var pending: [UInt32: Int] = [:]
        for (index, message) in messages.enumerated() {
            let seq = sequence
            sequence &+= 1
            wire += message.encoded(sequence: seq)
            if message.wantsAck { pending[seq] = index }
        }
        var sent = 0
        while sent < wire.count {
            let n = wire.withUnsafeBytes { send(fd, $0.baseAddress! + sent, $0.count - sent, 0) }
            if n < 0 {
                if errno == EINTR { continue }
                throw IsolationError.sys("\(stage): send", errno: errno)
            }
            sent += n
        }
        var failure: IsolationError?
        var buffer = [UInt8](repeating: 0, count: 65536)
        while !pending.isEmpty {
            var poller = pollfd(fd: fd, events: Int16(POLLIN), revents: 0)
            // After a failure the rest is drained without waiting: an aborted nf_tables batch may
            // not answer its remaining messages.
            let ready = poll(&poller, 1, failure == nil ? 5000 : 0)
            if ready == 0 {
                if failure != nil { break }
                throw IsolationError(.syscall, "\(stage): the kernel did not answer within 5 s", stage: stage, errno: ETIMEDOUT)
            }
            if ready < 0 { if errno == EINTR { continue }; throw IsolationError.sys("\(stage): poll", errno: errno) }
            let n = buffer.withUnsafeMutableBytes { recv(fd, $0.baseAddress, $0.count, 0) }
            if n < 0 { if errno == EINTR { continue }; throw IsolationError.sys("\(stage): recv", errno: errno) }
            for reply in NetlinkReply.parse(Array(buffer[0..<n])) {
                guard let index = pending.removeValue(forKey: reply.sequence) else { continue }
                guard reply.errno != 0, failure == nil, !ignoring.contains(reply.errno) else { continue }
                var text = "\(stage): \(errnoName(reply.errno))"
                if let detail = reply.message { text += ": \(detail)" }
                if messages.count > 1 { text += " (request \(index + 1) of \(messages.count))" }
                failure = IsolationError(.syscall, text, stage: stage, errno: reply.errno)
            }
        }
        if let failure { throw failure }
    }
}

/// An NLMSG_ERROR answer: errno 0 is an ack.
public struct NetlinkReply: Equatable, Sendable {
    public var sequence: UInt32
    public var errno: Int32
    public var message: String?

    public static func parse(_ bytes: [UInt8]) -> [NetlinkReply] {
        var out: [NetlinkReply] = []
        var offset = 0
        while offset + 16 <= bytes.count {
            let length = Int(bytes.readLittleEndian(UInt32.self, at: offset))
            guard length >= 16, offset + length <= bytes.count else { break }
            let type = bytes.readLittleEndian(UInt16.self, at: offset + 4)
            let flags = bytes.readLittleEndian(UInt16.self, at: offset + 6)
            if type == Netlink.messageError && length >= 20 {
                let code = Int32(bitPattern: bytes.readLittleEndian(UInt32.self, at: offset + 16))
                // The error payload echoes the failed request's header; its seq is ours.
                let seq = length >= 36 ? bytes.readLittleEndian(UInt32.self, at: offset + 28) : bytes.readLittleEndian(UInt32.self, at: offset + 8)
                var reply = NetlinkReply(sequence: seq, errno: -code, message: nil)
                if flags & 0x200 /* NLM_F_ACK_TLVS */ != 0 {
                    // With NLM_F_CAPPED (0x100) only the header of the request is echoed.
                    let echoed = flags & 0x100 != 0 ? 16 : Int(bytes.readLittleEndian(UInt32.self, at: offset + 20))
                    var attr = offset + 20 + ((echoed + 3) & ~3)
                    while attr + 4 <= offset + length {
                        let attrLength = Int(bytes.readLittleEndian(UInt16.self, at: attr))
                        let attrType = bytes.readLittleEndian(UInt16.self, at: attr + 2)
                        guard attrLength >= 4, attr + attrLength <= offset + length else { break }
                        if attrType == 1 /* NLMSGERR_ATTR_MSG */ {
                            reply.message = String(decoding: bytes[(attr + 4)..<(attr + attrLength)].prefix { $0 != 0 }, as: UTF8.self)
                        }
                        attr += (attrLength + 3) & ~3
                    }
                }
                out.append(reply)
            }
            offset += (length + 3) & ~3
        }
        return out
    }
}

extension Array where Element == UInt8 {
    mutating func appendLittleEndian<T: FixedWidthInteger>(_ value: T) {
        Swift.withUnsafeBytes(of: value.littleEndian) { append(contentsOf: $0) }
    }

    mutating func appendBigEndian<T: FixedWidthInteger>(_ value: T) {
        Swift.withUnsafeBytes(of: value.bigEndian) { append(contentsOf: $0) }
    }

    mutating func padTo4() {
        while count % 4 != 0 { append(0) }
    }

    func readLittleEndian<T: FixedWidthInteger>(_: T.Type, at offset: Int) -> T {
        var value: T = 0
        for i in 0..<MemoryLayout<T>.size { value |= T(self[offset + i]) << (8 * i) }
        return value
    }
}
