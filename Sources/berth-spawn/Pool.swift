import Isolation

#if canImport(Glibc)
    import Glibc
#endif

/// `berth-spawn pool-mount IMAGE DIR`: mounts the node's btrfs storage pool (a file the agent
/// made) at DIR in the agent's mount namespace, through a loop device that frees itself on the
/// last unmount. nosuid and nodev: the pool holds what VPSs wrote, as root of their own user
/// namespace, and the host must give it no meaning (a VPS sees its subvolume through an
/// idmapped copy without them). Prints the loop device on stdout.
func runPoolMount(_ args: [String]) -> Never {
    guard args.count == 2, args.allSatisfy({ $0.hasPrefix("/") }) else {
        fail("usage: berth-spawn pool-mount IMAGE DIR (absolute paths)", code: 2)
    }
    do {
        let device = try Monitor.mountImage(args[0], at: args[1], type: "btrfs", flags: UInt(MS_NOSUID | MS_NODEV))
        writeText(device + "\n", to: 1)
        exit(0)
    } catch {
        fail(error.message, code: 1)
    }
}
