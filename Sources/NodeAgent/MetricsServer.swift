import Foundation
import Isolation
import Logging
import NIOCore
import NIOHTTP1
import NIOPosix
import Prometheus

/// Serves `GET /metrics` in the Prometheus text format: the agent's own swift-metrics (through
/// `registry`, which main bootstraps as the MetricsSystem) plus per-VPS and node gauges read
/// from the kernel at scrape time — nothing is polled in between, so an idle agent stays idle.
public final class MetricsServer: @unchecked Sendable {
    public let registry: PrometheusCollectorRegistry
    let manager: VPSManager
    let channel: Channel

    public static func bind(
        host: String, port: Int, manager: VPSManager, registry: PrometheusCollectorRegistry,
        group: EventLoopGroup
    ) async throws -> MetricsServer {
        let box = RendererBox()
        let channel = try await ServerBootstrap(group: group)
            .serverChannelOption(.socketOption(.so_reuseaddr), value: 1)
            .childChannelInitializer { channel in
                channel.pipeline.configureHTTPServerPipeline().flatMap {
                    channel.pipeline.addHandler(MetricsHTTPHandler(render: { await box.render?() ?? "" }))
                }
            }
            .bind(host: host, port: port).get()
        let server = MetricsServer(registry: registry, manager: manager, channel: channel)
        box.render = { [weak server] in await server?.render() ?? "" }
        return server
    }

    init(registry: PrometheusCollectorRegistry, manager: VPSManager, channel: Channel) {
        self.registry = registry
        self.manager = manager
        self.channel = channel
    }

    /// "127.0.0.1:9737" as actually bound (port 0 picks a free one).
    public var address: String {
        guard let local = channel.localAddress else { return "" }
        return "\(local.ipAddress ?? ""):\(local.port ?? 0)"
    }

    public func close() async { try? await channel.close().get() }

    /// The agent's own metrics (swift-prometheus) plus the per-VPS gauges, rendered straight to
    /// the text format: building a registry of ~10 gauges x VPSs on every scrape cost more than
    /// reading the kernel counters.
    func render() async -> String {
        let snapshot = await manager.accountingSnapshot()
        var text = registry.emitToString()
        text.reserveCapacity(text.utf8.count + snapshot.count * 900)
        typealias Sample = (name: String, help: String, value: (CgroupUsage) -> Double)
        let samples: [Sample] = [
            ("berth_vps_memory_bytes", "Memory charged to the VPS", { Double($0.memoryBytes) }),
            ("berth_vps_memory_peak_bytes", "Highest memory charge", { Double($0.memoryPeakBytes) }),
            ("berth_vps_memory_limit_bytes", "Memory limit (0: none)", { Double($0.memoryLimitBytes ?? 0) }),
            ("berth_vps_memory_failcnt", "Times the memory limit was hit", { Double(max($0.memoryFailcount, $0.oomKills)) }),
            ("berth_vps_oom_kills_total", "Processes the OOM killer ended in the VPS", { Double($0.oomKills) }),
            ("berth_vps_pids", "Processes and threads", { Double($0.pids) }),
            ("berth_vps_pids_failcnt", "Forks refused by the pids limit", { Double($0.pidsFailcount) }),
            ("berth_vps_cpu_seconds_total", "CPU time used", { Double($0.cpuNanoseconds) / 1e9 }),
            ("berth_vps_cpu_throttled_periods_total", "CFS periods throttled by the CPU limit", { Double($0.cpuThrottledPeriods) }),
            ("berth_vps_cpu_throttled_seconds_total", "Time the CPU limit held the VPS back", { Double($0.cpuThrottledNanoseconds) / 1e9 }),
            ("berth_vps_io_bytes_total", "Bytes read and written on the VPS's disk", { Double($0.ioBytes) }),
        ]
        func header(_ name: String, _ help: String) { text += "# HELP \(name) \(help)\n# TYPE \(name) gauge\n" }
        header("berth_vps_running", "1 while the VPS runs")
        for vps in snapshot { text += "berth_vps_running{vps=\"\(vps.name)\"} \(vps.running ? "1.0" : "0.0")\n" }
        let running = snapshot.filter(\.running)
        for sample in samples where !running.isEmpty {
            header(sample.name, sample.help)
            for vps in running { text += "\(sample.name){vps=\"\(vps.name)\"} \(sample.value(vps.usage))\n" }
        }
        header("berth_node_vps", "VPSs on this node by state")
        text += "berth_node_vps{state=\"running\"} \(Double(running.count))\n"
        text += "berth_node_vps{state=\"stopped\"} \(Double(snapshot.count - running.count))\n"
        return text
    }
}

final class RendererBox: @unchecked Sendable {
    var render: (@Sendable () async -> String)?
}

final class MetricsHTTPHandler: ChannelInboundHandler, @unchecked Sendable {
    typealias InboundIn = HTTPServerRequestPart
    typealias OutboundOut = HTTPServerResponsePart

    let render: @Sendable () async -> String
    var path = ""
    var method = HTTPMethod.GET

    init(render: @escaping @Sendable () async -> String) { self.render = render }

    func channelRead(context: ChannelHandlerContext, data: NIOAny) {
        switch unwrapInboundIn(data) {
        case .head(let head):
            path = head.uri
            method = head.method
        case .body:
            break
        case .end:
            let channel = context.channel
            guard method == .GET, path == "/metrics" || path.hasPrefix("/metrics?") else {
                respond(channel, status: .notFound, body: "only GET /metrics is served here\n", type: "text/plain")
                return
            }
            let render = self.render
            Task {
                let text = await render()
                self.respond(channel, status: .ok, body: text, type: "text/plain; version=0.0.4; charset=utf-8")
            }
        }
    }

    func respond(_ channel: Channel, status: HTTPResponseStatus, body: String, type: String) {
        var headers = HTTPHeaders()
        headers.add(name: "Content-Type", value: type)
        headers.add(name: "Content-Length", value: String(body.utf8.count))
        channel.write(HTTPServerResponsePart.head(HTTPResponseHead(version: .http1_1, status: status, headers: headers)), promise: nil)
        channel.write(HTTPServerResponsePart.body(.byteBuffer(ByteBuffer(string: body))), promise: nil)
        channel.writeAndFlush(HTTPServerResponsePart.end(nil), promise: nil)
    }
}
