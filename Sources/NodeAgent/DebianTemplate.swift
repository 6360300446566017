import BerthCore
import Foundation
import Isolation
import Synchronization

/// What `berth template build debian-12` builds: Debian's minbase plus what a VPS needs to
/// boot its own systemd and be managed like a server.
public struct DebianTemplateRequest: Sendable {
    public var name: String
    public var mirror: String
    /// Extra packages (`--include openssh-server`).
    public var include: [String]
    /// Download and bootstrap again even when a cached tree exists.
    public var rebuild: Bool

    public static let defaultMirror = "http://deb.debian.org/debian"
    public static let suite = "bookworm"
    /// systemd as init; the tools `ip a`, `ping`, `ps`, `nft`, `hostnamectl` need.
    public static let basePackages = ["systemd-sysv", "dbus", "iproute2", "iputils-ping", "procps", "nftables", "ifupdown"]

    public init(name: String = "debian-12", mirror: String = defaultMirror, include: [String] = [], rebuild: Bool = false) {
        self.name = name
        self.mirror = mirror
        self.include = include
        self.rebuild = rebuild
    }

    /// Checks every field before anything is downloaded.
    public func validated() throws -> DebianTemplateRequest {
        _ = try Name.validate(name, field: "name")
        guard let url = URL(string: mirror), ["http", "https"].contains(url.scheme ?? ""), url.host != nil,
            !mirror.contains(where: { $0 == " " || $0 == "\n" || $0 == "\t" })
        else {
            throw AgentError.invalid("mirror", "'\(mirror)' is not an http:// or https:// archive URL")
        }
        for package in include {
            // Debian policy §5.6.1: lowercase letters, digits, + - . ; starts alphanumeric.
            let bytes = Array(package.utf8)
            let alphanumeric = { (byte: UInt8) in (97...122).contains(byte) || (48...57).contains(byte) }
            guard (2...100).contains(bytes.count), alphanumeric(bytes[0]),
                bytes.allSatisfy({ alphanumeric($0) || $0 == UInt8(ascii: "+") || $0 == UInt8(ascii: "-") || $0 == UInt8(ascii: ".") })
            else {
                throw AgentError.invalid("include", "'\(package)' is not a Debian package name")
            }
        }
        var copy = self
        copy.include = Array(Set(include)).sorted()
        return copy
    }

    /// The cache file of the downloaded tree: the same suite and package set reuse it.
    var cacheFileName: String {
        let extra = include.filter { !Self.basePackages.contains($0) }
        return "debootstrap-\(Self.suite)-minbase" + (extra.isEmpty ? "" : "+" + extra.joined(separator: "+")) + ".tar"
    }
}

extension TemplateStore {
    /// Units masked in the Debian template, each with why it cannot run in a VPS. systemd skips
    /// most hardware units by their own conditions (read-only /sys, missing capabilities); these
    /// would otherwise fail, hang or prompt.
    public static let debianMaskedUnits: [String: String] = [
        "systemd-firstboot.service": "prompts on the console for locale and root password; Berth sets hostname and machine-id",
        "systemd-udevd.service": "udev manages host hardware; a VPS has a fixed /dev and a read-only /sys",
        "systemd-udevd-control.socket": "activates the masked systemd-udevd",
        "systemd-udevd-kernel.socket": "activates the masked systemd-udevd",
        "systemd-udev-trigger.service": "replays host hardware events; nothing in a VPS receives them",
        "systemd-udev-settle.service": "waits for udev, which does not run in a VPS",
        "ifupdown-pre.service": "waits for udev to settle network devices; Berth configures eth0 from the host",
        "e2scrub_all.timer": "checks LVM snapshots of host disks; the host checks a VPS's disk image",
        "e2scrub_reap.service": "cleans up e2scrub snapshots of host disks",
        "getty-static.service": "starts gettys on host virtual terminals; the VPS's login is its console",
    ]

    /// Builds (or refreshes) the Debian 12 template with debootstrap. The downloaded tree is kept
    /// in the cache directory, so a rebuild without `rebuild` costs an unpack, not a download.
    public func buildDebian(_ request: DebianTemplateRequest, progress: @escaping @Sendable (String) -> Void) async throws -> TemplateInfo {
        let request = try request.validated()
        try requireReplaceable(request.name)
        let fm = FileManager.default
        let staging = root + "/.build-\(request.name)-\(getpid())"
        try? fm.removeItem(atPath: staging)
        defer { try? fm.removeItem(atPath: staging) }
        let tree = staging + "/rootfs"
        try fm.createDirectory(atPath: tree, withIntermediateDirectories: true)
        try fm.createDirectory(atPath: cacheDir, withIntermediateDirectories: true)
        let cached = cacheDir + "/" + request.cacheFileName
        // GNU tar keeps file capabilities (ping's cap_net_raw) only with --xattrs.
        let tarFlags = ["--numeric-owner", "--xattrs", "--xattrs-include=*"]
        var source = "debootstrap \(DebianTemplateRequest.suite) minbase from \(request.mirror)"

        if fm.fileExists(atPath: cached) && !request.rebuild {
            progress("unpacking the cached tree \(cached) (--rebuild downloads it again)")
            let untar = try await Subprocess.run(["/bin/tar", "-x", "-p"] + tarFlags + ["-f", cached, "-C", tree])
            guard untar.status == 0 else {
                throw AgentError(.internalError, "unpacking \(cached) failed: \(untar.stderr.trimmed); remove it or build with --rebuild")
            }
            source += " (cached)"
        } else {
            guard fm.isExecutableFile(atPath: "/usr/sbin/debootstrap") else {
                throw AgentError(.notFound, "/usr/sbin/debootstrap not found: install Debian's debootstrap package", field: "template")
            }
            progress("debootstrap: \(DebianTemplateRequest.suite) minbase + \((DebianTemplateRequest.basePackages + request.include).joined(separator: ","))")
            let steps = Mutex(0)
            let packages = Array(Set(DebianTemplateRequest.basePackages + request.include)).sorted()
            let run = try await Subprocess.run(
                [
                    "/usr/sbin/debootstrap", "--variant=minbase", "--include=" + packages.joined(separator: ","),
                    DebianTemplateRequest.suite, tree, request.mirror,
                ],
                environment: ["PATH=/usr/sbin:/usr/bin:/sbin:/bin", "DEBIAN_FRONTEND=noninteractive", "LC_ALL=C"]
            ) { line in
                // "I: Retrieving libc6 2.36" — one progress step per package action.
                guard line.hasPrefix("I: ") || line.hasPrefix("E: ") || line.hasPrefix("W: ") else { return }
                let step = steps.withLock { count -> Int in
                    count += 1
                    return count
                }
                progress("debootstrap [\(step)] \(line.dropFirst(3))")
            }
            guard run.status == 0 else {
                let tail = (run.stderr + run.stdout).split(separator: "\n").suffix(5).joined(separator: "\n")
                throw AgentError(.internalError, "debootstrap failed (exit \(run.exitCode)); its last lines:\n\(tail)")
            }
            // Package downloads and indexes: 100+ MiB no VPS needs (apt fetches fresh ones).
            for dir in ["var/cache/apt/archives", "var/lib/apt/lists"] {
                for entry in FileIO.listDirectory(tree + "/" + dir) where entry != "partial" && entry != "lock" {
                    try? fm.removeItem(atPath: tree + "/" + dir + "/" + entry)
                }
            }
            progress("caching the tree in \(cached)")
            let temp = cached + ".tmp-\(getpid())"
            let tar = try await Subprocess.run(["/bin/tar", "-c"] + tarFlags + ["-f", temp, "-C", tree, "."])
            if tar.status == 0 {
                try? fm.removeItem(atPath: cached)
                try fm.moveItem(atPath: temp, toPath: cached)
            } else {
                try? fm.removeItem(atPath: temp)
                progress("warning: could not cache the tree: \(tar.stderr.trimmed)")
            }
        }

        progress("preparing the tree for VPSs")
        try Self.prepareDebianTree(tree)
        let info = TemplateInfo(
            name: request.name, source: source, createdAt: Self.now(), stopSignal: Self.systemdHaltSignal,
            sizeBytes: Self.treeSize(tree), maskedUnits: Self.debianMaskedUnits)
        try install(staging: staging, info: info)
        return info
    }

    /// SIGRTMIN+3: systemd's "halt" request (glibc's SIGRTMIN is 34); imports of a systemd
    /// rootfs get it too.
    static let systemdHaltSignal: Int32 = 37

    /// What turns a debootstrap tree into a VPS template. The tree was made by this agent, not
    /// by a tenant, so plain paths are safe here.
    static func prepareDebianTree(_ tree: String) throws {
        let fm = FileManager.default
        func write(_ path: String, _ text: String, mode: Int = 0o644) throws {
            let full = tree + "/" + path
            try? fm.removeItem(atPath: full)
            try Data(text.utf8).write(to: URL(fileURLWithPath: full))
            chmod(full, mode_t(mode))
        }
        // Empty: each VPS gets its own at its first start (GuestFiles).
        try write("etc/machine-id", "", mode: 0o444)
        // A copied D-Bus id would be shared by every VPS; Debian's symlink to /etc/machine-id stays.
        var dbusID = stat()
        if lstat(tree + "/var/lib/dbus/machine-id", &dbusID) == 0 && dbusID.st_mode & S_IFMT == S_IFREG {
            try fm.removeItem(atPath: tree + "/var/lib/dbus/machine-id")
        }
        try write("etc/hostname", "debian\n")
        try write("etc/fstab", "# Berth mounts this VPS's filesystems; nothing to mount here.\n")
        try write(
            "etc/network/interfaces",
            """
            # Berth configures eth0 (addresses and routes) from the host: berth set NAME --ip-add/--ip-del.
            auto lo
            iface lo inet loopback

            source /etc/network/interfaces.d/*

            """)
        let unitDir = tree + "/etc/systemd/system"
        try fm.createDirectory(atPath: unitDir, withIntermediateDirectories: true)
        for unit in debianMaskedUnits.keys.sorted() {
            try? fm.removeItem(atPath: unitDir + "/" + unit)
            try fm.createSymbolicLink(atPath: unitDir + "/" + unit, withDestinationPath: "/dev/null")
        }
    }
}
