#!/bin/bash
# The in-VPS escape battery of security.md §1 (E01-E38). Every check runs its attack as root inside
# a VPS (default settings: own user namespace, seccomp, capability set) and passes only when the
# attack had no effect, judged by a host-side witness taken before and after (a host file's hash,
# boot id, module list, neighbour table, clock, cgroup limits, ...). Prints "N/38 blocked".
# Exceptions (checks that cannot pass on a mainline kernel, or are covered elsewhere) are listed
# with their reasons in Docs/security.md.
# STORAGE=layered runs it all against VPSs whose root is an overlay on the shared template
# (create --storage layered); LAYOUT=pool against VPSs whose disk is a subvolume of the node's
# btrfs pool (create --layout pool); make test runs it all three ways.
#
# The node is a network namespace made here ($RUN_ID-node, the agent runs in it) with an uplink
# to a LAN-client namespace ($RUN_ID-lan); addresses are in 198.18.30.0/24, no route leaves them.
cd "$(dirname "$0")/../.." || exit 1
RUN_ID=${RUN_ID:-bsc$$}
source Tests/integration/lib.sh

tier_prelude security ip nsenter python3 tcpdump sha256sum
# PROBE=FILE: a probe built elsewhere (a host without a compiler, Tests/device/run.sh).
if [ -z "${PROBE:-}" ]; then
    CC=${CC:-$(command -v cc || command -v gcc || command -v clang)}
    [ -n "$CC" ] || { echo "missing a C compiler (cc, gcc or the Swift toolchain's clang) for the probe" >&2; exit 1; }
fi
NODE=$RUN_ID-node LAN=$RUN_ID-lan
in_node() { ip netns exec "$NODE" "$@"; }
in_lan() { ip netns exec "$LAN" "$@"; }

security_cleanup() {
    cleanup_all
    for ns in "$NODE" "$LAN"; do ip netns del "$ns" 2>/dev/null; done
    true
}
trap security_cleanup EXIT

ip netns add "$NODE" && ip netns add "$LAN" || exit 1
ip -n "$NODE" link set lo up
ip -n "$NODE" link add up0 type veth peer name lan0 netns "$LAN"
ip -n "$NODE" addr add 198.18.30.1/24 dev up0
ip -n "$NODE" link set up0 up
ip -n "$LAN" link set lo up
ip -n "$LAN" addr add 198.18.30.100/24 dev lan0
ip -n "$LAN" link set lan0 up
lxcfs_start
stop_lxcfs() { [ -f "$WORK/lxcfs.pid" ] && kill "$(cat "$WORK/lxcfs.pid")" 2>/dev/null; mountpoint -q "$WORK/lxcfs" && umount -l "$WORK/lxcfs"; true; }
trap "stop_lxcfs; [ -n \"${KEEP:-}\" ] || security_cleanup" EXIT
cat >"$WORK/node.json" <<EOF
{ "network": { "uplink": "up0", "ranges": ["198.18.30.0/24"] } }
EOF
export AGENT_WRAPPER="nsenter --net=/run/netns/$NODE"
export AGENT_EXTRA="--config $WORK/node.json --lxcfs $WORK/lxcfs"
echo "security run $RUN_ID (node namespace $NODE, work dir $WORK)"
agent_start || exit 1
"$BERTH" template build busybox >/dev/null || { echo "template build failed"; exit 1; }
if [ -n "${PROBE:-}" ]; then cp "$PROBE" "$WORK/probe"; else "$CC" -static -O1 -o "$WORK/probe" Tests/security/probe.c; fi ||
    { echo "cannot build the probe"; exit 1; }

A=$(vps_name a); B=$(vps_name b); C=$(vps_name c)
STORAGE=${STORAGE:-image}
LAYOUT=${LAYOUT:-loop}
echo "VPS storage: $STORAGE, disk layout: $LAYOUT"
# A pool subvolume has no inode limit of its own.
INODES="--disk-inodes 3000"
[ "$LAYOUT" = pool ] && INODES=""
A4=198.18.30.10 B4=198.18.30.11 GW=198.18.30.1 LAN4=198.18.30.100
"$BERTH" create "$A" --template busybox --ip "$A4" --memory 128M --disk 128M --storage "$STORAGE" --layout "$LAYOUT" >/dev/null || exit 1
"$BERTH" create "$B" --template busybox --ip "$B4" --disk 128M --storage "$STORAGE" --layout "$LAYOUT" >/dev/null
# C takes the destructive attacks: small limits, its own mount namespace to spoil.
"$BERTH" create "$C" --template busybox --memory 96M --pids 64 --files 1024 --disk 96M $INODES --storage "$STORAGE" --layout "$LAYOUT" >/dev/null
for v in "$A" "$B" "$C"; do
    "$BERTH" start "$v" >/dev/null || exit 1
    "$BERTH" exec "$v" -- sh -c 'cat > /sbin/probe && chmod 755 /sbin/probe' <"$WORK/probe" || exit 1
done
in_vps() { local name=$1; shift; "$BERTH" exec "$name" -- "$@"; }
# Host witnesses.
MARK="$WORK/host-only-marker"; echo "host" >"$MARK"
VICTIM="$WORK/victim"; echo "victim" >"$VICTIM"
hash_of() { sha256sum "$1" | cut -d' ' -f1; }
boot_id() { cat /proc/sys/kernel/random/boot_id; }
cgroup_file() { # NAME CONTROLLER FILE: the VPS cgroup's control file on the host (v1 or v2)
    local f=/sys/fs/cgroup/$2/$CGROUP_PARENT/$1/$3
    [ -e "$f" ] || f=/sys/fs/cgroup/$CGROUP_PARENT/$1/$3
    cat "$f"
}
monitor_pid() { sed -n 's/^monitor=//p' "$WORK/run/$1/state"; }

# --- 1a. Filesystem, mounts, /proc, /sys -----------------------------------------------------

e01() { # chroot breakout; the host root is not in the VPS's mount table
    in_vps "$A" probe chroot-escape "$MARK"
    in_vps "$A" cat /proc/self/mountinfo | grep -qF "$WORK" && fail "the VPS's mount table shows host paths"
    true
}
e02() { # kernel filesystems
    local fs
    in_vps "$C" true || fail "exec into $C failed"
    for fs in devtmpfs debugfs tracefs securityfs configfs pstore; do
        in_vps "$C" mount -t "$fs" x /mnt 2>/dev/null && fail "$fs mounted inside the VPS"
    done
    true
}
e03() { # unmask and remount the masked and read-only paths, then use them
    local core; core=$(cat /proc/sys/kernel/core_pattern)
    in_vps "$C" sh -c 'umount /proc/kcore; umount -l /proc/sys; umount /proc/sysrq-trigger; mount -o remount,rw /proc/sys' >/dev/null 2>&1 || true
    in_vps "$C" sh -c 'head -c 16 /proc/kcore | wc -c' 2>/dev/null | grep -qv '^0$' && fail "/proc/kcore readable after unmasking"
    in_vps "$C" sh -c "cat /proc/sys/kernel/core_pattern > /proc/sys/kernel/core_pattern" 2>/dev/null && fail "core_pattern writable after unmasking"
    expect_eq "$(cat /proc/sys/kernel/core_pattern)" "$core"
}
e04() { in_vps "$A" probe handle-open; }
e05() { # plant symlinks where the agent writes, then make it write
    in_vps "$C" sh -c "ln -sf $VICTIM /etc/hostname && ln -sf $VICTIM /etc/hosts && ln -sf $VICTIM /etc/resolv.conf && ln -sf $VICTIM /etc/machine-id"
    in_vps "$C" sh -c 'rm -f /dev/null && ln -s /proc/sys/kernel/core_pattern /dev/null; rm -f /dev/console && ln -s /proc/sysrq-trigger /dev/console' || true
    local core; core=$(cat /proc/sys/kernel/core_pattern)
    "$BERTH" set "$C" --hostname "evil-$RUN_ID" --nameserver 198.18.30.53 >/dev/null
    "$BERTH" restart "$C" >/dev/null
    expect_eq "$(cat "$VICTIM")" "victim"
    expect_eq "$(cat /proc/sys/kernel/core_pattern)" "$core"
    expect_eq "$(in_vps "$C" hostname)" "evil-$RUN_ID"
}
e06() { # FIFOs, device nodes and a deep tree must not stall stop/start (destroy is checked last)
    in_vps "$C" sh -c 'mkfifo /x.fifo /etc/x.fifo; mknod /d c 1 3 2>/dev/null; i=0; while [ $i -lt 400 ]; do mkdir d; cd d; i=$((i+1)); done' || true
    timeout 60 "$BERTH" stop "$C" >/dev/null || fail "stop did not finish"
    timeout 60 "$BERTH" start "$C" >/dev/null || fail "start did not finish"
}
e07() {
    local core; core=$(cat /proc/sys/kernel/core_pattern)
    in_vps "$A" true || fail "exec into $A failed"
    # The payload is the current value: a write that went through would still change nothing.
    in_vps "$A" sh -c "cat /proc/sys/kernel/core_pattern > /proc/sys/kernel/core_pattern" 2>/dev/null && fail "core_pattern writable"
    expect_eq "$(cat /proc/sys/kernel/core_pattern)" "$core"
}
e08() { # sysrq: 'h' only prints help to the kernel log, the witness
    local before; before=$(dmesg 2>/dev/null | grep -c 'sysrq: HELP' || true)
    in_vps "$A" sh -c 'echo h > /proc/sysrq-trigger' 2>/dev/null && fail "sysrq-trigger written"
    expect_eq "$(dmesg 2>/dev/null | grep -c 'sysrq: HELP' || true)" "$before"
}
e09() { # (a kernel without module support has no kernel.modprobe: then only uevent_helper)
    local modprobe helper; modprobe=$(cat /proc/sys/kernel/modprobe 2>/dev/null || true); helper=$(cat /sys/kernel/uevent_helper 2>/dev/null || true)
    in_vps "$A" true || fail "exec into $A failed"
    in_vps "$A" sh -c "[ -e /proc/sys/kernel/modprobe ] && cat /proc/sys/kernel/modprobe > /proc/sys/kernel/modprobe" 2>/dev/null && fail "kernel.modprobe writable"
    in_vps "$A" sh -c 'cat /sys/kernel/uevent_helper > /sys/kernel/uevent_helper' 2>/dev/null && fail "uevent_helper writable"
    expect_eq "$(cat /proc/sys/kernel/modprobe 2>/dev/null || true)" "$modprobe"
    expect_eq "$(cat /sys/kernel/uevent_helper 2>/dev/null || true)" "$helper"
}
e10() { # host information
    local f
    in_vps "$A" true || fail "exec into $A failed"
    for f in sched_debug timer_list keys latency_stats interrupts kcore; do
        [ -n "$(in_vps "$A" sh -c "head -c 64 /proc/$f 2>/dev/null")" ] && fail "/proc/$f readable"
    done
    in_vps "$A" sh -c 'head -n 50 /proc/kallsyms' | awk '$1 !~ /^0+$/ {bad=1} END {exit bad}' || fail "kallsyms shows addresses"
    expect_eq "$(in_vps "$A" sh -c 'ls /sys/firmware /sys/devices/virtual/powercap 2>/dev/null' | grep -v ':$' | grep -v '^$')" ""
}
e11() { # the VPS sees its own resources, through read-only views
    [ -e "$WORK/lxcfs/proc/meminfo" ] || skip "lxcfs is not available here (package lxcfs, /dev/fuse)"
    expect_eq "$(in_vps "$A" awk '/^MemTotal/ {print $2}' /proc/meminfo)" "131072"
    in_vps "$A" sh -c 'echo x > /proc/meminfo' 2>/dev/null && fail "/proc/meminfo writable"
    true
}

# --- 1b. Devices, capabilities, kernel --------------------------------------------------------

# Device nodes on a VPS's disk (imported tarballs, older VPSs) are opened through the device
# cgroup alone: plant them from the host, where mknod works, then open them inside.
plant_node() { # DIRECTORY NAME TYPE MAJOR MINOR
    mknod "$1/$2" "$3" "$4" "$5" && chmod 666 "$1/$2"
}
e12() {
    local target=$A inside=/tmp dir; dir="$(vps_disk_view "$A")/tmp"
    if [ "$STORAGE" = layered ]; then
        # A layered VPS's files also come from its template (the host has no merged view of a
        # running one): plant the nodes in a template of their own and boot a VPS on it (in
        # /mnt: the boot scripts empty /tmp).
        "$BERTH" template build busybox --name devnodes >/dev/null
        target=$(vps_name dev) inside=/mnt dir="$WORK/data/templates/devnodes/rootfs/mnt"
    fi
    plant_node "$dir" mem c 1 1; plant_node "$dir" loop0 b 7 0; plant_node "$dir" kmsg c 1 11
    if [ "$STORAGE" = layered ]; then
        "$BERTH" create "$target" --template devnodes --storage layered --disk 64M >/dev/null
        "$BERTH" start "$target" >/dev/null
    fi
    in_vps "$target" true || fail "exec into $target failed"
    in_vps "$target" ls $inside/mem $inside/loop0 $inside/kmsg >/dev/null || fail "the planted nodes are not visible inside"
    in_vps "$target" sh -c 'mknod /tmp/sda b 8 0 2>/dev/null; head -c1 /tmp/sda' >/dev/null 2>&1 && fail "raw disk readable"
    in_vps "$target" head -c1 $inside/mem >/dev/null 2>&1 && fail "/dev/mem readable"
    in_vps "$target" head -c1 $inside/loop0 >/dev/null 2>&1 && fail "a host loop device readable"
    in_vps "$target" head -c1 $inside/kmsg >/dev/null 2>&1 && fail "/dev/kmsg readable"
    in_vps "$target" head -c1 /dev/zero | wc -c | grep -qx 1 || fail "allowlisted /dev/zero does not open (the check would be vacuous)"
    if [ "$STORAGE" = layered ]; then
        "$BERTH" destroy "$target" --force >/dev/null
        "$BERTH" template remove devnodes >/dev/null
    fi
}
e13() {
    if [ -d /sys/fs/cgroup/devices ]; then
        local before; before=$(cgroup_file "$A" devices devices.list)
        in_vps "$A" sh -c 'echo a > /sys/fs/cgroup/devices/devices.allow' 2>/dev/null && fail "devices.allow written"
        expect_eq "$(cgroup_file "$A" devices devices.list)" "$before"
    fi
    # With the policy rewritten or not, the planted /dev/mem stays closed (v2: the BPF program).
    in_vps "$A" head -c1 /tmp/mem >/dev/null 2>&1 && fail "/dev/mem readable"
    true
}
e14() {
    expect_eq "$(in_vps "$A" ls /dev | tr '\n' ' ')" "console fd full mqueue null ptmx pts random shm stderr stdin stdout tty urandom zero "
}
e15() { # exactly the configured capability set; seccomp on
    local last expected bnd
    last=$(cat /proc/sys/kernel/cap_last_cap)
    expected=$(( (1 << (last + 1)) - 1 ))
    for bit in 16 17 25 32 33; do expected=$(( expected & ~(1 << bit) )); done
    bnd=$(in_vps "$A" awk '/^CapBnd/ {print $2}' /proc/self/status)
    expect_eq "$((0x$bnd))" "$expected" "(CapBnd $bnd)"
    expect_eq "$(in_vps "$A" awk '/^CapAmb/ {print $2}' /proc/self/status)" "0000000000000000"
    expect_eq "$(in_vps "$A" awk '/^Seccomp:/ {print $2}' /proc/self/status)" "2"
}
e16() { # modules, directly and by autoload
    local before; before=$(cat /proc/modules 2>/dev/null | cut -d' ' -f1 | sort)
    in_vps "$A" insmod /nonexistent.ko 2>/dev/null && fail "insmod worked"
    in_vps "$A" modprobe dummy 2>/dev/null && fail "modprobe worked"
    in_vps "$A" sh -c 'ip link add d0 type dummy; ip link add w0 type wireguard; ip link add v0 type vxlan id 1' >/dev/null 2>&1 || true
    in_vps "$A" probe kernel-load
    expect_eq "$(cat /proc/modules 2>/dev/null | cut -d' ' -f1 | sort)" "$before"
}
e17() { # reboot reaches only the VPS; kexec is refused
    local boot pid after
    boot=$(boot_id); pid=$(vps_pid "$A")
    # Only with the VPS's own PID namespace in place: a broken one would reboot this host.
    [ "$(in_vps "$A" readlink /proc/1/ns/pid)" != "$(readlink /proc/1/ns/pid)" ] || fail "the VPS shares the host's PID namespace"
    in_vps "$A" reboot -f >/dev/null 2>&1 || true
    for _ in $(seq 100); do after=$(vps_pid "$A"); [ "$after" != 0 ] && [ "$after" != "$pid" ] && break; sleep 0.1; done
    [ "$after" != "$pid" ] && [ "$after" != 0 ] || fail "the VPS did not reboot (pid $pid -> $after)"
    expect_eq "$(boot_id)" "$boot"
    in_vps "$A" probe kernel-load >/dev/null
}
e18() {
    # The payload is the current time (a success would not move the clock); busybox date reports
    # the refusal on stderr but exits 0, so the message is the verdict.
    expect_contains "$(in_vps "$A" sh -c 'date -s "@$(date +%s)"' 2>&1 || true)" "not permitted"
    in_vps "$A" probe set-time
    [ "$(date +%Y)" -ge 2025 ] || fail "the host clock moved"
}
e19() {
    "$WORK/probe" keyring-add "berth-host-$RUN_ID" >/dev/null || skip "cannot add a witness key on the host"
    in_vps "$A" probe keyring-find "berth-host-$RUN_ID"
}
e20() { in_vps "$A" probe kernel-surface; }

# --- 1c. cgroups, processes, fds ---------------------------------------------------------------

e21() { in_vps "$C" probe release-agent; }
e22() { # leave the cgroup or lift its limits
    local memory pids
    memory=$(cgroup_file "$C" memory memory.limit_in_bytes 2>/dev/null || cgroup_file "$C" "" memory.max)
    pids=$(cgroup_file "$C" pids pids.max)
    in_vps "$C" sh -c 'grep -v ":/$" /proc/self/cgroup' && fail "the VPS sees cgroup paths above its own"
    in_vps "$C" sh -c 'for d in /sys/fs/cgroup/*/..; do echo $$ > $d/cgroup.procs; done' 2>/dev/null || true
    in_vps "$C" sh -c 'echo -1 > /sys/fs/cgroup/memory/memory.limit_in_bytes || echo max > /sys/fs/cgroup/memory.max' 2>/dev/null && fail "memory limit written"
    in_vps "$C" sh -c 'echo max > /sys/fs/cgroup/pids/pids.max || echo max > /sys/fs/cgroup/pids.max' 2>/dev/null && fail "pids limit written"
    expect_eq "$(cgroup_file "$C" memory memory.limit_in_bytes 2>/dev/null || cgroup_file "$C" "" memory.max)" "$memory"
    expect_eq "$(cgroup_file "$C" pids pids.max)" "$pids"
}
e23() { # other processes
    local count; count=$(in_vps "$A" sh -c 'ls /proc | grep -c "^[0-9]"')
    [ "$count" -lt 10 ] || fail "the VPS sees $count processes"
    in_vps "$A" kill -0 "$AGENT_PID" 2>/dev/null && [ "$(in_vps "$A" cat /proc/"$AGENT_PID"/comm 2>/dev/null)" = berth-agent ] && fail "the agent is visible"
    # PID 1 is the VPS's own init (busybox names itself "init").
    expect_eq "$(in_vps "$A" sh -c 'tr "\0" "\n" < /proc/1/cmdline | head -1' | sed 's|.*/||')" "init"
}
e24() { # the exec helper under a watching VPS: ptrace, fds, cwd, environment
    in_vps "$A" probe watch 6 "$WORK" >"$WORK/e24.out" 2>&1 &
    local watcher=$!
    sleep 0.5
    for _ in 1 2 3 4 5; do in_vps "$A" sleep 0.2; in_vps "$A" sh -c 'ls /proc/self/fd >/dev/null'; done
    wait "$watcher" || fail "$(cat "$WORK/e24.out")"
}
e25() { # /proc/PID/exe of the helper: the operator runs a command the VPS made '#!/proc/self/exe'
    local before; before=$(hash_of "$BUILD/berth-spawn")
    in_vps "$A" sh -c 'printf "#!/proc/self/exe\n" > /sbin/opcmd && chmod 755 /sbin/opcmd'
    in_vps "$A" probe watch 5 "$WORK" >"$WORK/e25.out" 2>&1 &
    local watcher=$!
    sleep 0.5
    for _ in 1 2 3 4 5; do in_vps "$A" /sbin/opcmd >/dev/null 2>&1 || true; done
    wait "$watcher" || fail "$(cat "$WORK/e25.out")"
    # A privileged VPS is host root: only the read-only bind of the helper stands in the way.
    local P; P=$(vps_name p)
    "$BERTH" create "$P" --template busybox --disk 64M --privileged --storage "$STORAGE" >/dev/null
    "$BERTH" start "$P" >/dev/null
    "$BERTH" exec "$P" -- sh -c 'cat > /sbin/probe && chmod 755 /sbin/probe && printf "#!/proc/self/exe\n" > /sbin/opcmd && chmod 755 /sbin/opcmd' <"$WORK/probe"
    in_vps "$P" probe watch 5 "$WORK" >"$WORK/e25p.out" 2>&1 &
    watcher=$!
    sleep 0.5
    for _ in 1 2 3 4 5; do in_vps "$P" /sbin/opcmd >/dev/null 2>&1 || true; done
    wait "$watcher" || fail "privileged VPS: $(cat "$WORK/e25p.out")"
    "$BERTH" destroy "$P" --force >/dev/null
    expect_eq "$(hash_of "$BUILD/berth-spawn")" "$before"
}
e26() { # leaked fds, cwd, environment at start and in exec
    expect_eq "$(in_vps "$A" sh -c 'ls /proc/1/fd | tr "\n" " "')" "0 1 2 "
    expect_eq "$(in_vps "$A" sh -c 'ls /proc/self/fd | tr "\n" " "')" "0 1 2 3 "
    expect_eq "$(in_vps "$A" readlink /proc/1/cwd)" "/"
    expect_eq "$(in_vps "$A" pwd)" "/"
    in_vps "$A" sh -c 'tr "\0" "\n" < /proc/1/environ; env' | grep -E 'BERTH|SWIFT|SSH_|^HOME=/work' && fail "host environment inside"
    true
}
e27() { # TIOCSTI from inside an operator's `berth enter` must not reach the operator's terminal
    local pwned="$WORK/tiocsti-pwned"
    /usr/bin/python3 - "$BERTH" "$A" "$pwned" <<'PY' || fail "could not drive berth enter"
import os, pty, sys, time, select
berth, vps, pwned = sys.argv[1:4]
pid, fd = pty.fork()
if pid == 0:
    os.execv(berth, [berth, "enter", vps])
def send(text):
    os.write(fd, text.encode()); time.sleep(0.5)
    while select.select([fd], [], [], 0.2)[0]:
        try: os.read(fd, 4096)
        except OSError: break
time.sleep(1)
send("probe tiocsti 'touch %s\n'\n" % pwned)
send("exit\n")
os.waitpid(pid, 0)
PY
    [ ! -e "$pwned" ] || fail "TIOCSTI from the VPS ran a command on the host"
    in_vps "$A" sh -c "[ ! -e '$pwned' ]"
    # The console is a pty of the VPS's own devpts too (same device as its ptmx), not a host tty.
    expect_eq "$(in_vps "$A" stat -Lc %d /dev/console)" "$(in_vps "$A" stat -Lc %d /dev/pts/ptmx)"
}

# --- 1d. Network ---------------------------------------------------------------------------------

e28() { # sniff another VPS's traffic
    in_vps "$B" ping -c 8 -i 0.3 "$LAN4" >/dev/null 2>&1 &
    local pinger=$!
    in_vps "$A" probe sniff 3 "$A4"
    wait "$pinger" || true
}
e29() { # spoof another VPS's address
    in_vps "$A" true || fail "exec into $A failed"
    in_lan timeout 4 tcpdump -ni lan0 -c 1 "src host $B4 and icmp" >"$WORK/e29.pcap.txt" 2>/dev/null &
    local dump=$!
    sleep 0.5
    in_vps "$A" sh -c "ip addr add $B4/32 dev eth0; ping -c 3 -W 1 -I $B4 $LAN4; ip addr del $B4/32 dev eth0" >/dev/null 2>&1 || true
    wait "$dump" && fail "a packet from $B4 sent by $A reached the LAN"
    true
}
e30() { # ARP poisoning and a stolen MAC
    local before mac_b mac_a
    in_lan busybox ping -c 1 -W 2 "$B4" >/dev/null || fail "B unreachable before the attack"
    before=$(in_lan ip neigh show "$B4" | awk '{print $5}')
    mac_a=$(in_vps "$A" cat /sys/class/net/eth0/address)
    mac_b=$(in_vps "$B" cat /sys/class/net/eth0/address)
    in_vps "$A" sh -c "arping -U -c 2 -s $B4 -I eth0 $GW; ip link set eth0 down; ip link set eth0 address $mac_b; ip link set eth0 up; arping -U -c 2 -s $B4 -I eth0 $GW; ping -c 2 -W 1 $LAN4" >/dev/null 2>&1 || true
    in_lan busybox ping -c 1 -W 2 "$B4" >/dev/null || fail "B unreachable after the attack"
    expect_eq "$(in_lan ip neigh show "$B4" | awk '{print $5}')" "$before"
    in_vps "$A" sh -c "ip link set eth0 down; ip link set eth0 address $mac_a; ip link set eth0 up" >/dev/null 2>&1 || true
}
e31() { # services on the node and the agent
    in_vps "$A" true || fail "exec into $A failed"
    in_node python3 -c 'import socket,time; s=socket.socket(); s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1); s.bind(("198.18.30.1", 9099)); s.listen(); time.sleep(6)' &
    local listener=$!
    sleep 0.5
    in_vps "$A" sh -c "echo x | nc -w 2 $GW 9099" >/dev/null 2>&1 && fail "a node service answered"
    in_vps "$A" sh -c "ls /run/berth /tmp/berth-* 2>/dev/null" | grep -q . && fail "agent files visible"
    kill "$listener" 2>/dev/null; wait "$listener" 2>/dev/null || true
}
e32() { # the VPS's own network settings stay its own
    local ttl fwd; ttl=$(in_node sysctl -n net.ipv4.ip_default_ttl); fwd=$(in_node sysctl -n net.ipv4.ip_forward)
    in_vps "$A" sh -c 'sysctl -w net.ipv4.ip_default_ttl=33; sysctl -w net.ipv4.ip_forward=1; ip route add 198.18.31.0/24 dev eth0' >/dev/null 2>&1 || true
    expect_eq "$(in_node sysctl -n net.ipv4.ip_default_ttl)" "$ttl"
    expect_eq "$(in_node sysctl -n net.ipv4.ip_forward)" "$fwd"
    in_node ip route show 198.18.31.0/24 | grep -q . && fail "a VPS route reached the node"
    e29
}

# --- 1e. Resource exhaustion -------------------------------------------------------------------

e33() { # fork bomb against --pids 64
    in_vps "$C" timeout 5 sh -c 'b() { b | b & }; b' >/dev/null 2>&1 || true
    timeout 5 "$BERTH" exec "$A" -- true || fail "exec into another VPS did not answer during the bomb"
    local events; events=$(cgroup_file "$C" pids pids.events | awk '/^max/ {print $2}')
    [ "${events:-0}" -gt 0 ] || fail "the pids limit was never hit (pids.events: $events)"
    "$BERTH" stop "$C" --kill >/dev/null; "$BERTH" start "$C" >/dev/null
}
e34() { # memory bomb against --memory 96M
    in_vps "$C" sh -c 'x=aaaaaaaaaaaaaaaa; while true; do x=$x$x; done' >/dev/null 2>&1 || true
    local kills; kills=$(cgroup_file "$C" memory memory.oom_control 2>/dev/null | awk '/^oom_kill / {print $2}')
    [ -n "$kills" ] || kills=$(cgroup_file "$C" "" memory.events | awk '/^oom_kill / {print $2}')
    [ "${kills:-0}" -gt 0 ] || fail "no OOM kill inside the VPS"
    alive "$AGENT_PID" || fail "the agent died"
    "$BERTH" status "$C" | grep -q running || fail "the VPS's init died"
}
e35() { # disk and inode fill against --disk 96M --disk-inodes 3000
    local image_before free_before
    free_before=$(df -k --output=avail "$WORK" | tail -1)
    if [ "$LAYOUT" = pool ]; then
        # A subvolume counts no inodes: each file's metadata counts against the same byte quota,
        # so once the data fill reaches it no file can be made either.
        in_vps "$C" sh -c 'dd if=/dev/zero of=/big bs=1M 2>&1' | grep -q 'Disk quota exceeded' || fail "the disk fill did not end in EDQUOT"
        in_vps "$C" sh -c 'touch /one-more' 2>/dev/null && fail "a file was created past the quota"
        [ $(( free_before - $(df -k --output=avail "$WORK" | tail -1) )) -lt $((100 * 1024)) ] || fail "the host filesystem lost more than the VPS's disk"
        in_vps "$C" sh -c 'rm -f /big'
        return
    fi
    in_vps "$C" sh -c 'dd if=/dev/zero of=/big bs=1M 2>&1' | grep -q 'No space left' || fail "the disk fill did not end in ENOSPC"
    in_vps "$C" sh -c 'i=0; while touch /f$i 2>/dev/null; do i=$((i+1)); done; echo made=$i' | grep -q 'made=' || fail "inode fill"
    in_vps "$C" sh -c 'touch /one-more' 2>/dev/null && fail "a file was created past the inode limit"
    [ $(( free_before - $(df -k --output=avail "$WORK" | tail -1) )) -lt $((100 * 1024)) ] || fail "the host filesystem lost more than the VPS's disk"
    in_vps "$C" sh -c 'rm -f /big /f*'
}
e36() { in_vps "$A" probe sched-fifo; }
e37() { # console flood: the ring is bounded, there is no /dev/kmsg
    local before after
    before=$(awk '/^VmRSS/ {print $2}' /proc/"$(monitor_pid "$A")"/status)
    in_vps "$A" timeout 3 sh -c 'yes flood > /dev/console' >/dev/null 2>&1 || true
    after=$(awk '/^VmRSS/ {print $2}' /proc/"$(monitor_pid "$A")"/status)
    [ $((after - before)) -lt 4096 ] || fail "the monitor grew by $((after - before)) KiB"
    in_vps "$A" ls /dev/kmsg 2>/dev/null && fail "/dev/kmsg exists"
    true
}
e38() { # per-user kernel objects: the VPS's limits answer, the host keeps working meanwhile
    local host_shm; host_shm=$(wc -l </proc/sysvipc/shm)
    in_vps "$C" probe exhaust 6 >"$WORK/e38.out" 2>&1 &
    local holder=$!
    for _ in $(seq 40); do grep -q 'holding' "$WORK/e38.out" && break; sleep 0.1; done
    grep -q 'holding' "$WORK/e38.out" || fail "the probe did not get to hold its objects: $(cat "$WORK/e38.out")"
    expect_eq "$(wc -l </proc/sysvipc/shm)" "$host_shm"
    /usr/bin/python3 -c 'import ctypes, socket; libc = ctypes.CDLL(None); assert libc.inotify_init1(0) >= 0; socket.socket().close()' ||
        fail "the host cannot create inotify instances or sockets while the VPS holds its own"
    wait "$holder" || true
}

e_destroy() { # E06 cont.: destroy a VPS full of FIFOs, deep trees and planted links
    timeout 60 "$BERTH" destroy "$C" --force >/dev/null || fail "destroy did not finish"
    expect_eq "$(leftovers_of "$C")" ""
    expect_eq "$(cat "$VICTIM")" "victim"
}

AGENT_PID=$(agent_pid)
run_test "E01 chroot breakout, host root not in the mount table" e01
run_test "E02 mount kernel filesystems" e02
run_test "E03 unmask or remount /proc paths, then use them" e03
run_test "E04 open_by_handle_at (shocker)" e04
run_test "E05 symlinks planted where the agent writes" e05
run_test "E06 FIFOs, device nodes and deep trees vs stop/start" e06
run_test "E07 core_pattern helper" e07
run_test "E08 host sysrq" e08
run_test "E09 usermode helpers (modprobe, uevent_helper)" e09
run_test "E10 host information in /proc and /sys" e10
run_test "E11 the VPS's own resources in read-only views" e11
run_test "E12 raw disk and memory through mknod" e12
run_test "E13 rewrite the device policy" e13
run_test "E14 device inventory" e14
run_test "E15 capability set and seccomp state" e15
run_test "E16 kernel modules, direct and by autoload" e16
run_test "E17 reboot reaches only the VPS, kexec refused" e17
run_test "E18 the host clock" e18
run_test "E19 kernel keyrings" e19
run_test "E20 kernel attack surface (syslog, perf, bpf, userfaultfd, io_uring)" e20
run_test "E21 release_agent (CVE-2022-0492)" e21
run_test "E22 leave the cgroup or lift its limits" e22
run_test "E23 see or signal host processes" e23
run_test "E24 ptrace and inspect the exec helper" e24
run_test "E25 overwrite the helper through /proc/PID/exe (CVE-2019-5736)" e25
run_test "E26 leaked fds, cwd and environment (CVE-2024-21626)" e26
run_test "E27 TIOCSTI into the operator's terminal (enter; the console's pty)" e27
run_test "E28 sniff another VPS's traffic" e28
run_test "E29 spoof another VPS's address" e29
run_test "E30 ARP poisoning and a stolen MAC" e30
run_test "E31 reach services on the node" e31
run_test "E32 VPS network settings stay in the VPS" e32
run_test "E33 fork bomb" e33
run_test "E34 memory bomb" e34
run_test "E35 disk and inode fill" e35
run_test "E36 real-time scheduling" e36
run_test "E37 console flood" e37
run_test "E38 host-global kernel objects" e38
BLOCKED=$PASSED
run_test "destroy after the attacks leaves nothing" e_destroy

echo "escape battery: $BLOCKED/38 blocked"
echo "security: $PASSED passed, $FAILED failed, $SKIPPED skipped"
[ "$FAILED" -eq 0 ]
