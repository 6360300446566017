/// The commands scripts and benchmarks run most, in their plain form: the words alone, no
/// option. They skip ArgumentParser, whose reflection over the command types costs about 2 ms
/// per process in this binary (60 % of a `berth status` when measured: Mirror walks, generic
/// metadata and conformance scans of 7,000 records), against 1.7 ms for the whole call without
/// it. Anything else, a flag, `--help`, a typo or a missing word, goes to ArgumentParser, which
/// parses the same words into the same command (CLITests checks both agree).
enum PlainCommand: Equatable {
    case start(name: String)
    case stop(name: String)
    case status(name: String)
    case list
    case exec(name: String, command: [String])

    init?(_ arguments: [String]) {
        guard let verb = arguments.first else { return nil }
        let rest = Array(arguments.dropFirst())
        switch (verb, rest.count) {
        case ("start", 1): guard let name = Self.plainWord(rest[0]) else { return nil }; self = .start(name: name)
        case ("stop", 1): guard let name = Self.plainWord(rest[0]) else { return nil }; self = .stop(name: name)
        case ("status", 1): guard let name = Self.plainWord(rest[0]) else { return nil }; self = .status(name: name)
        case ("list", 0): self = .list
        case ("exec", 3...):
            guard let name = Self.plainWord(rest[0]), rest[1] == "--" else { return nil }
            self = .exec(name: name, command: Array(rest.dropFirst(2)))
        default: return nil
        }
    }

    /// A positional word ArgumentParser takes as it is: not an option, not a help request.
    static func plainWord(_ word: String) -> String? {
        word.isEmpty || word.hasPrefix("-") || word == "help" ? nil : word
    }

    func run(_ connection: Connection) async {
        do {
            switch self {
            case .start(let name): try await Start.start(connection, name: name)
            case .stop(let name): try await Stop.stop(connection, name: name)
            case .status(let name): try await Status.status(connection, name: name)
            case .list: try await List.list(connection)
            case .exec(let name, let command): try await Exec.exec(connection, name: name, command: command)
            }
        } catch {
            Berth.exit(withError: error)
        }
    }
}
