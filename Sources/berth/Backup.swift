import ArgumentParser
import BerthCore
import Foundation
import Wire
import WireTLS

// `berth snapshot …`, `berth backup`, `berth restore` (Docs/backup.md).

struct SnapshotCommand: AsyncParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "snapshot", abstract: "Snapshots of a VPS's disk on its node: take, list, roll back to, delete.",
        subcommands: [Create.self, SnapshotList.self, Rollback.self, Delete.self])

    struct Create: AsyncParsableCommand {
        static let configuration = CommandConfiguration(
            commandName: "create", abstract: "Take a snapshot of the VPS's disk (running or stopped).",
            discussion:
                "A pool VPS's snapshot is a read-only btrfs snapshot (instant, no freeze). A running loop VPS is frozen (its processes and filesystem) for the instant of a reflink copy of its image where the data filesystem clones files, else for the whole copy; the time it froze is printed."
        )
        @OptionGroup var connection: ConnectionOptions
        @Argument(help: "VPS name.") var name: String
        @Argument(help: "Snapshot name (default: the time, 20261206-113000).") var snapshot: String?

        func run() async throws {
            let taken = try await connection.call(
                request {
                    $0.snapshotCreate.name = name
                    $0.snapshotCreate.snapshot = snapshot ?? ""
                }
            ).snapshot
            let froze = taken.frozenMs > 0 ? ", VPS frozen for \(taken.frozenMs) ms" : ""
            print("snapshot \(taken.name) of \(name) taken (\(taken.method)\(froze))")
        }
    }

    struct SnapshotList: AsyncParsableCommand {
        static let configuration = CommandConfiguration(
            commandName: "list", abstract: "The VPS's snapshots, oldest first, with what each holds of its own.")
        @OptionGroup var connection: ConnectionOptions
        @Argument(help: "VPS name.") var name: String
        @Flag(help: "Print JSON.") var json = false

        func run() async throws {
            let list = try await connection.call(request { $0.snapshotList.name = name }).snapshots
            if json {
                printJSON(
                    .object([
                        "vps": .string(list.vps), "node": .string(list.node),
                        "snapshots": .array(
                            list.snapshots.map {
                                .object([
                                    "name": .string($0.name), "created": .int($0.createdUnix), "bytes": .int(Int64($0.bytes)),
                                    "method": .string($0.method), "frozen_ms": .int(Int64($0.frozenMs)),
                                ])
                            }),
                    ]))
                return
            }
            let rows = list.snapshots.map { [$0.name, formatTime($0.createdUnix * 1000), humanBytes($0.bytes), $0.method, "\($0.frozenMs)"] }
            print(textTable([["SNAPSHOT", "CREATED", "HOLDS", "METHOD", "FROZEN_MS"]] + rows), terminator: "")
        }
    }

    struct Rollback: AsyncParsableCommand {
        static let configuration = CommandConfiguration(
            commandName: "rollback", abstract: "Make the VPS's disk the snapshot again (the snapshot stays).",
            discussion: "The VPS must be stopped; --restart stops a running one first and starts it after.")
        @OptionGroup var connection: ConnectionOptions
        @Argument(help: "VPS name.") var name: String
        @Argument(help: "Snapshot name.") var snapshot: String
        @Flag(help: "Stop the VPS if it runs, and start it again after.") var restart = false

        func run() async throws {
            let status = try await connection.call(
                request {
                    $0.snapshotRollback.name = name
                    $0.snapshotRollback.snapshot = snapshot
                    $0.snapshotRollback.restart = restart
                }
            ).status
            print("\(name) rolled back to \(snapshot); \(status.state)")
        }
    }

    struct Delete: AsyncParsableCommand {
        static let configuration = CommandConfiguration(commandName: "delete", abstract: "Delete a snapshot.")
        @OptionGroup var connection: ConnectionOptions
        @Argument(help: "VPS name.") var name: String
        @Argument(help: "Snapshot name.") var snapshot: String

        func run() async throws {
            _ = try await connection.call(
                request {
                    $0.snapshotDelete.name = name
                    $0.snapshotDelete.snapshot = snapshot
                })
            print("snapshot \(snapshot) of \(name) deleted")
        }
    }
}

struct BackupCommand: AsyncParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "backup", abstract: "Write a VPS (config and disk) to one archive file on this machine, while it runs.",
        discussion:
            "The archive is a tar file: berth-backup.json, config.json, the disk as zstd pieces (disk.zst.*) and SHA256SUMS (tar -xf FILE && sha256sum -c SHA256SUMS checks it by hand). Without --snapshot it reads a snapshot taken for the backup and deleted after it."
    )
    @OptionGroup var connection: ConnectionOptions
    @Argument(help: "VPS name.") var name: String
    @Argument(help: "The archive to write (must not exist).") var file: String
    @Option(help: "Read this snapshot instead of the VPS as it is now.") var snapshot: String?

    func run() async throws {
        let path = absolutePath(file)
        guard access(path, F_OK) != 0 else { fail(WireError(.alreadyExists, "file: \(file) exists", field: "file")) }
        // Written under a temporary name and linked into place only when complete.
        let partial = path + ".part"
        unlink(partial)
        let fd = open(partial, O_WRONLY | O_CREAT | O_EXCL | O_CLOEXEC, 0o600)
        guard fd >= 0 else { fail(WireError(.kernel, "file: cannot create \(partial): \(String(cString: strerror(errno)))", field: "file")) }
        defer {
            close(fd)
            unlink(partial)
        }
        let meter = TransferMeter()
        let result = try await connection.withClient { client in
            let call = try await client.start(
                request {
                    $0.backup.name = name
                    $0.backup.snapshot = snapshot ?? ""
                })
            for await event in call.events {
                switch event {
                case .data(.stdout, let chunk): try Wire.writeAll(fd: fd, chunk, what: file)
                case .progress(let progress): meter.show(progress)
                case .response(let response): return response.backup
                case .failure(let error): throw error
                default: continue
                }
            }
            throw WireError(.unavailable, "the connection closed before the backup finished")
        }
        meter.finish()
        guard fsync(fd) == 0, link(partial, path) == 0 else {
            fail(WireError(.kernel, "file: finishing \(file): \(String(cString: strerror(errno)))", stage: "write", errno: errno))
        }
        let froze = result.frozenMs > 0 ? ", frozen \(result.frozenMs) ms for its snapshot" : ""
        print(
            "\(result.vps) backed up to \(path): \(humanBytes(result.archiveBytes)) for \(humanBytes(result.diskBytes)) of disk (\(meter.summary)\(froze)), sha256 \(result.sha256)"
        )
    }
}

struct RestoreCommand: AsyncParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "restore", abstract: "Create a VPS from a backup archive (stopped).",
        discussion:
            "Every member is checked against the archive's SHA256SUMS before anything is kept: a truncated, damaged or foreign file creates nothing. The VPS keeps the archive's addresses unless --ip or --no-ip says otherwise (an address another VPS holds is refused)."
    )
    @OptionGroup var connection: ConnectionOptions
    @Argument(help: "The archive (written by berth backup).") var file: String
    @Option(help: "The new VPS's name (default: the archived VPS's).") var name: String?
    @Option(help: "Cluster mode: the node to restore on (default: the scheduler's choice).") var node: String?
    @Option(name: .customLong("ip"), help: "An address for the VPS instead of the archive's (repeatable; cluster mode: auto[:POOL] too).")
    var ips: [String] = []
    @Flag(name: .customLong("no-ip"), help: "Restore without the archive's addresses.") var noIps = false

    func run() async throws {
        let path = absolutePath(file)
        if node != nil { requireCluster(connection, "restore --node") }
        if noIps && !ips.isEmpty { fail(WireError(.invalidArgument, "ip: --ip and --no-ip exclude each other", field: "ip")) }
        let input = open(path, O_RDONLY | O_CLOEXEC)
        guard input >= 0 else { fail(WireError(.notFound, "file: cannot open \(file): \(String(cString: strerror(errno)))", field: "file")) }
        var info = stat()
        fstat(input, &info)
        let manifest: [UInt8]
        do throws(BerthError) {
            manifest = try BackupArchive.manifestBytes { count in
                var bytes = [UInt8](repeating: 0, count: count)
                let got = bytes.withUnsafeMutableBytes { read(input, $0.baseAddress, count) }
                return Array(bytes.prefix(max(got, 0)))
            }
        } catch {
            fail(error)
        }
        close(input)
        let size = UInt64(info.st_size)
        let meter = TransferMeter()
        let status = try await connection.withClient { client in
            let call = try await client.start(
                request {
                    $0.restore.manifest = Data(manifest)
                    $0.restore.name = name ?? ""
                    $0.restore.node = node ?? ""
                    $0.restore.ips = ips
                    $0.restore.noIps = noIps
                    $0.restore.size = size
                })
            // The answer may come before every byte went out (a refusal): it wins.
            async let sending: Void = FileTransfer.send(path, on: call)
            let response = try await call.result { meter.show($0) }
            try? await sending
            return response.status
        }
        meter.finish()
        print("\(status.name) restored from \(path) on \(status.node.isEmpty ? "this node" : status.node) (\(meter.summary)); \(status.state)")
    }
}

/// Progress of a long transfer on stderr while it is a terminal: bytes, rate and time left,
/// from the PROGRESS frames' done/total (other steps are shown as lines).
final class TransferMeter: @unchecked Sendable {
    private let began = Date()
    private var done: UInt64 = 0
    private var drawn = false

    func show(_ progress: Berth_V1_Progress) {
        guard progress.total > 0 else {
            if drawn { writeErr("\n") }
            drawn = false
            showProgress(progress)
            return
        }
        done = progress.done
        guard isatty(2) != 0 else { return }
        let elapsed = max(Date().timeIntervalSince(began), 0.001)
        let rate = Double(progress.done) / elapsed
        let left = rate > 0 && progress.total > progress.done ? Double(progress.total - progress.done) / rate : 0
        let percent = Int(Double(progress.done) * 100 / Double(progress.total))
        writeErr(
            "\r… \(humanBytes(progress.done)) of \(humanBytes(progress.total)) (\(percent)%), \(humanBytes(UInt64(rate)))/s, ETA \(Int(left.rounded())) s   ")
        drawn = true
    }

    func finish() {
        if drawn { writeErr("\n") }
        drawn = false
    }

    /// "12.3 s, 85.1M/s".
    var summary: String {
        let elapsed = max(Date().timeIntervalSince(began), 0.001)
        return String(format: "%.1f s, %@/s", elapsed, humanBytes(UInt64(Double(done) / elapsed)))
    }
}
