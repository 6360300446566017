import BerthCore
import Foundation
import Logging
import Wire
import WireTLS

/// A tarball `template import` sends through the controller, as the call announced it.
struct TemplateUpload: Sendable, Equatable {
    var name: String
    /// "tar", "tar.gz" or "tar.xz".
    var format: String
    var size: UInt64
    /// Lower-case hex of the whole file.
    var sha256: String
    /// The nodes that get it; empty: every node that is up.
    var nodes: [String]
}

/// Where an uploaded template went on one node: what the node answered, or its error.
struct TemplatePlaced<Template: Sendable>: Sendable {
    var node: String
    var template: Template?
    var error: WireError?
}

/// Templates across the cluster: `template import` through the controller (received once,
/// relayed to the nodes) and `template export` (relayed from the node that holds it); the RPC
/// layer makes the calls to the nodes (ServedCall+Handlers.swift).
final class TemplateDistribution: Sendable {
    let store: ClusterStore
    let liveness: Liveness
    /// Where tarballs are kept while they are relayed.
    let uploadDirectory: String
    let logger: Logger

    init(store: ClusterStore, liveness: Liveness, uploadDirectory: String, logger: Logger) {
        self.store = store
        self.liveness = liveness
        self.uploadDirectory = uploadDirectory
        self.logger = logger
    }

    /// The tarball is received once, checked against its size and SHA-256, then handed to `send`
    /// for each target node (every node that is up, or the ones named), at most four at a time,
    /// each under its own stream credit. One node's failure does not stop the others; the result
    /// says per node what happened.
    func distribute<Template: Sendable>(
        _ upload: TemplateUpload, by caller: Caller, stream: ServerStream,
        send: @escaping @Sendable (_ staging: String, _ node: NodeRecord) async throws -> Template
    ) async throws -> [TemplatePlaced<Template>] {
        try Name.validate(upload.name, field: "template")
        guard FileTransfer.tarFormats.contains(upload.format) else {
            throw WireError(.invalidArgument, "format: '\(upload.format)' is not tar, tar.gz or tar.xz", field: "format")
        }
        let targets = try targetNodes(named: upload.nodes, for: upload.name)
        let staging = uploadDirectory + "/template-\(upload.name)-\(UUID().uuidString).\(upload.format)"
        defer { unlink(staging) }
        try await FileTransfer.receive(into: staging, size: upload.size, sha256: upload.sha256, from: stream.input, field: "tarball")
        stream.progress("received \(upload.size) bytes, sha256 verified; sending to \(targets.map(\.name).joined(separator: ", "))")
        var placed: [TemplatePlaced<Template>] = []
        try await withThrowingTaskGroup(of: TemplatePlaced<Template>.self) { group in
            var pending = targets[...]
            for _ in 0..<4 {
                guard let node = pending.popFirst() else { break }
                group.addTask { await Self.place(staging, on: node, stream: stream, send: send) }
            }
            while let done = try await group.next() {
                placed.append(done)
                if let node = pending.popFirst() {
                    group.addTask { await Self.place(staging, on: node, stream: stream, send: send) }
                }
            }
        }
        placed.sort { $0.node < $1.node }
        let good = placed.filter { $0.template != nil }.map(\.node)
        try? store.addEvent(
            kind: "template.distributed", subject: upload.name,
            message: "to \(good.isEmpty ? "no node" : good.joined(separator: ","))", actor: caller.actor)
        logger.info("template distributed", metadata: ["template": "\(upload.name)", "nodes": "\(good)", "by": "\(caller.name)"])
        return placed
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
    static func place<Template: Sendable>(
        _ staging: String, on node: NodeRecord, stream: ServerStream,
        send: @Sendable (_ staging: String, _ node: NodeRecord) async throws -> Template
    ) async -> TemplatePlaced<Template> {
        do {
            let template = try await send(staging, node)
            stream.progress("\(node.name): imported")
            return TemplatePlaced(node: node.name, template: template, error: nil)
        } catch {
            let failure = WireServerHandler.wireError(from: error)
            stream.progress("\(node.name): failed: \(failure.message)")
            return TemplatePlaced(node: node.name, template: nil, error: failure)
        }
    }

    /// `template export`: the node named, or the first node that is up and reported holding the
    /// template (the RPC layer relays the tar stream from it).
    func exportingNode(named name: String, for template: String) throws -> NodeRecord {
        let nodes = try store.nodes()
        if !name.isEmpty {
            guard let node = nodes.first(where: { $0.name == name }) else {
                throw WireError(.notFound, "node: no node named \(name) (see `berth node list`)", field: "node")
            }
            guard liveness.isAlive(node.name) else { throw WireError(.unavailable, "node: \(node.name) is down", field: "node") }
            return node
        }
        guard let node = nodes.first(where: { liveness.isAlive($0.name) && (liveness.report($0.name)?.templates?.contains(template) ?? false) }) else {
            throw WireError(.notFound, "template: no node that is up holds template \(template)", field: "template")
        }
        return node
    }
}
