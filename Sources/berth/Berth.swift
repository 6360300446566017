import ArgumentParser
import BerthCore
import NIOCore
import NIOPosix
import Wire
import WireTLS

#if canImport(Glibc)
    import Glibc
#endif

/// The process entry. An `async` main would park the main thread in `dispatch_main()`, which ends
/// it with `pthread_exit`: a forced unwind that, in this statically linked binary, first sorts the
/// unwind table of the whole executable (37 ms of CPU per command when measured). The command
/// runs as a task instead, and the process exits when it is done.
@main
enum BerthEntry {
    static func main() {
        startCommand()
        // Reached only if the command suspends (cluster mode, terminals); its task exits the process.
        while true { pause() }
    }
}

/// Runs the command on this thread until its first suspension. A node-local command never
/// suspends (its client blocks), so it starts no thread of the concurrency pool: about 1 ms less
/// per command than a detached task when measured. Declared outside the `@main` type, whose
/// main-actor isolation the task would otherwise inherit and wait for forever.
nonisolated func startCommand() {
    Task.immediate {
        await Berth.main()
        exit(0)
    }
}

struct Berth: AsyncParsableCommand {
    static let configuration = CommandConfiguration(
        // Every command names itself: without an explicit name ArgumentParser derives it with
        // String(describing:), a dynamic-cast scan of every conformance in the binary (18 % of a
        // `berth list` run when measured).
        commandName: "berth",
        abstract: "Run and manage VPSs: system containers with their own init, limits and isolation.",
        subcommands: [
            TemplateCommand.self, Create.self, Start.self, Stop.self, Restart.self, Destroy.self,
            Status.self, List.self, Stats.self, NodeCommand.self, Exec.self, Enter.self, Console.self, SetCommand.self,
            CACommand.self, IPPoolCommand.self, Events.self, OperationCommand.self, Migrate.self, SnapshotCommand.self,
            BackupCommand.self, RestoreCommand.self, TenantCommand.self,
        ])

    /// The connection flags may also come before the command (`berth --controller H:P list`, as
    /// Docs/cli.md writes them); they are handed to every command through their environment names.
    static func main() async {
        var arguments = Array(CommandLine.arguments.dropFirst())
        while let first = arguments.first, first.hasPrefix("--") {
            let parts = first.split(separator: "=", maxSplits: 1).map(String.init)
            guard let variable = globalFlagVariable(parts[0]) else { break }
            if parts.count == 2 {
                setenv(variable, parts[1], 1)
                arguments.removeFirst()
            } else if arguments.count >= 2 {
                setenv(variable, arguments[1], 1)
                arguments.removeFirst(2)
            } else {
                break
            }
        }
        if let command = PlainCommand(arguments) {
            await command.run(Connection.fromEnvironment)
            return
        }
        do {
            var command = try parseAsRoot(arguments)
            if var asyncCommand = command as? AsyncParsableCommand {
                try await asyncCommand.run()
            } else {
                try command.run()
            }
        } catch {
            exit(withError: error)
        }
    }
}

/// The environment variable a connection flag given before the command stands for. A switch,
/// not a dictionary literal: the first `[String: String]` of a process instantiates its generic
/// metadata at run time, a scan of every conformance in this binary (a sixth of a `berth status`
/// when measured).
func globalFlagVariable(_ flag: String) -> String? {
    switch flag {
    case "--agent": "BERTH_AGENT"
    case "--controller": "BERTH_CONTROLLER"
    case "--config-dir": "BERTH_CONFIG"
    default: nil
    }
}

/// Flags every command takes: which agent (or controller) to talk to.
struct ConnectionOptions: ParsableArguments {
    @Option(name: .customLong("agent"), help: "The node agent's Unix socket (env BERTH_AGENT).")
    var agent: String?

    @Option(help: "Cluster mode: the controller's HOST:PORT (env BERTH_CONTROLLER).")
    var controller: String?

    @Option(help: "Directory with ca.pem, cert.pem, key.pem for cluster mode (env BERTH_CONFIG).")
    var configDir: String?

    @Option(
        help:
            "Cluster mode: name this create/start/stop/restart/destroy so that running it again re-attaches to it instead of repeating it (env BERTH_OPERATION_ID)."
    )
    var operationId: String?

    /// The flags given, each falling back to its environment variable.
    var resolved: Connection { Connection(agent: agent, controller: controller, configDir: configDir, operationId: operationId) }

    var isCluster: Bool { resolved.isCluster }
    func call(_ request: Berth_V1_Request, onProgress: ((Berth_V1_Progress) -> Void)? = nil) async throws -> Berth_V1_Response {
        try await resolved.call(request, onProgress: onProgress)
    }
    func nodeClient() -> BlockingWireClient { resolved.nodeClient() }
    func withClient<T>(_ body: (WireClient) async throws -> T) async throws -> T { try await resolved.withClient(body) }
}

/// Which agent (or controller) a command talks to, and how. Built from ConnectionOptions, or
/// from the environment alone for a command that skipped the parser (PlainCommand).
struct Connection {
    var agent: String?
    var controller: String?
    var configDir: String?
    var operationId: String?

    static var fromEnvironment: Connection { Connection() }

    var socketPath: String {
        agent ?? environment("BERTH_AGENT") ?? "/run/berth/agent.sock"
    }

    /// The controller's HOST:PORT when in cluster mode.
    var controllerAddress: String? {
        guard let value = controller ?? environment("BERTH_CONTROLLER"), !value.isEmpty else { return nil }
        return value
    }

    var isCluster: Bool { controllerAddress != nil }

    /// One request and its response (progress steps to `onProgress`). On the node the call
    /// takes the synchronous client: a command that makes one call has no use for event loop
    /// threads. Wire errors become one stderr line and a documented exit code.
    func call(_ request: Berth_V1_Request, onProgress: ((Berth_V1_Progress) -> Void)? = nil) async throws -> Berth_V1_Response {
        var request = request
        // Only create/start/stop/restart/destroy use it; one command makes one such call.
        request.operationID = operationId ?? environment("BERTH_OPERATION_ID") ?? ""
        if isCluster {
            let sent = request
            return try await withClient { client in
                if let onProgress { return try await client.call(sent, onProgress: onProgress) }
                return try await client.call(sent)
            }
        }
        do {
            return try nodeClient().call(request, onProgress: onProgress ?? { _ in })
        } catch {
            fail(error)
        }
    }

    /// The synchronous client connected to this node's agent.
    func nodeClient() -> BlockingWireClient {
        do { return try BlockingWireClient(unixPath: socketPath) } catch { fail(error) }
    }

    /// Runs `body` against the agent (or, in cluster mode, the controller over mTLS); wire errors
    /// become one stderr line and a documented exit code.
    func withClient<T>(_ body: (WireClient) async throws -> T) async throws -> T {
        let client: WireClient
        do {
            if let controllerAddress {
                let directory = configDir ?? environment("BERTH_CONFIG") ?? ((environment("HOME") ?? "/root") + "/.config/berth")
                let bundle = try CredentialBundle.load(directory: directory)
                let controller = try HostPort(parsing: controllerAddress, field: "controller")
                client = try await WireClient.connect(
                    host: controller.host, port: controller.port, bundle: bundle, group: MultiThreadedEventLoopGroup.singleton)
                guard client.peerIdentity?.role == .controller else {
                    await client.close()
                    throw WireError(.unauthenticated, "\(controllerAddress) did not present a controller certificate")
                }
            } else {
                client = try await WireClient.connect(unixPath: socketPath, group: MultiThreadedEventLoopGroup.singleton)
            }
        } catch let error as WireError {
            fail(error)
        }
        do {
            let result = try await body(client)
            await client.close()
            return result
        } catch let error as WireError {
            fail(error)
        }
    }
}

/// The wall clock in milliseconds (without Foundation: this file is on the fast path).
func nowUnixMilliseconds() -> Int64 {
    var now = timespec()
    clock_gettime(CLOCK_REALTIME, &now)
    return Int64(now.tv_sec) * 1000 + Int64(now.tv_nsec) / 1_000_000
}

/// `parts.joined(separator:)` by hand: the generic one instantiates its metadata at run time on
/// first use, a conformance scan of this binary that costs more than the status line it builds.
func joinedText(_ parts: [String], separator: String) -> String {
    var text = ""
    var first = true
    for part in parts {
        if !first { text += separator }
        text += part
        first = false
    }
    return text
}

/// "k1=v1,k2=v2", keys sorted.
func labelText(_ labels: [String: String]) -> String {
    labels.sorted { $0.key < $1.key }.map { "\($0.key)=\($0.value)" }.joined(separator: ",")
}

func fail(_ error: WireError) -> Never {
    writeErr("berth: \(error.message)\n")
    exit(error.exitCode)
}

func request(_ build: (inout Berth_V1_Request) -> Void) -> Berth_V1_Request {
    var request = Berth_V1_Request()
    build(&request)
    return request
}

/// A progress line on stderr (only when it is a terminal, so scripts get clean output).
func showProgress(_ progress: Berth_V1_Progress) {
    guard isatty(2) != 0 else { return }
    writeErr("… \(progress.step)\n")
}

extension Berth_V1_VpsStatus {
    /// One script-friendly line: "NAME STATE key=value ...".
    var line: String {
        var parts = [name, state]
        parts.append("pid=\(pid)")
        parts.append("hostname=\(hostname)")
        parts.append("template=\(template)")
        parts.append("ips=\(ips.isEmpty ? "-" : joinedText(ips, separator: ","))")
        if !net.isEmpty { parts.append("net=\(net)") }
        parts.append("node=\(node)")
        parts.append("onboot=\(onboot ? "yes" : "no")")
        if !labels.isEmpty { parts.append("labels=" + labelText(labels)) }
        if privileged { parts.append("privileged=yes") }
        if !lastExit.isEmpty && state != "running" { parts.append("last_exit=\"\(lastExit)\"") }
        if snapshots > 0 { parts.append("snapshots=\(snapshots) snapshot_bytes=\(snapshotBytes)") }
        if ha {
            parts.append("ha=yes")
            let now = nowUnixMilliseconds()
            let shown = replicas.map { replica in
                replica.replicatedUnixMs > 0 ? "\(replica.node):lag=\((now - replica.replicatedUnixMs) / 1000)s" : "\(replica.node):none-yet"
            }
            parts.append("replicas=" + (shown.isEmpty ? "-" : joinedText(shown, separator: ",")))
        }
        return joinedText(parts, separator: " ")
    }

    var json: JSON {
        var limits: [String: JSON] = ["disk_bytes": .int(Int64(self.limits.diskBytes))]
        if self.limits.memoryBytes > 0 { limits["memory_bytes"] = .int(Int64(self.limits.memoryBytes)) }
        if self.limits.hasSwapBytes { limits["swap_bytes"] = .int(Int64(self.limits.swapBytes)) }
        if self.limits.pids > 0 { limits["pids"] = .int(Int64(self.limits.pids)) }
        if self.limits.cpuUnits > 0 { limits["cpu_units"] = .int(Int64(self.limits.cpuUnits)) }
        if self.limits.cpuLimitPct > 0 { limits["cpu_limit_pct"] = .int(Int64(self.limits.cpuLimitPct)) }
        if !self.limits.cpus.isEmpty { limits["cpus"] = .string(self.limits.cpus) }
        if self.limits.files > 0 { limits["files"] = .int(Int64(self.limits.files)) }
        if self.limits.diskInodes > 0 { limits["disk_inodes"] = .int(Int64(self.limits.diskInodes)) }
        return .object([
            "name": .string(name), "state": .string(state), "hostname": .string(hostname),
            "ips": .array(ips.map(JSON.string)), "template": .string(template), "node": .string(node),
            "pid": .int(Int64(pid)), "labels": .object(labels.mapValues(JSON.string)), "onboot": .bool(onboot),
            "limits": .object(limits), "last_exit": .string(lastExit), "started_at": .int(startedAtUnix),
            "net": .string(net), "host_interface": .string(hostInterface), "mac": .string(mac),
            "nameservers": .array(nameservers.map(JSON.string)), "searchdomains": .array(searchdomains.map(JSON.string)),
            "privileged": .bool(privileged), "idmap": .string(idmap), "capabilities": .object(capabilities.mapValues(JSON.string)),
            "storage": .string(storage.isEmpty ? "image" : storage), "layout": .string(layout.isEmpty ? "loop" : layout),
            "snapshots": .int(Int64(snapshots)), "snapshot_bytes": .int(Int64(snapshotBytes)),
            "ha": .bool(ha), "replication_interval_s": .int(Int64(replicationIntervalS)), "fence_armed": .bool(fenceArmed),
            "replicas": .array(
                replicas.map {
                    .object([
                        "node": .string($0.node), "replicated_unix_ms": .int($0.replicatedUnixMs),
                        "lag_ms": .int($0.replicatedUnixMs > 0 ? nowUnixMilliseconds() - $0.replicatedUnixMs : -1),
                        "bytes_sent": .int(Int64($0.bytesSent)), "total_bytes_sent": .int(Int64($0.totalBytesSent)), "error": .string($0.error),
                    ])
                }),
        ])
    }
}
