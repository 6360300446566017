import BerthCore
import CIsolation
import Foundation
import Isolation
import Logging

/// `berth set`: everything validated first, then applied live or saved for the next start.
extension VPSManager {
    public func set(_ request: VPSChange) async throws -> VPSChangeOutcome {
        let name = try Name.validate(request.name)
        let record = try record(name)
        try checkNotMigrating(name)
        try record.lifecycle.beginChange(name)
        defer { record.lifecycle.endChange() }
        var config = record.config
        var live: [String] = [], restart: [String] = []
        let running = record.state == .running
        // Everything is validated before anything is applied, so bad input changes nothing.
        config.limits = try config.limits.merging(request.limits, onlineCPUs: onlineCPUs)
        var guestChanged: [String] = []
        if !request.hostname.isEmpty && request.hostname != config.hostname {
            config.hostname = try Validation.hostname(request.hostname)
            guestChanged.append("hostname")
        }
        try applyNetworkChanges(request, to: &config, changed: &guestChanged, restart: &restart, running: running)
        for (key, value) in request.labels {
            if value.isEmpty {
                config.labels[key] = nil
            } else {
                try Validation.label(key: key, value: value)
                config.labels[key] = value
            }
        }
        if let onboot = request.onboot { config.onboot = onboot }
        if !request.capabilities.isEmpty {
            var merged = config.capabilities ?? [:]
            for (capability, value) in try Validation.capabilities(request.capabilities) { merged[capability] = value }
            config.capabilities = merged.isEmpty ? nil : merged
            // A process's bounding set only shrinks: the new set applies from the next boot.
            if running && config.capabilities != record.config.capabilities { restart.append("capability") }
        }
        // Addresses added here are taken while this call awaits the kernel: a concurrent create
        // or set must not hand them out again.
        pendingNetworks[name] = config.network
        defer { pendingNetworks[name] = nil }

        let old = record.config.limits
        if old.diskBytes != config.limits.diskBytes || config.limits.diskInodes != old.diskInodes { try checkDiskFree(name) }
        if config.isPooled {
            if config.limits.diskInodes != nil {
                throw AgentError.invalid("disk-inodes", "a pool VPS's disk is a btrfs subvolume, which has no inode limit")
            }
            if old.diskBytes != config.limits.diskBytes {
                try await resizeVolume(name, to: config.limits.diskBytes)
                if running { live.append("disk") }
            }
        } else if let inodes = config.limits.diskInodes, inodes != old.diskInodes {
            try await rebuildDisk(name, inodes: inodes, bytes: config.limits.diskBytes, running: running)
        } else if old.diskBytes != config.limits.diskBytes {
            try await resizeDisk(name, from: old.diskBytes, to: config.limits.diskBytes, running: running)
            if running { live.append("disk") }
        }
        let cgroupChanged = [
            ("memory", old.memoryBytes != config.limits.memoryBytes), ("swap", old.swapBytes != config.limits.swapBytes),
            ("pids", old.pids != config.limits.pids), ("cpu-units", old.cpuUnits != config.limits.cpuUnits),
            ("cpu-limit", old.cpuLimitPercent != config.limits.cpuLimitPercent), ("cpus", old.cpus != config.limits.cpus),
        ].filter(\.1).map(\.0)
        if running && !cgroupChanged.isEmpty {
            do {
                try cgroups.apply(name, config.limits)
            } catch {
                try? cgroups.apply(name, old)
                throw AgentError.kernel("applying limits to \(name)", error)
            }
            live += cgroupChanged
        }
        if running && old.files != config.limits.files { restart.append("files") }
        if !old.sameIO(as: config.limits) {
            // Checked for stopped VPSs too: a limit the host cannot enforce is refused now.
            let result = applyIO(name, config.limits, running: running)
            if case .failure(let error) = result {
                if !cgroupChanged.isEmpty { try? cgroups.apply(name, old) }
                throw AgentError.kernel("I/O limits of \(name)", error)
            }
            if running { live.append("io") }
        }
        if running && !guestChanged.isEmpty {
            do {
                try await configureLive(record, config)
            } catch {
                if !cgroupChanged.isEmpty { try? cgroups.apply(name, old) }
                throw error
            }
            live += guestChanged
        }
        try store.save(config)
        record.config = config
        return VPSChangeOutcome(vps: view(record), appliedLive: live, needsRestart: restart)
    }
}
