import BerthCore
import Crypto
import Foundation
import SwiftASN1
import Wire
import X509

extension CertificateIdentity {
    /// Reads role and name from a certificate the TLS layer has already verified against the CA.
    public init(certificate: Certificate) throws(WireError) {
        var commonName: String?
        var unit: String?
        for rdn in certificate.subject {
            for attribute in rdn {
                if attribute.type == .RDNAttributeType.commonName { commonName = String(attribute.value) }
                if attribute.type == .RDNAttributeType.organizationalUnitName { unit = String(attribute.value) }
            }
        }
        guard let commonName, let unit else {
            throw WireError(.unauthenticated, "the peer certificate has no Berth role (subject OU) or name (subject CN)")
        }
        self.init(role: try Role(parsing: unit), name: commonName, serial: hexString(certificate.serialNumber.bytes))
    }

    /// A serial as an operator may type it (upper or lower case, `:` between bytes, as
    /// `openssl x509 -serial` or an integer printed in hex writes it) in the one form that
    /// `serial` has and revocation compares: two lower-case digits per byte, no leading zero
    /// byte, the leading zero digit of a first byte below 0x10 kept.
    public static func canonicalSerial(_ text: String) throws(WireError) -> String {
        // The standard library only: Foundation's replacingOccurrences would link ICU's 36 MB of
        // data into the CLI (measured: its data segment grew from 4 to 40 MB).
        var digits = String(text.lowercased().filter { $0 != ":" })
        guard !digits.isEmpty, digits.count <= 42, digits.utf8.allSatisfy({ (48...57).contains($0) || (97...102).contains($0) }) else {
            throw WireError(.invalidArgument, "serial: \"\(text)\" is not a hex certificate serial (up to 20 bytes)", field: "serial")
        }
        if digits.count % 2 == 1 { digits = "0" + digits }
        while digits.count > 2 && digits.hasPrefix("00") { digits.removeFirst(2) }
        return digits
    }
}

/// A client or server bundle: the CA to trust, our certificate and our key (all PEM). The files
/// are the ones `--config-dir` names: ca.pem, cert.pem, key.pem.
public struct CredentialBundle: Sendable {
    public var caPEM: String
    public var certificatePEM: String
    public var keyPEM: String

    public init(caPEM: String, certificatePEM: String, keyPEM: String) {
        self.caPEM = caPEM
        self.certificatePEM = certificatePEM
        self.keyPEM = keyPEM
    }

    public static func load(directory: String) throws(WireError) -> CredentialBundle {
        try finishReplacement(directory: directory)
        func read(_ file: String) throws(WireError) -> String {
            let path = directory + "/" + file
            guard let text = try? String(contentsOfFile: path, encoding: .utf8) else {
                throw WireError(
                    .invalidArgument,
                    "config-dir: cannot read \(path) (expected ca.pem, cert.pem and key.pem, as written by `berth ca init` or `berth ca issue`)",
                    field: "config-dir")
            }
            return text
        }
        return CredentialBundle(caPEM: try read("ca.pem"), certificatePEM: try read("cert.pem"), keyPEM: try read("key.pem"))
    }

    public func write(directory: String) throws(WireError) {
        try writeSecretFile(directory + "/ca.pem", caPEM, mode: 0o644)
        try writeSecretFile(directory + "/cert.pem", certificatePEM, mode: 0o644)
        try writeSecretFile(directory + "/key.pem", keyPEM, mode: 0o600)
    }

    static let files = [("ca.pem", mode_t(0o644)), ("cert.pem", mode_t(0o644)), ("key.pem", mode_t(0o600))]
    static let replacementMarker = "replace.commit"

    /// Replaces the bundle in `directory` as one unit (certificate rotation): the new files are
    /// written beside the old ones, a marker commits them, then each is renamed into place. A
    /// crash at any point leaves either the old bundle or, at the next `load`, the new one;
    /// never a certificate with the other key.
    public func replace(directory: String) throws(WireError) {
        for (file, _) in Self.files { unlink(directory + "/" + file + ".next") }
        for ((file, mode), text) in zip(Self.files, [caPEM, certificatePEM, keyPEM]) {
            try writeSecretFile(directory + "/" + file + ".next", text, mode: mode)
        }
        try writeSecretFile(directory + "/" + Self.replacementMarker, "", mode: 0o600)
        try Self.finishReplacement(directory: directory)
    }

    /// Completes a committed replacement (renames the `.next` files into place) or discards an
    /// uncommitted one.
    static func finishReplacement(directory: String) throws(WireError) {
        let marker = directory + "/" + replacementMarker
        guard access(marker, F_OK) == 0 else {
            for (file, _) in files { unlink(directory + "/" + file + ".next") }
            return
        }
        for (file, _) in files where access(directory + "/" + file + ".next", F_OK) == 0 {
            guard rename(directory + "/" + file + ".next", directory + "/" + file) == 0 else {
                throw WireError(.kernel, "cannot rename \(directory)/\(file).next into place", stage: "rename", errno: errno)
            }
        }
        unlink(marker)
        let fd = open(directory, O_RDONLY | O_DIRECTORY | O_CLOEXEC)
        if fd >= 0 { fsync(fd); close(fd) }
    }

    /// When our certificate became valid and when it stops being valid.
    public func validity() throws(WireError) -> (notBefore: Date, notAfter: Date) {
        do {
            let certificate = try Certificate(pemEncoded: certificatePEM)
            return (certificate.notValidBefore, certificate.notValidAfter)
        } catch {
            throw WireError(.invalidArgument, "cert.pem is not a PEM certificate: \(error)", field: "config-dir")
        }
    }

    /// Past two thirds of its validity: time to renew, long before it expires.
    public func needsRenewal(now: Date = Date()) -> Bool {
        guard let (start, end) = try? validity() else { return false }
        return now >= start.addingTimeInterval(end.timeIntervalSince(start) * 2 / 3)
    }

    /// The identity our own certificate carries.
    public func identity() throws(WireError) -> CertificateIdentity {
        do {
            return try CertificateIdentity(certificate: Certificate(pemEncoded: certificatePEM))
        } catch let error as WireError {
            throw error
        } catch {
            throw WireError(.invalidArgument, "cert.pem is not a PEM certificate: \(error)", field: "config-dir")
        }
    }
}

/// Creates `path` with `mode` from the start (never world-readable for a moment), replacing an
/// older file atomically.
func writeSecretFile(_ path: String, _ text: String, mode: mode_t) throws(WireError) {
    let temporary = path + ".tmp"
    unlink(temporary)
    let fd = open(temporary, O_WRONLY | O_CREAT | O_EXCL | O_CLOEXEC, mode)
    guard fd >= 0 else { throw WireError(.kernel, "cannot create \(temporary)", stage: "open", errno: errno) }
    let bytes = Array(text.utf8)
    let written = bytes.withUnsafeBytes { write(fd, $0.baseAddress, $0.count) }
    let writeErrno = errno
    fsync(fd)
    close(fd)
    guard written == bytes.count else {
        unlink(temporary)
        throw WireError(.kernel, "cannot write \(temporary)", stage: "write", errno: writeErrno)
    }
    guard rename(temporary, path) == 0 else {
        let renameErrno = errno
        unlink(temporary)
        throw WireError(.kernel, "cannot rename \(temporary) to \(path)", stage: "rename", errno: renameErrno)
    }
}

/// The cluster certificate authority: a P-256 key and a self-signed CA certificate in a
/// directory (ca.pem, ca-key.pem mode 0600). It issues every certificate of the cluster.
public struct ClusterCA: Sendable {
    public let certificate: Certificate
    public let certificatePEM: String
    let key: P256.Signing.PrivateKey

    public static let defaultLeafValidity: TimeInterval = 365 * 24 * 3600

    /// SHA-256 of the CA certificate's DER, hex: what a join token pins.
    public var fingerprint: String { Self.fingerprint(of: certificate) }

    public static func fingerprint(of certificate: Certificate) -> String {
        var serializer = DER.Serializer()
        try? serializer.serialize(certificate)
        return hexString(SHA256.hash(data: serializer.serializedBytes))
    }

    public static func fingerprint(ofPEM pem: String) throws(WireError) -> String {
        do { return fingerprint(of: try Certificate(pemEncoded: pem)) } catch {
            throw WireError(.invalidArgument, "not a PEM certificate: \(error)")
        }
    }

    /// A fresh P-256 key pair for a node or client: (private key PEM, public key PEM).
    public static func generateKeyPair() -> (privateKeyPEM: String, publicKeyPEM: String) {
        let key = P256.Signing.PrivateKey()
        return (key.pemRepresentation, key.publicKey.pemRepresentation)
    }

    /// Writes a new CA into `directory`; refuses to overwrite an existing one (that would orphan
    /// every certificate the old CA issued).
    public static func create(directory: String, commonName: String = "Berth cluster CA") throws(WireError) -> ClusterCA {
        if FileManager.default.fileExists(atPath: directory + "/ca-key.pem") {
            throw WireError(.alreadyExists, "dir: \(directory) already holds a CA (ca-key.pem); remove it first or choose another directory", field: "dir")
        }
        do {
            try FileManager.default.createDirectory(atPath: directory, withIntermediateDirectories: true, attributes: [.posixPermissions: 0o700])
        } catch {
            throw WireError(.kernel, "dir: cannot create \(directory): \(error)", field: "dir")
        }
        let key = P256.Signing.PrivateKey()
        let name: DistinguishedName
        let certificate: Certificate
        do {
            name = try DistinguishedName {
                OrganizationName("Berth")
                CommonName(commonName)
            }
            let now = Date()
            certificate = try Certificate(
                version: .v3, serialNumber: Certificate.SerialNumber(),
                publicKey: .init(key.publicKey),
                notValidBefore: now.addingTimeInterval(-300), notValidAfter: now.addingTimeInterval(10 * 365 * 24 * 3600),
                issuer: name, subject: name, signatureAlgorithm: .ecdsaWithSHA256,
                extensions: try Certificate.Extensions {
                    Critical(BasicConstraints.isCertificateAuthority(maxPathLength: 0))
                    Critical(KeyUsage(keyCertSign: true, cRLSign: true))
                    SubjectKeyIdentifier(hash: Certificate.PublicKey(key.publicKey))
                },
                issuerPrivateKey: .init(key))
        } catch {
            throw WireError(.internalError, "cannot build the CA certificate: \(error)")
        }
        let pem: String
        do { pem = try certificate.serializeAsPEM().pemString } catch {
            throw WireError(.internalError, "cannot encode the CA certificate: \(error)")
        }
        try writeSecretFile(directory + "/ca-key.pem", key.pemRepresentation, mode: 0o600)
        try writeSecretFile(directory + "/ca.pem", pem, mode: 0o644)
        return ClusterCA(certificate: certificate, certificatePEM: pem, key: key)
    }

    public static func load(directory: String) throws(WireError) -> ClusterCA {
        guard let pem = try? String(contentsOfFile: directory + "/ca.pem", encoding: .utf8),
            let keyPEM = try? String(contentsOfFile: directory + "/ca-key.pem", encoding: .utf8)
        else {
            throw WireError(.notFound, "ca-dir: \(directory) has no ca.pem and ca-key.pem (run `berth ca init --dir \(directory)`)", field: "ca-dir")
        }
        do {
            let certificate = try Certificate(pemEncoded: pem)
            let key = try P256.Signing.PrivateKey(pemRepresentation: keyPEM)
            guard Certificate.PublicKey(key.publicKey) == certificate.publicKey else {
                throw WireError(.invalidArgument, "ca-dir: ca-key.pem does not belong to ca.pem", field: "ca-dir")
            }
            return ClusterCA(certificate: certificate, certificatePEM: pem, key: key)
        } catch let error as WireError {
            throw error
        } catch {
            throw WireError(.invalidArgument, "ca-dir: cannot read the CA in \(directory): \(error)", field: "ca-dir")
        }
    }

    /// Issues a certificate for `publicKey`. Every certificate is usable for both TLS client and
    /// server auth, since agents and the controller are both. `hosts` become SANs (IP addresses
    /// where they parse as one, DNS names otherwise).
    public func issue(
        role: Role, name: String, publicKey: P256.Signing.PublicKey, hosts: [String] = [],
        notBefore: Date? = nil, validity: TimeInterval = ClusterCA.defaultLeafValidity
    ) throws(WireError) -> Certificate {
        // Operators' own names may be any CN below; nodes', tenants' and the controller's are
        // names in the Berth sense, since they become host names, paths and labels.
        if ![.admin, .operator_, .viewer].contains(role) { try Name.validate(name) }
        guard !name.isEmpty, name.utf8.count <= 64, !name.contains(where: { $0.isNewline || $0 == "," }) else {
            throw WireError(.invalidArgument, "name: \"\(name)\" must be 1-64 characters without commas or newlines", field: "name")
        }
        do {
            let subject = try DistinguishedName {
                OrganizationName("Berth")
                OrganizationalUnitName(role.description)
                CommonName(name)
            }
            let start = notBefore ?? Date().addingTimeInterval(-300)
            let alternativeNames = hosts.map { host -> GeneralName in
                if let address = try? IPAddress(host) { return .ipAddress(ASN1OctetString(contentBytes: address.bytes[...])) }
                return .dnsName(host)
            }
            return try Certificate(
                version: .v3, serialNumber: Certificate.SerialNumber(),
                publicKey: .init(publicKey),
                notValidBefore: start, notValidAfter: start.addingTimeInterval(validity),
                issuer: certificate.subject, subject: subject, signatureAlgorithm: .ecdsaWithSHA256,
                extensions: try Certificate.Extensions {
                    Critical(BasicConstraints.notCertificateAuthority)
                    Critical(KeyUsage(digitalSignature: true))
                    try ExtendedKeyUsage([.serverAuth, .clientAuth])
                    if !alternativeNames.isEmpty { SubjectAlternativeNames(alternativeNames) }
                },
                issuerPrivateKey: .init(key))
        } catch {
            throw WireError(.internalError, "cannot issue a certificate for \(name): \(error)")
        }
    }

    /// A fresh key and a certificate for it, as a bundle a client can use as `--config-dir`.
    public func issueBundle(role: Role, name: String, hosts: [String] = [], validity: TimeInterval = ClusterCA.defaultLeafValidity) throws(WireError)
        -> CredentialBundle
    {
        let key = P256.Signing.PrivateKey()
        let certificate = try issue(role: role, name: name, publicKey: key.publicKey, hosts: hosts, validity: validity)
        let pem: String
        do { pem = try certificate.serializeAsPEM().pemString } catch {
            throw WireError(.internalError, "cannot encode the certificate for \(name): \(error)")
        }
        return CredentialBundle(caPEM: certificatePEM, certificatePEM: pem, keyPEM: key.pemRepresentation)
    }
}

extension JoinTokenText {
    /// What the controller stores instead of the secret.
    public var secretHash: String { hexString(SHA256.hash(data: Array(secret.utf8))) }
}
