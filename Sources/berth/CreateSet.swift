import ArgumentParser
import BerthCore
import Wire
import WireTLS

#if canImport(Glibc)
    import Glibc
#endif

/// The resource and identity flags shared by create and set (Docs/cli.md).
struct VPSSettings: ParsableArguments {
    @Option(help: "Host name inside the VPS (default: the VPS name).") var hostname: String?
    @Option(help: "Nameserver for /etc/resolv.conf; repeatable (set: replaces the list).") var nameserver: [String] = []
    @Option(help: "Search domain for /etc/resolv.conf; repeatable (set: replaces the list).") var searchdomain: [String] = []
    @Option(help: "Memory limit, e.g. 512M or 2G.") var memory: String?
    @Option(help: "Swap on top of --memory (VSwap); 0 = no swap (also the default once --memory is set).") var swap: String?
    @Option(help: "CPU count or list (e.g. 2 or 0-1,3).") var cpus: String?
    @Option(help: "Relative CPU weight (OpenVZ cpuunits, default 1000).") var cpuUnits: String?
    @Option(help: "CPU cap in % of one CPU (200 = two CPUs).") var cpuLimit: String?
    @Option(help: "Maximum number of processes and threads.") var pids: String?
    @Option(help: "Maximum open files per process.") var files: String?
    @Option(help: "Disk size, e.g. 10G.") var disk: String?
    @Option(help: "Inode count of the disk.") var diskInodes: String?
    @Option(help: "Relative I/O weight.") var ioWeight: String?
    @Option(help: "I/O bandwidth cap, e.g. 50M (per second).") var ioBps: String?
    @Option(help: "I/O operations per second cap.") var ioIops: String?
    @Option(help: "Label K=V; repeatable.") var label: [String] = []
    @Option(
        help: ArgumentHelp(
            "Capability NAME:on|off (e.g. net_admin:off, sys_nice:on); repeatable.",
            discussion: "Changes the VPS's default set (vzctl --capability); never beyond the agent's policy. set: takes effect at the next start."))
    var capability: [String] = []

    func capabilities() -> [String: String] {
        var result: [String: String] = [:]
        for item in capability {
            guard let colon = item.lastIndex(of: ":"), colon != item.startIndex else {
                fail(WireError(.invalidArgument, "capability: '\(item)' is not NAME:on or NAME:off", field: "capability"))
            }
            result[String(item[..<colon])] = String(item[item.index(after: colon)...])
        }
        return result
    }

    func limits() -> Berth_V1_Limits {
        var limits = Berth_V1_Limits()
        do {
            if let memory { limits.memoryBytes = try ByteSize.parse(memory, field: "memory") }
            if let swap { limits.swapBytes = try ByteSize.parse(swap, field: "swap", allowZero: true) }
            if let disk { limits.diskBytes = try ByteSize.parse(disk, field: "disk") }
            if let ioBps { limits.ioBps = try ByteSize.parse(ioBps, field: "io-bps") }
            if let cpus { limits.cpus = cpus }
            limits.cpuUnits = try count(cpuUnits, "cpu-units")
            limits.cpuLimitPct = try count(cpuLimit, "cpu-limit")
            limits.pids = try count(pids, "pids")
            limits.ioWeight = try count(ioWeight, "io-weight")
            limits.ioIops = try count(ioIops, "io-iops")
            limits.files = UInt64(try count(files, "files"))
            limits.diskInodes = UInt64(try count(diskInodes, "disk-inodes"))
        } catch let error as WireError {
            fail(error)
        } catch {
            fail(WireError(.invalidArgument, "\(error)"))
        }
        return limits
    }

    func count(_ text: String?, _ field: String) throws -> UInt32 {
        guard let text else { return 0 }
        guard let value = UInt32(text), value > 0 else {
            throw WireError(.invalidArgument, "\(field): '\(text)' must be a whole number greater than zero", field: field)
        }
        return value
    }

    func labels() -> [String: String] {
        var result: [String: String] = [:]
        for item in label {
            guard let eq = item.firstIndex(of: "="), eq != item.startIndex else {
                fail(WireError(.invalidArgument, "label: '\(item)' is not KEY=VALUE", field: "label"))
            }
            result[String(item[..<eq])] = String(item[item.index(after: eq)...])
        }
        return result
    }
}

struct Create: AsyncParsableCommand {
    static let configuration = CommandConfiguration(commandName: "create", abstract: "Create a VPS from a template (it stays stopped until 'berth start').")
    @OptionGroup var connection: ConnectionOptions
    @Argument(help: "VPS name: lowercase letters, digits and '-', at most 63.") var name: String
    @Option(help: "Template to create the VPS from (see 'berth template list').") var template: String
    @Option(help: "IP address (IPv4 or IPv6) from the node's ranges, or (cluster mode) auto[:POOL]; repeatable.") var ip: [String] = []
    @Option(help: "routed (default) or bridged:BRIDGE.") var net: String?
    @Flag(help: "Start this VPS when the node boots.") var onboot = false
    @Option(help: "Cluster mode: place on this node.") var node: String?
    @Option(help: "Cluster mode: only nodes with this label (K=V); repeatable.") var constraint: [String] = []
    @Option(help: "Cluster mode: never place two VPSs of this group on one node.") var antiAffinity: String?
    @Flag(help: "UNSAFE: no user namespace, the VPS's root is the host's root (only for workloads that need host privileges; see Docs/security.md).")
    var privileged = false
    @Option(
        help:
            "image (default): the disk holds a copy of the template. layered: the template's files are shared read-only by every layered VPS made from it (memory and disk once per node) and the disk holds only what this VPS changes; the template can then not be rebuilt or removed while such a VPS exists."
    )
    var storage: String?
    @Option(
        help:
            "loop (default): the disk is an ext4 image of its own on a loop device (like OpenVZ's ploop); df inside shows its size. pool: a subvolume of the node's btrfs storage pool (DATA/pool, made on first use) whose size a btrfs quota limits: nothing to mount at start, so starts are faster and each VPS holds less kernel memory; no --disk-inodes."
    )
    var layout: String?
    @OptionGroup var settings: VPSSettings
    @Flag(
        help:
            "Cluster mode: high availability (Docs/ha.md): replicas on other nodes, and failover to one when this VPS's node is lost (fenced: never two copies). Needs --layout pool."
    )
    var ha = false
    @OptionGroup var replication: ReplicationOptions

    func run() async throws {
        if !connection.isCluster && (node != nil || !constraint.isEmpty || antiAffinity != nil || ha) {
            fail(WireError(.invalidArgument, "node: --node, --constraint, --anti-affinity and --ha need cluster mode (--controller)", field: "node"))
        }
        var create = Berth_V1_CreateRequest()
        create.name = name
        create.template = template
        create.hostname = settings.hostname ?? ""
        create.ips = ip
        create.nameservers = settings.nameserver
        create.searchdomains = settings.searchdomain
        create.limits = settings.limits()
        create.net = net ?? ""
        create.onboot = onboot
        create.labels = settings.labels()
        create.node = node ?? ""
        create.constraints = keyValues(constraint, field: "constraint")
        create.antiAffinity = antiAffinity ?? ""
        create.privileged = privileged
        create.storage = storage ?? ""
        create.layout = layout ?? ""
        create.capabilities = settings.capabilities()
        create.ha = ha
        (create.replicas, create.replicationIntervalS) = replication.values()
        let response = try await connection.call(request { $0.create = create }, onProgress: showProgress)
        print(response.status.line)
    }
}

struct SetCommand: AsyncParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "set",
        abstract: "Change a VPS's settings: saved to its config, applied live where the kernel allows.")
    @OptionGroup var connection: ConnectionOptions
    @Argument(help: "VPS name.") var name: String
    @Option(help: "Add an IP address; repeatable.") var ipAdd: [String] = []
    @Option(help: "Remove an IP address; repeatable.") var ipDel: [String] = []
    @Option(help: "Start on node boot: yes or no.") var onboot: String?
    @OptionGroup var settings: VPSSettings
    @Option(help: "Cluster mode: high availability on or off (Docs/ha.md).") var ha: String?
    @OptionGroup var replication: ReplicationOptions

    func run() async throws {
        var set = Berth_V1_SetRequest()
        if let ha {
            guard ha == "on" || ha == "off" else { fail(WireError(.invalidArgument, "ha: '\(ha)' must be on or off", field: "ha")) }
            requireCluster(connection, "set --ha")
            set.ha = ha
        }
        (set.replicas, set.replicationIntervalS) = replication.values()
        set.name = name
        set.limits = settings.limits()
        set.hostname = settings.hostname ?? ""
        set.ipAdd = ipAdd
        set.ipDel = ipDel
        set.nameservers = settings.nameserver
        set.searchdomains = settings.searchdomain
        // "" removes a label: `--label tenant=`.
        set.labels = settings.labels()
        set.capabilities = settings.capabilities()
        if let onboot {
            guard let value = ["yes": true, "no": false, "true": true, "false": false][onboot.lowercased()] else {
                fail(WireError(.invalidArgument, "onboot: '\(onboot)' must be yes or no", field: "onboot"))
            }
            set.setOnboot = true
            set.onboot = value
        }
        let response = try await connection.call(request { $0.set = set }, onProgress: showProgress)
        let result = response.set
        print(result.status.line)
        if !result.appliedLive.isEmpty { print("applied live: \(result.appliedLive.joined(separator: ", "))") }
        if !result.needsRestart.isEmpty { print("takes effect at the next restart: \(result.needsRestart.joined(separator: ", "))") }
    }
}

struct TemplateCommand: AsyncParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "template", abstract: "Manage the templates VPSs are created from.",
        subcommands: [ListTemplates.self, BuildTemplate.self, ImportTemplate.self, ExportTemplate.self, RemoveTemplate.self])

    struct ListTemplates: AsyncParsableCommand {
        static let configuration = CommandConfiguration(commandName: "list", abstract: "List templates.")
        @OptionGroup var connection: ConnectionOptions
        @Flag(help: "Print JSON.") var json = false

        func run() async throws {
            let response = try await connection.call(request { $0.templateList = Berth_V1_Empty() })
            let templates = response.templates.templates
            if json {
                printJSON(
                    .array(
                        templates.map {
                            .object([
                                "name": .string($0.name), "source": .string($0.source), "size_bytes": .int(Int64($0.sizeBytes)),
                                "created": .int($0.createdUnix),
                            ])
                        }))
                return
            }
            for t in templates { print("\(t.name)\t\(ByteSize.format(t.sizeBytes / 1024 * 1024))\t\(t.source)") }
        }
    }

    struct BuildTemplate: AsyncParsableCommand {
        static let configuration = CommandConfiguration(
            commandName: "build", abstract: "Build a template on this node: busybox (from busybox-static) or debian-12 (debootstrap).",
            discussion:
                "debian-12 downloads Debian's minbase plus systemd once and caches the tree under the agent's --template-cache; later builds reuse it unless --rebuild is given."
        )
        @OptionGroup var connection: ConnectionOptions
        @Argument(help: "What to build: busybox | debian-12.") var kind: String
        @Option(help: "Template name (default: the kind).") var name: String?
        @Option(help: "debian-12: Debian archive URL (default http://deb.debian.org/debian).") var mirror: String?
        @Option(help: "debian-12: extra packages, comma-separated or repeated (e.g. openssh-server).") var include: [String] = []
        @Flag(help: "debian-12: download and bootstrap again even when the tree is cached.") var rebuild = false

        func run() async throws {
            let response = try await connection.call(
                request {
                    $0.templateBuild.kind = kind
                    $0.templateBuild.name = name ?? ""
                    $0.templateBuild.mirror = mirror ?? ""
                    $0.templateBuild.include = include.flatMap { $0.split(separator: ",").map { String($0) } }
                    $0.templateBuild.rebuild = rebuild
                }, onProgress: showProgress)
            print("template \(response.template.name) built: \(response.template.source)")
            for (unit, reason) in response.template.maskedUnits.sorted(by: { $0.key < $1.key }) {
                print("  masked \(unit): \(reason)")
            }
        }
    }

    struct ImportTemplate: AsyncParsableCommand {
        static let configuration = CommandConfiguration(
            commandName: "import", abstract: "Import a rootfs tarball (.tar, .tar.gz, .tar.xz) as a template.",
            discussion:
                "The tarball is read here and sent over the connection (its size and SHA-256 are checked on arrival). Through a controller it goes to every node that is up, or to the --node ones."
        )
        @OptionGroup var connection: ConnectionOptions
        @Argument(help: "Template name.") var name: String
        @Argument(help: "Tarball on this machine.") var tarball: String
        @Option(name: .customLong("node"), help: "Cluster mode: a node that gets the template (repeatable; default: every node that is up).")
        var nodes: [String] = []

        func run() async throws {
            let path = absolutePath(tarball)
            guard let format = FileTransfer.tarFormat(of: path) else {
                fail(WireError(.invalidArgument, "tarball: \(tarball) is not a .tar, .tar.gz, .tgz or .tar.xz file", field: "tarball"))
            }
            if !nodes.isEmpty { requireCluster(connection, "template import --node") }
            let size: UInt64, sha256: String
            do throws(WireError) {
                (size, sha256) = try FileTransfer.digest(of: path)
            } catch {
                fail(WireError(error.code, "tarball: \(error.message)", field: "tarball"))
            }
            let result = try await connection.withClient { client in
                let call = try await client.start(
                    request {
                        $0.templateUpload.name = name
                        $0.templateUpload.size = size
                        $0.templateUpload.sha256 = sha256
                        $0.templateUpload.format = format
                        $0.templateUpload.nodes = nodes
                    })
                // The answer may come before every byte went out (a refusal): it wins.
                async let sending: Void = FileTransfer.send(path, on: call)
                let response = try await call.result(onProgress: showProgress)
                try? await sending
                return response.templateUpload
            }
            var failed: WireError?
            for placed in result.placed {
                if placed.hasTemplate {
                    print("template \(placed.template.name) imported on \(placed.node) (\(humanBytes(placed.template.sizeBytes)))")
                } else {
                    let error = WireError(reply: placed.error)
                    writeErr("berth: \(placed.node): \(error.message)\n")
                    failed = failed ?? error
                }
            }
            if let failed { Glibc.exit(failed.exitCode) }
        }
    }

    struct ExportTemplate: AsyncParsableCommand {
        static let configuration = CommandConfiguration(
            commandName: "export", abstract: "Write a template as a tarball (numeric owners, xattrs kept) that `template import` takes.",
            discussion: "Through a controller it comes from --node, or from any node that is up and holds the template.")
        @OptionGroup var connection: ConnectionOptions
        @Argument(help: "Template name.") var name: String
        @Argument(help: "The .tar file to write on this machine (must not exist).") var file: String
        @Option(help: "Cluster mode: the node to take it from.") var node: String?

        func run() async throws {
            let path = absolutePath(file)
            guard FileTransfer.tarFormat(of: path) == "tar" else {
                fail(WireError(.invalidArgument, "file: \(file) must end in .tar (the export is an uncompressed tarball)", field: "file"))
            }
            if node != nil { requireCluster(connection, "template export --node") }
            guard access(path, F_OK) != 0 else { fail(WireError(.alreadyExists, "file: \(file) exists", field: "file")) }
            // Written under a temporary name and linked into place only when complete: an error
            // (which ends the command at once) leaves no truncated tarball under the real name.
            let partial = path + ".part"
            unlink(partial)
            let fd = open(partial, O_WRONLY | O_CREAT | O_EXCL | O_CLOEXEC, 0o644)
            guard fd >= 0 else { fail(WireError(.kernel, "file: cannot create \(partial): \(String(cString: strerror(errno)))", field: "file")) }
            defer {
                close(fd)
                unlink(partial)
            }
            let (template, bytes) = try await connection.withClient { client in
                let call = try await client.start(
                    request {
                        $0.templateExport.name = name
                        $0.templateExport.node = node ?? ""
                    })
                var written: UInt64 = 0
                for await event in call.events {
                    switch event {
                    case .data(.stdout, let chunk):
                        try Wire.writeAll(fd: fd, chunk, what: file)
                        written += UInt64(chunk.readableBytes)
                    case .response(let response): return (response.template, written)
                    case .failure(let error): throw error
                    default: continue
                    }
                }
                throw WireError(.unavailable, "the connection closed before the export finished")
            }
            guard fsync(fd) == 0, link(partial, path) == 0 else {
                fail(WireError(.kernel, "file: finishing \(file): \(String(cString: strerror(errno)))", stage: "write", errno: errno))
            }
            print("template \(template.name) exported to \(path) (\(humanBytes(bytes)))")
        }
    }

    struct RemoveTemplate: AsyncParsableCommand {
        static let configuration = CommandConfiguration(commandName: "remove", abstract: "Remove a template (existing VPSs keep their own disks).")
        @OptionGroup var connection: ConnectionOptions
        @Argument(help: "Template name.") var name: String

        func run() async throws {
            _ = try await connection.call(request { $0.templateRemove.name = name })
            print("template \(name) removed")
        }
    }
}

/// `--replicas N --replication-interval D` of create and set (cluster mode).
struct ReplicationOptions: ParsableArguments {
    @Option(help: "Cluster mode, HA: replicas on other nodes (1-3, default 1).") var replicas: UInt32?
    @Option(help: "Cluster mode, HA: how often the replicas are brought up to date (10s to 1d, default 60s).") var replicationInterval: String?

    func values() -> (replicas: UInt32, intervalSeconds: UInt32) {
        var interval: UInt32 = 0
        if let text = replicationInterval {
            guard let seconds = parseDuration(text), seconds >= 10, seconds <= 86_400 else {
                fail(WireError(.invalidArgument, "replication-interval: '\(text)' is not a duration from 10s to 1d", field: "replication-interval"))
            }
            interval = UInt32(seconds)
        }
        return (replicas ?? 0, interval)
    }
}
