import BerthCore

/// An error that crosses the wire is Berth's error as every layer above the kernel reports it;
/// the wire adds its protobuf form.
public typealias WireError = BerthError

extension BerthError {
    public var reply: Berth_V1_ErrorReply {
        var reply = Berth_V1_ErrorReply()
        reply.code = code.rawValue
        reply.message = message
        reply.field = field
        reply.stage = stage
        reply.errno = errno
        return reply
    }

    public init(reply: Berth_V1_ErrorReply) {
        self.init(Code(reply.code), reply.message, field: reply.field, stage: reply.stage, errno: reply.errno)
    }

    /// The documented process exit code for this error class (Docs/errors.md).
    public var exitCode: Int32 {
        switch code {
        case .invalidArgument: return 2
        case .notFound: return 3
        case .alreadyExists, .conflict, .noCapacity, .quotaExceeded: return 4
        case .unavailable, .incompatibleVersion, .permissionDenied, .unauthenticated, .tooManyConnections: return 5
        case .kernel: return 6
        case .deadlineExceeded: return 7
        case .corruptState: return 8
        default: return 1
        }
    }
}

/// Errors of other layers say how they look on the wire.
public protocol WireErrorConvertible: Error {
    var wireError: WireError { get }
}

extension WireError: WireErrorConvertible {
    public var wireError: WireError { self }
}
