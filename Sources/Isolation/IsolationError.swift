#if canImport(Glibc)
    import Glibc
#elseif canImport(Musl)
    import Musl
#endif

/// The error of the kernel-mechanism layer: a stable code, what went wrong, and for syscall
/// failures the stage that failed and its errno.
public struct IsolationError: Error, CustomStringConvertible, Sendable, Equatable {
    public enum Code: String, Sendable {
        case syscall = "isolation.syscall"
        case invalidSpec = "isolation.invalid-spec"
        case cgroup = "isolation.cgroup"
        case unsupported = "isolation.unsupported"
        case notFound = "isolation.not-found"
        case childFailed = "isolation.child-failed"
    }

    public var code: Code
    public var message: String
    public var stage: String
    public var errno: Int32

    public init(_ code: Code, _ message: String, stage: String = "", errno: Int32 = 0) {
        self.code = code
        self.message = message
        self.stage = stage
        self.errno = errno
    }

    /// A failed syscall: `stage` names the step ("mount /proc"), errno is read now.
    public static func sys(_ stage: String, errno err: Int32 = Glibc.errno) -> IsolationError {
        IsolationError(.syscall, "\(stage): \(errnoName(err))", stage: stage, errno: err)
    }

    public var description: String { message }
}

/// "EPERM (Operation not permitted)": the symbolic name first, for grep-able logs.
public func errnoName(_ err: Int32) -> String {
    let text = String(cString: strerror(err))
    let names: [Int32: String] = [
        EPERM: "EPERM", ENOENT: "ENOENT", ESRCH: "ESRCH", EINTR: "EINTR", EIO: "EIO", EBADF: "EBADF",
        ECHILD: "ECHILD", EAGAIN: "EAGAIN", ENOMEM: "ENOMEM", EACCES: "EACCES", EBUSY: "EBUSY",
        EEXIST: "EEXIST", ENOTDIR: "ENOTDIR", EISDIR: "EISDIR", EINVAL: "EINVAL", ENOSPC: "ENOSPC",
        EROFS: "EROFS", ENOSYS: "ENOSYS", ELOOP: "ELOOP", EXDEV: "EXDEV", ENOTEMPTY: "ENOTEMPTY",
        ENAMETOOLONG: "ENAMETOOLONG", EMFILE: "EMFILE", EDQUOT: "EDQUOT", ENETDOWN: "ENETDOWN", ENODEV: "ENODEV",
        EADDRNOTAVAIL: "EADDRNOTAVAIL", ETIMEDOUT: "ETIMEDOUT", EOPNOTSUPP: "EOPNOTSUPP", ENXIO: "ENXIO",
    ]
    return "\(names[err] ?? "errno \(err)") (\(text))"
}

/// Runs a syscall-style call, retrying on EINTR, throwing `.sys(stage)` on -1.
@discardableResult
public func check<T: BinaryInteger>(_ stage: @autoclosure () -> String, _ body: () -> T) throws(IsolationError) -> T {
    while true {
        let result = body()
        if result != -1 { return result }
        let err = errno
        if err == EINTR { continue }
        throw IsolationError.sys(stage(), errno: err)
    }
}
