import CIsolation

#if canImport(Glibc)
    import Glibc
#endif

/// Writes /etc/hostname, /etc/hosts, /etc/machine-id and /etc/resolv.conf into a VPS root. The root belongs to
/// the VPS's owner, who may have planted symlinks, FIFOs or devices there, so: /etc is resolved
/// with RESOLVE_IN_ROOT from the root's fd, existing files are only read when they are regular
/// files (opened O_NOFOLLOW|O_NONBLOCK), and new content goes to a fresh O_EXCL temp file that is
/// renamed over the old name — rename replaces a symlink, it never follows it.
public enum GuestFiles {
    static let marker = "# managed by berth"

    public static func write(_ spec: GuestSpec, rootFD: Int32) throws(IsolationError) {
        let etc = berth_open_in_root(rootFD, "/etc", O_RDONLY | O_DIRECTORY | O_CLOEXEC, 0)
        if etc < 0 {
            if errno == ENOENT { return }  // a root without /etc has nothing to configure
            throw IsolationError.sys("open /etc in the VPS")
        }
        defer { close(etc) }
        try update(etc, "hostname") { _ in spec.hostname + "\n" }
        try update(etc, "hosts") { hosts(existing: $0, spec: spec) }
        // Each VPS its own identity: templates ship none, and an empty one would make systemd
        // treat every boot as the first (presets re-applied, first-boot prompts).
        try update(etc, "machine-id") { isMachineID($0) ? $0! : newMachineID() + "\n" }
        if !spec.nameservers.isEmpty || !spec.searchDomains.isEmpty {
            try update(etc, "resolv.conf") { _ in resolvConf(spec) }
        }
    }

    /// 32 lowercase hex digits and a newline, as machine-id(5) says.
    public static func isMachineID(_ text: String?) -> Bool {
        guard let text, text.utf8.count == 33, text.hasSuffix("\n") else { return false }
        return text.utf8.dropLast().allSatisfy { (48...57).contains($0) || (97...102).contains($0) }
    }

    public static func newMachineID() -> String {
        var generator = SystemRandomNumberGenerator()
        return (0..<2).map { _ in
            let hex = String(generator.next() as UInt64, radix: 16)
            return String(repeating: "0", count: 16 - hex.count) + hex
        }.joined()
    }

    /// Keeps the operator's lines, replaces the ones Berth wrote before.
    public static func hosts(existing: String?, spec: GuestSpec) -> String {
        var lines = (existing ?? "").split(separator: "\n", omittingEmptySubsequences: false).map(String.init)
            .filter { !$0.hasSuffix(marker) }
        while lines.last == "" { lines.removeLast() }
        if !lines.contains(where: { $0.split(whereSeparator: { $0 == " " || $0 == "\t" }).first == "127.0.0.1" }) {
            lines.insert("127.0.0.1\tlocalhost", at: 0)
        }
        if !lines.contains(where: { $0.split(whereSeparator: { $0 == " " || $0 == "\t" }).first == "::1" }) {
            lines.insert("::1\tlocalhost ip6-localhost ip6-loopback", at: 1)
        }
        let short = spec.hostname.split(separator: ".").first.map(String.init) ?? spec.hostname
        let names = short == spec.hostname ? spec.hostname : "\(spec.hostname) \(short)"
        let addresses = spec.link?.addresses.map(\.address) ?? []
        if addresses.isEmpty {
            lines.append("127.0.1.1\t\(names)\t\(marker)")
        } else {
            for address in addresses { lines.append("\(address)\t\(names)\t\(marker)") }
        }
        return lines.joined(separator: "\n") + "\n"
    }

    public static func resolvConf(_ spec: GuestSpec) -> String {
        var text = "\(marker): berth set NAME --nameserver/--searchdomain\n"
        if !spec.searchDomains.isEmpty { text += "search \(spec.searchDomains.joined(separator: " "))\n" }
        for server in spec.nameservers { text += "nameserver \(server)\n" }
        return text
    }

    /// Rewrites `name` only when its content changes: most starts then write nothing.
    static func update(_ dir: Int32, _ name: String, _ content: (String?) -> String) throws(IsolationError) {
        let existing = readRegular(dir, name)
        let wanted = content(existing)
        if existing == wanted { return }
        try replace(dir, name, wanted)
    }

    static func readRegular(_ dir: Int32, _ name: String) -> String? {
        let fd = openat(dir, name, O_RDONLY | O_NOFOLLOW | O_NONBLOCK | O_CLOEXEC)
        if fd < 0 { return nil }
        defer { close(fd) }
        var info = stat()
        guard fstat(fd, &info) == 0, info.st_mode & S_IFMT == S_IFREG, info.st_size <= 1 << 20 else { return nil }
        return FileIO.readAll(fd: fd).map { String(decoding: $0, as: UTF8.self) }
    }

    static func replace(_ dir: Int32, _ name: String, _ content: String) throws(IsolationError) {
        let temp = ".\(name).berth-new"
        unlinkat(dir, temp, 0)
        let fd = openat(dir, temp, O_WRONLY | O_CREAT | O_EXCL | O_NOFOLLOW | O_CLOEXEC, 0o644)
        if fd < 0 { throw IsolationError.sys("create /etc/\(temp) in the VPS") }
        do {
            try FileIO.writeAll(fd: fd, Array(content.utf8), stage: "write /etc/\(name) in the VPS")
            try check("chmod /etc/\(name)") { fchmod(fd, 0o644) }
        } catch {
            close(fd)
            unlinkat(dir, temp, 0)
            throw error
        }
        close(fd)
        if renameat(dir, temp, dir, name) != 0 {
            let err = errno
            unlinkat(dir, temp, 0)
            throw IsolationError.sys("replace /etc/\(name) in the VPS", errno: err)
        }
    }
}
