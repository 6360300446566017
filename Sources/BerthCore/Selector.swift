/// A label selector (`list --selector`, the fleet's jobs, the audit query): requirements joined
/// by commas, all of which must hold, in the syntax Kubernetes operators know:
///
///     app=web, tier!=db, zone in (a,b), env notin (dev), backup, !legacy
///
/// `K=V` (also `K==V`): K is V. `K!=V`: K is not V, or there is no K. `K in (A,B)`: K is one of
/// them. `K notin (A,B)`: K is none of them, or there is no K. `K`: there is a K. `!K`: there is
/// none. A value holding spaces, commas, parentheses, `=` or `!` is written in double quotes.
/// What a key names (a label, an attribute such as `state`) is the caller's lookup: this type
/// only parses and decides.
public struct Selector: Sendable, Equatable, CustomStringConvertible {
    public enum Operator: Sendable, Equatable {
        case equals(String)
        case notEquals(String)
        case isIn([String])
        case notIn([String])
        case exists
        case absent
    }

    public struct Requirement: Sendable, Equatable, CustomStringConvertible {
        public var key: String
        public var op: Operator

        public init(_ key: String, _ op: Operator) {
            self.key = key
            self.op = op
        }

        public func holds(for value: String?) -> Bool {
            switch op {
            case .equals(let wanted): return value == wanted
            case .notEquals(let unwanted): return value != unwanted
            case .isIn(let set): return value.map(set.contains) ?? false
            case .notIn(let set): return !(value.map(set.contains) ?? false)
            case .exists: return value != nil
            case .absent: return value == nil
            }
        }

        public var description: String {
            func quoted(_ value: String) -> String {
                value.isEmpty || value.contains(where: { Selector.isSeparator($0) || $0 == "\"" }) ? "\"\(value)\"" : value
            }
            switch op {
            case .equals(let value): return "\(key)=\(quoted(value))"
            case .notEquals(let value): return "\(key)!=\(quoted(value))"
            case .isIn(let values): return "\(key) in (\(values.map(quoted).joined(separator: ",")))"
            case .notIn(let values): return "\(key) notin (\(values.map(quoted).joined(separator: ",")))"
            case .exists: return key
            case .absent: return "!\(key)"
            }
        }
    }

    public var requirements: [Requirement]

    public init(_ requirements: [Requirement] = []) { self.requirements = requirements }

    /// Everything matches the empty selector.
    public var isEmpty: Bool { requirements.isEmpty }

    /// Whether every requirement holds, `value` giving what a key names (nil: nothing).
    public func matches(_ value: (String) -> String?) -> Bool {
        requirements.allSatisfy { $0.holds(for: value($0.key)) }
    }

    /// The canonical text, which parses back to this selector.
    public var description: String { requirements.map(\.description).joined(separator: ",") }

    /// The keys a selector may name: those of labels (letters, digits, `.`, `_`, `-`, `/`).
    static func isKeyCharacter(_ c: Character) -> Bool {
        c.isASCII && (c.isLetter || c.isNumber || c == "." || c == "_" || c == "-" || c == "/")
    }

    static func isSeparator(_ c: Character) -> Bool {
        c == "," || c == "(" || c == ")" || c == "=" || c == "!" || c.isWhitespace
    }

    /// Parses `text`; an error names the field (`field`), the position (1-based) and the
    /// reason. Several texts (a repeated flag) are joined with commas first.
    public static func parse(_ text: String, field: String = "selector") throws(BerthError) -> Selector {
        var parser = SelectorParser(text: Array(text), field: field)
        return Selector(try parser.requirements())
    }
}

private struct SelectorParser {
    let text: [Character]
    let field: String
    var at = 0

    func fail(_ reason: String, at position: Int? = nil) -> BerthError {
        let whole = String(text)
        return BerthError(.invalidArgument, "\(field): '\(whole)': \(reason) at position \((position ?? at) + 1)", field: field)
    }

    mutating func skipSpace() { while at < text.count, text[at].isWhitespace { at += 1 } }

    func peek(_ offset: Int = 0) -> Character? { at + offset < text.count ? text[at + offset] : nil }

    mutating func requirements() throws(BerthError) -> [Selector.Requirement] {
        var found: [Selector.Requirement] = []
        skipSpace()
        if at == text.count { return [] }
        while true {
            found.append(try requirement())
            skipSpace()
            guard let next = peek() else { return found }
            switch next {
            case ",":
                at += 1
                skipSpace()
                if at == text.count || peek() == "," { throw fail("an empty requirement (a comma with nothing after it)") }
            case ")": throw fail("')' closes no '('")
            default: throw fail("'\(next)' where a ',' or the end was expected")
            }
        }
    }

    mutating func requirement() throws(BerthError) -> Selector.Requirement {
        skipSpace()
        if peek() == "!" {
            at += 1
            skipSpace()
            return Selector.Requirement(try key(), .absent)
        }
        let key = try key()
        skipSpace()
        guard let next = peek() else { return Selector.Requirement(key, .exists) }
        switch next {
        case ",": return Selector.Requirement(key, .exists)
        case "=":
            at += peek(1) == "=" ? 2 : 1
            return Selector.Requirement(key, .equals(try value()))
        case "!":
            guard peek(1) == "=" else { throw fail("unknown operator '!' after key '\(key)' (=, ==, !=, in (…), notin (…))") }
            at += 2
            return Selector.Requirement(key, .notEquals(try value()))
        case "(", ")": throw fail("'\(next)' after key '\(key)' without in or notin")
        default:
            let start = at
            var word = ""
            while let c = peek(), c.isLetter {
                word.append(c)
                at += 1
            }
            switch word {
            case "in": return Selector.Requirement(key, .isIn(try valueList(after: "in")))
            case "notin": return Selector.Requirement(key, .notIn(try valueList(after: "notin")))
            default:
                let shown = word.isEmpty ? String(next) : word
                throw fail("unknown operator '\(shown)' after key '\(key)' (=, ==, !=, in (…), notin (…))", at: start)
            }
        }
    }

    mutating func key() throws(BerthError) -> String {
        let start = at
        var key = ""
        while let c = peek(), Selector.isKeyCharacter(c) {
            key.append(c)
            at += 1
        }
        guard !key.isEmpty else {
            if let c = peek(), !Selector.isSeparator(c) { throw fail("'\(c)' cannot be in a key (letters, digits, '.', '_', '-', '/')", at: start) }
            throw fail("an empty key", at: start)
        }
        let name = key.hasPrefix("label.") ? key.dropFirst(6) : key.hasPrefix("node.") ? key.dropFirst(5) : Substring(key)
        guard name.count <= 63 else { throw fail("key '\(key.prefix(20))…' names a label longer than 63 characters", at: start) }
        return key
    }

    mutating func value() throws(BerthError) -> String {
        skipSpace()
        if peek() == "\"" {
            let start = at
            at += 1
            var value = ""
            while let c = peek(), c != "\"" {
                value.append(c)
                at += 1
            }
            guard peek() == "\"" else { throw fail("the '\"' here is not closed", at: start) }
            at += 1
            return value
        }
        var value = ""
        while let c = peek(), !Selector.isSeparator(c), c != "\"" {
            value.append(c)
            at += 1
        }
        if let c = peek(), c == "=" || c == "!" || c == "(" || c == "\"" {
            throw fail("'\(c)' in a value (write the value in double quotes)")
        }
        return value
    }

    mutating func valueList(after op: String) throws(BerthError) -> [String] {
        skipSpace()
        guard peek() == "(" else { throw fail("'\(op)' needs a list in parentheses, as in 'zone \(op) (a,b)'") }
        let open = at
        at += 1
        var values: [String] = []
        while true {
            skipSpace()
            guard peek() != nil else { throw fail("the '(' here is not closed", at: open) }
            let value = try value()
            guard !value.isEmpty || text[at - 1] == "\"" else { throw fail("an empty value in the list") }
            values.append(value)
            skipSpace()
            switch peek() {
            case ",": at += 1
            case ")":
                at += 1
                return values
            case nil: throw fail("the '(' here is not closed", at: open)
            case let c?: throw fail("'\(c)' in the list of '\(op)'")
            }
        }
    }
}

/// What a selector's keys name for one VPS, the same on a node and at the controller
/// (Docs/cli.md "Selectors"): the attributes `name`, `state`, `template`, `tenant`, `node` and
/// `ha` (true or false); `node.K` the label K of the VPS's node; `label.K` the VPS's label K;
/// any other key the VPS's label of that name. What is not known where the selector runs (a
/// node knows no tenants nor its own labels) is absent.
public struct SelectorFacts: Sendable {
    public var name: String
    public var state: String
    public var template: String
    public var tenant: String?
    public var node: String?
    public var ha: Bool
    public var labels: [String: String]
    public var nodeLabels: [String: String]

    public init(
        name: String, state: String, template: String, tenant: String? = nil, node: String? = nil, ha: Bool = false,
        labels: [String: String] = [:], nodeLabels: [String: String] = [:]
    ) {
        self.name = name
        self.state = state
        self.template = template
        self.tenant = tenant
        self.node = node
        self.ha = ha
        self.labels = labels
        self.nodeLabels = nodeLabels
    }

    /// Keys that do not name a VPS's label of that name.
    public static func isAttributeKey(_ key: String) -> Bool {
        ["name", "state", "template", "tenant", "node", "ha"].contains(key) || key.hasPrefix("label.") || key.hasPrefix("node.")
    }

    public func value(of key: String) -> String? {
        switch key {
        case "name": return name
        case "state": return state
        case "template": return template
        case "tenant": return tenant
        case "node": return node
        case "ha": return String(ha)
        default:
            if key.hasPrefix("label.") { return labels[String(key.dropFirst("label.".count))] }
            if key.hasPrefix("node.") { return nodeLabels[String(key.dropFirst("node.".count))] }
            return labels[key]
        }
    }
}

extension Selector {
    /// The selector of a list call: its text (`query`) and the older label map, both of which
    /// must hold.
    public static func parse(query: String, labels: [String: String], field: String = "selector") throws(BerthError) -> Selector {
        var selector = try parse(query, field: field)
        selector.requirements += labels.sorted { $0.key < $1.key }.map { Requirement("label.\($0.key)", .equals($0.value)) }
        return selector
    }

    public func matches(_ facts: SelectorFacts) -> Bool { matches(facts.value(of:)) }

    /// The selector as the older label map (`K=V` on labels only), when that is all it says.
    public var plainLabels: [String: String]? {
        var labels: [String: String] = [:]
        for requirement in requirements {
            guard case .equals(let value) = requirement.op, !SelectorFacts.isAttributeKey(requirement.key), labels[requirement.key] == nil else { return nil }
            labels[requirement.key] = value
        }
        return labels
    }
}
