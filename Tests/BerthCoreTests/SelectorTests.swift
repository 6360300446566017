import Testing

@testable import BerthCore

@Suite struct SelectorTests {
    let web: [String: String] = ["app": "web", "zone": "a", "tier": "front", "note": "two words"]

    func matches(_ text: String, _ values: [String: String]) throws -> Bool {
        try Selector.parse(text).matches { values[$0] }
    }

    @Test func eachOperatorDecidesAsKubernetesDoes() throws {
        #expect(try matches("app=web", web))
        #expect(try matches("app==web", web))
        #expect(try !matches("app=db", web))
        #expect(try matches("app!=db", web))
        #expect(try matches("owner!=bob", web))  // no such key: not bob
        #expect(try matches("zone in (a,b)", web))
        #expect(try !matches("zone in (b, c)", web))
        #expect(try !matches("owner in (bob)", web))
        #expect(try matches("zone notin (b,c)", web))
        #expect(try matches("owner notin (bob)", web))
        #expect(try !matches("zone notin (a)", web))
        #expect(try matches("tier", web))
        #expect(try !matches("owner", web))
        #expect(try matches("!owner", web))
        #expect(try !matches("! tier", web))
        #expect(try matches(#"note="two words""#, web))
        #expect(try matches("", web))
    }

    @Test func commasJoinRequirementsThatMustAllHold() throws {
        #expect(try matches(" app = web , zone in (a,b),!legacy ", web))
        #expect(try !matches("app=web,zone=b", web))
        let selector = try Selector.parse("app=web, zone in (a,b), tier!=db, env notin (dev), backup, !legacy")
        #expect(selector.requirements.count == 6)
        #expect(selector.requirements[1] == Selector.Requirement("zone", .isIn(["a", "b"])))
        // The canonical text parses back to the same selector.
        #expect(try Selector.parse(selector.description) == selector)
        #expect(selector.description == "app=web,zone in (a,b),tier!=db,env notin (dev),backup,!legacy")
        let quoted = try Selector.parse(#"note="a, b", empty="""#)
        #expect(try Selector.parse(quoted.description) == quoted)
    }

    /// Each bad input names the field, the position and the reason.
    @Test(arguments: [
        ("=web", "an empty key at position 1"),
        ("app~web", "unknown operator '~' after key 'app'"),
        ("app > web", "unknown operator '>' after key 'app'"),
        ("app like web", "unknown operator 'like' after key 'app'"),
        ("app !web", "unknown operator '!' after key 'app'"),
        ("zone in (a,b", "the '(' here is not closed at position 9"),
        ("zone in (a,b))", "')' closes no '('"),
        ("zone in a,b", "'in' needs a list in parentheses"),
        ("zone notin ()", "an empty value in the list"),
        ("app=web,", "an empty requirement"),
        ("app=web,,zone=a", "an empty requirement"),
        ("app(=web", "'(' after key 'app' without in or notin"),
        ("app=we=b", "'=' in a value"),
        (#"note="open"#, "the '\"' here is not closed"),
        ("ap*p=web", "unknown operator '*' after key 'ap'"),
        ("app=web zone=a", "'z' where a ',' or the end was expected"),
        ("*=web", "'*' cannot be in a key"),
    ])
    func badInputIsRefusedWithItsReason(text: String, reason: String) {
        do {
            _ = try Selector.parse(text, field: "selector")
            Issue.record("'\(text)' was accepted")
        } catch {
            #expect(error.code == .invalidArgument)
            #expect(error.field == "selector")
            #expect(error.message.contains(reason), "\(error.message)")
            #expect(error.message.hasPrefix("selector: '\(text)': "))
        }
    }
}
