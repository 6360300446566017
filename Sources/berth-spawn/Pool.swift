import CIsolation
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
    let (image, directory) = (args[0], args[1])
    var device = [CChar](repeating: 0, count: 64)
    let loopFD = berth_loop_attach(image, 0, &device, device.count)
    guard loopFD >= 0 else { fail("attach \(image) to a loop device: \(String(cString: strerror(errno)))", code: 1) }
    let path = String(cString: device)
    guard mount(path, directory, "btrfs", UInt(MS_NOSUID | MS_NODEV), "") == 0 else {
        let err = errno
        close(loopFD)
        fail("mount \(path) (\(image)) on \(directory): \(String(cString: strerror(err)))", code: 1)
    }
    close(loopFD)
    writeStdout(path + "\n")
    exit(0)
}

func writeStdout(_ line: String) {
    _ = line.withCString { write(1, $0, strlen($0)) }
}
