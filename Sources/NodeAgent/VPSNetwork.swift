import BerthCore
import Foundation
import Isolation
import Wire

/// The network half of VPS management: node set-up at agent start, address validation and
/// allocation on create/set, the guest spec handed to berth-spawn, and live changes.
extension VPSManager {
    /// Forwarding, undelayed proxy ARP/NDP on the uplink, and the anti-spoofing ruleset with the elements of
    /// VPSs already running — one nft transaction, so a restarted agent leaves no gap.
    public func setUpNodeNetwork() async throws {
        guard let network = settings.network else { return }
        if let uplink = network.uplink, NetworkSetup.interfaceIndex(uplink) == 0 {
            throw AgentError.invalid("network.uplink", "interface \(uplink) does not exist on this node")
        }
        // By index, not /sys/class/net: sysfs shows the namespace that mounted it, not ours.
        for (i, bridge) in network.bridges.enumerated() where NetworkSetup.interfaceIndex(bridge.name) == 0 {
            throw AgentError.invalid("network.bridges[\(i)].name", "bridge \(bridge.name) does not exist on this node")
        }
        let ipv6 = FileIO.exists("/proc/sys/net/ipv6")
        var sysctls = [("/proc/sys/net/ipv4/ip_forward", "1")]
        if ipv6 { sysctls.append(("/proc/sys/net/ipv6/conf/all/forwarding", "1")) }
        if let uplink = network.uplink {
            // The node alone answers for its VPSs' addresses on the uplink. The random delay that
            // RFC 4861 asks of proxy and anycast answers (the kernel's proxy_delay, up to 0.8 s)
            // only keeps two proxies from colliding; here it would slow every first contact from
            // the LAN (ARP and NDP alike) by up to that much.
            sysctls.append(("/proc/sys/net/ipv4/neigh/\(uplink)/proxy_delay", "0"))
            if ipv6 {
                sysctls += [("/proc/sys/net/ipv6/conf/\(uplink)/proxy_ndp", "1"), ("/proc/sys/net/ipv6/neigh/\(uplink)/proxy_delay", "0")]
            }
        }
        for (path, value) in sysctls {
            do { try FileIO.write(path, value) } catch { throw AgentError.kernel("node network set-up", error) }
        }
        var elements: [NFTables.Element] = []
        for record in records.values where record.state == .running {
            if let link = guestSpec(record.config).link {
                elements += NFTables.elements(interface: link.hostInterface, mac: link.mac, addresses: link.allowedSources, bridged: link.bridge != nil)
            }
        }
        let result: ProcessResult
        do {
            result = try await Subprocess.run(["/usr/sbin/nft", "-f", "-"], input: Array(NFTables.ruleset(elements: elements).utf8))
        } catch {
            throw AgentError(.kernel, "VPS networking needs nftables: \(error) (apt-get install nftables)", stage: "nft")
        }
        guard result.status == 0 else {
            throw AgentError(.kernel, "installing the anti-spoofing ruleset failed: \(result.stderr.trimmed)", stage: "nft")
        }
        logger.info(
            "node network ready",
            metadata: [
                "ranges": "\(network.ranges.map(\.description).joined(separator: ","))",
                "uplink": "\(network.uplink ?? "-")", "running": "\(records.values.filter { $0.state == .running }.count)",
            ])
    }

    /// A routed VPS's addresses are announced on the uplink as it starts, again after 1 s and
    /// after 5 s (a lost packet, a switch still learning): the LAN stops sending to the node
    /// that answered for them before (a migration's source) without waiting for its caches.
    /// A round is skipped once that run of the VPS has ended here: a late announcement from a
    /// node the VPS has left would pull its traffic back.
    func announceAddresses(of record: VPSRecord) {
        let config = record.config
        guard let uplink = settings.network?.uplink, let network = config.network, network.bridge == nil, !network.ips.isEmpty else { return }
        let addresses = network.ips.compactMap { try? IPAddress($0) }
        let (logger, name, generation) = (logger, config.name, record.generation)
        Task.detached {
            for pause in [0, 1, 4] {  // at +0, +1 s and +5 s
                try? await Task.sleep(for: .seconds(pause))
                guard await self.isRunning(name, generation: generation) else { return }
                for address in addresses {
                    do { try NetworkSetup.announce(address, on: uplink) } catch {
                        logger.warning("address announcement failed", metadata: ["vps": "\(name)", "error": "\(error)"])
                    }
                }
            }
        }
    }

    /// Whether the run of `name` that `generation` counted is still the one running here.
    func isRunning(_ name: String, generation: Int) -> Bool {
        guard let record = records[name] else { return false }
        return record.generation == generation && record.state == .running
    }

    /// What berth-spawn needs to wire this VPS and write its /etc files.
    func guestSpec(_ config: VPSConfig) -> GuestSpec {
        var spec = GuestSpec(
            hostname: config.hostname,
            nameservers: (config.nameservers ?? []).compactMap { try? IPAddress($0) },
            searchDomains: config.searchDomains ?? [])
        guard let network = config.network, let nodeNetwork = settings.network, let mac = MACAddress.parse(network.mac) else { return spec }
        let addresses = network.ips.compactMap { try? IPAddress($0) }.map { address in
            CIDR(
                address: address,
                prefixLength: network.bridge == nil ? address.bitWidth : nodeNetwork.range(containing: address)?.prefixLength ?? address.bitWidth)
        }
        let bridge = network.bridge.flatMap { nodeNetwork.bridge($0) }
        spec.link = GuestSpec.Link(
            bridge: network.bridge, hostInterface: network.hostInterface, mac: mac, addresses: addresses,
            gateway4: bridge?.gateway4, gateway6: bridge?.gateway6, uplink: nodeNetwork.uplink)
        return spec
    }

    /// Validates `--net` and `--ip` for a new VPS and allocates its interface name and MAC.
    func newNetwork(name: String, net: String, ips: [String]) throws -> VPSConfig.Network? {
        guard let nodeNetwork = settings.network else {
            if !ips.isEmpty { throw AgentError.invalid("ip", "this node has no network settings (berth-agent --config FILE with network.ranges)") }
            if !net.isEmpty && net != "routed" {
                throw AgentError.invalid("net", "this node has no network settings (berth-agent --config FILE with network.bridges)")
            }
            return nil
        }
        var bridge: String?
        if net.hasPrefix("bridged:") {
            let name = String(net.dropFirst("bridged:".count))
            guard nodeNetwork.bridge(name) != nil else {
                let known = nodeNetwork.bridges.map(\.name)
                throw AgentError.invalid(
                    "net", "bridge '\(name)' is not in this node's network.bridges (\(known.isEmpty ? "none configured" : known.joined(separator: ", ")))")
            }
            bridge = name
        } else if !net.isEmpty && net != "routed" {
            throw AgentError.invalid("net", "'\(net)' is neither routed nor bridged:BRIDGE")
        }
        let addresses = try validateNewAddresses(ips, field: "ip", network: nodeNetwork, owner: name)
        let hostInterface = Self.hostInterfaceName(for: name)
        if let other = records.values.first(where: { $0.config.network?.hostInterface == hostInterface && $0.config.name != name }) {
            throw AgentError(.alreadyExists, "VPS \(other.config.name) already uses interface name \(hostInterface); choose another VPS name", field: "name")
        }
        var mac: [UInt8]
        repeat {
            mac = [0x02, 0xb7] + (0..<4).map { _ in UInt8.random(in: 0...255) }
        } while records.values.contains { $0.config.network?.mac == MACAddress.format(mac) }
            || pendingNetworks.values.contains { $0.mac == MACAddress.format(mac) }
        return VPSConfig.Network(bridge: bridge, ips: addresses.map(\.description), mac: MACAddress.format(mac), hostInterface: hostInterface)
    }

    /// Parses, checks against the node's ranges, and refuses duplicates within the request and
    /// against every other VPS on the node.
    func validateNewAddresses(_ texts: [String], field: String, network: NodeSettings.Network, owner: String, existing: [String] = []) throws -> [IPAddress] {
        var seen = Set(existing)
        var out: [IPAddress] = []
        for text in texts {
            let address = try Validation.vpsAddress(text, field: field, network: network)
            guard !seen.contains(address.description) else { throw AgentError.invalid(field, "\(address) is given twice") }
            if let other = records.values.first(where: { $0.config.name != owner && ($0.config.network?.ips.contains(address.description) ?? false) }) {
                throw AgentError(.alreadyExists, "\(field): \(address) is already used by VPS \(other.config.name)", field: field)
            }
            if let other = pendingNetworks.first(where: { $0.key != owner && $0.value.ips.contains(address.description) }) {
                throw AgentError(.alreadyExists, "\(field): \(address) is already used by VPS \(other.key) (being created or changed)", field: field)
            }
            seen.insert(address.description)
            out.append(address)
        }
        return out
    }

    /// `bv-NAME` when it fits IFNAMSIZ, else `bv-` + 5 characters + a hash of the whole name.
    static func hostInterfaceName(for name: String) -> String {
        let prefix = NFTables.interfacePrefix
        if prefix.count + name.count <= 15 { return prefix + name }
        var hash: UInt32 = 2_166_136_261
        for byte in name.utf8 { hash = (hash ^ UInt32(byte)) &* 16_777_619 }
        let hex = String(hash & 0xff_ffff, radix: 16)
        return prefix + name.prefix(5) + "-" + String(repeating: "0", count: 6 - hex.count) + hex
    }

    /// Runs `berth-spawn configure` against the running VPS: addresses, host name and /etc
    /// files change live; the agent saves the config only when this succeeded.
    func configureLive(_ record: VPSRecord, _ config: VPSConfig) async throws {
        guard let run = RunState.read(runDir: runDir(config.name)), run.initAlive else {
            throw AgentError(.conflict, "VPS \(config.name) is not running")
        }
        let result = try await Subprocess.run(
            [
                paths.spawnBinary, "configure", "--run-dir", runDir(config.name),
                "--init-pid", String(run.initPid), "--init-start", String(run.initStart),
            ],
            input: Array(guestSpec(config).encode().utf8))
        guard result.status == 0 else {
            let message = result.stderr.trimmed.replacingOccurrences(of: "berth: ", with: "")
            throw AgentError(.kernel, "changing \(config.name) live failed: \(message)", stage: "configure")
        }
    }

    /// `set --ip-add/--ip-del/--nameserver/--searchdomain`: validates and merges into `config`;
    /// `changed` collects what berth-spawn must apply to a running VPS.
    func applyNetworkChanges(
        _ request: VPSChange, to config: inout VPSConfig, changed: inout [String],
        restart: inout [String], running: Bool
    ) throws {
        if !request.nameservers.isEmpty {
            let servers = try request.nameservers.map { try Validation.nameserver($0).description }
            if servers != config.nameservers ?? [] {
                config.nameservers = servers
                changed.append("nameserver")
            }
        }
        if !request.searchDomains.isEmpty {
            let domains = try Validation.searchDomains(request.searchDomains)
            if domains != config.searchDomains ?? [] {
                config.searchDomains = domains
                changed.append("searchdomain")
            }
        }
        if request.ipAdd.isEmpty && request.ipDel.isEmpty { return }
        guard let nodeNetwork = settings.network else {
            throw AgentError.invalid(
                request.ipAdd.isEmpty ? "ip-del" : "ip-add", "this node has no network settings (berth-agent --config FILE with network.ranges)")
        }
        let wired = config.network != nil
        guard var network = try config.network ?? newNetwork(name: config.name, net: "", ips: []) else { return }
        for text in request.ipDel {
            let address: IPAddress
            do throws(AddressError) { address = try IPAddress(text) } catch { throw AgentError.invalid("ip-del", error.message) }
            guard let index = network.ips.firstIndex(of: address.description) else {
                throw AgentError.invalid("ip-del", "\(address) is not an address of VPS \(config.name)")
            }
            network.ips.remove(at: index)
        }
        let added = try validateNewAddresses(request.ipAdd, field: "ip-add", network: nodeNetwork, owner: config.name, existing: network.ips)
        network.ips += added.map(\.description)
        config.network = network
        // A VPS started before the node had network settings has no interface to add to.
        if running && !wired { restart.append("ip") } else { changed.append("ip") }
    }
}
