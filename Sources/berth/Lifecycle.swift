import ArgumentParser
import BerthCore
import Wire

struct Start: AsyncParsableCommand {
    static let configuration = CommandConfiguration(commandName: "start", abstract: "Boot a stopped VPS; returns once its init runs.")
    @OptionGroup var connection: ConnectionOptions
    @Argument(help: "VPS name.") var name: String

    func run() async throws { try await Self.start(connection.resolved, name: name) }

    static func start(_ connection: Connection, name: String) async throws {
        let response = try await connection.call(request { $0.start.name = name })
        print(response.status.line)
    }
}

struct Stop: AsyncParsableCommand {
    static let configuration = CommandConfiguration(commandName: "stop", abstract: "Shut a VPS down the distribution's way, then kill what is left.")
    @OptionGroup var connection: ConnectionOptions
    @Argument(help: "VPS name.") var name: String
    @Option(help: "Seconds to wait for a clean shutdown before killing (default 30).") var timeout: UInt32?
    @Flag(help: "Kill every process of the VPS at once instead of a clean shutdown.") var kill = false

    func run() async throws { try await Self.stop(connection.resolved, name: name, timeout: timeout, kill: kill) }

    static func stop(_ connection: Connection, name: String, timeout: UInt32? = nil, kill: Bool = false) async throws {
        let response = try await connection.call(
            request {
                $0.stop.name = name
                $0.stop.timeoutSeconds = timeout ?? 0
                $0.stop.kill = kill
            })
        print(response.status.line)
    }
}

struct Restart: AsyncParsableCommand {
    static let configuration = CommandConfiguration(commandName: "restart", abstract: "Stop (if running) and start a VPS.")
    @OptionGroup var connection: ConnectionOptions
    @Argument(help: "VPS name.") var name: String

    func run() async throws {
        let response = try await connection.call(request { $0.restart.name = name })
        print(response.status.line)
    }
}

struct Destroy: AsyncParsableCommand {
    static let configuration = CommandConfiguration(commandName: "destroy", abstract: "Delete a VPS and its disk. Refuses a running VPS unless --force.")
    @OptionGroup var connection: ConnectionOptions
    @Argument(help: "VPS name.") var name: String
    @Flag(help: "Kill the VPS first if it is running.") var force = false

    func run() async throws {
        _ = try await connection.call(
            request {
                $0.destroy.name = name
                $0.destroy.force = force
            })
        print("\(name) destroyed")
    }
}

struct Status: AsyncParsableCommand {
    static let configuration = CommandConfiguration(commandName: "status", abstract: "One line (or JSON) describing a VPS.")
    @OptionGroup var connection: ConnectionOptions
    @Argument(help: "VPS name.") var name: String
    @Flag(help: "Print JSON.") var json = false

    func run() async throws { try await Self.status(connection.resolved, name: name, json: json) }

    static func status(_ connection: Connection, name: String, json: Bool = false) async throws {
        let response = try await connection.call(request { $0.status.name = name })
        if json { printJSON(response.status.json) } else { print(response.status.line) }
    }
}

struct List: AsyncParsableCommand {
    static let configuration = CommandConfiguration(commandName: "list", abstract: "List running VPSs (--all: every VPS).")
    @OptionGroup var connection: ConnectionOptions
    @Flag(help: "Include stopped VPSs.") var all = false
    @Flag(help: "Print a JSON array of status objects.") var json = false
    @Option(
        help:
            "Only the VPSs this selector selects: app=web, tier!=db, zone in (a,b), env notin (dev), backup, !legacy; keys: labels, node.LABEL, state, template, tenant, node, name, ha (Docs/cli.md). Repeatable: all must hold."
    ) var selector: [String] = []

    func run() async throws { try await Self.list(connection.resolved, all: all, json: json, selector: selector) }

    static func list(_ connection: Connection, all: Bool = false, json: Bool = false, selector: [String] = []) async throws {
        let query: Selector
        do {
            query = try Selector.parse(selector.joined(separator: ","))
        } catch {
            fail(error)
        }
        let response = try await connection.call(
            request {
                $0.list.all = all
                $0.list.query = query.description
                // A server older than selectors reads only this map (and would list everything).
                $0.list.selector = query.plainLabels ?? [:]
            })
        let vpses = response.list.vpses
        if json { printJSON(.array(vpses.map(\.json))); return }
        var rows =
            [["NAME", "STATE", "PID", "HOSTNAME", "TEMPLATE", "IPS"]]
            + vpses.map {
                [$0.name, $0.state, $0.pid == 0 ? "-" : String($0.pid), $0.hostname, $0.template, $0.ips.isEmpty ? "-" : $0.ips.joined(separator: ",")]
            }
        if connection.isCluster {
            rows[0].append("NODE")
            for (i, vps) in vpses.enumerated() { rows[i + 1].append(vps.node) }
        }
        printTable(rows)
    }
}

struct Stats: AsyncParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "stats",
        abstract: "Resource accounting of a VPS: held, peak, limit and failcount per resource.",
        discussion:
            "A peak of 0 means the kernel does not track it; JSON gives unlimited as 9223372036854775807 (OpenVZ's convention). cpu_throttled counts CFS periods in which --cpu-limit held the VPS back (its limit is the limit in %). Disk counters appear while the VPS runs."
    )
    @OptionGroup var connection: ConnectionOptions
    @Argument(help: "VPS name.") var name: String
    @Flag(help: "Print JSON.") var json = false

    func run() async throws {
        let stats = try await connection.call(request { $0.stats.name = name }).stats
        if json {
            var resources: [String: JSON] = [:]
            for c in stats.counters {
                resources[c.resource] = .object([
                    "held": .int(Int64(c.held)), "peak": .int(Int64(c.peak)),
                    "limit": .int(Int64(c.limit)), "failcnt": .int(Int64(c.failcnt)),
                ])
            }
            printJSON(
                .object([
                    "name": .string(stats.name), "cpu_nanoseconds": .int(Int64(stats.cpuNanoseconds)),
                    "resources": .object(resources),
                ]))
            return
        }
        print(stats.table, terminator: "")
    }
}

struct NodeCommand: AsyncParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "node", abstract: "The node: capacity and what its VPSs commit of it.",
        subcommands: [Show.self, NodeList.self, Cordon.self, Uncordon.self, Drain.self, Restore.self, JoinToken.self])

    struct Show: AsyncParsableCommand {
        static let configuration = CommandConfiguration(
            commandName: "show",
            abstract: "Capacity, overcommit and committed resources of this node (cluster mode: of NAME).")
        @OptionGroup var connection: ConnectionOptions
        @Argument(help: "Node name (optional on a single node: the local one).") var name: String?
        @Flag(help: "Print JSON.") var json = false

        func run() async throws {
            if connection.isCluster {
                guard let name else { fail(WireError(.invalidArgument, "name: cluster mode needs a node name (see `berth node list`)", field: "name")) }
                let node = try await connection.call(request { $0.nodeShow.name = name }).clusterNode
                if json { printJSON(node.json); return }
                showClusterNode(node)
                return
            }
            let node = try await connection.call(request { $0.nodeInfo = Berth_V1_Empty() }).node
            if let name, name != node.name {
                fail(WireError(.notFound, "node \(name) is not this node (\(node.name)); other nodes need cluster mode", field: "name"))
            }
            func allocatable(_ capacity: Double, _ ratio: Double) -> Int64 { Int64(capacity * ratio) }
            if json {
                printJSON(
                    .object([
                        "name": .string(node.name), "kernel": .string(node.kernel), "cgroup": .string(node.cgroupMode),
                        "vps_total": .int(Int64(node.vpsTotal)), "vps_running": .int(Int64(node.vpsRunning)),
                        "cpu": .object([
                            "cpus": .int(Int64(node.cpus)), "allocatable_pct": .int(allocatable(Double(node.cpus) * 100, node.cpuOvercommit)),
                            "committed_pct": .int(Int64(node.committedCpuPct)),
                        ]),
                        "memory": .object([
                            "bytes": .int(Int64(node.memoryBytes)), "allocatable_bytes": .int(allocatable(Double(node.memoryBytes), node.memoryOvercommit)),
                            "committed_bytes": .int(Int64(node.committedMemoryBytes)),
                        ]),
                        "disk": .object([
                            "bytes": .int(Int64(node.diskBytes)), "free_bytes": .int(Int64(node.diskFreeBytes)),
                            "allocatable_bytes": .int(allocatable(Double(node.diskBytes), node.diskOvercommit)),
                            "committed_bytes": .int(Int64(node.committedDiskBytes)),
                        ]),
                        "pool": .object([
                            "bytes": .int(Int64(node.poolBytes)), "free_bytes": .int(Int64(node.poolFreeBytes)),
                            "committed_bytes": .int(Int64(node.committedPoolBytes)),
                        ]),
                        "replica_bytes": .int(Int64(node.replicaBytes)),
                    ]))
                return
            }
            print("\(node.name): kernel \(node.kernel), cgroup \(node.cgroupMode), \(node.vpsRunning)/\(node.vpsTotal) VPSs running")
            printTable(
                [
                    ["RESOURCE", "CAPACITY", "OVERCOMMIT", "ALLOCATABLE", "COMMITTED"],
                    [
                        "cpu", "\(node.cpus * 100)%", "\(node.cpuOvercommit)", "\(allocatable(Double(node.cpus) * 100, node.cpuOvercommit))%",
                        "\(node.committedCpuPct)%",
                    ],
                    [
                        "memory", humanBytes(node.memoryBytes), "\(node.memoryOvercommit)",
                        humanBytes(UInt64(allocatable(Double(node.memoryBytes), node.memoryOvercommit))), humanBytes(node.committedMemoryBytes),
                    ],
                    [
                        "disk", humanBytes(node.diskBytes), "\(node.diskOvercommit)",
                        humanBytes(UInt64(allocatable(Double(node.diskBytes), node.diskOvercommit))), humanBytes(node.committedDiskBytes),
                    ],
                ]
                    + (node.poolBytes == 0
                        ? []
                        : [
                            // The pool shares the disk's filesystem (its image is sparse) and bounds its VPSs too.
                            ["disk pool", humanBytes(node.poolBytes), "-", "\(humanBytes(node.poolFreeBytes)) free", humanBytes(node.committedPoolBytes)]
                        ])
                    + (node.replicaBytes == 0 ? [] : [["replicas", humanBytes(node.replicaBytes), "-", "-", "-"]]))
        }
    }
}
