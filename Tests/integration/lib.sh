# Shared helpers of the integration tier: a private agent per run, unique names, cleanup.
# Everything a run creates carries $RUN_ID, so a crashed run's leftovers are easy to find.

RUN_ID=${RUN_ID:-bit$$}
WORK=${WORK:-/tmp/berth-it-$RUN_ID}
BUILD=${BUILD:-.build/debug}
BUILD=$(cd "$BUILD" && pwd)
BERTH="$BUILD/berth"
export BERTH_AGENT="$WORK/run/agent.sock"
CGROUP_PARENT="berth-$RUN_ID"
AGENT_PID=""
PASSED=0; FAILED=0; SKIPPED=0
FAILED_NAMES=()

agent_start() {
    mkdir -p "$WORK"
    ${AGENT_WRAPPER:-} "$BUILD/berth-agent" --data-dir "$WORK/data" --run-dir "$WORK/run" --socket "$BERTH_AGENT" \
        --cgroup-parent "$CGROUP_PARENT" --name "node-$RUN_ID" ${AGENT_EXTRA:-} >>"$WORK/agent.log" 2>&1 &
    AGENT_PID=$!
    disown "$AGENT_PID" 2>/dev/null || true   # no "Killed" job notice when a test kill -9s it
    echo "$AGENT_PID" >"$WORK/agent.pid"   # tests run in subshells: the pid lives in a file
    for _ in $(seq 100); do [ -S "$BERTH_AGENT" ] && "$BERTH" list >/dev/null 2>&1 && return 0; sleep 0.05; done
    echo "agent did not come up; log:" >&2; cat "$WORK/agent.log" >&2; return 1
}

agent_pid() { cat "$WORK/agent.pid" 2>/dev/null; }
# Waits for the agent process to be gone (it may be a child of another subshell: no `wait`).
agent_gone() { local p; p=$(agent_pid); for _ in $(seq 200); do alive "$p" || return 0; sleep 0.05; done; return 1; }
agent_kill9() { local p; p=$(agent_pid); [ -n "$p" ] && kill -9 "$p" 2>/dev/null; agent_gone; rm -f "$WORK/agent.pid"; }
agent_stop() {
    local p; p=$(agent_pid)
    [ -n "$p" ] || return 0
    kill -TERM "$p" 2>/dev/null
    agent_gone
    rm -f "$WORK/agent.pid"
}

# run_test NAME FUNCTION: runs FUNCTION in a subshell with `set -e`; prints ok/FAIL.
run_test() {
    local name=$1 fn=$2 out rc
    # ONLY=regex runs a subset (the first test creates the VPSs the others use).
    if [ -n "${ONLY:-}" ] && ! [[ $fn =~ ^(t_create_start|t_net_create_start|$ONLY)$ ]]; then return; fi
    out=$( (set -e; [ -n "${TRACE:-}" ] && set -x; "$fn") 2>&1 ); rc=$?
    if [ $rc -eq 0 ]; then
        PASSED=$((PASSED + 1)); echo "ok   - $name"
    elif [ $rc -eq 77 ]; then
        SKIPPED=$((SKIPPED + 1)); echo "skip - $name: $(echo "$out" | tail -1)"
    else
        FAILED=$((FAILED + 1)); FAILED_NAMES+=("$name"); echo "FAIL - $name"; echo "$out" | sed 's/^/       /' | tail -25
    fi
}

skip() { echo "$*"; exit 77; }

# tier_prelude TIER TOOL...: a root tier skips as a whole without root and stops when a tool
# it needs is missing.
tier_prelude() {
    local tier=$1; shift
    if [ "$(id -u)" != 0 ]; then
        echo "skip - $tier tier: needs root"; echo "$tier: 0 passed, 0 failed, 1 skipped"; exit 0
    fi
    local tool
    for tool in "$@"; do command -v "$tool" >/dev/null || { echo "missing $tool: run make deps" >&2; exit 1; }; done
}

# The mount point of a cgroup2 hierarchy to run the v2 driver against on a v1/hybrid host. Used
# as `m=$(hybrid_cgroup2_or_skip)`: the skip reason goes to stderr, the 77 ends the test.
hybrid_cgroup2_or_skip() {
    [ "$(stat -fc %T /sys/fs/cgroup)" = cgroup2fs ] && { echo "this host is cgroup v2: the main pass already used the v2 driver" >&2; exit 77; }
    local mountpoint; mountpoint=$(awk '$3 == "cgroup2" {print $2; exit}' /proc/self/mounts)
    [ -n "$mountpoint" ] || { echo "no cgroup2 mount on this host" >&2; exit 77; }
    echo "$mountpoint"
}
# lxcfs_start: an lxcfs instance of this run at $WORK/lxcfs (pid in $WORK/lxcfs.pid), when the
# host has lxcfs and /dev/fuse; tests that need it skip otherwise.
lxcfs_start() {
    mkdir -p "$WORK/lxcfs"
    command -v lxcfs >/dev/null && [ -e /dev/fuse ] || return 0
    lxcfs -f -p "$WORK/lxcfs.pid" "$WORK/lxcfs" >"$WORK/lxcfs.log" 2>&1 &
    for _ in $(seq 50); do [ -e "$WORK/lxcfs/proc/meminfo" ] && break; sleep 0.1; done
}
fail() { echo "assertion failed: $*" >&2; exit 1; }
expect_eq() { [ "$1" = "$2" ] || fail "expected '$2', got '$1' ${3:-}"; }
expect_contains() { case "$1" in *"$2"*) ;; *) fail "expected output to contain '$2', got: $1";; esac; }
# expect_fail CODE CMD...: CMD must exit with CODE and say something on stderr.
expect_fail() {
    local code=$1; shift
    local err rc
    err=$("$@" 2>&1 >/dev/null) && rc=0 || rc=$?
    [ $rc -eq "$code" ] || fail "'$*' exited $rc (wanted $code): $err"
    [ -n "$err" ] || fail "'$*' failed silently"
    echo "$err"
}

vps_name() { echo "$RUN_ID-$1"; }
# A running VPS's mounts (disk, beancounter tmpfs) are in its monitor's own mount namespace
# only: the host reaches them through the monitor's /proc root.
monitor_root() { echo "/proc/$(sed -n 's/^monitor=//p' "$WORK/run/$1/state")/root"; }
vps_disk_view() { echo "$(monitor_root "$1")$WORK/data/vps/$1/root"; }
# Host pid of a running VPS's init (0 when stopped).
vps_pid() { "$BERTH" status "$1" --json | python3 -c 'import json,sys; print(json.load(sys.stdin)["pid"])'; }

# Host-side traces of a VPS: cgroup dirs, mounts, loop devices, run files. (Processes are
# checked by the tests themselves from the pids they saw while the VPS ran.)
leftovers_of() {
    local name=$1
    find /sys/fs/cgroup -maxdepth 3 -type d -path "*/$CGROUP_PARENT/$name" 2>/dev/null
    grep -F "$WORK/data/vps/$name/" /proc/self/mountinfo
    losetup -a 2>/dev/null | grep -F "$WORK/data/vps/$name/"
    ls "$WORK/run/$name" 2>/dev/null
    true
}

cleanup_all() {
    agent_stop
    # LOG_DIR=DIR keeps the agent's log of every run (Tests/device/run.sh brings them back).
    [ -n "${LOG_DIR:-}" ] && [ -f "$WORK/agent.log" ] && cp "$WORK/agent.log" "$LOG_DIR/$RUN_ID-agent.log"
    # VPS processes of this run: every pid in our cgroups, then the monitors.
    for procs in /sys/fs/cgroup/*/"$CGROUP_PARENT"/*/cgroup.procs /sys/fs/cgroup/"$CGROUP_PARENT"/*/cgroup.procs; do
        [ -f "$procs" ] && xargs -r kill -9 <"$procs" 2>/dev/null
    done
    for state in "$WORK"/run/*/state; do
        [ -f "$state" ] && kill -9 "$(sed -n 's/^monitor=//p' "$state")" 2>/dev/null
    done
    sleep 0.2
    grep -F "$WORK/" /proc/self/mountinfo | awk '{print $5}' | sort -r | while read -r m; do umount -l "$m" 2>/dev/null; done
    losetup -a 2>/dev/null | grep -F "$WORK/" | cut -d: -f1 | while read -r l; do losetup -d "$l" 2>/dev/null; done
    for dir in /sys/fs/cgroup/*/"$CGROUP_PARENT" /sys/fs/cgroup/"$CGROUP_PARENT"; do
        [ -d "$dir" ] || continue
        find "$dir" -mindepth 1 -depth -type d -exec rmdir {} \; 2>/dev/null
        rmdir "$dir" 2>/dev/null
    done
    rm -rf "$WORK"
}

# alive PID: a live process that is not a zombie (PID 1 of this machine reaps lazily).
alive() { local s; s=$(cat "/proc/$1/stat" 2>/dev/null) || return 1; [ "$(echo "$s" | sed "s/.*) //" | cut -d" " -f1)" != Z ]; }
