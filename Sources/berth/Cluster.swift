import ArgumentParser
import BerthCore
import Wire
import WireTLS

#if canImport(Glibc)
    import Glibc
#endif

/// "K=V" items into a map; a malformed one is an error naming the flag.
func keyValues(_ items: [String], field: String) -> [String: String] {
    var map: [String: String] = [:]
    for item in items {
        guard let eq = item.firstIndex(of: "="), eq != item.startIndex else {
            fail(WireError(.invalidArgument, "\(field): '\(item)' is not KEY=VALUE", field: field))
        }
        map[String(item[..<eq])] = String(item[item.index(after: eq)...])
    }
    return map
}

func requireCluster(_ connection: ConnectionOptions, _ command: String) {
    guard connection.isCluster else {
        fail(
            WireError(
                .invalidArgument, "controller: `\(command)` is a cluster command: pass --controller HOST:PORT (or set BERTH_CONTROLLER)", field: "controller"))
    }
}

extension Berth_V1_ClusterNode {
    var json: JSON {
        .object([
            "name": .string(name), "state": .string(state), "address": .string(address),
            "labels": .object(labels.mapValues(JSON.string)), "vps_count": .int(Int64(vpsCount)),
            "last_heartbeat_ms_ago": .int(Int64(lastHeartbeatMsAgo)), "templates": .array(templates.map(JSON.string)),
            "certificate_serial": .string(certificateSerial),
            "cpus": .int(Int64(info.cpus)), "memory_bytes": .int(Int64(info.memoryBytes)), "disk_bytes": .int(Int64(info.diskBytes)),
            "cgroup": .string(info.cgroupMode), "kernel": .string(info.kernel),
            "pool_bytes": .int(Int64(info.poolBytes)), "pool_free_bytes": .int(Int64(info.poolFreeBytes)),
            "replica_bytes": .int(Int64(info.replicaBytes)),
        ])
    }
}

func showClusterNode(_ node: Berth_V1_ClusterNode) {
    print("\(node.name): \(node.state), \(node.address), last heartbeat \(node.lastHeartbeatMsAgo) ms ago")
    print(
        "  kernel \(node.info.kernel), cgroup \(node.info.cgroupMode), \(node.info.cpus) CPUs, \(humanBytes(node.info.memoryBytes)) memory, \(humanBytes(node.info.diskBytes)) disk"
    )
    print("  VPSs: \(node.vpsCount); templates: \(node.templates.isEmpty ? "-" : node.templates.joined(separator: ","))")
    if node.info.poolBytes > 0 || node.info.replicaBytes > 0 {
        print(
            "  disk pool \(humanBytes(node.info.poolBytes)) (\(humanBytes(node.info.poolFreeBytes)) free); replicas of HA VPSs hold \(humanBytes(node.info.replicaBytes))"
        )
    }
    if !node.labels.isEmpty { print("  labels: " + labelText(node.labels)) }
    if !node.certificateSerial.isEmpty { print("  certificate serial: \(node.certificateSerial)") }
}

extension NodeCommand {
    struct NodeList: AsyncParsableCommand {
        static let configuration = CommandConfiguration(commandName: "list", abstract: "Cluster mode: every node, its state and load.")
        @OptionGroup var connection: ConnectionOptions
        @Flag(help: "Print JSON.") var json = false

        func run() async throws {
            requireCluster(connection, "node list")
            let nodes = try await connection.call(request { $0.nodeList = Berth_V1_Empty() }).nodes.nodes
            if json { printJSON(.array(nodes.map(\.json))); return }
            printTable(
                [["NAME", "STATE", "ADDRESS", "VPSS", "CPUS", "MEMORY", "HEARTBEAT", "LABELS"]]
                    + nodes.map {
                        [
                            $0.name, $0.state, $0.address, String($0.vpsCount), String($0.info.cpus), humanBytes($0.info.memoryBytes),
                            "\($0.lastHeartbeatMsAgo)ms", $0.labels.isEmpty ? "-" : labelText($0.labels),
                        ]
                    })
        }
    }

    static func setCordon(_ cordon: Bool, node name: String, connection: ConnectionOptions) async throws {
        requireCluster(connection, cordon ? "node cordon" : "node uncordon")
        let node = try await connection.call(request { if cordon { $0.nodeCordon.name = name } else { $0.nodeUncordon.name = name } }).clusterNode
        print("\(node.name) \(node.state)")
    }

    struct Cordon: AsyncParsableCommand {
        static let configuration = CommandConfiguration(commandName: "cordon", abstract: "Cluster mode: place no new VPSs on NODE (running ones stay).")
        @OptionGroup var connection: ConnectionOptions
        @Argument(help: "Node name.") var name: String

        func run() async throws { try await NodeCommand.setCordon(true, node: name, connection: connection) }
    }

    struct Uncordon: AsyncParsableCommand {
        static let configuration = CommandConfiguration(commandName: "uncordon", abstract: "Cluster mode: let the scheduler use NODE again.")
        @OptionGroup var connection: ConnectionOptions
        @Argument(help: "Node name.") var name: String

        func run() async throws { try await NodeCommand.setCordon(false, node: name, connection: connection) }
    }

    struct JoinToken: AsyncParsableCommand {
        static let configuration = CommandConfiguration(
            commandName: "join-token",
            abstract: "Cluster mode (admin): print a single-use token for `berth-agent --controller H:P --listen H:P --join TOKEN`.")
        @OptionGroup var connection: ConnectionOptions
        @Option(help: "How long the token stays valid: N[s|m|h|d] (default 1h, at most 7d).") var ttl = "1h"

        func run() async throws {
            requireCluster(connection, "node join-token")
            guard let seconds = parseDuration(ttl), seconds > 0 else {
                fail(WireError(.invalidArgument, "ttl: '\(ttl)' is not a positive duration such as 30m, 1h or 2d", field: "ttl"))
            }
            let token = try await connection.call(request { $0.nodeJoinToken.ttlSeconds = UInt32(clamping: seconds) }).joinToken
            print(token.token)
        }
    }
}

/// "90", "90s", "15m", "2h", "7d" → seconds.
func parseDuration(_ text: String) -> UInt64? {
    let units: [Character: UInt64] = ["s": 1, "m": 60, "h": 3600, "d": 86400]
    var digits = Substring(text)
    var multiplier: UInt64 = 1
    if let last = text.last, let unit = units[last] {
        digits = digits.dropLast()
        multiplier = unit
    }
    guard !digits.isEmpty, digits.allSatisfy(\.isNumber), let value = UInt64(digits) else { return nil }
    let (product, overflow) = value.multipliedReportingOverflow(by: multiplier)
    return overflow ? nil : product
}

struct CACommand: AsyncParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "ca", abstract: "The cluster certificate authority: create it, issue operator certificates, revoke.",
        subcommands: [Init.self, Issue.self, Revoke.self, Rotate.self])

    struct Init: AsyncParsableCommand {
        static let configuration = CommandConfiguration(
            commandName: "init",
            abstract: "Create the cluster CA in DIR (ca.pem, ca-key.pem) and an admin client bundle in DIR/admin/.")
        @Option(help: "Directory for the CA (created mode 0700; must not hold a CA yet).") var dir: String

        func run() async throws {
            do throws(WireError) {
                let ca = try ClusterCA.create(directory: dir)
                let admin = try ca.issueBundle(role: .admin, name: "admin")
                try makeDirectory(dir + "/admin")
                try admin.write(directory: dir + "/admin")
                print("CA \(ca.fingerprint)")
                print("admin bundle in \(dir)/admin (use as --config-dir)")
            } catch {
                fail(error)
            }
        }
    }

    struct Issue: AsyncParsableCommand {
        static let configuration = CommandConfiguration(
            commandName: "issue", abstract: "Issue a client certificate with a role into OUT (ca.pem, cert.pem, key.pem).")
        @Option(help: "The CA directory.") var dir: String
        @Option(help: "admin, operator, viewer or tenant:NAME.") var role: String
        @Option(help: "The holder's name (goes into the certificate's CN).") var name: String
        @Option(help: "Output directory (a --config-dir).") var out: String
        @Option(help: "Validity in days.") var days = 365

        func run() async throws {
            do throws(WireError) {
                let parsed = try Role(parsing: role)
                guard parsed != .node && parsed != .controller else {
                    throw WireError(
                        .invalidArgument,
                        "role: node certificates come from enrolment (`berth node join-token`), controller certificates from berth-controller itself",
                        field: "role")
                }
                guard (1...3650).contains(days) else {
                    throw WireError(.invalidArgument, "days: \(days) must be from 1 to 3650", field: "days")
                }
                let ca = try ClusterCA.load(directory: dir)
                let bundle = try ca.issueBundle(role: parsed, name: name, validity: Double(days) * 86400)
                try makeDirectory(out)
                try bundle.write(directory: out)
                print("\(parsed) \(name) serial \(try bundle.identity().serial) in \(out)")
            } catch {
                fail(error)
            }
        }
    }

    struct Revoke: AsyncParsableCommand {
        static let configuration = CommandConfiguration(
            commandName: "revoke",
            abstract: "Cluster mode (admin): revoke a certificate by serial; its open connections close at once.")
        @OptionGroup var connection: ConnectionOptions
        @Argument(help: "Hex serial (as `berth ca issue` prints it).") var serial: String

        func run() async throws {
            requireCluster(connection, "ca revoke")
            _ = try await connection.call(request { $0.revoke.serial = serial })
            print("revoked \(serial)")
        }
    }
}

extension CACommand {
    struct Rotate: AsyncParsableCommand {
        static let configuration = CommandConfiguration(
            commandName: "rotate",
            abstract: "Cluster mode (admin): new certificates without downtime, for the controller and/or nodes.",
            discussion:
                "--controller-cert: the controller takes a new key and certificate for new connections; open sessions keep theirs (revoke the old serial with `berth ca revoke` to cut them). --node NAME: the node renews its certificate at its next heartbeat; the command waits until the controller uses the new one and the old one is revoked. VPSs keep running either way. Nodes also renew on their own once two thirds of their certificate's validity have passed."
        )
        @OptionGroup var connection: ConnectionOptions
        @Flag(name: .customLong("controller-cert"), help: "Rotate the controller's own certificate.") var controllerCertificate = false
        @Option(name: .customLong("node"), help: "A node that renews its certificate (repeatable).") var nodes: [String] = []

        func run() async throws {
            requireCluster(connection, "ca rotate")
            guard controllerCertificate || !nodes.isEmpty else {
                fail(WireError(.invalidArgument, "rotate: name --controller-cert and/or --node NAME", field: "node"))
            }
            try await connection.withClient { client in
                if controllerCertificate {
                    let result = try await client.call(request { $0.rotate.controller = true }).rotated
                    print("controller: new certificate, serial \(result.controllerSerial)")
                }
                for node in nodes {
                    let before = try await client.call(request { $0.nodeShow.name = node }).clusterNode.certificateSerial
                    _ = try await client.call(request { $0.rotate.node = node })
                    var after = before
                    for _ in 0..<150 where after == before {
                        try await Task.sleep(nanoseconds: 100_000_000)
                        after = try await client.call(request { $0.nodeShow.name = node }).clusterNode.certificateSerial
                    }
                    guard after != before else {
                        fail(WireError(.deadlineExceeded, "node \(node) did not renew within 15 s (is it up? `berth node show \(node)`)"))
                    }
                    print("\(node): new certificate, serial \(after) (\(before) revoked)")
                }
            }
        }
    }
}

func makeDirectory(_ path: String) throws(WireError) {
    if mkdir(path, 0o700) != 0 && errno != EEXIST {
        throw WireError(.kernel, "cannot create \(path)", stage: "mkdir", errno: errno)
    }
}

struct IPPoolCommand: AsyncParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "ippool", abstract: "Cluster mode: address pools for `create --ip auto[:POOL]`.",
        subcommands: [Add.self, PoolList.self, Remove.self])

    struct Add: AsyncParsableCommand {
        static let configuration = CommandConfiguration(commandName: "add", abstract: "Add a pool NAME covering CIDR.")
        @OptionGroup var connection: ConnectionOptions
        @Argument(help: "Pool name.") var name: String
        @Argument(help: "The pool's network, e.g. 198.18.64.0/24 or fd00:b17:64::/64.") var cidr: String
        @Option(help: "The network's gateway (never handed out).") var gateway: String?

        func run() async throws {
            requireCluster(connection, "ippool add")
            let pool = try await connection.call(
                request {
                    $0.ippoolAdd.name = name
                    $0.ippoolAdd.cidr = cidr
                    $0.ippoolAdd.gateway = gateway ?? ""
                }
            ).ippool
            print("\(pool.name) \(pool.cidr) \(pool.size) addresses")
        }
    }

    struct PoolList: AsyncParsableCommand {
        static let configuration = CommandConfiguration(commandName: "list", abstract: "Pools and how many addresses are in use.")
        @OptionGroup var connection: ConnectionOptions
        @Flag(help: "Print JSON.") var json = false

        func run() async throws {
            requireCluster(connection, "ippool list")
            let pools = try await connection.call(request { $0.ippoolList = Berth_V1_Empty() }).ippools.pools
            if json {
                printJSON(
                    .array(
                        pools.map {
                            .object([
                                "name": .string($0.name), "cidr": .string($0.cidr), "gateway": .string($0.gateway),
                                "used": .int(Int64($0.used)), "size": .int(Int64(clamping: $0.size)),
                            ])
                        }))
                return
            }
            printTable(
                [["NAME", "CIDR", "GATEWAY", "USED", "SIZE"]]
                    + pools.map {
                        [$0.name, $0.cidr, $0.gateway.isEmpty ? "-" : $0.gateway, String($0.used), String($0.size)]
                    })
        }
    }

    struct Remove: AsyncParsableCommand {
        static let configuration = CommandConfiguration(commandName: "remove", abstract: "Remove an unused pool.")
        @OptionGroup var connection: ConnectionOptions
        @Argument(help: "Pool name.") var name: String

        func run() async throws {
            requireCluster(connection, "ippool remove")
            _ = try await connection.call(request { $0.ippoolRemove.name = name })
            print("removed \(name)")
        }
    }
}

struct Events: AsyncParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "events", abstract: "Cluster mode: the controller's event log (node up/down, VPS lifecycle, who did it, …).")
    @OptionGroup var connection: ConnectionOptions
    @Flag(help: "Keep printing new events as they happen (Ctrl-C ends).") var follow = false
    @Option(help: "Show the last N events first.") var last = 20
    @Option(
        help:
            "Show every event after sequence number SEQ (the first column: the last one you saw) instead of the last N; with --follow, a follow resumed where it left off, with no gap."
    ) var since: UInt64?
    @Flag(help: "One JSON object per line.") var json = false

    func run() async throws {
        requireCluster(connection, "events")
        guard (0...1000).contains(last) else {
            fail(WireError(.invalidArgument, "last: \(last) must be from 0 to 1000", field: "last"))
        }
        try await connection.withClient { client in
            // Page through to the newest id: with --since printing every event after SEQ (a
            // pruned stretch said, never skipped silently), else keeping the last N.
            var after = since ?? 0
            var backlog: [Berth_V1_Event] = []
            while true {
                let page = try await client.call(
                    request {
                        $0.events.afterID = after; $0.events.limit = 1000
                    }
                ).events
                if since != nil {
                    reportPruned(after: after, page)
                    page.events.forEach(show)
                } else {
                    backlog = Array((backlog + page.events).suffix(last))
                }
                guard let newest = page.events.last else { break }
                after = newest.id
                if page.events.count < 1000 { break }
            }
            backlog.forEach(show)
            while follow {
                let page = try await client.call(
                    request {
                        $0.events.afterID = after
                        $0.events.waitMs = 25_000
                        $0.deadlineMs = 35_000
                    }
                ).events
                reportPruned(after: after, page)
                page.events.forEach(show)
                if let newest = page.events.last { after = newest.id }
            }
        }
    }

    /// Events after `after` were asked for, and the oldest kept is the page's `oldest_id` (or its
    /// first event, whichever comes first): those between went (the controller's
    /// eventRetention) before this client read them.
    func reportPruned(after: UInt64, _ page: Berth_V1_EventList) {
        let oldest = min(page.oldestID, page.events.first?.id ?? page.oldestID)
        guard oldest > after + 1 else { return }
        if json {
            writeOut(JSON.object(["pruned_from": .int(Int64(after + 1)), "pruned_to": .int(Int64(oldest - 1))]).render().oneLine + "\n")
        }
        writeErr(
            "berth: events \(after + 1)-\(oldest - 1) were pruned before they were read (the controller keeps its newest eventRetention); going on from \(oldest)\n"
        )
    }

    func show(_ event: Berth_V1_Event) {
        if json {
            writeOut(
                JSON.object([
                    "id": .int(Int64(event.id)), "at_ms": .int(event.atUnixMs), "kind": .string(event.kind),
                    "subject": .string(event.subject), "message": .string(event.message), "actor": .string(event.actor),
                ]).render().oneLine + "\n")
        } else {
            let actor = event.actor.isEmpty ? "" : (event.message.isEmpty ? "" : "  ") + "(by \(event.actor))"
            writeOut("\(event.id)  \(formatTime(event.atUnixMs))  \(event.kind)  \(event.subject)  \(event.message)\(actor)\n")
        }
    }
}

extension String {
    /// A rendered JSON value on one line (JSON Lines).
    var oneLine: String { split(separator: "\n").map { $0.trimmingPrefixSpaces() }.joined(separator: " ") }
}

extension Substring {
    func trimmingPrefixSpaces() -> Substring { drop(while: { $0 == " " }) }
}

/// "2026-11-26 23:41:07.123" in UTC, without Foundation.
func formatTime(_ unixMs: Int64) -> String {
    var seconds = time_t(unixMs / 1000)
    var parts = tm()
    gmtime_r(&seconds, &parts)
    func two(_ n: Int32) -> String { n < 10 ? "0\(n)" : "\(n)" }
    let ms = Int(unixMs % 1000)
    let millis = ms < 10 ? "00\(ms)" : ms < 100 ? "0\(ms)" : "\(ms)"
    return "\(parts.tm_year + 1900)-\(two(parts.tm_mon + 1))-\(two(parts.tm_mday)) \(two(parts.tm_hour)):\(two(parts.tm_min)):\(two(parts.tm_sec)).\(millis)"
}

struct OperationCommand: AsyncParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "operation", abstract: "Cluster mode: long operations (create, start, stop, restart, destroy) and their results.",
        subcommands: [Show.self, OperationList.self])

    struct Show: AsyncParsableCommand {
        static let configuration = CommandConfiguration(commandName: "show", abstract: "One operation; --wait re-attaches until it ends.")
        @OptionGroup var connection: ConnectionOptions
        @Argument(help: "Operation id (printed as the first progress line, or given with --operation-id).") var id: String
        @Flag(help: "Follow its progress until it ends; exits non-zero if it failed.") var wait = false
        @Flag(help: "Print JSON.") var json = false

        func run() async throws {
            requireCluster(connection, "operation show")
            let operation = try await connection.withClient { client -> Berth_V1_Operation in
                var shown = ""
                while true {
                    let operation = try await client.call(
                        request {
                            $0.operationShow.id = id
                            $0.operationShow.waitMs = wait ? 1000 : 0
                        }
                    ).operation
                    if wait && operation.progress != shown && !operation.progress.isEmpty && isatty(2) != 0 {
                        shown = operation.progress
                        writeErr("… \(shown)\n")
                    }
                    if !wait || operation.state != "running" { return operation }
                }
            }
            if json {
                printJSON(
                    .object([
                        "id": .string(operation.id), "kind": .string(operation.kind), "subject": .string(operation.subject),
                        "state": .string(operation.state), "progress": .string(operation.progress),
                        "error": .string(operation.error.message), "error_code": .string(operation.error.code),
                        "started_ms": .int(operation.startedUnixMs), "finished_ms": .int(operation.finishedUnixMs),
                    ]))
            } else {
                var line = "\(operation.id) \(operation.kind) \(operation.subject) \(operation.state)"
                if operation.state == "failed" { line += ": \(operation.error.message)" }
                print(line)
            }
            if wait && operation.state == "failed" { fail(WireError(reply: operation.error)) }
        }
    }

    struct OperationList: AsyncParsableCommand {
        static let configuration = CommandConfiguration(commandName: "list", abstract: "The most recent operations.")
        @OptionGroup var connection: ConnectionOptions

        func run() async throws {
            requireCluster(connection, "operation list")
            let operations = try await connection.call(request { $0.operationList = Berth_V1_Empty() }).operations.operations
            printTable(
                [["ID", "KIND", "VPS", "STATE", "STARTED", "PROGRESS"]]
                    + operations.map {
                        [$0.id, $0.kind, $0.subject, $0.state, formatTime($0.startedUnixMs), $0.progress.isEmpty ? "-" : $0.progress]
                    })
        }
    }
}
