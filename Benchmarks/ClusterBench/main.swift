// Cluster benchmarks (Benchmarks/cluster.sh runs them on a release build):
//   cluster-bench rpc [--callers 64] [--connections 8] [--seconds 5] [--client-loops N] [--server-loops N]
//       request/response over mTLS on loopback: throughput and latency with N concurrent callers
//       (after a second of all of them as warm-up), then one caller in sequence; against a server
//       process of its own (as the controller is deployed) whose handler runs on the event loop
//       (a handler that never blocks), then on the cooperative pool (every other handler), then
//       with client and server in this one process. Callers run on their connection's event loop.
//       Each side has one event loop per core unless told otherwise: on a small machine the
//       loops of both sides outnumber the cores, which is what the tail latency shows.
//   cluster-bench scheduler [--nodes 10000] [--placements 100000]
//       the pure scheduler placing a batch on a simulated fleet
//   cluster-bench store [--vpses 100000]
//       a controller store with that many VPS records: import time, start-up load, resident memory
//   cluster-bench heartbeats --controller H:P --admin DIR [--agents 1000] [--seconds 10]
//       simulated agents enrol with real tokens and heartbeat at 1 s against a running controller
import BerthCore
import Controller
import Foundation
import NIOCore
import NIOPosix
import Placement
import Wire
import WireTLS

func option(_ name: String, _ fallback: Int) -> Int {
    let args = CommandLine.arguments
    if let i = args.firstIndex(of: "--" + name), i + 1 < args.count, let value = Int(args[i + 1]) { return value }
    return fallback
}

func stringOption(_ name: String) -> String? {
    let args = CommandLine.arguments
    if let i = args.firstIndex(of: "--" + name), i + 1 < args.count { return args[i + 1] }
    return nil
}

func percentile(_ sorted: [UInt64], _ p: Double) -> Double {
    guard !sorted.isEmpty else { return 0 }
    return Double(sorted[min(sorted.count - 1, Int(Double(sorted.count) * p))]) / 1000
}

func residentKiB() -> Int {
    let status = (try? String(contentsOfFile: "/proc/self/status", encoding: .utf8)) ?? ""
    let line = status.split(separator: "\n").first { $0.hasPrefix("VmRSS:") } ?? ""
    return Int(line.split(separator: " ").dropFirst().first ?? "0") ?? 0
}

struct EchoStatus: WireService {
    var onEventLoop = true

    func handlesOnEventLoop(_ request: Berth_V1_Request) -> Bool { onEventLoop }

    func handle(_ request: Berth_V1_Request, stream: ServerStream) async throws -> Berth_V1_Response {
        var response = Berth_V1_Response()
        response.status.name = request.status.name
        response.status.state = "running"
        return response
    }
}

func temporaryDirectory(_ tag: String) throws -> String {
    let path = NSTemporaryDirectory() + "berth-bench-\(tag)-\(getpid())"
    try FileManager.default.createDirectory(atPath: path, withIntermediateDirectories: true)
    return path
}

func rpc() async throws {
    let callers = option("callers", 64), connections = option("connections", 8), seconds = option("seconds", 5)
    let dir = try temporaryDirectory("rpc")
    defer { try? FileManager.default.removeItem(atPath: dir) }
    let ca = try ClusterCA.create(directory: dir + "/ca")
    let serverBundle = try ca.issueBundle(role: .controller, name: "controller", hosts: ["127.0.0.1"])
    let bundle = try ca.issueBundle(role: .admin, name: "bench")
    let group = loopGroup("client-loops")

    // As deployed: the server (the controller) is a process of its own, so the callers' tasks and
    // the server's handlers do not share one concurrency pool.
    try FileManager.default.createDirectory(atPath: dir + "/server", withIntermediateDirectories: true)
    try serverBundle.write(directory: dir + "/server")
    for handlers in ["event-loop", "pool"] {
        let server = Process()
        server.executableURL = URL(fileURLWithPath: CommandLine.arguments[0])
        server.arguments = ["rpc-server", "--dir", dir + "/server", "--handlers", handlers] + (stringOption("server-loops").map { ["--loops", $0] } ?? [])
        let toServer = Pipe(), fromServer = Pipe()
        server.standardInput = toServer
        server.standardOutput = fromServer
        try server.run()
        var portLine = ""
        while !portLine.hasSuffix("\n"), let byte = try fromServer.fileHandleForReading.read(upToCount: 1), !byte.isEmpty {
            portLine += String(decoding: byte, as: UTF8.self)
        }
        guard let port = Int(portLine.dropFirst("port ".count).dropLast()) else {
            throw WireError(.unavailable, "rpc-server printed no port: \(portLine)")
        }
        try await measure(
            label: "server in its own process, handler on the \(handlers == "pool" ? "cooperative pool" : "event loop")",
            port: port, bundle: bundle, group: group, callers: callers, connections: connections, seconds: seconds)
        try toServer.fileHandleForWriting.close()
        server.waitUntilExit()
    }

    let inline = try await TLSWireServer.bind(host: "127.0.0.1", port: 0, service: EchoStatus(), bundle: serverBundle, group: group)
    try await measure(
        label: "client and server in one process, handler on the event loop", port: inline.port, bundle: bundle, group: group,
        callers: callers, connections: connections, seconds: seconds)
    await inline.close()
}

/// `cluster-bench rpc-server --dir D [--handlers event-loop|pool]`: serves the echo service over
/// mTLS with the bundle in D, prints `port N`, and stops when its standard input closes.
func rpcServer() async throws {
    guard let dir = stringOption("dir") else { throw WireError(.invalidArgument, "rpc-server needs --dir", field: "dir") }
    let service = EchoStatus(onEventLoop: stringOption("handlers") != "pool")
    let server = try await TLSWireServer.bind(
        host: "127.0.0.1", port: 0, service: service,
        bundle: try CredentialBundle.load(directory: dir), group: loopGroup("loops"))
    print("port \(server.port)")
    await Task.detached {
        var byte: UInt8 = 0
        while read(0, &byte, 1) > 0 {}
    }.value
    await server.close()
}

/// The event loops of one side: `--NAME N` threads, or one per core (NIO's shared group).
func loopGroup(_ name: String) -> MultiThreadedEventLoopGroup {
    let threads = option(name, 0)
    return threads > 0 ? MultiThreadedEventLoopGroup(numberOfThreads: threads) : .singleton
}

func measure(
    label: String, port: Int, bundle: CredentialBundle, group: MultiThreadedEventLoopGroup,
    callers: Int, connections: Int, seconds: Int
) async throws {
    var clients: [WireClient] = []
    for _ in 0..<connections { clients.append(try await WireClient.connect(host: "127.0.0.1", port: port, bundle: bundle, group: group)) }
    var request = Berth_V1_Request()
    request.status.name = "web1"
    let frozen = request
    // Warm-up: a second of all callers at once (the first tenth of a second of such a burst runs
    // slower while buffers and caches grow), then the measured run.
    let warmUp = ContinuousClock.now + .seconds(1)
    let deadline = warmUp + .seconds(seconds)
    let latencies = try await withThrowingTaskGroup(of: [UInt64].self) { tasks in
        for caller in 0..<callers {
            let client = clients[caller % clients.count]
            tasks.addTask(executorPreference: client.executor) {
                var mine: [UInt64] = []
                mine.reserveCapacity(100_000)
                while ContinuousClock.now < warmUp { _ = try await client.call(frozen) }
                while ContinuousClock.now < deadline {
                    let t0 = DispatchTime.now().uptimeNanoseconds
                    _ = try await client.call(frozen)
                    mine.append(DispatchTime.now().uptimeNanoseconds - t0)
                }
                return mine
            }
        }
        return try await tasks.reduce(into: [UInt64]()) { $0 += $1 }.sorted()
    }
    let elapsed = ContinuousClock.now - warmUp
    let wall = Double(elapsed.components.seconds) + Double(elapsed.components.attoseconds) / 1e18
    print(
        String(
            format: "rpc, %@: %d callers on %d mTLS connections: %.0f calls/s, p50 %.3f ms, p99 %.3f ms, p99.9 %.3f ms (%d calls in %.1f s)",
            label, callers, connections, Double(latencies.count) / wall, percentile(latencies, 0.5) / 1000,
            percentile(latencies, 0.99) / 1000, percentile(latencies, 0.999) / 1000, latencies.count, wall))

    let first = clients[0]
    let sequential = try await withTaskExecutorPreference(first.executor) {
        var latencies: [UInt64] = []
        for _ in 0..<10_000 {
            let t0 = DispatchTime.now().uptimeNanoseconds
            _ = try await first.call(frozen)
            latencies.append(DispatchTime.now().uptimeNanoseconds - t0)
        }
        return latencies.sorted()
    }
    print(
        String(
            format: "rpc, %@: 1 caller in sequence: p50 %.3f ms, p99 %.3f ms (10000 calls)",
            label, percentile(sequential, 0.5) / 1000, percentile(sequential, 0.99) / 1000))
    for client in clients { await client.close() }
}

func scheduler() {
    let nodeCount = option("nodes", 10_000), placements = option("placements", 100_000)
    let nodes = (0..<nodeCount).map { i -> NodeSnapshot in
        var node = NodeSnapshot(
            name: String(format: "n%05d", i), labels: ["zone": "z\(i % 5)"],
            cpuMillis: 32_000, memoryBytes: 256 << 30, diskBytes: 4 << 40)
        node.templates = ["busybox", "debian-12"]
        return node
    }
    let requests = (0..<placements).map { i in
        PlacementRequest(
            cpuMillis: 500, memoryBytes: 1 << 30, diskBytes: 10 << 30,
            constraints: i % 4 == 0 ? ["zone": "z\(i % 5)"] : [:],
            antiAffinityGroup: i % 10 == 0 ? "g\(i % 1000)" : nil, template: "debian-12")
    }
    for strategy in [SchedulerPolicy.Strategy.spread, .binpack] {
        let scheduler = Scheduler(policy: SchedulerPolicy(strategy: strategy))
        let t0 = DispatchTime.now().uptimeNanoseconds
        let result = scheduler.placeAll(requests, on: nodes)
        let seconds = Double(DispatchTime.now().uptimeNanoseconds - t0) / 1e9
        let placed = result.filter { if case .node = $0 { return true } else { return false } }.count
        print(
            String(
                format: "scheduler %@: %d placements on %d nodes in %.2f s = %.0f placements/s (%d placed)",
                strategy.rawValue, placements, nodeCount, seconds, Double(placements) / seconds, placed))
    }
}

func store() throws {
    let count = option("vpses", 100_000)
    let dir = try temporaryDirectory("store")
    defer { try? FileManager.default.removeItem(atPath: dir) }
    let before = residentKiB()
    let store = try SQLiteStore(directory: dir + "/db")
    var spec = VPSSpec(name: "", template: "debian-12")
    spec.limits.memoryBytes = 1 << 30
    spec.labels = ["tenant": "acme", "tier": "web"]
    var status = VPSStatusRecord(state: "running")
    status.ips = ["198.18.0.1"]
    status.hostname = "vps.example"
    let t0 = DispatchTime.now().uptimeNanoseconds
    var batch: [VPSRecord] = []
    for i in 0..<count {
        spec.name = "vps\(i)"
        status.name = spec.name
        batch.append(VPSRecord(name: spec.name, node: "n\(i % 1000)", tenant: "", spec: spec, status: status, phase: .ready))
        if batch.count == 10_000 { try store.importVPSes(batch); batch.removeAll(keepingCapacity: true) }
    }
    try store.importVPSes(batch)
    let imported = Double(DispatchTime.now().uptimeNanoseconds - t0) / 1e9
    let t1 = DispatchTime.now().uptimeNanoseconds
    let all = try store.vpses()
    let loaded = Double(DispatchTime.now().uptimeNanoseconds - t1) / 1e9
    print(
        String(
            format: "store: %d VPS records imported in %.2f s; loading all (what a controller start reads) %.2f s; resident %.0f MiB (+%.0f MiB)",
            all.count, imported, loaded, Double(residentKiB()) / 1024, Double(residentKiB() - before) / 1024))
}

func heartbeats() async throws {
    guard let address = stringOption("controller"), let admin = stringOption("admin") else {
        FileHandle.standardError.write(Data("heartbeats needs --controller H:P --admin DIR\n".utf8))
        exit(2)
    }
    let agents = option("agents", 1000), seconds = option("seconds", 10)
    let controller = try HostPort(parsing: address, field: "controller")
    let (host, port) = (controller.host, controller.port)
    let group = MultiThreadedEventLoopGroup.singleton
    let adminClient = try await WireClient.connect(host: host, port: port, bundle: try CredentialBundle.load(directory: admin), group: group)
    // Enrol every simulated agent the real way: a token each, a key each.
    var bundles: [CredentialBundle] = []
    for i in 0..<agents {
        var tokenRequest = Berth_V1_Request()
        tokenRequest.nodeJoinToken.ttlSeconds = 600
        let token = try await adminClient.call(tokenRequest).joinToken.token
        let key = ClusterCA.generateKeyPair()
        let enrolClient = try await WireClient.connect(
            host: host, port: port, bundle: nil,
            pinnedCA: try JoinTokenText(parsing: token).caFingerprint, group: group)
        var enrol = Berth_V1_Request()
        enrol.enroll.token = token
        enrol.enroll.nodeName = String(format: "sim%04d", i)
        enrol.enroll.publicKeyPem = key.publicKeyPEM
        enrol.enroll.address = "198.18.200.1:7000"
        let reply = try await enrolClient.call(enrol).enrolled
        await enrolClient.close()
        bundles.append(CredentialBundle(caPEM: reply.caPem, certificatePEM: reply.certificatePem, keyPEM: key.privateKeyPEM))
    }
    await adminClient.close()
    var clients: [WireClient] = []
    for bundle in bundles { clients.append(try await WireClient.connect(host: host, port: port, bundle: bundle, group: group)) }
    print("heartbeats: \(agents) simulated agents enrolled and connected; beating every 1 s for \(seconds) s")
    var beat = Berth_V1_Request()
    beat.heartbeat.info.cpus = 16
    beat.heartbeat.info.memoryBytes = 64 << 30
    beat.heartbeat.info.diskBytes = 1 << 40
    beat.heartbeat.address = "198.18.200.1:7000"
    beat.heartbeat.templates = ["busybox"]
    let frozen = beat
    let failures = try await withThrowingTaskGroup(of: Int.self) { tasks in
        for (i, client) in clients.enumerated() {
            tasks.addTask {
                // Spread the agents over the second, as real ones drift apart.
                try await Task.sleep(for: .milliseconds(i * 1000 / max(1, agents)))
                var failed = 0
                for _ in 0..<seconds {
                    do { _ = try await client.call(frozen) } catch { failed += 1 }
                    try await Task.sleep(for: .seconds(1))
                }
                return failed
            }
        }
        return try await tasks.reduce(0, +)
    }
    print("heartbeats: \(agents * seconds - failures) of \(agents * seconds) heartbeats answered")
    for client in clients { await client.close() }
}

// Line-buffered even into a file: cluster.sh watches for the "enrolled and connected" line.
setvbuf(stdout, nil, _IOLBF, 0)
switch CommandLine.arguments.dropFirst().first {
case "rpc": try await rpc()
case "rpc-server": try await rpcServer()
case "scheduler": scheduler()
case "store": try store()
case "heartbeats": try await heartbeats()
default:
    FileHandle.standardError.write(Data("usage: cluster-bench rpc|scheduler|store|heartbeats [options]\n".utf8))
    exit(2)
}
