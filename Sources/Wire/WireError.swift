/// An error that crosses the wire: a stable code (Docs/errors.md), a message for humans, the
/// input field at fault, and for kernel failures the stage and errno.
public struct WireError: Error, CustomStringConvertible, Sendable, Equatable {
    public struct Code: RawRepresentable, Hashable, Sendable, CustomStringConvertible {
        public var rawValue: String
        public init(rawValue: String) { self.rawValue = rawValue }
        public init(_ raw: String) { self.rawValue = raw }
        public var description: String { rawValue }

        public static let invalidArgument = Code("invalid-argument")
        public static let notFound = Code("not-found")
        public static let alreadyExists = Code("already-exists")
        public static let conflict = Code("conflict")
        public static let permissionDenied = Code("permission-denied")
        public static let unauthenticated = Code("unauthenticated")
        public static let noCapacity = Code("no-capacity")
        public static let unavailable = Code("unavailable")
        public static let deadlineExceeded = Code("deadline-exceeded")
        public static let cancelled = Code("cancelled")
        public static let kernel = Code("kernel")
        public static let internalError = Code("internal")
        public static let corruptState = Code("corrupt-state")
        public static let malformedFrame = Code("wire.malformed-frame")
        public static let frameTooLarge = Code("wire.frame-too-large")
        public static let incompatibleVersion = Code("wire.incompatible-version")
        public static let protocolViolation = Code("wire.protocol-violation")
        public static let tooManyStreams = Code("wire.too-many-streams")
    }

    public var code: Code
    public var message: String
    public var field: String
    public var stage: String
    public var errno: Int32

    public init(_ code: Code, _ message: String, field: String = "", stage: String = "", errno: Int32 = 0) {
        self.code = code
        self.message = message
        self.field = field
        self.stage = stage
        self.errno = errno
    }

    public var description: String { message }

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
        case .alreadyExists, .conflict, .noCapacity: return 4
        case .unavailable, .incompatibleVersion, .permissionDenied, .unauthenticated: return 5
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
