import ArgumentParser
import Dispatch
import NIOCore
import Wire

#if canImport(Glibc)
    import Glibc
#endif

struct Exec: AsyncParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "exec", abstract: "Run a command inside a running VPS; its exit code becomes berth's.",
        discussion: "stdin, stdout and stderr are streamed. Example: berth exec web1 -- apt-get install -y nginx")
    @OptionGroup var connection: ConnectionOptions
    @Flag(name: .shortAndLong, help: "Allocate a terminal inside the VPS.") var tty = false
    @Option(name: .shortAndLong, help: "Environment variable K=V; repeatable.") var env: [String] = []
    @Argument(help: "VPS name.") var name: String
    @Argument(parsing: .postTerminator, help: "Command and arguments (after --).") var command: [String] = []

    func run() async throws {
        guard !command.isEmpty else {
            fail(WireError(.invalidArgument, "command: give the command after --, e.g. berth exec \(name) -- uname -a", field: "command"))
        }
        var variables: [String: String] = [:]
        for item in env {
            guard let eq = item.firstIndex(of: "="), eq != item.startIndex else { fail(WireError(.invalidArgument, "env: '\(item)' is not K=V", field: "env")) }
            variables[String(item[..<eq])] = String(item[item.index(after: eq)...])
        }
        try await Self.exec(connection.resolved, name: name, command: command, tty: tty, env: variables)
    }

    static func exec(_ connection: Connection, name: String, command: [String], tty: Bool = false, env: [String: String] = [:]) async throws -> Never {
        let code = try await runSession(connection: connection, name: name, argv: command, tty: tty, env: env)
        Glibc.exit(code)
    }
}

struct Enter: AsyncParsableCommand {
    static let configuration = CommandConfiguration(commandName: "enter", abstract: "Open an interactive shell inside a running VPS.")
    @OptionGroup var connection: ConnectionOptions
    @Argument(help: "VPS name.") var name: String
    @Option(help: "Shell to run.") var shell = "/bin/sh"

    func run() async throws {
        let code = try await runSession(
            connection: connection.resolved, name: name, argv: [shell, "-l"], tty: true, env: ["TERM": environment("TERM") ?? "xterm"])
        Glibc.exit(code)
    }
}

struct Console: AsyncParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "console", abstract: "Attach to a VPS's console (/dev/console); Ctrl-] detaches.",
        discussion:
            "Output the VPS wrote while nobody was attached is replayed first (bounded buffer). --show-log prints what the console showed during the last run, also after the VPS stopped (a failed boot's messages)."
    )
    @OptionGroup var connection: ConnectionOptions
    @Argument(help: "VPS name.") var name: String
    @Flag(help: "Print the console output of the VPS's last run instead of attaching.") var showLog = false

    func run() async throws {
        if showLog {
            try await connection.withClient { client in
                let call = try await client.start(
                    request {
                        $0.console.name = name
                        $0.console.showLog = true
                    })
                for await event in call.events {
                    switch event {
                    case .data(_, let bytes): writeAll(1, bytes)
                    case .response: return
                    case .failure(let error): fail(error)
                    default: continue
                    }
                }
            }
            return
        }
        try await connection.withClient { client in
            let call = try await client.start(request { $0.console.name = name })
            writeErr("berth: attached to the console of \(name); Ctrl-] detaches\r\n")
            let terminal = RawTerminal()
            defer { terminal.restore() }
            forwardStdin(call, detachByte: 0x1d)
            for await event in call.events {
                switch event {
                case .data(_, let bytes): writeAll(1, bytes)
                case .response: return
                case .failure(let error): terminal.restore(); fail(error)
                default: continue
                }
            }
        }
        writeErr("\r\nberth: detached\r\n")
    }
}

/// Shared by exec and enter: start the call, pump stdin in, stdout/stderr out, return the code.
func runSession(connection: Connection, name: String, argv: [String], tty: Bool, env: [String: String]) async throws -> Int32 {
    var exec = Berth_V1_ExecRequest()
    exec.name = name
    exec.argv = argv
    exec.tty = tty
    exec.env = env
    if !tty && !connection.isCluster {
        // No terminal to drive: the synchronous client streams in one poll loop.
        do {
            return try connection.nodeClient().session(request { $0.exec = exec }, input: 0) { channel, bytes throws(WireError) in
                writeAll(channel == .stderr ? 2 : 1, bytes)
            }.exec.exitCode
        } catch {
            fail(error)
        }
    }
    return try await connection.withClient { client in
        var terminal: RawTerminal?
        if tty, let size = terminalSize() {
            exec.rows = UInt32(size.rows)
            exec.cols = UInt32(size.cols)
        }
        let call = try await client.start(request { $0.exec = exec })
        if tty && isatty(0) != 0 {
            terminal = RawTerminal()
            watchWindowSize(call)
        }
        defer { terminal?.restore() }
        forwardStdin(call, detachByte: nil)
        for await event in call.events {
            switch event {
            case .data(.stderr, let bytes): writeAll(2, bytes)
            case .data(_, let bytes): writeAll(1, bytes)
            case .response(let response): return response.exec.exitCode
            case .failure(let error):
                terminal?.restore()
                fail(error)
            default: continue
            }
        }
        fail(WireError(.unavailable, "the agent closed the session without an exit status"))
    }
}

/// A session's output: a closed terminal or pipe ends nothing here (the command's exit code
/// still comes back).
func writeAll(_ fd: Int32, _ buffer: ByteBuffer) {
    try? Wire.writeAll(fd: fd, buffer, what: "fd \(fd)")
}

/// Copies our stdin to the call on a plain thread (blocking reads); the send futures give
/// back-pressure. `detachByte` (console: Ctrl-]) ends the input instead of being sent.
func forwardStdin(_ call: ClientCall, detachByte: UInt8?) {
    // A dedicated thread: the reads block, which must not tie up the concurrency pool.
    PosixThread.detach {
        var buffer = [UInt8](repeating: 0, count: 128 << 10)
        while true {
            let n = read(0, &buffer, buffer.count)
            if n < 0 && errno == EINTR { continue }
            if n <= 0 { break }
            var chunk = Array(buffer[0..<n])
            if let detach = detachByte, let index = chunk.firstIndex(of: detach) {
                chunk = Array(chunk[..<index])
                if !chunk.isEmpty { _ = try? call.send(.stdin, chunk).wait() }
                break
            }
            _ = try? call.send(.stdin, chunk).wait()
        }
        call.sendEnd(.stdin)
    }
}

func terminalSize() -> (rows: UInt16, cols: UInt16)? {
    var size = winsize()
    guard ioctl(1, UInt(TIOCGWINSZ), &size) == 0, size.ws_row > 0 else { return nil }
    return (size.ws_row, size.ws_col)
}

/// Sends "ROWS COLS" on the resize channel whenever our terminal changes size.
func watchWindowSize(_ call: ClientCall) {
    signal(SIGWINCH, SIG_IGN)
    let source = DispatchSource.makeSignalSource(signal: SIGWINCH, queue: .global())
    source.setEventHandler {
        if let size = terminalSize() { _ = call.send(.resize, Array("\(size.rows) \(size.cols)".utf8)) }
    }
    source.resume()
    windowSizeSources.append(source)
}
nonisolated(unsafe) var windowSizeSources: [DispatchSourceSignal] = []

/// Puts the operator's terminal in raw mode (keys go straight to the VPS) and restores it.
final class RawTerminal {
    var saved = termios()
    var active = false

    init() {
        guard isatty(0) != 0, tcgetattr(0, &saved) == 0 else { return }
        var raw = saved
        raw.c_iflag &= ~tcflag_t(IGNBRK | BRKINT | PARMRK | ISTRIP | INLCR | IGNCR | ICRNL | IXON)
        raw.c_oflag &= ~tcflag_t(OPOST)
        raw.c_lflag &= ~tcflag_t(ECHO | ECHONL | ICANON | ISIG | IEXTEN)
        raw.c_cflag &= ~tcflag_t(CSIZE | PARENB)
        raw.c_cflag |= tcflag_t(CS8)
        active = tcsetattr(0, TCSANOW, &raw) == 0
    }

    func restore() {
        if active { tcsetattr(0, TCSANOW, &saved) }
        active = false
    }
}

/// A detached POSIX thread (Foundation's Thread is not linked into the CLI).
enum PosixThread {
    final class Box {
        let body: () -> Void
        init(_ body: @escaping () -> Void) { self.body = body }
    }

    static func detach(_ body: @escaping () -> Void) {
        let box = Unmanaged.passRetained(Box(body)).toOpaque()
        var thread = pthread_t()
        let rc = pthread_create(
            &thread, nil,
            { raw in
                Unmanaged<Box>.fromOpaque(raw!).takeRetainedValue().body()
                return nil
            }, box)
        if rc == 0 { pthread_detach(thread) } else { Unmanaged<Box>.fromOpaque(box).release() }
    }
}
