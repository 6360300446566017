#!/bin/bash
# Runs the root test tiers on a host that has no Swift toolchain and few of Debian's tools: the
# lent device machine, the only pure cgroup-v2 kernel this project gets (Docs/testing.md). The
# binaries and tools come from the bundle scripts/device-bundle.sh makes; the test scripts are
# this checkout's.
#
#   Tests/device/run.sh BUNDLE [TIER...]      TIER: integration resources network security security-layered bench
#
# bench is Benchmarks/run.sh (BENCH_ROUNDS, BENCH_DENSITY) against the bundle's crun, never run unasked.
#
# Writes to $OUT (default ./device-out): host.txt (what the host offers), one log per tier,
# agents.tar.gz (the agent logs of every run). Exit status: 0 when every tier passed.
# The host is a throwaway machine: the bundle's libraries it lacks go to /usr/lib/x86_64-linux-gnu,
# and a tool the agent runs by absolute path that it lacks is put there; host.txt reports each.
cd "$(dirname "$0")/../.." || exit 1
BUNDLE=${1:?usage: Tests/device/run.sh BUNDLE [TIER...]}
shift
TIERS=("$@")
[ ${#TIERS[@]} -gt 0 ] || TIERS=(integration resources network security security-layered)
OUT=${OUT:-$PWD/device-out}
TIER_TIMEOUT=${TIER_TIMEOUT:-330}
mkdir -p "$OUT"
STAGE=$(mktemp -d /tmp/berth-device.XXXXXX)
tar -C "$STAGE" -xJf "$BUNDLE" || { echo "cannot unpack $BUNDLE"; exit 1; }
HOST="$OUT/host.txt"
note() { echo "$*" | tee -a "$HOST"; }

# What the host is, before anything changes.
{
    echo "bundle commit $(cat "$STAGE/commit"), checkout $(git rev-parse --short HEAD 2>/dev/null)"
    uname -a; grep PRETTY /etc/os-release; nproc; free -m | head -2; df -h /tmp | tail -1
    echo "--- /sys/fs/cgroup: $(stat -fc %T /sys/fs/cgroup 2>&1)"
    grep -E " - cgroup2? " /proc/self/mountinfo
    echo "self: $(cat /proc/self/cgroup | tr '\n' ' ')"
    for f in cgroup.controllers cgroup.subtree_control; do echo "$f: $(cat /sys/fs/cgroup/$f 2>&1)"; done
    echo "root cgroup processes: $(wc -l </sys/fs/cgroup/cgroup.procs 2>&1)"
    echo "--- devices and filesystems"
    ls -l /dev/loop-control /dev/fuse 2>&1; ls /dev | grep -c '^loop[0-9]'
    grep -E "loop|fuse" /proc/devices
    grep -wE "ext4|overlay|fuse|tmpfs|devpts|mqueue" /proc/filesystems | tr -s '\t' ' ' | tr '\n' ';'; echo
    echo "user namespaces: $(cat /proc/sys/user/max_user_namespaces 2>&1)"
    grep -E "^Cap(Eff|Bnd)" /proc/self/status
    echo "--- tools"
    for t in python3 mke2fs losetup resize2fs e2fsck dumpe2fs ip nft tcpdump nsenter lxcfs ipcmk busybox tar sha256sum unshare timeout; do
        printf '%s=%s ' "$t" "$(command -v "$t" || echo -)"
    done; echo
} >"$HOST" 2>&1

if [ "$(stat -fc %T /sys/fs/cgroup 2>/dev/null)" != cgroup2fs ]; then
    if ! grep -q " /sys/fs/cgroup " /proc/self/mountinfo && mount -t cgroup2 cgroup2 /sys/fs/cgroup 2>>"$HOST"; then
        note "mounted cgroup2 at /sys/fs/cgroup (nothing was mounted there)"
    else
        note "not a pure cgroup-v2 host: /sys/fs/cgroup is $(stat -fc %T /sys/fs/cgroup 2>&1); nothing to do here"
        cat "$HOST"; exit 3
    fi
fi

# Loop devices back every VPS disk.
if [ ! -e /dev/loop-control ]; then
    modprobe loop 2>/dev/null
    grep -qw loop /proc/devices && mknod /dev/loop-control c 10 237 2>>"$HOST" && note "made /dev/loop-control"
fi
[ -e /dev/loop-control ] || { note "no loop devices on this host: VPS disks cannot be attached"; cat "$HOST"; exit 3; }

# The bundle's libraries that the host lacks (by soname), where the loader looks without a
# cache (the network tier copies nft and what ldd lists into a template that has none).
for library in "$STAGE"/lib/*; do
    [ "$(basename "$library")" = liblxcfs.so ] && continue   # lxcfs loads it from its own path (below)
    target=/usr/lib/x86_64-linux-gnu/$(basename "$library")
    ldconfig -p | grep -q "^[[:space:]]*$(basename "$library") " || [ -e "$target" ] ||
        { cp "$library" "$target" && note "installed the bundle's $(basename "$library")"; }
done
ldconfig
# Tools the agent runs by absolute path; the rest come through PATH (the host's first).
install_if_missing() { [ -e "$2" ] || { mkdir -p "$(dirname "$2")"; cp "$STAGE/tools/$1" "$2" && note "installed the bundle's $1 as $2"; }; }
for tool in mke2fs resize2fs e2fsck dumpe2fs; do install_if_missing "$tool" "/sbin/$tool"; done
install_if_missing nft /usr/sbin/nft
install_if_missing busybox /bin/busybox
[ -x "$STAGE/tools/crun" ] && install_if_missing crun /usr/bin/crun
# An ELF program header of type PT_INTERP (3) names the dynamic loader.
elf_is_dynamic() {
    local phoff phentsize phnum i
    phoff=$(od -An -t u8 -j 32 -N 8 "$1") phentsize=$(od -An -t u2 -j 54 -N 2 "$1") phnum=$(od -An -t u2 -j 56 -N 2 "$1")
    for ((i = 0; i < phnum; i++)); do
        [ "$(od -An -t u4 -j $((phoff + i * phentsize)) -N 4 "$1" | tr -d ' ')" = 3 ] && return 0
    done
    return 1
}
if elf_is_dynamic /bin/busybox; then
    mount --bind "$STAGE/tools/busybox" /bin/busybox && note "bind-mounted a static busybox over the host's dynamic /bin/busybox"
fi
if [ ! -e /usr/lib/x86_64-linux-gnu/lxcfs/liblxcfs.so ]; then
    mkdir -p /usr/lib/x86_64-linux-gnu/lxcfs && cp "$STAGE/lib/liblxcfs.so" /usr/lib/x86_64-linux-gnu/lxcfs/
fi
[ -e /dev/fuse ] || { grep -qw fuse /proc/devices || modprobe fuse 2>/dev/null; mknod /dev/fuse c 10 229 2>/dev/null && note "made /dev/fuse"; }
export PATH="$PATH:$STAGE/tools"
export BUILD="$STAGE/bin" PROBE="$STAGE/tools/probe" LOG_DIR="$STAGE/agent-logs"
mkdir -p "$LOG_DIR"

script_of() {
    case $1 in
        integration) echo Tests/integration/run.sh ;;
        resources) echo Tests/integration/resources.sh ;;
        network) echo Tests/integration/network.sh ;;
        security|security-layered) echo Tests/security/escape.sh ;;
        bench) [ -d "$STAGE/anchors" ] && echo "Benchmarks/run.sh ${BENCH_ROUNDS:-20} ${BENCH_DENSITY:-200}" ;;
        *) return 1 ;;
    esac
}
# One after another, as in CI: some checks take host-wide witnesses (free space on the host's
# filesystem, its mount table) that another tier's VPSs would disturb.
status=0
for tier in "${TIERS[@]}"; do
    script=$(script_of "$tier") || { note "cannot run tier $tier: unknown, or the bundle lacks what it needs (bench: crun and ../shared/anchors)"; status=1; continue; }
    storage=image; [ "$tier" = security-layered ] && storage=layered
    started=$(date +%s)
    # shellcheck disable=SC2086 # bench's script carries its arguments
    ANCHORS="$STAGE/anchors" STORAGE=$storage RUN_ID="dv${tier:0:3}${storage:0:1}$$" \
        timeout -k 15 "$TIER_TIMEOUT" $script >"$OUT/$tier.log" 2>&1 || status=1
    note "$tier took $(( $(date +%s) - started )) s"
done
for tier in "${TIERS[@]}"; do
    [ -f "$OUT/$tier.log" ] || continue
    note "$tier: $(grep -E '[0-9]+ passed|blocked|^\| (crun|berth)|^all-in' "$OUT/$tier.log" | tail -8 | tr '\n' ' ')"
    grep -E "^(FAIL|skip) " "$OUT/$tier.log" | sed 's/^/    /' | tee -a "$HOST"
done
tar -C "$LOG_DIR" -czf "$OUT/agents.tar.gz" . 2>/dev/null
rm -rf "$STAGE"
exit $status
