import CIsolation

#if canImport(Glibc)
    import Glibc
#endif

/// Builds the VPS's filesystem view inside its new mount namespace and pivots into it.
/// Runs in the single-threaded child of berth-spawn, before exec of the VPS init.
public enum Rootfs {
    /// Ptys per VPS (console, enter, its own terminals): every devpts instance but the host's
    /// shares kernel.pty.max minus its reserve, so one VPS must not take them all.
    public static let ptyLimit = 256

    /// Docker's masked paths: read as empty.
    public static let maskedFiles = [
        "proc/kcore", "proc/keys", "proc/latency_stats", "proc/timer_list",
        "proc/timer_stats", "proc/sched_debug", "proc/interrupts",
    ]
    public static let maskedDirectories = [
        "proc/acpi", "proc/asound", "proc/scsi", "sys/firmware",
        "sys/devices/virtual/powercap",
    ]
    /// Docker's read-only paths. /proc/sys/net is made writable again on top: those sysctls belong
    /// to the VPS's own network namespace (LXC's "proc:mixed").
    public static let readOnlyPaths = ["proc/bus", "proc/fs", "proc/irq", "proc/sys", "proc/sysrq-trigger"]

    struct Device {
        let name: String
        let major: UInt32
        let minor: UInt32
    }

    static let devices = [
        Device(name: "null", major: 1, minor: 3), Device(name: "zero", major: 1, minor: 5),
        Device(name: "full", major: 1, minor: 7), Device(name: "random", major: 1, minor: 8),
        Device(name: "urandom", major: 1, minor: 9), Device(name: "tty", major: 5, minor: 0),
    ]

    /// /proc files lxcfs renders from the reader's cgroup: `free`, `top`, `uptime` and
    /// `/proc/cpuinfo` inside a VPS then show its own limits and usage.
    public static let lxcfsProcFiles = ["cpuinfo", "diskstats", "loadavg", "meminfo", "stat", "swaps", "uptime"]

    /// Where a VPS finds its beancounter table (`user_beancounters`, as OpenVZ names it). procfs
    /// takes no new files, so the table lives in a read-only host directory mounted here.
    public static let beancountersDirectory = "run/beancounters"
    public static let beancountersFile = "user_beancounters"

    /// Returns the master of the VPS's console: a pty of the VPS's own devpts instance, whose
    /// slave is bound at /dev/console (the monitor holds the master). `lxcfs`: where lxcfs
    /// is mounted on the host, or nil for the kernel's host-wide views. `cgroupMounts`: what the
    /// VPS sees under /sys/fs/cgroup (call after unsharing the cgroup namespace). `userns`: the
    /// caller is root of a user namespace of its own, where mknod is refused. `beancounters`: a
    /// detached read-only mount (berth_readonly_tree) attached at `beancountersDirectory`, or -1.
    public static func enter(
        root: String, hostname: String, lxcfs: String? = nil,
        cgroupMounts: [CgroupGuestMount] = [], userns: Bool = false,
        beancounters: Int32 = -1
    ) throws(IsolationError) -> Int32 {
        try check("make / private") { mount("", "/", nil, UInt(MS_REC | MS_PRIVATE), nil) }
        let rootFD = try check("open root \(root)") { open(root, O_PATH | O_DIRECTORY | O_CLOEXEC) }
        defer { close(rootFD) }

        try mountAt(rootFD, "proc", source: "proc", type: "proc", flags: MS_NOSUID | MS_NODEV | MS_NOEXEC)
        try mountAt(rootFD, "sys", source: "sysfs", type: "sysfs", flags: MS_RDONLY | MS_NOSUID | MS_NODEV | MS_NOEXEC)
        if !cgroupMounts.isEmpty { try mountCgroups(rootFD: rootFD, cgroupMounts) }
        // A distro's init expects /run and /run/lock to be fresh tmpfs on every boot and cannot
        // mount them itself without CAP_SYS_ADMIN. Its pages are charged to the VPS's memory cgroup.
        try mountAt(rootFD, "run", source: "tmpfs", type: "tmpfs", flags: MS_NOSUID | MS_NODEV, data: "mode=755,size=20%")
        try mountAt(rootFD, "run/lock", source: "tmpfs", type: "tmpfs", flags: MS_NOSUID | MS_NODEV | MS_NOEXEC, data: "mode=1777,size=5m")
        if beancounters >= 0 {
            let target = try mountPoint(rootFD, beancountersDirectory)
            defer { close(target) }
            try check("attach the beancounter table") { berth_move_mount_to_fd(beancounters, target) }
        }
        try mountAt(rootFD, "dev", source: "tmpfs", type: "tmpfs", flags: MS_NOSUID | MS_NOEXEC, data: "mode=755,size=1024k")
        let consoleMaster = try populateDev(rootFD: rootFD, bindHostDevices: userns)
        var enterFailed = true
        defer { if enterFailed { close(consoleMaster) } }
        if let lxcfs {
            // The targets are in the procfs/sysfs just mounted here, not in VPS-owned files.
            for file in lxcfsProcFiles where FileIO.exists("\(lxcfs)/proc/\(file)") && FileIO.exists("\(root)/proc/\(file)") {
                try check("bind lxcfs /proc/\(file)") { mount("\(lxcfs)/proc/\(file)", "\(root)/proc/\(file)", nil, UInt(MS_BIND), nil) }
            }
            let online = "sys/devices/system/cpu/online"
            if FileIO.exists("\(lxcfs)/\(online)") && FileIO.exists("\(root)/\(online)") {
                try check("bind lxcfs /\(online)") { mount("\(lxcfs)/\(online)", "\(root)/\(online)", nil, UInt(MS_BIND), nil) }
            }
        }

        for path in maskedFiles where FileIO.exists("\(root)/\(path)") {
            try check("mask /\(path)") { mount("/dev/null", "\(root)/\(path)", nil, UInt(MS_BIND), nil) }
        }
        // One empty read-only tmpfs, bound over every masked directory: each superblock more
        // costs a VPS kernel memory (and every memory cgroup on the host a slot for its shrinker).
        var maskSource: String?
        for path in maskedDirectories where FileIO.isDirectory("\(root)/\(path)") {
            let target = "\(root)/\(path)"
            if let maskSource {
                try check("mask /\(path)") { mount(maskSource, target, nil, UInt(MS_BIND), nil) }
                continue
            }
            try check("mask /\(path)") { mount("tmpfs", target, "tmpfs", UInt(MS_RDONLY | MS_NOSUID | MS_NODEV | MS_NOEXEC), "size=0") }
            maskSource = target
        }
        for path in readOnlyPaths where FileIO.exists("\(root)/\(path)") {
            try bindReadOnly("\(root)/\(path)")
        }
        if FileIO.isDirectory("\(root)/proc/sys/net") {
            try check("bind /proc/sys/net") { mount("\(root)/proc/sys/net", "\(root)/proc/sys/net", nil, UInt(MS_BIND), nil) }
            try check("remount /proc/sys/net rw") {
                mount("", "\(root)/proc/sys/net", nil, UInt(MS_BIND | MS_REMOUNT | MS_NOSUID | MS_NODEV | MS_NOEXEC), nil)
            }
        }

        try check("sethostname") { sethostname(hostname, hostname.utf8.count) }
        // pivot_root(".", ".") stacks the old root on top of the new one; detaching it leaves
        // only the VPS root (runc's trick: no put_old directory inside the VPS).
        try check("chdir \(root)") { fchdir(rootFD) }
        try check("pivot_root") { berth_pivot_root(".", ".") }
        try check("detach old root") { umount2(".", Int32(MNT_DETACH)) }
        try check("chdir /") { chdir("/") }
        enterFailed = false
        return consoleMaster
    }

    /// cgroup2: the VPS's own subtree at /sys/fs/cgroup. v1: a read-only tmpfs holding one
    /// mount per hierarchy, as a v1 host lays them out (systemd's "legacy" layout).
    static func mountCgroups(rootFD: Int32, _ mounts: [CgroupGuestMount]) throws(IsolationError) {
        let flags = MS_NOSUID | MS_NODEV | MS_NOEXEC
        if let unified = mounts.first(where: { $0.type == "cgroup2" }) {
            try mountAt(rootFD, "sys/fs/cgroup", source: "cgroup2", type: "cgroup2", flags: flags | (unified.writable ? 0 : MS_RDONLY))
            return
        }
        try mountAt(rootFD, "sys/fs/cgroup", source: "tmpfs", type: "tmpfs", flags: flags, data: "mode=755,size=64k")
        let dir = berth_open_beneath_nofollow(rootFD, "sys/fs/cgroup", O_PATH | O_DIRECTORY, 0)
        if dir < 0 { throw IsolationError.sys("open /sys/fs/cgroup in VPS root") }
        defer { close(dir) }
        for mount in mounts {
            try mountAt(dir, mount.directory, source: "cgroup", type: "cgroup", flags: flags | (mount.writable ? 0 : MS_RDONLY), data: mount.options)
            for alias in mount.aliases where symlinkat(mount.directory, dir, alias) != 0 && errno != EEXIST {
                throw IsolationError.sys("symlink /sys/fs/cgroup/\(alias)")
            }
        }
        try check("remount /sys/fs/cgroup read-only") {
            mount("", "/proc/self/fd/\(dir)", nil, UInt(MS_REMOUNT | MS_RDONLY | flags), "mode=755,size=64k")
        }
    }

    /// Mounts onto `rootFD/relative` resolved without following any symlink: a VPS that turned
    /// /proc or /dev into a symlink gets a clear error, never a mount somewhere on the host.
    static func mountAt(_ rootFD: Int32, _ relative: String, source: String, type: String, flags: Int, data: String? = nil) throws(IsolationError) {
        let target = try mountPoint(rootFD, relative)
        defer { close(target) }
        try check("mount \(type) on /\(relative)") {
            mount(source, "/proc/self/fd/\(target)", type, UInt(flags), data)
        }
    }

    /// An O_PATH fd of the directory `rootFD/relative` (made if missing), resolved without
    /// following any symlink.
    static func mountPoint(_ rootFD: Int32, _ relative: String) throws(IsolationError) -> Int32 {
        if mkdirat(rootFD, relative, 0o755) != 0 && errno != EEXIST { throw IsolationError.sys("mkdir /\(relative) in VPS root") }
        let target = berth_open_beneath_nofollow(rootFD, relative, O_PATH | O_DIRECTORY, 0)
        if target < 0 { throw IsolationError.sys("open /\(relative) in VPS root (must be a real directory)") }
        return target
    }

    static func bindReadOnly(_ path: String) throws(IsolationError) {
        try check("bind \(path)") { mount(path, path, nil, UInt(MS_BIND | MS_REC), nil) }
        try check("remount \(path) read-only") {
            mount("", path, nil, UInt(MS_BIND | MS_REMOUNT | MS_RDONLY | MS_NOSUID | MS_NODEV | MS_NOEXEC), nil)
        }
    }

    /// `bindHostDevices`: bind the host's nodes (a user namespace may not mknod); the device
    /// cgroup still decides what they may open.
    static func populateDev(rootFD: Int32, bindHostDevices: Bool = false) throws(IsolationError) -> Int32 {
        let devFD = berth_open_beneath_nofollow(rootFD, "dev", O_PATH | O_DIRECTORY, 0)
        if devFD < 0 { throw IsolationError.sys("open /dev in VPS root") }
        defer { close(devFD) }
        let oldMask = umask(0)
        defer { umask(oldMask) }
        for device in devices {
            if bindHostDevices {
                let target = try check("create /dev/\(device.name)") { openat(devFD, device.name, O_CREAT | O_EXCL | O_WRONLY | O_CLOEXEC, 0o666) }
                defer { close(target) }
                try check("bind /dev/\(device.name)") { mount("/dev/\(device.name)", "/proc/self/fd/\(target)", nil, UInt(MS_BIND), nil) }
            } else {
                try check("mknod /dev/\(device.name)") {
                    mknodat(devFD, device.name, S_IFCHR | 0o666, makedev(device.major, device.minor))
                }
            }
        }
        for dir in ["pts", "shm", "mqueue"] {
            try check("mkdir /dev/\(dir)") { mkdirat(devFD, dir, dir == "shm" ? 0o1777 : 0o755) }
        }
        try mountAt(
            devFD, "pts", source: "devpts", type: "devpts", flags: MS_NOSUID | MS_NOEXEC,
            data: "newinstance,ptmxmode=0666,mode=0620,gid=5,max=\(ptyLimit)")
        try mountAt(devFD, "shm", source: "shm", type: "tmpfs", flags: MS_NOSUID | MS_NODEV, data: "mode=1777")
        try mountAt(devFD, "mqueue", source: "mqueue", type: "mqueue", flags: MS_NOSUID | MS_NODEV | MS_NOEXEC)
        let links = [
            ("ptmx", "pts/ptmx"), ("fd", "/proc/self/fd"), ("stdin", "/proc/self/fd/0"),
            ("stdout", "/proc/self/fd/1"), ("stderr", "/proc/self/fd/2"),
        ]
        for (name, target) in links {
            try check("symlink /dev/\(name)") { symlinkat(target, devFD, name) }
        }
        // The console is a pty of the VPS's own devpts: nothing the VPS does with it (TIOCSTI
        // included) can reach a host terminal, and it belongs to the VPS's root.
        let pts = try check("open /dev/pts") { berth_open_beneath_nofollow(devFD, "pts", O_PATH | O_DIRECTORY, 0) }
        defer { close(pts) }
        var number: Int32 = 0
        let master = try check("open the console pty") { berth_open_pty_master("/proc/self/fd/\(pts)/ptmx", &number) }
        do throws(IsolationError) {
            let console = try check("create /dev/console") { openat(devFD, "console", O_CREAT | O_EXCL | O_WRONLY | O_CLOEXEC, 0o600) }
            defer { close(console) }
            try check("bind console") { mount("/proc/self/fd/\(pts)/\(number)", "/proc/self/fd/\(console)", nil, UInt(MS_BIND), nil) }
        } catch {
            close(master)
            throw error
        }
        return master
    }
}

@inline(__always) func makedev(_ major: UInt32, _ minor: UInt32) -> dev_t {
    // glibc's gnu_dev_makedev encoding.
    let ma = UInt64(major), mi = UInt64(minor)
    return dev_t((mi & 0xff) | ((ma & 0xfff) << 8) | ((mi & ~0xff) << 12) | ((ma & ~0xfff) << 32))
}
