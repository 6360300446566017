import BerthCore
import Foundation
import Logging
import Wire
import WireTLS

/// Templates across the cluster: `template import` through the controller (received once,
/// relayed to the nodes) and `template export` (relayed from the node that holds it).
final class TemplateDistribution: Sendable {
    let store: ClusterStore
    let liveness: Liveness
    let links: AgentLinks
    /// Where tarballs are kept while they are relayed.
    let uploadDirectory: String
    let logger: Logger

    init(store: ClusterStore, liveness: Liveness, links: AgentLinks, uploadDirectory: String, logger: Logger) {
        self.store = store
        self.liveness = liveness
        self.links = links
        self.uploadDirectory = uploadDirectory
        self.logger = logger
    }

    /// The tarball is received once, checked against its size and SHA-256, then sent to each
    /// target node (every node that is up, or the ones named), at most four at a time, each
    /// under its own stream credit. One node's failure does not stop the others; the result says
    /// per node what happened.
    func distribute(_ r: Berth_V1_TemplateUploadRequest, by caller: Caller, stream: ServerStream) async throws -> Berth_V1_TemplateUploadResult {
        try Name.validate(r.name, field: "template")
        guard FileTransfer.tarFormats.contains(r.format) else {
            throw WireError(.invalidArgument, "format: '\(r.format)' is not tar, tar.gz or tar.xz", field: "format")
        }
        let targets = try targetNodes(named: r.nodes, for: r.name)
        let staging = uploadDirectory + "/template-\(r.name)-\(UUID().uuidString).\(r.format)"
        defer { unlink(staging) }
        try await FileTransfer.receive(into: staging, size: r.size, sha256: r.sha256, from: stream.input, field: "tarball")
        stream.progress("received \(r.size) bytes, sha256 verified; sending to \(targets.map(\.name).joined(separator: ", "))")
        var placed: [Berth_V1_TemplatePlacement] = []
        try await withThrowingTaskGroup(of: Berth_V1_TemplatePlacement.self) { group in
            var pending = targets[...]
            for _ in 0..<4 {
                guard let node = pending.popFirst() else { break }
                group.addTask { await self.send(staging, r, to: node, stream: stream) }
            }
            while let done = try await group.next() {
                placed.append(done)
                if let node = pending.popFirst() {
                    group.addTask { await self.send(staging, r, to: node, stream: stream) }
                }
            }
        }
        placed.sort { $0.node < $1.node }
        let good = placed.filter { $0.hasTemplate }.map(\.node)
        try? store.addEvent(
            kind: "template.distributed", subject: r.name,
            message: "to \(good.isEmpty ? "no node" : good.joined(separator: ",")) by \(caller.name)")
        logger.info("template distributed", metadata: ["template": "\(r.name)", "nodes": "\(good)", "by": "\(caller.name)"])
        var result = Berth_V1_TemplateUploadResult()
        result.placed = placed
        return result
    }

    /// The nodes named (each must exist and be up), or every node that is up.
    func targetNodes(named names: [String], for template: String) throws -> [NodeRecord] {
        let nodes = try store.nodes()
        if names.isEmpty {
            let targets = nodes.filter { liveness.isAlive($0.name) }
            guard !targets.isEmpty else { throw WireError(.unavailable, "no node is up to take template \(template)") }
            return targets
        }
        return try Set(names).sorted().map { name in
            guard let node = nodes.first(where: { $0.name == name }) else {
                throw WireError(.notFound, "node: no node named \(name) (see `berth node list`)", field: "node")
            }
            guard liveness.isAlive(name) else { throw WireError(.unavailable, "node: \(name) is down", field: "node") }
            return node
        }
    }

    /// One node's import of the staged tarball; its failure is its placement's error.
    func send(_ path: String, _ r: Berth_V1_TemplateUploadRequest, to node: NodeRecord, stream: ServerStream) async -> Berth_V1_TemplatePlacement {
        var placement = Berth_V1_TemplatePlacement()
        placement.node = node.name
        do {
            var upload = r
            upload.nodes = []
            var request = Berth_V1_Request()
            request.templateUpload = upload
            let call = try await links.client(for: node).start(request)
            try await FileTransfer.send(path, on: call)
            let response = try await call.result { stream.progress("\(node.name): \($0.step)") }
            guard let template = response.templateUpload.placed.first?.template else {
                throw WireError(.internalError, "node \(node.name) answered without the template")
            }
            placement.template = template
            stream.progress("\(node.name): imported")
        } catch {
            placement.error = WireServerHandler.wireError(from: error).reply
            stream.progress("\(node.name): failed: \(placement.error.message)")
        }
        return placement
    }

    /// `template export`: the tar stream is relayed from the node named, or from the first node
    /// that is up and reported holding the template, under each hop's credit.
    func export(_ request: Berth_V1_Request, stream: ServerStream) async throws -> Berth_V1_Response {
        try await links.forward(request, to: try exportingNode(request.templateExport), stream: stream)
    }

    func exportingNode(_ r: Berth_V1_TemplateExportRequest) throws -> NodeRecord {
        let nodes = try store.nodes()
        if !r.node.isEmpty {
            guard let node = nodes.first(where: { $0.name == r.node }) else {
                throw WireError(.notFound, "node: no node named \(r.node) (see `berth node list`)", field: "node")
            }
            guard liveness.isAlive(node.name) else { throw WireError(.unavailable, "node: \(node.name) is down", field: "node") }
            return node
        }
        guard let node = nodes.first(where: { liveness.isAlive($0.name) && (liveness.report($0.name)?.templates?.contains(r.name) ?? false) }) else {
            throw WireError(.notFound, "template: no node that is up holds template \(r.name)", field: "template")
        }
        return node
    }
}
