import CIsolation

#if canImport(Glibc)
    import Glibc
#endif

/// A copy of a loop VPS's disk image that a snapshot or a rollback keeps: a clone of the
/// image's extents where the data filesystem can (btrfs, XFS: instant, shares the blocks until
/// either side writes), else a copy of its data extents with the holes kept.
public enum DiskImageCopy {
    public enum Method: String, Sendable { case reflink, copy }

    /// Whether `directory`'s filesystem clones files: a trial FICLONE of an empty file.
    public static func canReflink(in directory: String) -> Bool {
        let probe = directory + "/.berth-reflink-probe"
        let source = FileDescriptor(open(probe, O_RDWR | O_CREAT | O_TRUNC | O_CLOEXEC, 0o600))
        let target = FileDescriptor(open(probe + "2", O_RDWR | O_CREAT | O_TRUNC | O_CLOEXEC, 0o600))
        defer {
            unlink(probe)
            unlink(probe + "2")
        }
        guard source.isValid, target.isValid else { return false }
        return berth_reflink(target.raw, source.raw) == 0
    }

    /// Copies `source` into `destination`, which must not exist; a failed copy leaves none.
    public static func copy(_ source: String, to destination: String) throws(IsolationError) -> Method {
        let input = FileDescriptor(open(source, O_RDONLY | O_CLOEXEC | O_NOFOLLOW))
        guard input.isValid else { throw IsolationError.sys("open \(source)") }
        var info = stat()
        guard fstat(input.raw, &info) == 0 else { throw IsolationError.sys("stat \(source)") }
        let output = FileDescriptor(open(destination, O_WRONLY | O_CREAT | O_EXCL | O_CLOEXEC | O_NOFOLLOW, 0o600))
        guard output.isValid else { throw IsolationError.sys("create \(destination)") }
        if berth_reflink(output.raw, input.raw) == 0 { return .reflink }
        var copied: UInt64 = 0
        guard berth_sparse_copy(input.raw, output.raw, UInt64(info.st_size), &copied) == 0, fsync(output.raw) == 0 else {
            let error = IsolationError.sys("copy \(source) to \(destination)")
            unlink(destination)
            throw error
        }
        return .copy
    }
}

/// A filesystem held still: FIFREEZE writes its dirty data out and blocks new writes until the
/// thaw, so a copy of the device (a loop image) taken meanwhile is consistent.
public struct FrozenFilesystem: ~Copyable {
    private let directory: FileDescriptor

    /// Freezes the filesystem mounted at `path`.
    public init(_ path: String) throws(IsolationError) {
        let fd = FileDescriptor(open(path, O_RDONLY | O_DIRECTORY | O_CLOEXEC))
        guard fd.isValid else { throw IsolationError.sys("open \(path)") }
        guard berth_fs_freeze(fd.raw) == 0 else { throw IsolationError.sys("FIFREEZE \(path)") }
        directory = fd
    }

    /// Lets writes go on again.
    public consuming func thaw() throws(IsolationError) {
        guard berth_fs_thaw(directory.raw) == 0 else { throw IsolationError.sys("FITHAW") }
    }

    deinit { _ = berth_fs_thaw(directory.raw) }
}
