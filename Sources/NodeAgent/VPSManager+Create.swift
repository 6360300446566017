import BerthCore
import CIsolation
import Foundation
import Isolation
import Logging

/// Creating a VPS (config, disk, identity) and destroying it.
extension VPSManager {
    public func create(_ request: VPSSpec, progress: @Sendable (String) -> Void = { _ in }) async throws -> VPSView {
        let name = try Name.validate(request.name)
        guard !request.template.isEmpty else { throw AgentError.invalid("template", "is required") }
        _ = try Name.validate(request.template, field: "template")
        guard let template = templates.info(request.template) else {
            throw AgentError(.notFound, "template \(request.template) does not exist (see 'berth template list')", field: "template")
        }
        let hostname = try Validation.hostname(request.hostname.isEmpty ? name : request.hostname)
        for (key, value) in request.labels { try Validation.label(key: key, value: value) }
        let nameservers = try request.nameservers.map { try Validation.nameserver($0).description }
        let searchDomains = try Validation.searchDomains(request.searchDomains)
        let limits = try Limits().merging(LimitsUpdate(request.limits), onlineCPUs: onlineCPUs)
        let storage: VPSConfig.Storage
        switch request.storage {
        case "", "image": storage = .image
        case "layered": storage = .layered
        default: throw AgentError.invalid("storage", "'\(request.storage)' is not a storage kind (image, layered)")
        }
        let layout: VPSConfig.Layout
        switch request.layout {
        case "": layout = defaultLayout
        case "loop": layout = .loop
        case "pool": layout = .pool
        default: throw AgentError.invalid("layout", "'\(request.layout)' is not a disk layout (loop, pool)")
        }
        if layout == .pool, limits.diskInodes != nil {
            throw AgentError.invalid(
                "disk-inodes", "a pool VPS's disk is a btrfs subvolume, which has no inode limit; leave --disk-inodes out or use --layout loop")
        }
        // A layered disk holds only what the VPS changes.
        let minimum = storage == .layered ? UInt64(16 << 20) : template.sizeBytes + template.sizeBytes / 4 + (16 << 20)
        if limits.diskBytes < minimum {
            throw AgentError.invalid(
                "disk", "\(ByteSize.format(limits.diskBytes)) is too small for template \(template.name) (needs at least \(minimum >> 20)M)")
        }
        try checkNameFree(name)
        let capabilities = try Validation.capabilities(request.capabilities)
        let network = try newNetwork(name: name, net: request.net, ips: request.ips)
        let idmapBase = request.privileged ? nil : try allocateIdmap()
        holdNew(name, network: network, idmapBase: idmapBase)
        defer { releaseNew(name, idmapBase: idmapBase) }

        var config = VPSConfig(
            name: name, template: template.name, hostname: hostname, limits: limits,
            labels: request.labels, onboot: request.onboot, stopSignal: template.stopSignal)
        config.network = network
        config.nameservers = nameservers.isEmpty ? nil : nameservers
        config.searchDomains = searchDomains.isEmpty ? nil : searchDomains
        config.privileged = request.privileged ? true : nil
        config.idmapBase = idmapBase
        config.capabilities = capabilities.isEmpty ? nil : capabilities
        config.storage = storage == .layered ? .layered : nil
        config.layout = layout == .pool ? .pool : nil
        let dir = store.directory(name)
        var volumeIn: StoragePool?
        do {
            try FileManager.default.createDirectory(atPath: store.rootPath(name), withIntermediateDirectories: true)
            chmod(dir, 0o700)
            // A layered disk starts empty; the monitor makes its upper and work directories.
            let tree = storage == .layered ? nil : templates.rootfs(template.name)
            if storage == .layered { templates.share(template.name, with: name) }
            if layout == .pool {
                let pool = try await storagePool(creating: true)
                progress(
                    "creating a \(ByteSize.format(limits.diskBytes)) subvolume in the storage pool " + (tree == nil ? "layered over" : "from")
                        + " template \(template.name)")
                try await createVolume(name, in: pool, bytes: limits.diskBytes, copying: tree)
                volumeIn = pool
            } else {
                progress("creating \(ByteSize.format(limits.diskBytes)) disk " + (tree == nil ? "layered over" : "from") + " template \(template.name)")
                let result = try await Subprocess.run(
                    mkfsArguments(
                        name, from: tree, image: store.diskPath(name),
                        bytes: limits.diskBytes, inodes: limits.diskInodes))
                guard result.status == 0 else {
                    throw AgentError(.kernel, "creating the disk image failed: \(result.stderr.trimmed)", stage: "mke2fs")
                }
            }
            try store.save(config)
        } catch {
            if let volumeIn { try? deleteVolume(name, in: volumeIn) }
            try? FileManager.default.removeItem(atPath: dir)
            if storage == .layered { templates.unshare(template.name, with: name) }
            throw error
        }
        let record = VPSRecord(config: config)
        records[name] = record
        logger.info("created VPS", metadata: ["vps": "\(name)", "template": "\(template.name)"])
        return view(record)
    }

    /// `already-exists` when `name` is taken here: a VPS, a directory whose config is broken or
    /// still being written, a create or a received migration in flight.
    func checkNameFree(_ name: String) throws {
        guard records[name] == nil, broken[name] == nil, !creating.contains(name), !FileIO.exists(store.directory(name)) else {
            throw AgentError(.alreadyExists, "VPS \(name) already exists on \(nodeName)", field: "name")
        }
    }

    /// Holds a new VPS's name, interface and addresses, and id range while its directory is made
    /// (a create, a received migration), so that no other create takes them meanwhile.
    func holdNew(_ name: String, network: VPSConfig.Network?, idmapBase: UInt32?) {
        creating.insert(name)
        pendingNetworks[name] = network
        if let idmapBase { pendingIdmaps.insert(idmapBase) }
    }

    func releaseNew(_ name: String, idmapBase: UInt32?) {
        creating.remove(name)
        pendingNetworks[name] = nil
        if let idmapBase { pendingIdmaps.remove(idmapBase) }
    }

    public func destroy(_ name: String, force: Bool) async throws {
        _ = try Name.validate(name)
        try checkNotMigrating(name)
        try checkDiskFree(name)
        if let message = broken[name] {
            guard force else { throw AgentError(.corruptState, "\(message); use --force to destroy it anyway") }
        } else {
            if try record(name).lifecycle.destroyPlan(name, force: force) == .killThenDelete {
                try await stop(name, timeout: 0, kill: true)
            }
        }
        for mounted in [store.rootPath(name), store.diskMountPath(name)] where FileIO.isMountPoint(mounted) {
            throw AgentError(.conflict, "\(mounted) is still mounted; refusing to delete through a mounted VPS disk")
        }
        if records[name]?.config.isPooled ?? false {
            removePoolSnapshots(name)
            removeReplicationSnapshots(name)
            try deleteVolume(name, in: try await storagePool(creating: false))
        } else if let pool = try? mountedPool(), FileIO.exists(pool.volume(name)) {
            // A pool VPS whose config is broken, or what an interrupted destroy left.
            try deleteVolume(name, in: pool)
        }
        do {
            try FileManager.default.removeItem(atPath: store.directory(name))
        } catch {
            throw AgentError(.kernel, "removing \(store.directory(name)) failed: \(error.localizedDescription)")
        }
        try? FileManager.default.removeItem(atPath: runDir(name))
        if let config = records[name]?.config, config.isLayered { templates.unshare(config.template, with: name) }
        records[name] = nil
        broken[name] = nil
        receivedMigrations[name] = nil
        logger.info("destroyed VPS", metadata: ["vps": "\(name)"])
    }
}
