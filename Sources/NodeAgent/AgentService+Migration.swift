import BerthCore
import Foundation
import Isolation
import NIOCore
import Wire
import WireTLS

/// The transfer of a migration, agent to agent (Docs/migration.md):
/// ```
/// controller              source agent                          target agent
///   | migration_expect(grant) ------------------------------------->| grant kept (single use)
///   | migration_send(grant, target address, warm) ->|               |
///   |                                         | mTLS, node cert ---->| peer: role node
///   |                                         | migration_receive    | grant: open, for this
///   |                                         |   {grant id, config, |   peer, unexpired -> taken
///   |                                         |    size} ----------->|
///   |                 warm, while it runs:    | pass 1: every chunk >| written in place (sparse)
///   |                                         | pass k: changed ---->| chunks replaced
///   |                                         | stop the VPS         |
///   |                                         | last pass: changed ->|
///   |                                         | trailer, END ------->| digest tables compared,
///   |                                         |<- status (stopped)   |   config saved
///   |<- status (the target's) ----------------|                     |
///   | commit (one store transaction), start on the target, destroy on the source
/// ```
/// Any failure before the commit: migration_abort(grant) to the target deletes what it received.
extension AgentService {
    /// The source's side: sends the VPS named in the grant to the target's listener.
    func migrationSend(_ r: Berth_V1_MigrationSendRequest, stream: ServerStream) async throws -> Berth_V1_VpsStatus {
        let grant = MigrationGrant(r.grant)
        guard let bundle = credentials.current else {
            throw AgentError(.unavailable, "this node is not enrolled in a cluster: it has no certificate to reach \(grant.target)")
        }
        let target = try HostPort(stored: r.targetAddress, field: "target_address")
        try migrationSlots.acquire(node: manager.nodeName)
        defer { migrationSlots.release() }
        let (config, disk, templateDigest) = try await manager.beginMigrationOut(grant, warm: r.warm)
        var stopped = false
        do {
            let status = try await sendDisk(
                grant, config: config, disk: disk, templateDigest: templateDigest, to: target, r.targetAddress, warm: r.warm, bundle: bundle,
                stream: stream, stoppedForLastPass: &stopped)
            await manager.removeMigrationSnapshots(grant)
            await manager.endMigrationOut(grant.vps)
            return status
        } catch {
            // Ended before the answer goes out: the controller's next call finds the VPS free.
            await manager.removeMigrationSnapshots(grant)
            await manager.endMigrationOut(grant.vps)
            // Nothing was committed (the controller commits only on this call's success): a VPS
            // this agent stopped for the last pass runs again here, whether or not the
            // controller that asked is still there to say so.
            if stopped {
                do { _ = try await manager.start(grant.vps) } catch {
                    logger.error("a VPS stopped for a failed migration did not start again", metadata: ["vps": "\(grant.vps)", "error": "\(error)"])
                }
            }
            throw error
        }
    }

    /// `stoppedForLastPass`: set once a warm migration stopped the VPS here.
    private func sendDisk(
        _ grant: MigrationGrant, config: [UInt8], disk: MigrationDisk, templateDigest: String, to target: HostPort, _ address: String, warm: Bool,
        bundle: CredentialBundle, stream: ServerStream, stoppedForLastPass: inout Bool
    ) async throws -> Berth_V1_VpsStatus {
        /// A connection to the grant's target, and nothing else: its certificate names it.
        @Sendable func connect() async throws -> WireClient { try await self.dialNode(grant.target, at: address) }
        var client = try await connect()
        defer { Task { [client] in await client.close() } }
        let slots = migrationSlots
        let stall = TimeAmount.seconds(Int64(slots.stallSeconds))
        var request = Berth_V1_Request()
        request.migrationReceive.grantID = grant.id
        request.migrationReceive.config = Data(config)
        request.migrationReceive.templateDigest = templateDigest
        let passes: any DiskPasses
        switch disk {
        case .image(let path):
            var info = stat()
            guard stat(path, &info) == 0 else { throw AgentError(.kernel, "the disk of \(grant.vps): \(errnoName(errno))", stage: "stat", errno: errno) }
            request.migrationReceive.diskSize = UInt64(info.st_size)
            let call = try await client.start(request)
            let sender = try ImageSender(path, on: call, target: grant.target, stallLimit: stall, pace: { await slots.pace($0) })
            guard sender.size == request.migrationReceive.diskSize else {
                throw AgentError(.conflict, "the disk of \(grant.vps) changed size as the migration began")
            }
            stream.progress("sending the \(ByteSize.approximate(Double(sender.size))) disk of \(grant.vps) to \(grant.target)")
            passes = ImagePasses(sender: sender, stream: stream)
        case .volume:
            let call = try await client.start(request)
            stream.progress("sending the subvolume of \(grant.vps) to \(grant.target) as btrfs send streams")
            passes = VolumePasses(manager: manager, grant: grant, call: call, stallLimit: stall, pace: { await slots.pace($0) })
        }
        var pass = 0
        var resumes = 0
        /// Runs `step`; when the connection drops or goes silent, goes on over a new one from
        /// what the target holds (the step again); if none can be made, the first error is
        /// the answer.
        func resumable<T>(_ step: () async throws -> T) async throws -> T {
            while true {
                do {
                    return try await step()
                } catch let lost as WireError where lost.code == .unavailable && passes.resumable && resumes < Self.maxResumes {
                    resumes += 1
                    stream.progress("the connection to \(grant.target) failed (\(lost.message)); resuming on a new one")
                    do {
                        let old = client
                        Task { await old.close() }
                        client = try await connect()
                        var again = Berth_V1_Request()
                        again.migrationReceive.grantID = grant.id
                        again.migrationReceive.resume = true
                        try await passes.resume(on: try await client.start(again))
                    } catch {
                        throw WireError(lost.code, "\(lost.message); resuming failed: \(error)", stage: lost.stage, errno: lost.errno)
                    }
                }
            }
        }
        func copy(_ when: String, last: Bool) async throws -> ImageSender.Pass {
            pass += 1
            let sent = try await passes.pass(pass, last: last)
            stream.progress(
                "pass \(pass) \(when): \(ByteSize.approximate(Double(sent.bytes))) \(passes.unit(sent)), \(Int(sent.seconds * 1000)) ms"
                    + (sent.seconds > 0 ? " (\(ByteSize.approximate(Double(sent.bytes) / sent.seconds))/s)" : ""))
            return sent
        }
        if warm, await manager.isRunning(grant.vps) {
            var previous: UInt64?
            while true {
                let sent = try await resumable { try await copy("while \(grant.vps) runs", last: false) }
                // The rate of the pass as a whole (reading, hashing and sending overlap): what
                // the last pass, with the VPS stopped, would move its delta at.
                let rate = sent.seconds > 0 ? Double(sent.bytes) / sent.seconds : nil
                guard Precopy.another(after: pass, delta: sent.bytes, previous: previous, bytesPerSecond: rate) else { break }
                previous = sent.bytes
            }
            // The controller that asked for the move is gone (its call was cancelled): the
            // VPS is not stopped for a move nobody will commit.
            try Task.checkCancellation()
            stream.progress("stopping \(grant.vps) for the last pass")
            try await manager.stopForLastPass(grant.vps)
            stoppedForLastPass = true
        }
        // The last pass, the trailer and the target's answer as one step: a drop noticed only
        // at the end (sends complete once credited, not once received) resumes too.
        let response = try await resumable {
            _ = try await copy(pass == 0 ? "(the VPS is stopped)" : "with \(grant.vps) stopped", last: true)
            try await passes.finish()
            // The target's fsync of what it wrote is part of its answer: a few stall limits.
            return try await passes.call.result(within: stall * 4, from: grant.target) { stream.progress("\(grant.target): \($0.step)") }
        }
        if resumes > 0 { stream.progress("resumed \(resumes) time\(resumes == 1 ? "" : "s") on a new connection") }
        return response.status
    }

    /// How often one migration goes on over a new connection before it fails.
    static let maxResumes = 3

    /// The target's side: the source node, under a grant the controller gave this node.
    func migrationReceive(_ r: Berth_V1_MigrationReceiveRequest, stream: ServerStream) async throws -> Berth_V1_VpsStatus {
        guard case .certificate(let peer) = stream.peer, peer.role == .node else {
            throw AgentError(.permissionDenied, "only a cluster node may send a migrated VPS")
        }
        if r.resume {
            // The same migration on a new connection: no second slot, no second claim.
            return Berth_V1_VpsStatus(try await migrationReceives.resume(r.grantID, from: peer.name, stream: stream))
        }
        try migrationSlots.acquire(node: manager.nodeName)
        defer { migrationSlots.release() }
        let grant = try await manager.claimMigration(r.grantID, from: peer.name)
        // Apart from this call: the source may resume it on a new connection, and the
        // controller's abort (a source gone silent) ends it.
        let (manager, receives) = (self.manager, migrationReceives)
        let wait = Duration.seconds(migrationSlots.stallSeconds)
        let view = try await receives.run(grant.id, from: peer.name, stream: stream) {
            try await manager.receiveMigration(grant, config: Array(r.config), templateDigest: r.templateDigest) { disk in
                switch disk {
                case .image(let path):
                    let receiver = try ImageReceiver(into: path, size: r.diskSize, field: "disk")
                    var input = stream.input
                    while try await receiver.apply(input) == .cut {
                        guard let resumed = await receives.awaitResume(grant.id, within: wait) else {
                            if Task.isCancelled {
                                throw WireError(.cancelled, "disk: the transfer was aborted (by the controller); nothing was kept", field: "disk")
                            }
                            throw WireError(
                                .unavailable, "disk: the connection from \(grant.source) dropped and it did not resume within \(wait); nothing was kept",
                                field: "disk")
                        }
                        // Taken before the table goes: a later resume ends this input, not a fresh one.
                        input = resumed.input
                        try await resumed.send(.stdout, receiver.tableRecords)
                        try await resumed.sendEnd(.stdout)
                    }
                    try receiver.keep()
                case .volume(let directory):
                    try await VolumeTransfer.receive(into: directory, from: stream.input, field: "disk")
                }
            }
        }
        return Berth_V1_VpsStatus(view)
    }
}

/// A disk's passes, however its layout moves them (Docs/migration.md, "Warm migration's passes").
protocol DiskPasses: AnyObject {
    var call: ClientCall { get }
    /// Whether a transfer can go on over a new connection (`resume`).
    var resumable: Bool { get }
    /// Goes on over `call`, a resumed transfer: the next pass sends what the target lacks.
    func resume(on call: ClientCall) async throws
    /// Sends what changed since the pass before; `last`: the VPS is stopped, this is the final pass.
    func pass(_ number: Int, last: Bool) async throws -> ImageSender.Pass
    /// What the bytes of a pass were, for its summary line.
    func unit(_ pass: ImageSender.Pass) -> String
    /// Ends the transfer (the target checks it whole).
    func finish() async throws
}

/// A loop image: chunks whose digest changed.
final class ImagePasses: DiskPasses {
    let sender: ImageSender
    let stream: ServerStream
    var call: ClientCall { sender.call }
    let resumable = true

    init(sender: ImageSender, stream: ServerStream) {
        self.sender = sender
        self.stream = stream
    }

    func resume(on call: ClientCall) async throws { try await sender.resume(on: call) }

    func pass(_ number: Int, last: Bool) async throws -> ImageSender.Pass {
        var reported: UInt64 = 0
        let stream = self.stream
        // About every 64 MiB of the image, so a long copy shows it moves.
        return try await sender.pass { done, size in
            if done - reported >= 64 << 20 || done == size {
                reported = done
                stream.progress(
                    "pass \(number): \(ByteSize.approximate(Double(done))) of \(ByteSize.approximate(Double(size))) looked at", done: done, total: size)
            }
        }
    }

    func unit(_ pass: ImageSender.Pass) -> String { "in \(pass.chunks) changed chunks" }

    func finish() async throws { try await sender.finish() }
}

/// A pool VPS's subvolume: a read-only snapshot per pass, each sent as a difference from the one
/// before; the last is `final`.
final class VolumePasses: DiskPasses {
    let manager: VPSManager
    let grant: MigrationGrant
    let call: ClientCall
    let stallLimit: TimeAmount
    let pace: (Int) async -> Void
    var previous: String?
    /// A `btrfs receive` cut mid-stream keeps nothing to go on from.
    let resumable = false

    init(manager: VPSManager, grant: MigrationGrant, call: ClientCall, stallLimit: TimeAmount, pace: @escaping (Int) async -> Void) {
        self.manager = manager
        self.grant = grant
        self.call = call
        self.stallLimit = stallLimit
        self.pace = pace
    }

    func pass(_ number: Int, last: Bool) async throws -> ImageSender.Pass {
        let began = ContinuousClock.now
        let snapshot = try await manager.migrationSnapshot(grant.vps, grant: grant, label: last ? VolumeTransfer.finalSnapshot : "pass\(number)")
        let bytes = try await VolumeTransfer.send(snapshot, parent: previous, on: call, target: grant.target, stallLimit: stallLimit, pace: pace)
        previous = snapshot
        return ImageSender.Pass(bytes: bytes, chunks: 1, seconds: (ContinuousClock.now - began) / .seconds(1))
    }

    func unit(_ pass: ImageSender.Pass) -> String { "of btrfs send stream" }

    func resume(on call: ClientCall) async throws {
        throw AgentError(.unavailable, "a pool VPS's transfer does not resume on a new connection")
    }

    func finish() async throws { call.sendEnd(.stdin) }
}
