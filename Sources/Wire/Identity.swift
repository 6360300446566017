import BerthCore

/// Identities and the small text formats of the cluster that every layer parses: roles, join
/// tokens. The certificates behind them live in WireTLS.

/// Who a certificate says its holder is. The role travels in the subject's OU and the name in its
/// CN, so a plain `openssl x509 -subject` shows both; nothing in a request payload can change it.
public enum Role: Sendable, Equatable, Hashable, CustomStringConvertible {
    case admin, operator_, viewer
    case tenant(String)
    case node
    case controller

    public init(parsing text: String) throws(WireError) {
        switch text {
        case "admin": self = .admin
        case "operator": self = .operator_
        case "viewer": self = .viewer
        case "node": self = .node
        case "controller": self = .controller
        default:
            guard text.hasPrefix("tenant:") else {
                throw WireError(.invalidArgument, "role: \"\(text)\" is not one of admin, operator, viewer, tenant:NAME", field: "role")
            }
            let tenant = String(text.dropFirst("tenant:".count))
            if let problem = Name.problem(tenant) {
                throw WireError(.invalidArgument, "role: tenant name \(problem)", field: "role")
            }
            self = .tenant(tenant)
        }
    }

    public var description: String {
        switch self {
        case .admin: return "admin"
        case .operator_: return "operator"
        case .viewer: return "viewer"
        case .tenant(let name): return "tenant:\(name)"
        case .node: return "node"
        case .controller: return "controller"
        }
    }
}

/// The verified identity of a TLS peer.
public struct CertificateIdentity: Sendable, Equatable, Hashable {
    public var role: Role
    public var name: String
    /// Lower-case hex of the certificate's serial number: what revocation lists.
    public var serial: String

    public init(role: Role, name: String, serial: String) {
        self.role = role
        self.name = name
        self.serial = serial
    }
}

/// `bytes` random bytes from the system generator, as lower-case hex.
package func randomHex(bytes: Int) -> String {
    var generator = SystemRandomNumberGenerator()
    return hexString((0..<bytes).map { _ in UInt8.random(in: 0...255, using: &generator) })
}

package func hexString<Bytes: Sequence>(_ bytes: Bytes) -> String where Bytes.Element == UInt8 {
    bytes.map { String($0, radix: 16).count == 1 ? "0" + String($0, radix: 16) : String($0, radix: 16) }.joined()
}

/// A join token: `<id>.<secret>.<sha-256 of the CA certificate>`. The controller stores only a
/// hash of the secret; the agent uses the CA hash to authenticate the controller before it holds
/// any certificate of its own (the kubeadm discovery-hash scheme).
public struct JoinTokenText: Sendable, Equatable {
    public var id: String
    public var secret: String
    public var caFingerprint: String

    public init(id: String, secret: String, caFingerprint: String) {
        self.id = id
        self.secret = secret
        self.caFingerprint = caFingerprint
    }

    public static func generate(caFingerprint: String) -> JoinTokenText {
        JoinTokenText(id: randomHex(bytes: 6), secret: randomHex(bytes: 16), caFingerprint: caFingerprint)
    }

    public init(parsing text: String) throws(WireError) {
        let parts = text.split(separator: ".", omittingEmptySubsequences: false).map(String.init)
        let isHex = { (s: String, n: Int) in s.utf8.count == n && s.utf8.allSatisfy { (48...57).contains($0) || (97...102).contains($0) } }
        guard parts.count == 3, isHex(parts[0], 12), isHex(parts[1], 32), isHex(parts[2], 64) else {
            throw WireError(.invalidArgument, "join: the token must look like <12 hex>.<32 hex>.<64 hex>, as printed by `berth node join-token`", field: "join")
        }
        self.init(id: parts[0], secret: parts[1], caFingerprint: parts[2])
    }

    public var text: String { "\(id).\(secret).\(caFingerprint)" }

}
