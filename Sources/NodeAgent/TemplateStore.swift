import BerthCore
import Foundation
import Isolation
import Wire

/// Template metadata, `templates/NAME/template.json`; the tree itself is `templates/NAME/rootfs`.
public struct TemplateInfo: Codable, Equatable, Sendable {
    public var name: String
    public var source: String
    public var createdAt: Date
    /// Signal that asks the template's init for a clean poweroff.
    public var stopSignal: Int32
    public var sizeBytes: UInt64
    /// Units the template masks because they cannot work in a VPS, each with the reason.
    public var maskedUnits: [String: String]?
    /// The tree's digest (`TemplateStore.treeDigest`): the same template on two nodes has the
    /// same one. Nil in the metadata of a template installed before digests were kept.
    public var digest: String?
}

extension TemplateInfo {
    /// The template's `template.json`, as it is written on install and when a digest is added.
    func metadata() throws -> Data {
        try JSONEncoder.berth.encode(self)
    }
}

/// Template caches under the data directory: built locally (busybox) or imported tarballs.
public final class TemplateStore: @unchecked Sendable {
    public let root: String
    /// Downloaded trees shared across data directories (see `AgentPaths.templateCache`).
    public let cacheDir: String
    let lock = NSLock()
    /// Template → the layered VPSs whose shared lower layer it is (guarded by `lock`).
    private var layerUsers: [String: Set<String>] = [:]

    public init(dataDir: String, cacheDir: String = "/var/cache/berth/templates") {
        root = dataDir + "/templates"
        self.cacheDir = cacheDir
    }

    public func rootfs(_ name: String) -> String { root + "/" + name + "/rootfs" }
    func metadataPath(_ name: String) -> String { root + "/" + name + "/template.json" }

    public func info(_ name: String) -> TemplateInfo? {
        guard let data = FileManager.default.contents(atPath: metadataPath(name)) else { return nil }
        let decoder = JSONDecoder()
        decoder.dateDecodingStrategy = .iso8601
        return try? decoder.decode(TemplateInfo.self, from: data)
    }

    public func list() -> [TemplateInfo] {
        FileIO.listDirectory(root).compactMap(info)
    }

    public func remove(_ name: String) throws {
        _ = try Name.validate(name, field: "template")
        guard info(name) != nil else { throw AgentError(.notFound, "template \(name) does not exist", field: "template") }
        lock.lock()
        defer { lock.unlock() }
        try requireUnshared(name)
        try FileManager.default.removeItem(atPath: root + "/" + name)
    }

    /// A layered VPS reads `template`'s tree for as long as it exists: from now on the tree is
    /// neither replaced nor removed (checked under the lock where that happens).
    public func share(_ template: String, with vps: String) {
        lock.lock()
        defer { lock.unlock() }
        layerUsers[template, default: []].insert(vps)
    }

    public func unshare(_ template: String, with vps: String) {
        lock.lock()
        defer { lock.unlock() }
        layerUsers[template]?.remove(vps)
        if layerUsers[template]?.isEmpty == true { layerUsers[template] = nil }
    }

    /// Refuses early a build or import that `install` would refuse at its end.
    public func requireReplaceable(_ name: String) throws {
        lock.lock()
        defer { lock.unlock() }
        try requireUnshared(name)
    }

    /// Call with `lock` held.
    private func requireUnshared(_ name: String) throws {
        guard let users = layerUsers[name]?.sorted(), !users.isEmpty else { return }
        throw AgentError(
            .conflict,
            "template \(name) is the shared layer of layered VPS \(users.joined(separator: ", ")): destroy \(users.count == 1 ? "it" : "them") first",
            field: "template")
    }

    /// busybox-static's single binary plus one symlink per applet, a SysV-style inittab and rcS.
    public func buildBusybox(name: String = "busybox", busybox: String = "/bin/busybox") async throws -> TemplateInfo {
        _ = try Name.validate(name, field: "template")
        try requireReplaceable(name)
        guard let binary = FileManager.default.contents(atPath: busybox) else {
            throw AgentError(.notFound, "\(busybox) not found: install Debian's busybox-static package", field: "template")
        }
        // A dynamically linked busybox would need the host's libc inside every VPS.
        if binary.prefix(65536).range(of: Data("ld-linux".utf8)) != nil {
            throw AgentError(.invalidArgument, "\(busybox) is dynamically linked: install Debian's busybox-static package", field: "template")
        }
        let staging = root + "/.build-\(name)-\(getpid())"
        let fm = FileManager.default
        try? fm.removeItem(atPath: staging)
        defer { try? fm.removeItem(atPath: staging) }
        let tree = staging + "/rootfs"
        for dir in ["bin", "sbin", "usr/bin", "usr/sbin", "etc/init.d", "proc", "sys", "dev", "tmp", "root", "run", "var/log", "home", "mnt"] {
            try fm.createDirectory(atPath: tree + "/" + dir, withIntermediateDirectories: true)
        }
        chmod(tree + "/tmp", 0o1777)
        chmod(tree + "/root", 0o700)
        try binary.write(to: URL(fileURLWithPath: tree + "/bin/busybox"))
        chmod(tree + "/bin/busybox", 0o755)
        let listing = try await Subprocess.run([busybox, "--list-full"])
        guard listing.status == 0 else { throw AgentError(.internalError, "\(busybox) --list-full failed: \(listing.stderr)") }
        for applet in listing.stdout.split(separator: "\n") where applet != "bin/busybox" && !applet.contains("..") {
            try? fm.createSymbolicLink(atPath: tree + "/" + applet, withDestinationPath: "/bin/busybox")
        }
        let files: [(String, String, Int)] = [
            ("etc/inittab", Self.busyboxInittab, 0o644),
            ("etc/init.d/rcS", Self.busyboxRcS, 0o755),
            ("etc/init.d/rcK", Self.busyboxRcK, 0o755),
            ("etc/passwd", "root:x:0:0:root:/root:/bin/sh\nnobody:x:65534:65534:nobody:/nonexistent:/bin/false\n", 0o644),
            ("etc/group", "root:x:0:\ntty:x:5:\nnogroup:x:65534:\n", 0o644),
            ("etc/shadow", "root:*:19000:0:99999:7:::\nnobody:*:19000:0:99999:7:::\n", 0o600),
            ("etc/hosts", "127.0.0.1\tlocalhost\n::1\tlocalhost ip6-localhost ip6-loopback\n", 0o644),
            ("etc/profile", "export PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin\nexport PS1='\\u@\\h:\\w\\$ '\n", 0o644),
            ("etc/os-release", "NAME=\"Berth busybox\"\nID=busybox\nPRETTY_NAME=\"Berth busybox template\"\n", 0o644),
            ("usr/bin/free", Self.busyboxFree, 0o755),
            ("usr/bin/uptime", Self.busyboxUptime, 0o755),
        ]
        for (path, _, _) in files { unlink(tree + "/" + path) }  // the applet symlinks free and uptime replace
        for (path, text, mode) in files {
            try Data(text.utf8).write(to: URL(fileURLWithPath: tree + "/" + path))
            chmod(tree + "/" + path, mode_t(mode))
        }
        // `busybox` without arguments prints its version banner first.
        let banner = (try? await Subprocess.run([busybox]))?.stdout ?? ""
        let version = banner.split(separator: "\n").first.map(String.init) ?? "unknown version"
        let info = TemplateInfo(
            name: name, source: "busybox-static: \(version)", createdAt: Self.now(),
            stopSignal: SIGUSR2, sizeBytes: Self.treeSize(tree))
        try install(staging: staging, info: info)
        return info
    }

    /// Imports a rootfs tarball (.tar, .tar.gz/.tgz, .tar.xz) after validating every entry.
    public func importTarball(name: String, path: String, source: String? = nil, progress: (String) -> Void = { _ in }) async throws -> TemplateInfo {
        _ = try Name.validate(name, field: "template")
        try requireReplaceable(name)
        guard FileManager.default.fileExists(atPath: path) else {
            throw AgentError(.notFound, "tarball \(path) does not exist on this node", field: "tarball")
        }
        let staging = root + "/.import-\(name)-\(getpid())"
        let fm = FileManager.default
        try? fm.removeItem(atPath: staging)
        try fm.createDirectory(atPath: staging + "/rootfs", withIntermediateDirectories: true)
        defer { try? fm.removeItem(atPath: staging) }
        var tarPath = path
        let lower = path.lowercased()
        if let tool = lower.hasSuffix(".gz") || lower.hasSuffix(".tgz") ? "gzip" : lower.hasSuffix(".xz") ? "xz" : nil {
            progress("decompressing")
            tarPath = staging + "/image.tar"
            let out = try await Subprocess.run(["/bin/sh", "-c", "exec \(tool) -dc -- \"$1\" > \"$2\"", "sh", path, tarPath])
            guard out.status == 0 else { throw AgentError.invalid("tarball", "cannot decompress \(path): \(out.stderr.trimmed)") }
        }
        progress("validating")
        guard let bytes = FileManager.default.contents(atPath: tarPath) else { throw AgentError.invalid("tarball", "cannot read \(tarPath)") }
        _ = try TarValidator.validate(Array(bytes))
        progress("unpacking")
        let untar = try await Subprocess.run(["/bin/tar", "-x", "--numeric-owner", "-p", "-f", tarPath, "-C", staging + "/rootfs"])
        guard untar.status == 0 else { throw AgentError.invalid("tarball", "unpacking failed: \(untar.stderr.trimmed)") }
        if tarPath != path { try? fm.removeItem(atPath: tarPath) }
        let tree = staging + "/rootfs"
        let initTarget = (try? fm.destinationOfSymbolicLink(atPath: tree + "/sbin/init")) ?? ""
        guard fm.fileExists(atPath: tree + "/sbin/init") || !initTarget.isEmpty else {
            throw AgentError.invalid("tarball", "the archive has no /sbin/init: a VPS needs an init to boot")
        }
        let stopSignal: Int32 = initTarget.contains("systemd") ? Self.systemdHaltSignal : initTarget.contains("busybox") ? SIGUSR2 : SIGPWR
        let info = TemplateInfo(name: name, source: source ?? "import: \(path)", createdAt: Self.now(), stopSignal: stopSignal, sizeBytes: Self.treeSize(tree))
        try install(staging: staging, info: info)
        return info
    }

    /// Moves a finished staging tree into place; the previous template (if any) goes only then.
    func install(staging: String, info: TemplateInfo) throws {
        var info = info
        info.digest = try Self.treeDigest(staging + "/rootfs")
        try info.metadata().write(to: URL(fileURLWithPath: staging + "/template.json"))
        lock.lock()
        defer { lock.unlock() }
        try requireUnshared(info.name)
        let target = root + "/" + info.name
        let fm = FileManager.default
        if fm.fileExists(atPath: target) {
            let old = root + "/.old-\(info.name)-\(getpid())"
            try fm.moveItem(atPath: target, toPath: old)
            try fm.moveItem(atPath: staging, toPath: target)
            try? fm.removeItem(atPath: old)
        } else {
            try fm.moveItem(atPath: staging, toPath: target)
        }
    }

    static func now() -> Date { Date(timeIntervalSince1970: Double(Int(Date().timeIntervalSince1970))) }

    static func treeSize(_ path: String) -> UInt64 {
        var total: UInt64 = 0
        guard let walker = FileManager.default.enumerator(atPath: path) else { return 0 }
        while let entry = walker.nextObject() as? String {
            var st = stat()
            if lstat(path + "/" + entry, &st) == 0 { total += UInt64(st.st_blocks) * 512 }
        }
        return total
    }

    static let busyboxInittab = """
        # Berth busybox template. Fields: id:runlevels:action:process (busybox ignores the first two).
        ::sysinit:/etc/init.d/rcS
        # The console shell waits for Enter, so output produced before attaching stays readable.
        ::askfirst:-/bin/sh
        ::ctrlaltdel:/sbin/reboot
        ::shutdown:/etc/init.d/rcK

        """

    static let busyboxRcS = """
        #!/bin/sh
        # System start-up: run by init (sysinit) on every boot of the VPS.
        export PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin
        rm -rf /run/* /tmp/* 2>/dev/null
        ip link set lo up 2>/dev/null
        for script in /etc/init.d/S[0-9][0-9]*; do
            [ -x "$script" ] && "$script" start
        done
        echo "$(date +%s) $(hostname)" > /run/boot-complete
        echo "rcS: $(hostname) is up"

        """

    /// busybox's free and uptime take their figures from sysinfo(2), which always shows the host;
    /// these read /proc/meminfo, /proc/uptime and /proc/loadavg instead, which lxcfs renders from
    /// the VPS's own cgroup (the same columns as busybox's applets).
    static let busyboxFree = #"""
        #!/bin/sh
        # free [-b|-k|-m|-g]: memory from /proc/meminfo (the VPS's own under lxcfs), not sysinfo(2).
        case "${1:--k}" in
            -b) unit=1 ;; -k) unit=1024 ;; -m) unit=1048576 ;; -g) unit=1073741824 ;;
            *) echo "Usage: free [-bkmg]" >&2; exit 1 ;;
        esac
        exec awk -v unit="$unit" '
            { kb[$1] = $2 }
            function show(v) { return sprintf("%d", (v * 1024 + unit / 2) / unit) }
            END {
                total = kb["MemTotal:"]; free = kb["MemFree:"]
                cache = kb["Buffers:"] + kb["Cached:"] + kb["SReclaimable:"]
                used = total - free - cache; if (used < 0) used = total - free
                printf "%19s%12s%12s%12s%12s%12s\n", "total", "used", "free", "shared", "buff/cache", "available"
                printf "Mem:%15s%12s%12s%12s%12s%12s\n", show(total), show(used), show(free), show(kb["Shmem:"]), show(cache), show(kb["MemAvailable:"])
                st = kb["SwapTotal:"]; sf = kb["SwapFree:"]
                printf "Swap:%14s%12s%12s\n", show(st), show(st - sf), show(sf)
            }' /proc/meminfo

        """#

    static let busyboxUptime = #"""
        #!/bin/sh
        # uptime: from /proc/uptime and /proc/loadavg (the VPS's own under lxcfs), not sysinfo(2).
        read up _ </proc/uptime
        read l1 l5 l15 _ </proc/loadavg
        up=${up%.*}
        days=$((up / 86400)); hours=$((up % 86400 / 3600)); mins=$((up % 3600 / 60))
        since=""
        [ "$days" -gt 0 ] && since="$days day$([ "$days" -gt 1 ] && echo s), "
        if [ "$hours" -gt 0 ]; then since="$since$(printf '%d:%02d' "$hours" "$mins")"; else since="$since$mins min"; fi
        echo " $(date +%H:%M:%S) up $since,  load average: $l1, $l5, $l15"

        """#

    static let busyboxRcK = """
        #!/bin/sh
        # System shutdown: stop services in reverse order.
        for script in $(ls -r /etc/init.d/S[0-9][0-9]* 2>/dev/null); do
            [ -x "$script" ] && "$script" stop
        done
        sync

        """
}

extension String {
    var trimmed: String { trimmingCharacters(in: .whitespacesAndNewlines) }
}
