/// What the agent asks berth-spawn to start. Sent on the spec pipe as "key=value" lines
/// (values percent-escaped) so the helper needs no JSON decoder and stays small in memory.
public struct SpawnSpec: Equatable, Sendable {
    public var name: String
    /// ext4 image attached to a loop device and mounted at `rootPath` (unless `volume` is set);
    /// its directory keeps the console log of the last boot.
    public var diskImage: String
    public var rootPath: String
    /// Runtime directory of this VPS (/run/berth/NAME): state file, console socket.
    public var runDir: String
    public var hostname: String
    public var cgroupProcsFiles: [String]
    public var initArgv: [String]
    public var environment: [String]
    /// Capabilities removed from the VPS's bounding set (libcap names, "cap_sys_module").
    public var dropCapabilities: [String]
    public var consoleRingBytes: Int
    /// RLIMIT_NOFILE of the VPS init (soft = hard), inherited by every process in the VPS.
    public var openFilesLimit: UInt64?
    /// Host mount point of lxcfs whose /proc views replace the host-wide ones inside the VPS.
    public var lxcfs: String?
    /// Host directory the agent keeps the VPS's beancounter table in, shown read-only at
    /// `Rootfs.beancountersDirectory` inside the VPS.
    public var beancounters: String?
    /// cgroup filesystems mounted under the VPS's /sys/fs/cgroup.
    public var cgroupMounts: [CgroupGuestMount] = []
    /// The VPS's own user namespace; nil for a privileged VPS (the host's user namespace).
    public var idmap: IDMap?
    /// A layered VPS: its root is an overlay of this shared template tree (read-only) over
    /// `upper` and `work` on its own disk, which is mounted at `diskMount` instead of the root.
    public var layer: SharedLayer?
    /// A `--layout pool` VPS: its disk is this subvolume of the node's btrfs pool, bound where
    /// `diskImage` would be mounted. No loop device, no filesystem to mount.
    public var volume: PoolVolume?
    /// berth-monitor, which the monitor execs once the VPS has booted (Sources/berth-monitor).
    public var monitorBinary: String?

    public init(
        name: String, diskImage: String, rootPath: String, runDir: String, hostname: String,
        cgroupProcsFiles: [String], initArgv: [String] = ["/sbin/init"],
        environment: [String] = SpawnSpec.defaultEnvironment,
        dropCapabilities: [String] = Capabilities.baselineDrop, consoleRingBytes: Int = 128 * 1024
    ) {
        self.name = name
        self.diskImage = diskImage
        self.rootPath = rootPath
        self.runDir = runDir
        self.hostname = hostname
        self.cgroupProcsFiles = cgroupProcsFiles
        self.initArgv = initArgv
        self.environment = environment
        self.dropCapabilities = dropCapabilities
        self.consoleRingBytes = consoleRingBytes
    }

    public static let defaultEnvironment = [
        "container=berth", "PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin", "TERM=linux", "HOME=/root",
    ]

    public func encode() -> String {
        var lines: [String] = []
        func put(_ key: String, _ value: String) { lines.append(key + "=" + Self.escape(value)) }
        put("name", name)
        put("disk", diskImage)
        put("root", rootPath)
        put("run", runDir)
        put("hostname", hostname)
        cgroupProcsFiles.forEach { put("cgroup", $0) }
        initArgv.forEach { put("init", $0) }
        environment.forEach { put("env", $0) }
        dropCapabilities.forEach { put("drop", $0) }
        put("ring", String(consoleRingBytes))
        if let openFilesLimit { put("nofile", String(openFilesLimit)) }
        if let lxcfs { put("lxcfs", lxcfs) }
        if let beancounters { put("beancounters", beancounters) }
        cgroupMounts.forEach { put("cgroupfs", $0.specText) }
        if let idmap { put("idmap", idmap.specText) }
        if let layer {
            put("layer", layer.template)
            put("diskmount", layer.diskMount)
        }
        if let volume {
            put("volume", volume.subvolume)
            if let device = volume.device { put("volumedevice", device) }
        }
        if let monitorBinary { put("monitor", monitorBinary) }
        return lines.joined(separator: "\n") + "\n"
    }

    public static func decode(_ text: String) throws(IsolationError) -> SpawnSpec {
        var single: [String: String] = [:]
        var multi: [String: [String]] = [:]
        for line in text.split(separator: "\n", omittingEmptySubsequences: true) {
            guard let eq = line.firstIndex(of: "=") else {
                throw IsolationError(.invalidSpec, "spawn spec line without '=': \(line)")
            }
            let key = String(line[..<eq])
            let value = try unescape(String(line[line.index(after: eq)...]))
            switch key {
            case "cgroup", "init", "env", "drop", "cgroupfs": multi[key, default: []].append(value)
            case "name", "disk", "root", "run", "hostname", "ring", "nofile", "lxcfs", "beancounters", "idmap", "layer", "diskmount", "monitor",
                "volume", "volumedevice":
                if single[key] != nil { throw IsolationError(.invalidSpec, "spawn spec key \(key) repeated") }
                single[key] = value
            default: throw IsolationError(.invalidSpec, "spawn spec has unknown key \(key)")
            }
        }
        func need(_ key: String) throws(IsolationError) -> String {
            guard let value = single[key], !value.isEmpty else { throw IsolationError(.invalidSpec, "spawn spec lacks \(key)") }
            return value
        }
        guard let ring = Int(single["ring"] ?? "131072"), ring >= 4096, ring <= 64 << 20 else {
            throw IsolationError(.invalidSpec, "spawn spec ring size out of range")
        }
        let argv = multi["init"] ?? []
        if argv.isEmpty { throw IsolationError(.invalidSpec, "spawn spec lacks init") }
        var nofile: UInt64?
        if let text = single["nofile"] {
            guard let value = UInt64(text), value > 0 else { throw IsolationError(.invalidSpec, "spawn spec nofile is not a number") }
            nofile = value
        }
        var spec = SpawnSpec(
            name: try need("name"), diskImage: try need("disk"), rootPath: try need("root"),
            runDir: try need("run"), hostname: try need("hostname"),
            cgroupProcsFiles: multi["cgroup"] ?? [], initArgv: argv,
            environment: multi["env"] ?? [], dropCapabilities: multi["drop"] ?? [],
            consoleRingBytes: ring)
        spec.openFilesLimit = nofile
        if let lxcfs = single["lxcfs"] {
            guard lxcfs.hasPrefix("/") else { throw IsolationError(.invalidSpec, "spawn spec lxcfs is not an absolute path") }
            spec.lxcfs = lxcfs
        }
        if let beancounters = single["beancounters"] {
            guard beancounters.hasPrefix("/") else { throw IsolationError(.invalidSpec, "spawn spec beancounters is not an absolute path") }
            spec.beancounters = beancounters
        }
        if let text = single["idmap"] {
            guard let idmap = IDMap.parse(text) else { throw IsolationError(.invalidSpec, "spawn spec idmap is not 'BASE COUNT' above 0") }
            spec.idmap = idmap
        }
        switch (single["layer"], single["diskmount"]) {
        case (nil, nil): break
        case (let template?, let diskMount?) where template.hasPrefix("/") && diskMount.hasPrefix("/"):
            spec.layer = SharedLayer(template: template, diskMount: diskMount)
        default: throw IsolationError(.invalidSpec, "spawn spec layer needs both absolute paths, layer and diskmount")
        }
        switch (single["volume"], single["volumedevice"]) {
        case (nil, nil): break
        case (let subvolume?, let device) where subvolume.hasPrefix("/") && (device?.hasPrefix("/dev/") ?? true):
            spec.volume = PoolVolume(subvolume: subvolume, device: device)
        default: throw IsolationError(.invalidSpec, "spawn spec volume needs an absolute path, and volumedevice (if any) a /dev path")
        }
        if let monitor = single["monitor"] {
            guard monitor.hasPrefix("/") else { throw IsolationError(.invalidSpec, "spawn spec monitor is not an absolute path") }
            spec.monitorBinary = monitor
        }
        for entry in multi["cgroupfs"] ?? [] {
            guard let mount = CgroupGuestMount.parse(entry) else { throw IsolationError(.invalidSpec, "spawn spec cgroupfs entry is malformed: \(entry)") }
            spec.cgroupMounts.append(mount)
        }
        return spec
    }

    static func escape(_ value: String) -> String {
        var out: [UInt8] = []
        for byte in value.utf8 {
            if byte == UInt8(ascii: "%") || byte == UInt8(ascii: "\n") || byte == 0 {
                out.append(contentsOf: ("%" + String(byte, radix: 16, uppercase: true).leftPadded(2)).utf8)
            } else {
                out.append(byte)
            }
        }
        return String(decoding: out, as: UTF8.self)
    }

    static func unescape(_ value: String) throws(IsolationError) -> String {
        var bytes: [UInt8] = []
        var iterator = Array(value.utf8).makeIterator()
        while let byte = iterator.next() {
            if byte == UInt8(ascii: "%") {
                guard let h = iterator.next(), let l = iterator.next(),
                    let v = UInt8(String(decoding: [h, l], as: UTF8.self), radix: 16)
                else {
                    throw IsolationError(.invalidSpec, "bad escape in spawn spec")
                }
                bytes.append(v)
            } else {
                bytes.append(byte)
            }
        }
        return String(decoding: bytes, as: UTF8.self)
    }
}

extension String {
    func leftPadded(_ width: Int) -> String { String(repeating: "0", count: max(0, width - count)) + self }
}
