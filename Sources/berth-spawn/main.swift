// berth-spawn: the single-threaded helper between the multi-threaded agent and a VPS.
//
//   berth-spawn start            spec on fd 3, cgroups ready on fd 5, one status line on fd 4; then stays as the monitor
//   berth-spawn exec [options] -- CMD [ARG...]   joins a running VPS and runs CMD in it
//   berth-spawn configure --run-dir D --init-pid P --init-start T   applies a new guest spec (stdin) live
//   berth-spawn resume --status S ...   berth-monitor hands a VPS back when its init exited
//   berth-spawn pool-mount IMAGE DIR    mounts the node's btrfs storage pool (Pool.swift)
//
// It never starts a thread: clone, setns and unshare are only safe in a single-threaded process.
import Isolation

#if canImport(Glibc)
    import Glibc
#endif

/// One line to stderr: the agent's log of this helper (RUN/NAME/monitor.log), or the user's
/// terminal for exec.
func writeStderr(_ line: String) { writeText(line, to: 2) }

func writeText(_ text: String, to fd: Int32) {
    _ = text.withCString { write(fd, $0, strlen($0)) }
}

let arguments = Array(CommandLine.arguments.dropFirst())
switch arguments.first {
case "start":
    runStart()
case "exec":
    runExec(Array(arguments.dropFirst()))
case "configure":
    runConfigure(Array(arguments.dropFirst()))
case "resume":
    runResume(Array(arguments.dropFirst()))
case "pool-mount":
    runPoolMount(Array(arguments.dropFirst()))
default:
    let message =
        "usage: berth-spawn start | exec --init-pid PID --init-start T [--cgroup FILE]... [--tty ROWS COLS] [--env K=V]... -- CMD [ARG...]\n(an internal helper of berth-agent, not meant to be run by hand)\n"
    writeStderr(message)
    exit(2)
}
