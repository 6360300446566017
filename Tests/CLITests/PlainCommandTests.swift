import ArgumentParser
import Testing

@testable import berth

/// PlainCommand skips ArgumentParser for a few plain command lines; it must take exactly the
/// lines ArgumentParser reads the same way, and leave every other line to it.
@Suite struct PlainCommandTests {
    @Test(arguments: [
        (["start", "web1"], PlainCommand.start(name: "web1")),
        (["stop", "web1"], .stop(name: "web1")),
        (["status", "a-b-c"], .status(name: "a-b-c")),
        (["list"], .list),
        (["exec", "web1", "--", "true"], .exec(name: "web1", command: ["true"])),
        (["exec", "web1", "--", "sh", "-c", "echo --help -- x"], .exec(name: "web1", command: ["sh", "-c", "echo --help -- x"])),
    ])
    func takesPlainLinesAsArgumentParserReadsThem(_ arguments: [String], _ expected: PlainCommand) throws {
        #expect(PlainCommand(arguments) == expected)
        let parsed = try Berth.parseAsRoot(arguments)
        switch expected {
        case .start(let name):
            let start = try #require(parsed as? Start)
            #expect(start.name == name && start.connection.resolved.agent == nil)
        case .stop(let name):
            let stop = try #require(parsed as? Stop)
            #expect(stop.name == name && stop.timeout == nil && !stop.kill)
        case .status(let name):
            let status = try #require(parsed as? Status)
            #expect(status.name == name && !status.json)
        case .list:
            let list = try #require(parsed as? List)
            #expect(!list.all && !list.json && list.selector.isEmpty)
        case .exec(let name, let command):
            let exec = try #require(parsed as? Exec)
            #expect(exec.name == name && exec.command == command && !exec.tty && exec.env.isEmpty)
        }
    }

    @Test(arguments: [
        [], ["start"], ["start", "a", "b"], ["start", "--help"], ["start", "-h"], ["start", "help"], ["status", "web1", "--json"],
        ["status", "--json", "web1"], ["stop", "web1", "--kill"], ["stop", "--timeout", "5"], ["list", "--all"], ["list", "x"],
        ["exec", "web1"], ["exec", "web1", "--"], ["exec", "web1", "true"], ["exec", "-t", "web1", "--", "sh"],
        ["exec", "--agent", "/x", "--", "true"], ["restart", "web1"], ["destroy", "web1"], ["help"], ["--help"], ["statu", "web1"],
        ["start", ""],
    ])
    func leavesEveryOtherLineToArgumentParser(_ arguments: [String]) {
        #expect(PlainCommand(arguments) == nil)
    }
}
