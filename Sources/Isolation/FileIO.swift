import CIsolation

#if canImport(Glibc)
    import Glibc
#endif

/// Small Foundation-free file helpers for cgroupfs, procfs and run files.
public enum FileIO {
    /// Whole file as a String, or nil when it cannot be opened. `control`: a cgroup control file,
    /// whose text the kernel makes whole on the first read: a first read that does not fill the
    /// buffer had all of it, and the read that would only find EOF is skipped (a quarter of the
    /// system calls of a sweep over hundreds of them).
    public static func read(_ path: String, control: Bool = false) -> String? {
        let fd = open(path, O_RDONLY | O_CLOEXEC)
        if fd < 0 { return nil }
        defer { close(fd) }
        return readAll(fd: fd, shortReadIsEnd: control).map { String(decoding: $0, as: UTF8.self) }
    }

    /// Everything until EOF. `shortReadIsEnd`: a first read that leaves the small buffer part
    /// empty is all there is (never for pipes or sockets, whose writer may not be done).
    public static func readAll(fd: Int32, shortReadIsEnd: Bool = false) -> [UInt8]? {
        // Most callers read small control files (cgroupfs, procfs): a small first read, on the
        // stack, keeps a sweep over hundreds of them cheap; larger files continue in 8 KiB steps.
        var out: [UInt8] = []
        let small = withUnsafeTemporaryAllocation(of: UInt8.self, capacity: 512) { buffer -> Int in
            while true {
                let n = Glibc.read(fd, buffer.baseAddress, buffer.count)
                if n < 0 && errno == EINTR { continue }
                if n > 0 { out.append(contentsOf: buffer[0..<n]) }
                return n
            }
        }
        if small < 0 { return nil }
        if small == 0 || (shortReadIsEnd && small < 512) { return out }
        var buffer = [UInt8](repeating: 0, count: 8192)
        while true {
            let n = buffer.withUnsafeMutableBytes { Glibc.read(fd, $0.baseAddress, $0.count) }
            if n == 0 { return out }
            if n < 0 {
                if errno == EINTR { continue }
                return nil
            }
            out.append(contentsOf: buffer[0..<n])
        }
    }

    /// "MAJ:MIN" of a device node, as cgroup I/O control files name devices.
    public static func deviceNumber(_ path: String) throws(IsolationError) -> String {
        var info = stat()
        try check("stat \(path)") { stat(path, &info) }
        return "\(berth_major(info.st_rdev)):\(berth_minor(info.st_rdev))"
    }

    /// Writes `text` to an existing file in one write(2) call, as cgroupfs requires.
    public static func write(_ path: String, _ text: String) throws(IsolationError) {
        // O_TRUNC is a no-op on cgroupfs/procfs and keeps plain files (test trees) exact.
        let fd = open(path, O_WRONLY | O_TRUNC | O_CLOEXEC)
        if fd < 0 { throw IsolationError.sys("open \(path)") }
        defer { close(fd) }
        try writeAll(fd: fd, Array(text.utf8), stage: "write \(text) to \(path)")
    }

    /// Creates or replaces a file atomically: temp file, fsync, rename, fsync of the directory.
    /// `durable: false` skips the fsyncs, for runtime state under /run that a reboot clears anyway.
    public static func writeAtomically(_ path: String, _ bytes: [UInt8], mode: mode_t = 0o600, durable: Bool = true) throws(IsolationError) {
        let temp = path + ".tmp"
        let fd = open(temp, O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC | O_NOFOLLOW, mode)
        if fd < 0 { throw IsolationError.sys("create \(temp)") }
        do {
            try writeAll(fd: fd, bytes, stage: "write \(temp)")
            if durable { try check("fsync \(temp)") { fsync(fd) } }
        } catch {
            close(fd)
            unlink(temp)
            throw error
        }
        close(fd)
        try check("rename \(temp)") { rename(temp, path) }
        if durable { syncDirectory(directory(of: path)) }
    }

    /// Makes a rename or creation in `dir` durable.
    public static func syncDirectory(_ dir: String) {
        let dirfd = open(dir, O_RDONLY | O_DIRECTORY | O_CLOEXEC)
        if dirfd >= 0 {
            fsync(dirfd)
            close(dirfd)
        }
    }

    public static func writeAll(fd: Int32, _ bytes: [UInt8], stage: @autoclosure () -> String) throws(IsolationError) {
        var offset = 0
        while offset < bytes.count {
            let n = bytes.withUnsafeBytes { Glibc.write(fd, $0.baseAddress! + offset, $0.count - offset) }
            if n < 0 {
                if errno == EINTR { continue }
                throw IsolationError.sys(stage())
            }
            offset += n
        }
    }

    public static func exists(_ path: String) -> Bool {
        var st = stat()
        return lstat(path, &st) == 0
    }

    public static func isDirectory(_ path: String) -> Bool {
        var st = stat()
        return lstat(path, &st) == 0 && (st.st_mode & S_IFMT) == S_IFDIR
    }

    /// mkdir -p; existing directories are fine.
    public static func makeDirectories(_ path: String, mode: mode_t = 0o755) throws(IsolationError) {
        var current = path.hasPrefix("/") ? "" : "."
        for component in path.split(separator: "/") {
            current += "/" + component
            if mkdir(current, mode) != 0 && errno != EEXIST {
                throw IsolationError.sys("mkdir \(current)")
            }
        }
    }

    /// `path` is the root of a mounted filesystem (its device differs from its parent's). lstat:
    /// a symlink planted at `path` is not followed.
    public static func isMountPoint(_ path: String) -> Bool {
        var own = stat(), parent = stat()
        guard lstat(path, &own) == 0, lstat(path + "/..", &parent) == 0 else { return false }
        return own.st_dev != parent.st_dev
    }

    public static func directory(of path: String) -> String {
        guard let slash = path.lastIndex(of: "/") else { return "." }
        return slash == path.startIndex ? "/" : String(path[..<slash])
    }

    public static func baseName(_ path: String) -> String {
        guard let slash = path.lastIndex(of: "/") else { return path }
        return String(path[path.index(after: slash)...])
    }

    public static func listDirectory(_ path: String) -> [String] {
        guard let dir = opendir(path) else { return [] }
        defer { closedir(dir) }
        var names: [String] = []
        while let entry = readdir(dir) {
            let name = withUnsafePointer(to: entry.pointee.d_name) {
                $0.withMemoryRebound(to: CChar.self, capacity: 256) { String(cString: $0) }
            }
            if name != "." && name != ".." { names.append(name) }
        }
        return names.sorted()
    }
}
