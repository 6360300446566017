import ArgumentParser
import Foundation
import Wire

extension Berth_V1_DrainResult {
    /// "n1 drained" then one line per VPS: "  web3 done n2" / "  web4 blocked: no node fits: …".
    func show() {
        print("\(node) \(state)")
        for item in items {
            print("  \(item.vps) \(item.state)" + (item.to.isEmpty ? "" : " \(item.to)") + (item.reason.isEmpty ? "" : ": \(item.reason)"))
        }
    }
}

/// Runs a drain or restore call; with `detach`, prints the operation's id once the controller
/// has named it and returns.
func followNodeOperation(_ connection: ConnectionOptions, _ call: Berth_V1_Request, detach: Bool) async throws -> Berth_V1_DrainResult {
    if detach {
        return try await connection.call(call) { progress in
            guard progress.step.hasPrefix("operation ") else { return }
            print(progress.step.dropFirst("operation ".count))
            fflush(stdout)
            Foundation.exit(0)
        }.drain
    }
    return try await connection.call(call, onProgress: showProgress).drain
}

extension NodeCommand {
    struct Drain: AsyncParsableCommand {
        static let configuration = CommandConfiguration(
            commandName: "drain",
            abstract: "Cluster mode: cordon NODE and migrate every VPS away (Docs/migration.md).",
            discussion: """
                Each VPS is placed as a create would be; what cannot move yet is retried until the \
                deadline. The drain is complete only when no VPS runs on NODE. At the deadline, \
                --force stops the VPSs still running there; without it the drain ends incomplete \
                and lists them. It survives a controller restart. `berth node restore NODE` undoes it.
                """)
        @OptionGroup var connection: ConnectionOptions
        @Argument(help: "Node name.") var name: String
        @Option(help: "Give up moving after N[s|m|h|d] (default 1h).") var deadline: String?
        @Flag(help: "At the deadline, stop the VPSs that could not move.") var force = false
        @Option(help: "Migration mode of each move: warm (default) or cold (see `berth migrate --help`).") var mode: String?
        @Option(help: "VPSs moved at once (default 2).") var maxParallel: UInt32?
        @Flag(help: "Return at once with the operation's id.") var detach = false
        @Flag(help: "Start no new moves; those under way finish or roll back.") var cancel = false

        func run() async throws {
            requireCluster(connection, "node drain")
            var seconds: UInt64 = 0
            if let deadline {
                guard let parsed = parseDuration(deadline), parsed > 0 else {
                    fail(WireError(.invalidArgument, "deadline: '\(deadline)' is not a positive duration such as 30m, 1h or 2d", field: "deadline"))
                }
                seconds = parsed
            }
            let call = request {
                $0.nodeDrain.node = name
                $0.nodeDrain.deadlineSeconds = UInt32(clamping: seconds)
                $0.nodeDrain.force = force
                $0.nodeDrain.mode = mode ?? ""
                $0.nodeDrain.maxParallel = maxParallel ?? 0
                $0.nodeDrain.cancel = cancel
            }
            let result = try await followNodeOperation(connection, call, detach: detach)
            result.show()
            if result.state == "incomplete" { throw ExitCode(9) }
        }
    }

    struct Restore: AsyncParsableCommand {
        static let configuration = CommandConfiguration(
            commandName: "restore",
            abstract: "Cluster mode: uncordon NODE and migrate back the VPSs a drain took from it.")
        @OptionGroup var connection: ConnectionOptions
        @Argument(help: "Node name.") var name: String
        @Flag(help: "Only uncordon; the VPSs stay where they are.") var skip = false
        @Flag(help: "Cancel a drain of NODE that is still running first.") var cancelDrain = false
        @Flag(help: "Return at once with the operation's id.") var detach = false

        func run() async throws {
            requireCluster(connection, "node restore")
            let call = request {
                $0.nodeRestore.node = name
                $0.nodeRestore.skip = skip
                $0.nodeRestore.cancelDrain = cancelDrain
            }
            let result = try await followNodeOperation(connection, call, detach: detach)
            result.show()
            if result.items.contains(where: { $0.state == "failed" }) { throw ExitCode(9) }
        }
    }
}
