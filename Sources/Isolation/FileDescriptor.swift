import CIsolation

#if canImport(Glibc)
    import Glibc
#endif

/// A file descriptor this code owns: closed exactly once, when its owner is done with it (the end
/// of its scope, an early `close()`), on every path, thrown errors included. `release()` hands it
/// to code that closes it itself. Not copyable, so no two owners can close the same number.
public struct FileDescriptor: ~Copyable {
    public let raw: Int32

    /// Takes ownership of `raw` (-1: nothing to own, as a failed `open` returns).
    public init(_ raw: Int32) { self.raw = raw }

    public var isValid: Bool { raw >= 0 }

    deinit { if raw >= 0 { _ = Glibc.close(raw) } }

    /// Closes it now.
    public consuming func close() {}

    /// Gives it up without closing it: the caller now owns the number.
    public consuming func release() -> Int32 {
        let raw = self.raw
        discard self
        return raw
    }
}

/// A close-on-exec pipe: what is written to `write` is read from `read`. Each end is owned; one
/// handed to a child is closed here as soon as the child has it.
// Frozen so that a caller in another module may hand one end on and keep the other (partial
// consumption of a non-copyable value across modules).
@frozen public struct PipeEnds: ~Copyable {
    public var read: FileDescriptor
    public var write: FileDescriptor

    public init() throws(IsolationError) {
        var ends: [Int32] = [-1, -1]
        guard berth_pipe_cloexec(&ends) == 0 else { throw IsolationError.sys("pipe") }
        read = FileDescriptor(ends[0])
        write = FileDescriptor(ends[1])
    }
}
