import BerthCore
import CIsolation
import Foundation
import Isolation
import Logging
import Metrics
import NIOCore
import NIOPosix
import Wire
import WireTLS

/// The agent's RPC surface: decodes nothing itself (Wire did), checks who is calling, and maps
/// each call onto the VPS manager. Exec and console calls stream through `ServerStream`.
public struct AgentService: WireService {
    let manager: VPSManager
    let group: EventLoopGroup
    let logger: Logger
    /// The node's certificate once enrolled, for calls to other agents (migration).
    public let credentials = NodeCredentials()
    /// How many migrations this node runs at once, how fast it sends, how long a peer may stall.
    public let migrationSlots: MigrationSlots
    /// The receives under way, for `migration_abort` to end.
    let migrationReceives = MigrationReceives<ServerStream, VPSView>()

    public init(manager: VPSManager, group: EventLoopGroup, logger: Logger, migrationSlots: MigrationSlots = MigrationSlots()) {
        self.manager = manager
        self.group = group
        self.logger = logger
        self.migrationSlots = migrationSlots
    }

    public func handle(_ request: Berth_V1_Request, stream: ServerStream) async throws -> Berth_V1_Response {
        let call = AgentCall.of(request.call)
        let timer = Timer(label: "berth_agent_request_duration_seconds", dimensions: [("call", call.name)], preferredDisplayUnit: .seconds)
        let start = DispatchTime.now()
        do {
            try Self.authorise(stream.peer, for: call.access)
            try await manager.checkEpoch(request.leaseEpoch)
            let response = try await call.handle(self, stream)
            timer.recordNanoseconds(Int64(DispatchTime.now().uptimeNanoseconds - start.uptimeNanoseconds))
            return response
        } catch {
            Counter(label: "berth_agent_request_errors_total", dimensions: [("call", call.name)]).increment()
            throw error
        }
    }

    /// The Unix socket is root-only (mode 0600 and SO_PEERCRED); checked again per call so a
    /// future transport cannot skip it. Every call but a migration's transfer needs the same caller.
    static func authorise(_ peer: PeerIdentity, for access: AgentCall.Access = .manage) throws(AgentError) {
        switch (peer, access) {
        case (.unixUser(let uid, _), .manage) where uid == 0: return
        case (.certificate(let identity), .manage) where identity.role == .controller: return
        // The call itself checks that this node holds a grant for that node (AgentService+Migration).
        case (.certificate(let identity), .peerNode) where identity.role == .node: return
        case (_, .manage): throw AgentError(.permissionDenied, "only root on this node or the cluster controller may manage its VPSs")
        case (_, .peerNode): throw AgentError(.permissionDenied, "only another node of the cluster may send a migrated VPS or a replica")
        }
    }

    /// `template build busybox|debian-12`.
    func build(_ r: Berth_V1_TemplateBuildRequest, stream: ServerStream) async throws -> Berth_V1_TemplateInfo {
        switch r.kind {
        case "busybox":
            guard r.mirror.isEmpty, r.include.isEmpty else {
                throw AgentError.invalid(
                    r.mirror.isEmpty ? "include" : "mirror", "the busybox template is built from the host's busybox-static; it downloads nothing")
            }
            stream.progress("building busybox template")
            return Self.wire(try await manager.templates.buildBusybox(name: r.name.isEmpty ? "busybox" : r.name))
        case "debian-12":
            let request = DebianTemplateRequest(
                name: r.name.isEmpty ? "debian-12" : r.name,
                mirror: r.mirror.isEmpty ? DebianTemplateRequest.defaultMirror : r.mirror,
                include: r.include, rebuild: r.rebuild)
            return Self.wire(try await manager.templates.buildDebian(request) { stream.progress($0) })
        default:
            throw AgentError.invalid("template", "'\(r.kind)' cannot be built here (buildable: busybox, debian-12; any rootfs tarball can be imported)")
        }
    }

    /// A template tarball sent on the stream: received into the template store's staging area,
    /// checked against its announced size and SHA-256, then imported like a local tarball.
    func upload(_ r: Berth_V1_TemplateUploadRequest, stream: ServerStream) async throws -> Berth_V1_TemplateUploadResult {
        _ = try Name.validate(r.name, field: "template")
        guard FileTransfer.tarFormats.contains(r.format) else {
            throw AgentError.invalid("format", "'\(r.format)' is not tar, tar.gz or tar.xz")
        }
        let staging = manager.templates.root + "/.upload-\(r.name)-\(UUID().uuidString).\(r.format)"
        defer { unlink(staging) }
        // Before the bytes come: the import at their end would refuse them.
        try manager.templates.requireReplaceable(r.name)
        stream.progress("receiving \(ByteSize.format(r.size))", done: 0, total: r.size)
        try await FileTransfer.receive(into: staging, size: r.size, sha256: r.sha256, from: stream.input, field: "tarball")
        stream.progress("received \(ByteSize.format(r.size)), sha256 verified", done: r.size, total: r.size)
        let info = try await manager.templates.importTarball(name: r.name, path: staging, source: "upload: sha256 \(r.sha256)") {
            stream.progress($0)
        }
        var placed = Berth_V1_TemplatePlacement()
        placed.node = manager.nodeName
        placed.template = Self.wire(info)
        var result = Berth_V1_TemplateUploadResult()
        result.placed = [placed]
        return result
    }

    /// A template's tree as a tar stream (owners numeric, xattrs and file capabilities kept), so
    /// a template built on one node can be imported on others.
    func export(_ r: Berth_V1_TemplateExportRequest, stream: ServerStream) async throws -> Berth_V1_TemplateInfo {
        _ = try Name.validate(r.name, field: "template")
        guard let info = manager.templates.info(r.name) else {
            throw AgentError(.notFound, "template \(r.name) does not exist on node \(manager.nodeName)", field: "template")
        }
        let out = try PipeEnds()
        let devnull = FileDescriptor(open("/dev/null", O_RDWR | O_CLOEXEC))
        let child = try Subprocess.spawn(
            [
                "/bin/tar", "-c", "--numeric-owner", "--xattrs", "--xattrs-include=*",
                "-C", manager.templates.rootfs(r.name), ".",
            ], fds: [devnull.raw, out.write.raw, devnull.raw])
        out.write.close()
        _ = fcntl(out.read.raw, 1031 /* F_SETPIPE_SZ */, Int32(Self.streamPipeBytes))
        do {
            // NIO takes the read end over and closes it.
            try await relay(pipe: out.read.release(), to: stream, as: .stdout, bulk: true)
        } catch {
            kill(child.pid, SIGKILL)
            _ = await ProcessWatcher.shared.waitForExit(pid: child.pid, pidfd: child.pidfd)
            throw error
        }
        let status = await ProcessWatcher.shared.waitForExit(pid: child.pid, pidfd: child.pidfd) ?? 0
        guard case .exited(0) = InitExit(status: status) else {
            throw AgentError(.kernel, "tar of template \(r.name) failed (\(InitExit(status: status).reason))", stage: "tar")
        }
        try await stream.sendEnd(.stdout)
        return Self.wire(info)
    }

    static func wire(_ info: TemplateInfo) -> Berth_V1_TemplateInfo {
        var wire = Berth_V1_TemplateInfo()
        wire.name = info.name
        wire.source = info.source
        wire.sizeBytes = info.sizeBytes
        wire.createdUnix = Int64(info.createdAt.timeIntervalSince1970)
        wire.stopSignal = String(info.stopSignal)
        wire.maskedUnits = info.maskedUnits ?? [:]
        return wire
    }

    // MARK: - exec

    func exec(_ request: Berth_V1_ExecRequest, stream: ServerStream) async throws -> Berth_V1_ExecResult {
        guard !request.argv.isEmpty else { throw AgentError.invalid("command", "no command given") }
        let target = try await manager.joinTarget(request.name)
        var environment = SpawnSpec.defaultEnvironment.filter { !$0.hasPrefix("container=") }
        for (key, value) in request.env.sorted(by: { $0.key < $1.key }) {
            guard !key.isEmpty, !key.contains("=") else { throw AgentError.invalid("env", "'\(key)' is not a variable name") }
            environment.removeAll { $0.hasPrefix(key + "=") }
            environment.append(key + "=" + value)
        }
        var argv = [
            manager.paths.spawnBinary, "exec", "--init-pid", String(target.run.initPid),
            "--init-start", String(target.run.initStart),
        ]
        for file in target.cgroupFiles { argv += ["--cgroup", file] }
        for variable in environment { argv += ["--env", variable] }
        if request.tty { argv += ["--tty", String(request.rows == 0 ? 24 : request.rows), String(request.cols == 0 ? 80 : request.cols)] }
        argv.append("--")
        argv += request.argv

        // stderr always gets its own pipe (with a tty it simply sees EOF at once, as the pty
        // carries both streams), so the readers below need no special case.
        var pipes: [(read: Int32, write: Int32)] = []
        do {
            for _ in 0..<(request.tty ? 4 : 3) { pipes.append(try Subprocess.makePipe()) }
        } catch {
            pipes.forEach {
                close($0.read); close($0.write)
            }
            throw error
        }
        let (stdinPipe, stdoutPipe, stderrPipe) = (pipes[0], pipes[1], pipes[2])
        // Bulk streams (a tarball through `exec cat`) move in fewer, larger reads and writes;
        // a pipe that cannot grow keeps the kernel's default.
        for pipe in [stdinPipe, stdoutPipe] { _ = fcntl(pipe.write, 1031 /* F_SETPIPE_SZ */, Int32(Self.streamPipeBytes)) }
        let resizePipe = request.tty ? pipes[3] : nil
        var fds = [stdinPipe.read, stdoutPipe.write, request.tty ? stdoutPipe.write : stderrPipe.write]
        if let resizePipe { fds.append(resizePipe.read) }
        let child: (pid: Int32, pidfd: Int32)
        do {
            child = try Subprocess.spawn(argv, fds: fds, environment: [])
        } catch {
            pipes.forEach {
                close($0.read); close($0.write)
            }
            throw error
        }
        // Only the ends the agent uses stay open here.
        [stdinPipe.read, stdoutPipe.write, stderrPipe.write, resizePipe?.read ?? -1].filter { $0 >= 0 }.forEach { close($0) }
        let resizeFD = resizePipe?.write ?? -1

        // Stdin is written with plain channel writes, each awaited until it reached the pipe:
        // closing the pipe (the client's end of stdin) must never drop bytes still queued in NIO.
        let stdinChannel = try await NIOPipeBootstrap(group: group).takingOwnershipOfDescriptor(output: stdinPipe.write).get()

        return try await withThrowingTaskGroup(of: Int32?.self) { group in
            // Client → command: stdin bytes, end of stdin, terminal size changes.
            group.addTask {
                var stdinOpen = true
                for await input in stream.input {
                    switch input {
                    case .data(.stdin, let bytes) where stdinOpen:
                        do {
                            try await stdinChannel.writeAndFlush(bytes).get()
                        } catch {
                            // The command closed its stdin: later input has nowhere to go.
                            stdinOpen = false
                            stdinChannel.close(promise: nil)
                        }
                    case .end(.stdin) where stdinOpen:
                        stdinOpen = false
                        try? await stdinChannel.close().get()
                    case .data(.resize, let bytes) where resizeFD >= 0:
                        try? FileIO.writeAll(fd: resizeFD, Array(bytes.readableBytesView) + [10], stage: "resize")
                    default:
                        break
                    }
                }
                if stdinOpen { stdinChannel.close(promise: nil) }
                if resizeFD >= 0 { close(resizeFD) }
                return nil
            }
            for (pipe, channel) in [(stdoutPipe.read, Frame.Channel.stdout), (stderrPipe.read, .stderr)] {
                group.addTask {
                    try await self.relay(pipe: pipe, to: stream, as: channel, bulk: channel == .stdout)
                    try? await stream.sendEnd(channel)
                    return nil
                }
            }
            let status = await ProcessWatcher.shared.waitForExit(pid: child.pid, pidfd: child.pidfd) ?? 0
            // Output still in flight is delivered before the result: wait for both readers.
            var finishedReaders = 0
            while finishedReaders < 2 {
                guard let next = try await group.next() else { break }
                if next == nil { finishedReaders += 1 }
                if finishedReaders == 2 { break }
            }
            group.cancelAll()
            var result = Berth_V1_ExecResult()
            result.exitCode = InitExit(status: status).shellCode
            return result
        }
    }

    static let streamPipeBytes = 1 << 20

    /// Sends what comes out of the pipe `fd` (taken over, closed at its end) as DATA on `channel`,
    /// each chunk under the client's credit. `bulk` streams (a tarball, `exec cat`) are read in
    /// chunks up to the grown pipe's size.
    func relay(pipe fd: Int32, to stream: ServerStream, as channel: Frame.Channel, bulk: Bool) async throws {
        var bootstrap = NIOPipeBootstrap(group: group)
        if bulk {
            bootstrap = bootstrap.channelOption(
                .recvAllocator, value: AdaptiveRecvByteBufferAllocator(minimum: 4096, initial: 65536, maximum: Self.streamPipeBytes))
        }
        let reader = try await bootstrap.takingOwnershipOfDescriptor(input: fd) { pipe in
            pipe.eventLoop.makeCompletedFuture { try NIOAsyncChannel<ByteBuffer, ByteBuffer>(wrappingChannelSynchronously: pipe) }
        }
        try await reader.executeThenClose { inbound, _ in
            for try await chunk in inbound { try await stream.send(channel, chunk) }
        }
    }

    // MARK: - console

    /// Attaches the caller to the monitor's console socket until the client ends its input
    /// (detach) or the VPS stops.
    func console(_ request: Berth_V1_ConsoleRequest, stream: ServerStream) async throws {
        if request.showLog {
            let log = try await manager.consoleLog(request.name)
            if !log.isEmpty { try await stream.send(.stdout, ByteBuffer(bytes: log)) }
            return
        }
        let path = try await manager.consoleSocket(request.name)
        let socket = try await ClientBootstrap(group: group).connect(unixDomainSocketPath: path) { channel in
            channel.eventLoop.makeCompletedFuture { try NIOAsyncChannel<ByteBuffer, ByteBuffer>(wrappingChannelSynchronously: channel) }
        }
        try await socket.executeThenClose { inbound, outbound in
            try await withThrowingTaskGroup(of: Void.self) { group in
                group.addTask {
                    for try await chunk in inbound { try await stream.send(.stdout, chunk) }
                }
                group.addTask {
                    for await input in stream.input {
                        switch input {
                        case .data(.stdin, let bytes): try await outbound.write(bytes)
                        case .end(.stdin): return
                        default: break
                        }
                    }
                }
                // Whichever side ends first (detach or VPS stop) ends the session.
                _ = try await group.next()
                group.cancelAll()
            }
        }
    }
}
