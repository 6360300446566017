import ArgumentParser
import Foundation
import Wire

struct Migrate: AsyncParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "migrate",
        abstract: "Cluster mode: move a VPS to another node (its disk goes node to node; a running VPS runs again on the target).",
        discussion: """
            warm (the default): the disk is copied while the VPS runs, then again with only what \
            changed, until little is left; the VPS is then stopped, the last changes are copied and \
            it starts on the target. cold: the VPS is stopped first and its disk copied once. A \
            stopped VPS is copied once and stays stopped. The copy on the old node is deleted once \
            the move is committed; until then any failure leaves the VPS where it was. See \
            Docs/migration.md.
            """)
    @OptionGroup var connection: ConnectionOptions
    @Argument(help: "VPS name.") var name: String
    @Option(help: "The node to move it to (default: the scheduler chooses, as for a create).") var to: String?
    @Option(help: "warm (default): copy while it runs, stop for the last pass. cold: stop, copy, start.") var mode: String?
    @Flag(help: "Return at once with the operation's id (follow it with `berth operation show ID`).") var detach = false

    func run() async throws {
        guard connection.isCluster else {
            fail(WireError(.invalidArgument, "migrate: moving a VPS between nodes needs cluster mode (--controller HOST:PORT)"))
        }
        let call = request {
            $0.migrate.name = name
            $0.migrate.to = to ?? ""
            $0.migrate.mode = mode ?? ""
        }
        if detach {
            // The controller runs an operation to its end whether or not its caller stays: once
            // it has named the operation, this command may leave.
            let response = try await connection.call(call) { progress in
                guard progress.step.hasPrefix("operation ") else { return }
                print(progress.step.dropFirst("operation ".count))
                fflush(stdout)
                Foundation.exit(0)
            }
            print(response.status.line)
            return
        }
        let response = try await connection.call(call, onProgress: showProgress)
        print(response.status.line)
    }
}
