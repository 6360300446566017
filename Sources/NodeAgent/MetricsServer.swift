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

    public static func bind(host: String, port: Int, manager: VPSManager, registry: PrometheusCollectorRegistry,
                            group: EventLoopGroup) async throws -> MetricsServer {
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

    func render() async -> String {
        let snapshot = await manager.accountingSnapshot()
        let scrape = PrometheusCollectorRegistry()
        for vps in snapshot {
            let labels = [("vps", vps.name)]
            scrape.makeGauge(name: "berth_vps_running", labels: labels, help: "1 while the VPS runs").set(to: vps.running ? 1.0 : 0.0)
            guard vps.running else { continue }
            let u = vps.usage
            scrape.makeGauge(name: "berth_vps_memory_bytes", labels: labels, help: "Memory charged to the VPS").set(Double(u.memoryBytes))
            scrape.makeGauge(name: "berth_vps_memory_peak_bytes", labels: labels, help: "Highest memory charge").set(Double(u.memoryPeakBytes))
            scrape.makeGauge(name: "berth_vps_memory_limit_bytes", labels: labels, help: "Memory limit (0: none)").set(Double(u.memoryLimitBytes ?? 0))
            scrape.makeGauge(name: "berth_vps_memory_failcnt", labels: labels, help: "Times the memory limit was hit").set(Double(u.memoryFailcount))
            scrape.makeGauge(name: "berth_vps_pids", labels: labels, help: "Processes and threads").set(Double(u.pids))
            scrape.makeGauge(name: "berth_vps_pids_failcnt", labels: labels, help: "Forks refused by the pids limit").set(Double(u.pidsFailcount))
            scrape.makeGauge(name: "berth_vps_cpu_seconds_total", labels: labels, help: "CPU time used").set(Double(u.cpuNanoseconds) / 1e9)
            scrape.makeGauge(name: "berth_vps_cpu_throttled_periods_total", labels: labels, help: "CFS periods throttled by the CPU limit")
                .set(Double(u.cpuThrottledPeriods))
        }
        scrape.makeGauge(name: "berth_node_vps", labels: [("state", "running")], help: "VPSs on this node by state")
            .set(to: Double(snapshot.filter(\.running).count))
        scrape.makeGauge(name: "berth_node_vps", labels: [("state", "stopped")], help: "VPSs on this node by state")
            .set(to: Double(snapshot.filter { !$0.running }.count))
        return registry.emitToString() + scrape.emitToString()
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
