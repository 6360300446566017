import BerthCore
import Foundation
import NIOCore
import NIOPosix
import Testing

@testable import Wire
@testable import WireTLS

/// Answers with the caller's identity as the VPS name, so tests see what the server saw.
struct WhoAmIService: WireService {
    func handle(_ request: Berth_V1_Request, stream: ServerStream) async throws -> Berth_V1_Response {
        var response = Berth_V1_Response()
        switch stream.peer {
        case .certificate(let identity): response.status.name = "\(identity.role)/\(identity.name)"
        case .anonymous:
            guard case .enroll = request.call else { throw WireError(.unauthenticated, "anonymous") }
            response.status.name = "anonymous"
        case .unixUser: response.status.name = "unix"
        }
        return response
    }
}

@Suite(.serialized) struct TLSTests {
    static func temporaryDirectory() throws -> String {
        let path = FileManager.default.temporaryDirectory.appendingPathComponent("berth-tls-\(getpid())-\(UInt32.random(in: 0...UInt32.max))").path
        try FileManager.default.createDirectory(atPath: path, withIntermediateDirectories: true)
        return path
    }

    func withServer(
        _ ca: ClusterCA, allowAnonymous: Bool = false,
        _ body: (Int, TLSWireServer) async throws -> Void
    ) async throws {
        let bundle = try ca.issueBundle(role: .controller, name: "controller", hosts: ["127.0.0.1", "localhost"])
        let server = try await TLSWireServer.bind(
            host: "127.0.0.1", port: 0, service: WhoAmIService(), bundle: bundle,
            group: MultiThreadedEventLoopGroup.singleton, allowAnonymous: allowAnonymous)
        do { try await body(server.port, server) } catch { await server.close(); throw error }
        await server.close()
    }

    static func whoAmI(_ client: WireClient) async throws -> String {
        var request = Berth_V1_Request()
        request.status.name = "x"
        return try await client.call(request).status.name
    }

    /// Rotation replaces a bundle on disk as one unit: a crash before the commit marker leaves
    /// the old bundle, a crash after it the new one, never a certificate with the other key.
    @Test func bundleReplacementIsAllOrNothing() throws {
        let dir = try Self.temporaryDirectory()
        defer { try? FileManager.default.removeItem(atPath: dir) }
        let ca = try ClusterCA.create(directory: dir + "/ca")
        let old = try ca.issueBundle(role: .node, name: "n1"), new = try ca.issueBundle(role: .node, name: "n1")
        try FileManager.default.createDirectory(atPath: dir + "/node", withIntermediateDirectories: true)
        try old.write(directory: dir + "/node")
        // Crashed while writing the new files: no marker, so they are discarded.
        try new.certificatePEM.write(toFile: dir + "/node/cert.pem.next", atomically: true, encoding: .utf8)
        #expect(try CredentialBundle.load(directory: dir + "/node").identity().serial == old.identity().serial)
        #expect(!FileManager.default.fileExists(atPath: dir + "/node/cert.pem.next"))
        // Crashed after the marker, before the renames: the next load finishes them.
        for (file, text) in [("ca.pem", new.caPEM), ("cert.pem", new.certificatePEM), ("key.pem", new.keyPEM)] {
            try text.write(toFile: dir + "/node/\(file).next", atomically: true, encoding: .utf8)
        }
        _ = FileManager.default.createFile(atPath: dir + "/node/replace.commit", contents: nil)
        let loaded = try CredentialBundle.load(directory: dir + "/node")
        #expect(try loaded.identity().serial == new.identity().serial)
        #expect(loaded.keyPEM == new.keyPEM)
        #expect(!FileManager.default.fileExists(atPath: dir + "/node/replace.commit"))
        // The ordinary path.
        try old.replace(directory: dir + "/node")
        #expect(try CredentialBundle.load(directory: dir + "/node").identity().serial == old.identity().serial)
        var info = stat()
        #expect(stat(dir + "/node/key.pem", &info) == 0 && info.st_mode & 0o777 == 0o600)
    }

    /// A node renews on its own once two thirds of its certificate's validity have passed.
    @Test func renewalIsDueAfterTwoThirdsOfTheValidity() throws {
        let dir = try Self.temporaryDirectory()
        defer { try? FileManager.default.removeItem(atPath: dir) }
        let ca = try ClusterCA.create(directory: dir)
        let bundle = try ca.issueBundle(role: .node, name: "n1", validity: 3000)
        let (start, end) = try bundle.validity()
        #expect(end.timeIntervalSince(start) == 3000)
        #expect(!bundle.needsRenewal(now: start.addingTimeInterval(1900)))
        #expect(bundle.needsRenewal(now: start.addingTimeInterval(2100)))
    }

    @Test func caIssuesCertificatesWithRoleAndName() throws {
        let dir = try Self.temporaryDirectory()
        defer { try? FileManager.default.removeItem(atPath: dir) }
        let ca = try ClusterCA.create(directory: dir)
        let bundle = try ca.issueBundle(role: .tenant("acme"), name: "alice")
        let identity = try bundle.identity()
        #expect(identity.role == .tenant("acme"))
        #expect(identity.name == "alice")
        #expect(identity.serial.count >= 16)
        // The key file is private from the start; the CA refuses to be overwritten.
        var info = stat()
        #expect(stat(dir + "/ca-key.pem", &info) == 0 && info.st_mode & 0o777 == 0o600)
        #expect(throws: WireError.self) { try ClusterCA.create(directory: dir) }
        let loaded = try ClusterCA.load(directory: dir)
        #expect(loaded.fingerprint == ca.fingerprint)
    }

    @Test(arguments: ["root", "tenant:", "tenant:Acme", "tenant:-x", "", "nodes"])
    func rejectsUnknownRoles(_ text: String) {
        #expect(throws: WireError.self) { try Role(parsing: text) }
    }

    @Test func joinTokensParseStrictly() throws {
        let token = JoinTokenText.generate(caFingerprint: String(repeating: "ab", count: 32))
        #expect(try JoinTokenText(parsing: token.text) == token)
        for bad in ["", "a.b.c", token.text + "0", token.text.uppercased(), token.text.replacingOccurrences(of: ".", with: ":")] {
            #expect(throws: WireError.self) { try JoinTokenText(parsing: bad) }
        }
    }

    /// Every way an operator may write a serial revokes the certificate whose `serial` it is.
    @Test func serialsAreCanonicalisedForRevocation() throws {
        #expect(try CertificateIdentity.canonicalSerial("0A:3F:00") == "0a3f00")
        #expect(try CertificateIdentity.canonicalSerial("a3f00") == "0a3f00")
        #expect(try CertificateIdentity.canonicalSerial("000a3f00") == "0a3f00")
        #expect(try CertificateIdentity.canonicalSerial("00") == "00")
        for bad in ["", ":", "0x12", "12 34", "g1", String(repeating: "ab", count: 22)] {
            #expect(throws: WireError.self) { try CertificateIdentity.canonicalSerial(bad) }
        }
        let dir = try Self.temporaryDirectory()
        defer { try? FileManager.default.removeItem(atPath: dir) }
        let serial = try ClusterCA.create(directory: dir).issueBundle(role: .viewer, name: "v").identity().serial
        #expect(try CertificateIdentity.canonicalSerial(serial.uppercased()) == serial)
    }

    @Test func hostPortParsing() throws {
        #expect(try HostPort(parsing: "198.18.0.1:7443", field: "f") == HostPort(host: "198.18.0.1", port: 7443))
        #expect(try HostPort(parsing: "[fd00:b17::1]:7000", field: "f") == HostPort(host: "fd00:b17::1", port: 7000))
        #expect(try HostPort(parsing: "[::]:0", field: "f", anyPort: true).description == "[::]:0")
        for bad in ["host", "host:0", "host:65536", ":80", "[::1]80", "h:-1", "h:+80", "fd00::1:80", "h:"] {
            #expect(throws: WireError.self) { try HostPort(parsing: bad, field: "f") }
        }
    }

    /// A node address stored before the bracket rule ("fd00:b17::1:7000", split at the last
    /// colon then) is still dialled; anything else is read as `parsing` reads it.
    @Test func storedHostPortReadsTheOldUnbracketedForm() throws {
        #expect(try HostPort(stored: "fd00:b17::1:7000", field: "f") == HostPort(host: "fd00:b17::1", port: 7000))
        #expect(try HostPort(stored: "[fd00:b17::1]:7000", field: "f") == HostPort(host: "fd00:b17::1", port: 7000))
        #expect(try HostPort(stored: "198.18.0.1:7443", field: "f") == HostPort(host: "198.18.0.1", port: 7443))
        for bad in ["host", "fd00::1", "[fd00::1]", "fd00::1:99999"] {
            #expect(throws: WireError.self) { try HostPort(stored: bad, field: "f") }
        }
    }

    @Test func mutualTLSCarriesTheCertificateIdentity() async throws {
        let dir = try Self.temporaryDirectory()
        defer { try? FileManager.default.removeItem(atPath: dir) }
        let ca = try ClusterCA.create(directory: dir)
        try await withServer(ca) { port, _ in
            let client = try await WireClient.connect(
                host: "127.0.0.1", port: port,
                bundle: try ca.issueBundle(role: .viewer, name: "vera"),
                group: MultiThreadedEventLoopGroup.singleton)
            #expect(try await Self.whoAmI(client) == "viewer/vera")
            #expect(client.peerIdentity?.role == .controller)
            await client.close()
        }
    }

    @Test func foreignCAAndHostnameMismatchAreRefused() async throws {
        let dir = try Self.temporaryDirectory()
        defer { try? FileManager.default.removeItem(atPath: dir) }
        let ca = try ClusterCA.create(directory: dir + "/a")
        let other = try ClusterCA.create(directory: dir + "/b")
        try await withServer(ca) { port, _ in
            // A client certificate of another CA, trusting ours: the server refuses it.
            var foreign = try other.issueBundle(role: .admin, name: "mallory")
            foreign.caPEM = ca.certificatePEM
            await #expect(throws: (any Error).self) {
                let client = try await WireClient.connect(host: "127.0.0.1", port: port, bundle: foreign, group: MultiThreadedEventLoopGroup.singleton)
                _ = try await Self.whoAmI(client)
            }
            // The server's certificate does not name "localhost6": the client refuses it.
            await #expect(throws: (any Error).self) {
                _ = try await WireClient.connect(
                    host: "::1", port: port, bundle: try ca.issueBundle(role: .admin, name: "a"),
                    group: MultiThreadedEventLoopGroup.singleton, timeout: .seconds(1))
            }
        }
    }

    @Test func anonymousPeersMayOnlyEnrol() async throws {
        let dir = try Self.temporaryDirectory()
        defer { try? FileManager.default.removeItem(atPath: dir) }
        let ca = try ClusterCA.create(directory: dir)
        try await withServer(ca, allowAnonymous: true) { port, _ in
            let client = try await WireClient.connect(
                host: "127.0.0.1", port: port, bundle: nil, pinnedCA: ca.fingerprint,
                group: MultiThreadedEventLoopGroup.singleton)
            var enroll = Berth_V1_Request()
            enroll.enroll.token = "t"
            #expect(try await client.call(enroll).status.name == "anonymous")
            await #expect(throws: WireError.self) { _ = try await Self.whoAmI(client) }
            await client.close()
            // A pinned hash of another CA: the enrolling client refuses the server.
            await #expect(throws: (any Error).self) {
                _ = try await WireClient.connect(
                    host: "127.0.0.1", port: port, bundle: nil,
                    pinnedCA: String(repeating: "0", count: 64), group: MultiThreadedEventLoopGroup.singleton)
            }
        }
    }

    @Test func revocationClosesOpenConnectionsAndRefusesNewOnes() async throws {
        let dir = try Self.temporaryDirectory()
        defer { try? FileManager.default.removeItem(atPath: dir) }
        let ca = try ClusterCA.create(directory: dir)
        try await withServer(ca) { port, server in
            let bundle = try ca.issueBundle(role: .operator_, name: "olga")
            let client = try await WireClient.connect(host: "127.0.0.1", port: port, bundle: bundle, group: MultiThreadedEventLoopGroup.singleton)
            #expect(try await Self.whoAmI(client) == "operator/olga")
            server.registry.revoke([try bundle.identity().serial])
            for _ in 0..<100 where client.isActive { try await Task.sleep(for: .milliseconds(10)) }
            #expect(!client.isActive)
            await #expect(throws: WireError.self) {
                let again = try await WireClient.connect(host: "127.0.0.1", port: port, bundle: bundle, group: MultiThreadedEventLoopGroup.singleton)
                _ = try await Self.whoAmI(again)
            }
        }
    }

    /// R11: a peer that connects and never completes the TLS handshake is closed at the limit.
    @Test func silentPeersAreClosedAfterTheHandshakeTimeout() async throws {
        let dir = try Self.temporaryDirectory()
        defer { try? FileManager.default.removeItem(atPath: dir) }
        let ca = try ClusterCA.create(directory: dir)
        let server = try await TLSWireServer.bind(
            host: "127.0.0.1", port: 0, service: WhoAmIService(),
            bundle: try ca.issueBundle(role: .controller, name: "controller", hosts: ["127.0.0.1"]),
            group: MultiThreadedEventLoopGroup.singleton, limits: TLSServerLimits(handshake: .milliseconds(300)))
        defer { Task { await server.close() } }
        let fd = socket(AF_INET, Int32(SOCK_STREAM.rawValue), 0)
        #expect(fd >= 0)
        defer { close(fd) }
        var address = sockaddr_in()
        address.sin_family = sa_family_t(AF_INET)
        address.sin_port = UInt16(server.port).bigEndian
        address.sin_addr.s_addr = inet_addr("127.0.0.1")
        let connected = withUnsafePointer(to: &address) {
            $0.withMemoryRebound(to: sockaddr.self, capacity: 1) { connect(fd, $0, socklen_t(MemoryLayout<sockaddr_in>.size)) }
        }
        #expect(connected == 0)
        var timeout = timeval(tv_sec: 5, tv_usec: 0)
        setsockopt(fd, SOL_SOCKET, SO_RCVTIMEO, &timeout, socklen_t(MemoryLayout<timeval>.size))
        let started = ContinuousClock.now
        var byte: UInt8 = 0
        let got = recv(fd, &byte, 1, 0)
        #expect(got == 0)  // closed by the server, not timed out here
        #expect(ContinuousClock.now - started < .seconds(3))
    }
}

/// R11 under load: 500 peers that connect and never handshake do not keep a real client from
/// being served, and all of them are closed at the handshake limit.
@Suite struct SlowPeerLoadTests {
    @Test func manySilentPeersDoNotStarveARealClient() async throws {
        let dir = try TLSTests.temporaryDirectory()
        defer { try? FileManager.default.removeItem(atPath: dir) }
        let ca = try ClusterCA.create(directory: dir)
        let server = try await TLSWireServer.bind(
            host: "127.0.0.1", port: 0, service: WhoAmIService(),
            bundle: try ca.issueBundle(role: .controller, name: "controller", hosts: ["127.0.0.1"]),
            group: MultiThreadedEventLoopGroup.singleton, limits: TLSServerLimits(handshake: .seconds(1)))
        defer { Task { await server.close() } }
        var address = sockaddr_in()
        address.sin_family = sa_family_t(AF_INET)
        address.sin_port = UInt16(server.port).bigEndian
        address.sin_addr.s_addr = inet_addr("127.0.0.1")
        var silent: [Int32] = []
        defer { silent.forEach { close($0) } }
        for _ in 0..<500 {
            let fd = socket(AF_INET, Int32(SOCK_STREAM.rawValue), 0)
            let connected = withUnsafePointer(to: &address) {
                $0.withMemoryRebound(to: sockaddr.self, capacity: 1) { connect(fd, $0, socklen_t(MemoryLayout<sockaddr_in>.size)) }
            }
            #expect(connected == 0)
            _ = send(fd, [0x16], 1, 0)  // one byte of a TLS record, then nothing
            silent.append(fd)
        }
        let client = try await WireClient.connect(
            host: "127.0.0.1", port: server.port,
            bundle: try ca.issueBundle(role: .admin, name: "ann"), group: MultiThreadedEventLoopGroup.singleton)
        for _ in 0..<20 { #expect(try await TLSTests.whoAmI(client) == "admin/ann") }
        await client.close()
        // Every silent peer is closed by the server (EOF), none left to time out here.
        var timeout = timeval(tv_sec: 5, tv_usec: 0)
        var closed = 0
        for fd in silent {
            setsockopt(fd, SOL_SOCKET, SO_RCVTIMEO, &timeout, socklen_t(MemoryLayout<timeval>.size))
            var byte: UInt8 = 0
            if recv(fd, &byte, 1, 0) <= 0 { closed += 1 }
        }
        #expect(closed == silent.count)
    }
}

/// R12: a connection cannot hold more calls at once than the server's cap.
@Suite struct StreamCapTests {
    /// A start-and-cancel flood (the HTTP/2 Rapid Reset pattern): 5,000 calls started and
    /// cancelled at once leave nothing held; afterwards the connection takes a full cap of calls.
    @Test func startAndCancelFloodsLeaveNothingHeld() async throws {
        let dir = FileManager.default.temporaryDirectory.appendingPathComponent("berth-flood-\(getpid())-\(UInt32.random(in: 0...UInt32.max))")
        try FileManager.default.createDirectory(at: dir, withIntermediateDirectories: true)
        defer { try? FileManager.default.removeItem(at: dir) }
        let path = dir.appendingPathComponent("s.sock").path
        let server = try await UnixWireServer.bind(
            path: path, service: EchoService(), group: MultiThreadedEventLoopGroup.singleton,
            allowedUIDs: [getuid()], maxStreams: 16)
        defer { Task { await server.close() } }
        let client = try await WireClient.connect(unixPath: path, group: MultiThreadedEventLoopGroup.singleton)
        var slow = Berth_V1_Request()
        slow.status.name = "slow"
        for _ in 0..<5000 {
            let call = try await client.start(slow)
            call.cancel()
            _ = try? await call.result()
        }
        // All 16 slots are free again: 16 slow calls are accepted, a 17th is refused.
        let held = try await (0..<16).asyncMap { _ in try await client.start(slow) }
        var quick = Berth_V1_Request()
        quick.status.name = "web1"
        do {
            _ = try await client.call(quick)
            Issue.record("a call beyond the cap was accepted")
        } catch let error as WireError {
            #expect(error.code == .tooManyStreams)
        }
        held.forEach { $0.cancel() }
        for call in held { _ = try? await call.result() }
        #expect(try await client.call(quick).status.name == "web1")
        await client.close()
    }

    @Test func callsBeyondTheCapAreRefusedWhileOthersRun() async throws {
        let dir = FileManager.default.temporaryDirectory.appendingPathComponent("berth-cap-\(getpid())-\(UInt32.random(in: 0...UInt32.max))")
        try FileManager.default.createDirectory(at: dir, withIntermediateDirectories: true)
        defer { try? FileManager.default.removeItem(at: dir) }
        let path = dir.appendingPathComponent("s.sock").path
        let server = try await UnixWireServer.bind(
            path: path, service: EchoService(), group: MultiThreadedEventLoopGroup.singleton,
            allowedUIDs: [getuid()], maxStreams: 2)
        defer { Task { await server.close() } }
        let client = try await WireClient.connect(unixPath: path, group: MultiThreadedEventLoopGroup.singleton)
        var slow = Berth_V1_Request()
        slow.status.name = "slow"
        let first = try await client.start(slow)
        let second = try await client.start(slow)
        var quick = Berth_V1_Request()
        quick.status.name = "web1"
        do {
            _ = try await client.call(quick)
            Issue.record("a third concurrent call was accepted")
        } catch let error as WireError {
            #expect(error.code == .tooManyStreams)
        }
        first.cancel()
        second.cancel()
        for call in [first, second] {
            do { _ = try await call.result(); Issue.record("a cancelled call answered") } catch let error as WireError {
                #expect(error.code == .cancelled)
            }
        }
        // Once they are gone the connection serves again.
        #expect(try await client.call(quick).status.name == "web1")
        await client.close()
    }
}

extension Sequence {
    func asyncMap<T>(_ transform: (Element) async throws -> T) async rethrows -> [T] {
        var results: [T] = []
        for element in self { results.append(try await transform(element)) }
        return results
    }
}
