/// Berth's error above the kernel layer: a stable code (Docs/errors.md), a message for people
/// that names what was wrong, the input field at fault, and for kernel failures the stage and
/// errno. The wire carries it as it is (Wire's `WireError` is this type); the agent wraps it
/// (`AgentError`); the kernel layer has its own (`IsolationError`) that the agent converts.
public struct BerthError: Error, CustomStringConvertible, Sendable, Equatable {
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
        public static let quotaExceeded = Code("quota-exceeded")
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
        public static let tooManyConnections = Code("wire.too-many-connections")
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
}
