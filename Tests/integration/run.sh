#!/bin/bash
# Integration tier: real VPSs on this kernel, driven through the berth CLI and a private agent.
# Needs root. Each test prints ok/FAIL/skip; the last line is "N passed, N failed, N skipped".
cd "$(dirname "$0")/../.." || exit 1
source Tests/integration/lib.sh

if [ "$(id -u)" != 0 ]; then
    echo "skip - integration tier: needs root (it creates namespaces, cgroups, loop devices)"
    echo "0 passed, 0 failed, 1 skipped"
    exit 0
fi
for tool in mke2fs losetup; do command -v $tool >/dev/null || { echo "missing $tool: run make deps" >&2; exit 1; }; done
[ -e /dev/loop-control ] || { echo "skip - integration tier: no /dev/loop-control on this host"; echo "0 passed, 0 failed, 1 skipped"; exit 0; }

trap cleanup_all EXIT
echo "integration run $RUN_ID (work dir $WORK, cgroup parent $CGROUP_PARENT, $(grep -c cgroup2 /proc/mounts) cgroup2 mount(s))"
agent_start || exit 1
"$BERTH" template build busybox >/dev/null || { echo "template build failed"; exit 1; }

A=$(vps_name a); B=$(vps_name b)

t_create_start() {
    "$BERTH" create "$A" --template busybox --memory 256M --pids 200 --label role=web >/dev/null
    "$BERTH" create "$B" --template busybox --hostname other-host >/dev/null
    "$BERTH" start "$A" | grep -q "^$A running pid=[1-9]"
    "$BERTH" start "$B" >/dev/null
    expect_eq "$("$BERTH" status "$A" | cut -d' ' -f2)" running
    local pid; pid=$(vps_pid "$A")
    [ "$pid" -gt 1 ] && alive "$pid"
    expect_eq "$(cat /proc/$pid/comm)" init
}

t_init_ran_startup_scripts() {
    for _ in $(seq 50); do "$BERTH" exec "$A" -- test -f /run/boot-complete && break; sleep 0.1; done
    expect_contains "$("$BERTH" exec "$A" -- cat /run/boot-complete)" "$A"
    expect_contains "$("$BERTH" exec "$A" -- cat /proc/1/cmdline | tr '\0' ' ')" "init"
}

t_pid_isolation() {
    local inside; inside=$("$BERTH" exec "$A" -- sh -c 'ls /proc | grep -c "^[0-9]"')
    [ "$inside" -lt 10 ] || fail "VPS sees $inside processes"
    # The host's agent and the other VPS's init are invisible and unreachable.
    local other; other=$(vps_pid "$B")
    "$BERTH" exec "$A" -- sh -c "kill -0 $(agent_pid) 2>/dev/null && exit 1; kill -0 $other 2>/dev/null && exit 1; exit 0"
    expect_eq "$("$BERTH" exec "$A" -- sh -c 'cat /proc/1/comm')" init
}

t_mount_isolation() {
    local mounts; mounts=$("$BERTH" exec "$A" -- cat /proc/self/mountinfo)
    case "$mounts" in *"$WORK"*|*" /work "*|*/opt/swift*) fail "host mounts visible: $mounts";; esac
    expect_contains "$("$BERTH" exec "$A" -- sh -c 'grep " / / " /proc/self/mountinfo')" ext4
    # /sys is read-only, /proc/sys read-only, masked files empty.
    "$BERTH" exec "$A" -- sh -c 'echo x > /sys/kernel/uevent_helper' 2>/dev/null && fail "/sys writable"
    "$BERTH" exec "$A" -- sh -c 'echo "|/tmp/x" > /proc/sys/kernel/core_pattern' 2>/dev/null && fail "/proc/sys writable"
    # Masked: the host has content there, the VPS reads nothing.
    [ -s /proc/timer_list ] || [ "$(wc -c < /proc/timer_list)" -gt 0 ]
    expect_eq "$("$BERTH" exec "$A" -- sh -c 'wc -c < /proc/timer_list')" 0
    # The VPS's own network sysctls stay writable (its own namespace).
    "$BERTH" exec "$A" -- sh -c 'echo 1 > /proc/sys/net/ipv4/ip_forward' 
}

t_uts_isolation() {
    expect_eq "$("$BERTH" exec "$A" -- hostname)" "$A"
    expect_eq "$("$BERTH" exec "$B" -- hostname)" other-host
    [ "$(hostname)" != "$A" ]
}

t_ipc_and_abstract_sockets() {
    command -v ipcmk >/dev/null || skip "ipcmk (util-linux) not installed"
    local shm; shm=$(ipcmk -M 4096 | grep -o '[0-9]*$')
    local seen; seen=$("$BERTH" exec "$A" -- sh -c 'tail -n +2 /proc/sysvipc/shm | wc -l')
    ipcrm -m "$shm"
    expect_eq "$seen" 0 "(SysV shm of the host visible in the VPS)"
    # An abstract socket bound on the host is not in the VPS's socket table (per network namespace).
    python3 -c 'import socket,time; s=socket.socket(socket.AF_UNIX); s.bind("\0berth-it-abstract"); s.listen(); time.sleep(3)' &
    local py=$!
    sleep 0.5
    grep -q berth-it-abstract /proc/net/unix || { kill $py; fail "host abstract socket not bound"; }
    "$BERTH" exec "$A" -- grep -q berth-it-abstract /proc/net/unix && { kill $py; fail "abstract socket visible in the VPS"; }
    kill $py 2>/dev/null; wait $py 2>/dev/null || true
}

t_only_loopback() {
    expect_eq "$("$BERTH" exec "$A" -- ls /sys/class/net)" lo
}

t_dev_and_caps() {
    local devs; devs=$("$BERTH" exec "$A" -- ls /dev | tr '\n' ' ')
    expect_eq "$devs" "console fd full mqueue null ptmx pts random shm stderr stdin stdout tty urandom zero "
    # Its own user namespace: root inside is an unprivileged host uid (the agent's range).
    local map; map=$("$BERTH" exec "$A" -- cat /proc/self/uid_map | tr -s ' ' | sed 's/^ //')
    [[ $map =~ ^0\ ([0-9]+)\ 65536$ ]] && [ "${BASH_REMATCH[1]}" -ge 2147483648 ] || fail "uid_map of $A is '$map'"
    expect_eq "$(stat -c %u /proc/"$(vps_pid "$A")")" "${BASH_REMATCH[1]}"
    expect_contains "$("$BERTH" status "$A" --json)" "\"idmap\": \"${BASH_REMATCH[1]}:65536\""
    # Host-global capabilities are gone even inside the namespace: modules, raw I/O, the clock.
    local bnd; bnd=$("$BERTH" exec "$A" -- sh -c 'grep CapBnd /proc/self/status' | awk '{print $2}')
    for bit in 16 17 25; do (( (0x$bnd >> bit) & 1 )) && fail "capability $bit kept (CapBnd $bnd)"; done
    # Namespaced privilege is no host privilege: no devtmpfs, no host devices, no module loading.
    "$BERTH" exec "$A" -- mount -t devtmpfs d /mnt 2>/dev/null && fail "devtmpfs mounted inside the VPS"
    "$BERTH" exec "$A" -- sh -c 'mknod /tmp/mem c 1 1 && head -c1 /tmp/mem' 2>/dev/null && fail "/dev/mem readable"
    "$BERTH" exec "$A" -- grep -q '^Seccomp:.2' /proc/self/status
}

# --privileged: no user namespace, so the "no userns" capability set (no CAP_SYS_ADMIN) applies.
t_privileged() {
    local P; P=$(vps_name priv)
    "$BERTH" create "$P" --template busybox --disk 64M --privileged >/dev/null
    "$BERTH" start "$P" >/dev/null
    expect_contains "$("$BERTH" status "$P")" "privileged=yes"
    expect_eq "$("$BERTH" exec "$P" -- cat /proc/self/uid_map | tr -s ' ' | sed 's/^ //')" "0 0 4294967295"
    local bnd; bnd=$("$BERTH" exec "$P" -- sh -c 'grep CapBnd /proc/self/status' | awk '{print $2}')
    (( (0x$bnd >> 16) & 1 )) && fail "CAP_SYS_MODULE kept"
    (( (0x$bnd >> 21) & 1 )) && fail "CAP_SYS_ADMIN kept"
    "$BERTH" exec "$P" -- mount -t tmpfs t /mnt 2>/dev/null && fail "mount succeeded inside the privileged VPS"
    # The device cgroup refuses devices off the allowlist even after mknod.
    if [ -d /sys/fs/cgroup/devices ]; then
        "$BERTH" exec "$P" -- sh -c 'mknod /tmp/mem c 1 1 && head -c1 /tmp/mem' 2>/dev/null && fail "/dev/mem readable"
    fi
    # --capability: off removes one, on cannot reach what no VPS gets.
    "$BERTH" stop "$P" --kill >/dev/null
    "$BERTH" set "$P" --capability net_raw:off >/dev/null
    "$BERTH" start "$P" >/dev/null
    bnd=$("$BERTH" exec "$P" -- sh -c 'grep CapBnd /proc/self/status' | awk '{print $2}')
    (( (0x$bnd >> 13) & 1 )) && fail "CAP_NET_RAW kept after --capability net_raw:off"
    expect_contains "$(expect_fail 2 "$BERTH" set "$P" --capability sys_module:on)" "never granted"
    expect_contains "$(expect_fail 2 "$BERTH" set "$P" --capability nosuchcap:on)" "capability"
    expect_contains "$(expect_fail 2 "$BERTH" create "$(vps_name priv2)" --template busybox --capability net_raw:maybe)" "on or off"
    "$BERTH" destroy "$P" --force >/dev/null
    expect_eq "$(leftovers_of "$P")" ""
}

t_no_agent_fds_or_env() {
    local fds; fds=$("$BERTH" exec "$A" -- sh -c 'ls /proc/1/fd | tr "\n" " "')
    expect_eq "$fds" "0 1 2 "
    local env; env=$("$BERTH" exec "$A" -- sh -c 'tr "\0" "\n" < /proc/1/environ' | sort | tr '\n' ' ')
    case "$env" in *BERTH_AGENT*|*SSH*|*SWIFT*) fail "agent environment leaked: $env";; esac
    expect_eq "$("$BERTH" exec "$A" -- readlink /proc/1/cwd)" /
}

t_exec_streams_and_exit_code() {
    expect_eq "$(echo hello | "$BERTH" exec "$A" -- cat)" hello
    local out err rc
    out=$("$BERTH" exec "$A" -- sh -c 'echo out; echo err >&2; exit 42' 2>/tmp/berth-it-err-$RUN_ID) && rc=0 || rc=$?
    err=$(cat /tmp/berth-it-err-$RUN_ID); rm -f /tmp/berth-it-err-$RUN_ID
    expect_eq "$out" out; expect_eq "$err" err; expect_eq "$rc" 42
    "$BERTH" exec "$A" -- /no/such/binary 2>/dev/null && fail "missing binary ran" || rc=$?
    expect_eq "$rc" 127
    # A larger stream arrives intact, every time (bytes queued when stdin ends must not be lost).
    head -c 3000000 /dev/urandom > "$WORK/blob"
    local want sum; want=$(md5sum < "$WORK/blob" | cut -d' ' -f1)
    for _ in 1 2 3 4 5 6 7 8; do
        sum=$("$BERTH" exec "$A" -- md5sum < "$WORK/blob" | cut -d' ' -f1)
        expect_eq "$sum" "$want"
    done
    # A command that stops reading early still exits cleanly.
    expect_eq "$("$BERTH" exec "$A" -- head -c 10 < "$WORK/blob" | wc -c)" 10
}

# The agent turns on the host's cgroup option favordynmods (exec and start move processes between
# cgroups, which otherwise wait for an RCU grace period), or says why it could not.
t_cgroup_favordynmods() {
    if grep -q "cgroup migrations favoured" "$WORK/agent.log"; then
        grep -E " - cgroup2? " /proc/self/mountinfo | grep -q "favordynmods" || fail "the agent logged favordynmods, no cgroup mount has it"
    else
        grep "favordynmods is unavailable" "$WORK/agent.log" >&2 || fail "the agent said nothing about favordynmods"
    fi
    # A command run by exec lands in the VPS's cgroup.
    local cg; cg=$("$BERTH" exec "$A" -- cat /proc/self/cgroup)
    echo "$cg" | grep -qE "^[0-9]+:(memory|):/$" || fail "exec'd process is not at the root of its cgroup namespace: $cg"
}

t_enter_has_a_pty() {
    local out; out=$(printf 'tty; exit 3\n' | "$BERTH" enter "$A" 2>&1) || true
    expect_contains "$out" /dev/pts/
    # When the operator's input ends, the shell gets end-of-file and the session closes.
    timeout 10 "$BERTH" enter "$A" </dev/null >/dev/null 2>&1 || fail "enter did not end with its input"
}

t_console_ring_buffer() {
    # Output written while nobody was attached is replayed on attach; Ctrl-] detaches.
    "$BERTH" exec "$A" -- sh -c 'echo console-marker-$$ > /dev/console'
    local out; out=$( (sleep 1; printf '\035') | timeout 10 "$BERTH" console "$A" 2>/dev/null )
    expect_contains "$out" console-marker-
}

t_file_survives_stop_start() {
    "$BERTH" exec "$A" -- sh -c 'echo persistent > /root/keep'
    "$BERTH" stop "$A" >/dev/null
    expect_eq "$("$BERTH" status "$A" | cut -d' ' -f2)" stopped
    "$BERTH" start "$A" >/dev/null
    expect_eq "$("$BERTH" exec "$A" -- cat /root/keep)" persistent
}

t_reboot_and_poweroff_inside() {
    local before after
    local boot_id; boot_id=$(cat /proc/sys/kernel/random/boot_id)
    before=$(vps_pid "$A")
    # Once booted, the monitor is berth-monitor (berth-spawn execs it); a reboot hands the VPS
    # back to berth-spawn and then to berth-monitor again, in the same process, history and all.
    local monitor; monitor=$(sed -n 's/^monitor=//p' "$WORK/run/$A/state")
    expect_eq "$(cat "/proc/$monitor/comm")" berth-monitor "(the monitor of a booted VPS)"
    # Written before the reboot: only the history berth-monitor handed back can still show it.
    "$BERTH" exec "$A" -- sh -c "echo history-$RUN_ID >/dev/console"
    "$BERTH" exec "$A" -- reboot
    for _ in $(seq 100); do
        after=$("$BERTH" status "$A" --json | python3 -c 'import json,sys; d=json.load(sys.stdin); print(d["pid"])')
        [ "$after" != "$before" ] && [ "$after" != 0 ] && break; sleep 0.1
    done
    [ "$after" != "$before" ] || fail "init pid unchanged after reboot"
    expect_eq "$(sed -n 's/^monitor=//p' "$WORK/run/$A/state")" "$monitor" "(the monitor after the reboot)"
    for _ in $(seq 50); do [ "$(cat "/proc/$monitor/comm")" = berth-monitor ] && break; sleep 0.1; done
    expect_eq "$(cat "/proc/$monitor/comm")" berth-monitor "(the monitor after the reboot)"
    local console; console=$( (sleep 1; printf '\035') | timeout 10 "$BERTH" console "$A" 2>/dev/null )
    expect_contains "$console" "is rebooting"
    expect_contains "$console" "history-$RUN_ID"
    expect_eq "$("$BERTH" status "$A" | cut -d' ' -f2)" running
    expect_eq "$(cat /proc/sys/kernel/random/boot_id)" "$boot_id" "(the host rebooted?)"
    for _ in $(seq 50); do "$BERTH" exec "$A" -- test -f /run/boot-complete 2>/dev/null && break; sleep 0.1; done
    "$BERTH" exec "$A" -- poweroff
    for _ in $(seq 100); do [ "$("$BERTH" status "$A" | cut -d' ' -f2)" = running ] || break; sleep 0.1; done
    expect_eq "$("$BERTH" status "$A" | cut -d' ' -f2)" stopped
    expect_contains "$("$BERTH" status "$A")" 'last_exit="poweroff"'
    [ -z "$(leftovers_of "$A")" ] || fail "leftovers after poweroff: $(leftovers_of "$A")"
    "$BERTH" start "$A" >/dev/null
}

# A reboot inside while no agent runs: the stopped agent took its copy of berth-monitor along,
# and the monitor boots the VPS again with the program it opened before the first boot.
t_reboot_while_the_agent_is_stopped() {
    local before; before=$(sed -n 's/^init=//p' "$WORK/run/$A/state")
    local monitor; monitor=$(sed -n 's/^monitor=//p' "$WORK/run/$A/state")
    agent_stop
    [ ! -e "$WORK/run/berth-monitor" ] || fail "the stopped agent left its copy of berth-monitor"
    kill -TERM "$before"   # busybox init: reboot
    local after=""
    for _ in $(seq 100); do
        after=$(sed -n 's/^init=//p' "$WORK/run/$A/state" 2>/dev/null)
        [ -n "$after" ] && [ "$after" != "$before" ] && break; sleep 0.1
    done
    agent_start
    [ -n "$after" ] && [ "$after" != "$before" ] || fail "the VPS did not boot again (exit record: $(cat "$WORK/run/$A/exit" 2>/dev/null))"
    for _ in $(seq 50); do [ "$(cat "/proc/$monitor/comm" 2>/dev/null)" = berth-monitor ] && break; sleep 0.1; done
    expect_eq "$(cat "/proc/$monitor/comm")" berth-monitor "(the monitor after the reboot)"
    expect_eq "$("$BERTH" status "$A" | cut -d' ' -f2)" running
}

t_stop_restart_destroy_leave_nothing() {
    local C; C=$(vps_name c)
    "$BERTH" create "$C" --template busybox >/dev/null
    "$BERTH" start "$C" >/dev/null
    local state monitor init
    state="$WORK/run/$C/state"; monitor=$(sed -n 's/^monitor=//p' "$state"); init=$(sed -n 's/^init=//p' "$state")
    "$BERTH" restart "$C" >/dev/null
    alive "$init" && fail "old init $init survived restart"
    [ -n "$(leftovers_of "$C")" ] || fail "running VPS has no cgroup/mount?"
    state="$WORK/run/$C/state"; monitor=$(sed -n 's/^monitor=//p' "$state"); init=$(sed -n 's/^init=//p' "$state")
    "$BERTH" stop "$C" --kill >/dev/null
    alive "$init" && fail "init survived stop"
    alive "$monitor" && fail "monitor survived stop"
    [ -z "$(leftovers_of "$C")" ] || fail "leftovers after stop: $(leftovers_of "$C")"
    "$BERTH" destroy "$C" >/dev/null
    [ ! -e "$WORK/data/vps/$C" ] || fail "VPS directory left after destroy"
    expect_fail 3 "$BERTH" status "$C" >/dev/null
}

# A mount namespace made on the host while a VPS runs (ip netns exec, a service's private /tmp)
# copies the host's mounts. The VPS's disk is not among them: stop frees its loop device and the
# next start mounts the image once.
t_host_namespace_copy_holds_no_disk() {
    local M copy; M=$(vps_name copy)
    "$BERTH" create "$M" --template busybox --disk 64M >/dev/null
    "$BERTH" start "$M" >/dev/null
    ! grep -F "$WORK/data/vps/$M/" /proc/self/mountinfo || fail "the VPS's disk is mounted in the host's namespace"
    [ -f "$(vps_disk_view "$M")/etc/inittab" ] || fail "the monitor's view of the disk has no /etc/inittab"
    unshare -m sleep 20 &
    copy=$!
    sleep 0.2
    "$BERTH" stop "$M" >/dev/null
    local left; left=$(leftovers_of "$M")
    [ -z "$left" ] || { kill "$copy"; fail "a host namespace copy kept: $left"; }
    "$BERTH" start "$M" >/dev/null
    expect_eq "$(losetup -j "$WORK/data/vps/$M/disk.img" | wc -l)" 1 "(loop devices on the disk image)"
    kill "$copy"; wait "$copy" 2>/dev/null || true
    "$BERTH" destroy "$M" --force >/dev/null
}

t_layered_storage() {
    # The template's tree is the VPS's shared, read-only lower layer; its disk holds what it changes.
    local L P template="$WORK/data/templates/busybox/rootfs"
    L=$(vps_name lay); P=$(vps_name layp)
    expect_contains "$(expect_fail 2 "$BERTH" create "$L" --template busybox --storage zfs)" "storage"
    [ ! -e "$WORK/data/vps/$L" ] || fail "a refused create left a directory"
    local before; before=$(cd "$template" && sha256sum etc/os-release bin/busybox && ls -ln etc)
    "$BERTH" create "$L" --template busybox --storage layered --disk 32M >/dev/null
    "$BERTH" create "$P" --template busybox --storage layered --disk 32M --privileged >/dev/null
    expect_contains "$("$BERTH" status "$L" --json)" '"storage": "layered"'
    for v in "$L" "$P"; do
        "$BERTH" start "$v" >/dev/null
        expect_eq "$("$BERTH" exec "$v" -- sh -c 'echo changed >> /etc/os-release; echo kept > /root/keep; rm /bin/ls; stat -c %u /etc/os-release; mount | sed -n "s/^.* on \/ type \([a-z]*\).*/\1/p"')" "0
overlay"
    done
    # The VPS's root sees files as its own root, and nothing it did reached the shared tree.
    expect_eq "$(cd "$template" && sha256sum etc/os-release bin/busybox && ls -ln etc)" "$before" "(template changed)"
    [ -L "$template/bin/ls" ] || fail "a VPS removed a file of the shared template"
    # Its changes live on its own disk and survive stop/start; stop leaves nothing mounted.
    "$BERTH" stop "$L" >/dev/null
    [ -z "$(leftovers_of "$L")" ] || fail "leftovers after stop: $(leftovers_of "$L")"
    "$BERTH" start "$L" >/dev/null
    expect_eq "$("$BERTH" exec "$L" -- sh -c 'cat /root/keep; tail -1 /etc/os-release; ls /bin/ls 2>&1 | grep -c "No such"')" "kept
changed
1"
    expect_eq "$("$BERTH" exec "$P" -- cat /root/keep)" "kept"
    # Writes stop at its own disk's size, as for an image VPS.
    "$BERTH" exec "$L" -- sh -c 'dd if=/dev/zero of=/root/big bs=1M count=48 2>&1; rm -f /root/big' | grep -q "No space" \
        || fail "a 48M write fit on a 32M layered disk"
    # Its disk is only its changes: far below the template's size in use.
    local used; used=$("$BERTH" stats "$L" | awk '$1 == "disk_bytes" {print $2}')
    [ -n "$used" ] && [ "$used" -lt $((2 << 20)) ] || fail "disk in use $used bytes: more than the VPS's own changes"
    # The shared tree stays as long as a layered VPS needs it.
    expect_contains "$(expect_fail 4 "$BERTH" template remove busybox)" "shared layer"
    expect_contains "$(expect_fail 4 "$BERTH" template build busybox)" "shared layer"
    "$BERTH" destroy "$L" --force >/dev/null
    "$BERTH" destroy "$P" --force >/dev/null
    [ -z "$(leftovers_of "$L")$(leftovers_of "$P")" ] || fail "leftovers after destroy"
    [ ! -e "$WORK/data/vps/$L" ] && [ ! -e "$WORK/data/vps/$P" ] || fail "VPS directory left after destroy"
}

t_agent_kill9_readopts() {
    local init_a; init_a=$(vps_pid "$A")
    local cgroups_before; cgroups_before=$(find /sys/fs/cgroup -maxdepth 3 -path "*$CGROUP_PARENT/*" -type d | wc -l)
    agent_kill9
    alive "$init_a" || fail "VPS died with the agent"
    agent_start
    expect_eq "$(vps_pid "$A")" "$init_a"
    expect_eq "$("$BERTH" exec "$A" -- cat /root/keep)" persistent
    expect_eq "$(find /sys/fs/cgroup -maxdepth 3 -path "*$CGROUP_PARENT/*" -type d | wc -l)" "$cgroups_before" "(cgroups duplicated)"
    # A VPS that stops while no agent runs is noticed by the next agent.
    agent_kill9
    kill -9 "$init_a"
    sleep 0.5
    agent_start
    expect_eq "$("$BERTH" status "$A" | cut -d' ' -f2)" stopped
    [ -z "$(leftovers_of "$A")" ] || fail "leftovers after the offline exit: $(leftovers_of "$A")"
    "$BERTH" start "$A" >/dev/null
    # SIGTERM = graceful agent shutdown; the VPS keeps running.
    agent_stop
    "$BUILD/berth" list >/dev/null 2>&1 && fail "agent still answering"
    agent_start
    expect_eq "$("$BERTH" status "$A" | cut -d' ' -f2)" running
}

t_monitor_must_run() {
    mkdir -p "$WORK/fb"
    cp "$BUILD/berth-spawn" "$WORK/fb/"
    # Without berth-monitor next to berth-spawn the agent refuses to start and says where it belongs.
    local err; err=$(timeout 10 "$BUILD/berth-agent" --data-dir "$WORK/fb/data" --run-dir "$WORK/fb/run" --socket "$WORK/fb/agent.sock" \
        --cgroup-parent "$CGROUP_PARENT-fb" --spawn "$WORK/fb/berth-spawn" 2>&1) && fail "the agent started without berth-monitor"
    expect_contains "$err" "$WORK/fb/berth-monitor not found"
    # One that cannot run (not a program): berth-monitor is the only console monitor, so the
    # start fails naming it, before anything boots, and leaves nothing behind.
    printf 'not a program\n' >"$WORK/fb/berth-monitor"
    chmod 755 "$WORK/fb/berth-monitor"
    agent_stop
    AGENT_EXTRA="--spawn $WORK/fb/berth-spawn" agent_start
    local F; F=$(vps_name fb)
    "$BERTH" create "$F" --template busybox >/dev/null
    local out; out=$(expect_fail 6 "$BERTH" start "$F")
    expect_contains "$out" "berth-monitor"
    expect_contains "$out" "cannot be run"
    expect_eq "$("$BERTH" status "$F" --json | python3 -c 'import json,sys; print(json.load(sys.stdin)["state"])')" stopped
    [ -z "$(leftovers_of "$F")" ] || fail "leftovers after the refused start: $(leftovers_of "$F")"
    # A real berth-monitor put back: the same VPS starts and serves its console.
    cp "$BUILD/berth-monitor" "$WORK/fb/berth-monitor"
    "$BERTH" start "$F" >/dev/null
    local monitor; monitor=$(sed -n 's/^monitor=//p' "$WORK/run/$F/state")
    for _ in $(seq 50); do [ "$(cat "/proc/$monitor/comm" 2>/dev/null)" = berth-monitor ] && break; sleep 0.1; done
    expect_eq "$(cat "/proc/$monitor/comm")" berth-monitor
    "$BERTH" stop "$F" --kill >/dev/null
    alive "$monitor" && fail "monitor survived stop"
    [ -z "$(leftovers_of "$F")" ] || fail "leftovers after stop: $(leftovers_of "$F")"
    "$BERTH" destroy "$F" >/dev/null
    agent_stop
    agent_start
}

t_onboot_after_host_boot() {
    local D; D=$(vps_name d)
    "$BERTH" create "$D" --template busybox --onboot >/dev/null
    # A restart of the agent alone must not start it ...
    agent_stop; agent_start
    expect_eq "$("$BERTH" status "$D" | cut -d' ' -f2)" stopped
    # ... a first agent start after a host boot (a different boot id in /run) must.
    echo "previous-boot" > "$WORK/run/agent.boot-id"
    agent_stop; agent_start
    expect_eq "$("$BERTH" status "$D" | cut -d' ' -f2)" running
    "$BERTH" destroy "$D" --force >/dev/null
}

t_set_live() {
    local out; out=$("$BERTH" set "$A" --memory 300M --pids 150 --label tier=gold --hostname renamed)
    expect_contains "$out" "applied live: memory, pids, hostname"
    expect_eq "$("$BERTH" exec "$A" -- hostname)" renamed
    expect_contains "$("$BERTH" exec "$A" -- cat /etc/hostname)" renamed
    local limit
    if [ -f "/sys/fs/cgroup/memory/$CGROUP_PARENT/$A/memory.limit_in_bytes" ]; then
        limit=$(cat "/sys/fs/cgroup/memory/$CGROUP_PARENT/$A/memory.limit_in_bytes")
    else
        limit=$(cat "/sys/fs/cgroup/$CGROUP_PARENT/$A/memory.max")
    fi
    expect_eq "$limit" $((300 * 1024 * 1024))
    expect_contains "$("$BERTH" list --selector tier=gold)" "$A"
    expect_contains "$("$BERTH" list --selector 'tier in (gold,silver),state=running,!legacy')" "$A"
    "$BERTH" list --all --selector 'tier notin (gold)' | grep -q "^$A " && fail "tier notin (gold) selected $A"
    "$BERTH" list --all --selector "tier=gold,name!=$A" | grep -q "^$A " && fail "name!=$A selected $A"
    expect_contains "$(expect_fail 2 "$BERTH" list --selector 'tier~gold')" "unknown operator '~' after key 'tier'"
    grep -q '"memoryBytes" : 314572800' "$WORK/data/vps/$A/config.json"
    "$BERTH" restart "$A" >/dev/null
    expect_eq "$("$BERTH" exec "$A" -- hostname)" renamed
}

# vzctl's --swap 0: no swap. Set live both ways on a running VPS; without --memory it is refused.
t_swap_zero() {
    "$BERTH" set "$A" --swap 64M >/dev/null
    grep -q '"swapBytes" : 67108864' "$WORK/data/vps/$A/config.json" || fail "swap 64M not saved"
    local memsw="/sys/fs/cgroup/memory/$CGROUP_PARENT/$A/memory.memsw.limit_in_bytes" swapmax="/sys/fs/cgroup/$CGROUP_PARENT/$A/memory.swap.max"
    "$BERTH" set "$A" --swap 0 >/dev/null
    grep -q '"swapBytes" : 0' "$WORK/data/vps/$A/config.json" || fail "swap 0 not saved"
    if [ -f "$memsw" ]; then
        expect_eq "$(cat "$memsw")" "$(cat "/sys/fs/cgroup/memory/$CGROUP_PARENT/$A/memory.limit_in_bytes")"
    elif [ -f "$swapmax" ]; then
        expect_eq "$(cat "$swapmax")" 0
    else
        echo "    (no memsw or swap.max file: swap accounting is off on this host; the config was checked)"
    fi
    expect_contains "$("$BERTH" status "$A" --json)" '"swap_bytes"'
    expect_contains "$(expect_fail 2 "$BERTH" create "$(vps_name noswap)" --template busybox --swap 0)" "swap"
}

t_stats_beancounters() {
    # The pids limit refuses forks and counts the refusals; memory held is real and limited.
    local S; S=$(vps_name s)
    "$BERTH" create "$S" --template busybox --disk 64M --memory 128M --pids 40 >/dev/null
    "$BERTH" start "$S" >/dev/null
    "$BERTH" exec "$S" -- sh -c 'for i in $(seq 60); do sleep 3 & done 2>/dev/null; wait' || true
    local json; json=$("$BERTH" stats "$S" --json)
    field() { echo "$json" | python3 -c "import json,sys; print(json.load(sys.stdin)['resources']['$1']['$2'])"; }
    expect_eq "$(field pids limit)" 40
    [ "$(field pids failcnt)" -ge 1 ] || fail "pids refusals not counted: $json"
    expect_eq "$(field memory limit)" $((128 * 1024 * 1024))
    [ "$(field memory held)" -gt 0 ] || fail "no memory held: $json"
    [ "$(field disk_bytes held)" -gt 0 ] && [ "$(field disk_bytes limit)" -le $((64 * 1024 * 1024)) ]
    expect_eq "$(field cpu_throttled limit)" 9223372036854775807
    expect_contains "$("$BERTH" stats "$S")" "RESOURCE"
    "$BERTH" destroy "$S" --force >/dev/null
}

t_metrics_endpoint() {
    agent_stop
    AGENT_EXTRA="--metrics-listen 127.0.0.1:0" agent_start
    local addr; addr=$(cat "$WORK/run/metrics.addr")
    "$BERTH" status "$A" >/dev/null
    local text; text=$(python3 -c "import urllib.request,sys; print(urllib.request.urlopen('http://$addr/metrics', timeout=5).read().decode())")
    echo "$text" | grep -qx "berth_vps_running{vps=\"$A\"} 1.0" || fail "no running gauge for $A: $(echo "$text" | grep berth_vps_running)"
    local mem; mem=$(echo "$text" | sed -n "s/^berth_vps_memory_bytes{vps=\"$A\"} //p")
    python3 -c "import sys; sys.exit(0 if float('$mem') > 0 else 1)" || fail "memory gauge is '$mem'"
    echo "$text" | grep -q '^berth_agent_request_duration_seconds_count{call="status"} [1-9]' || fail "request metrics missing"
    python3 -c "
import urllib.request, urllib.error
try:
    urllib.request.urlopen('http://$addr/other', timeout=5); raise SystemExit(1)
except urllib.error.HTTPError as e:
    raise SystemExit(0 if e.code == 404 else 1)"
    expect_contains "$(expect_fail 64 "$BUILD/berth-agent" --metrics-listen nonsense --data-dir "$WORK/x")" "metrics-listen"
}

t_node_capacity() {
    local json; json=$("$BERTH" node show --json)
    local committed; committed=$(echo "$json" | python3 -c 'import json,sys; print(json.load(sys.stdin)["memory"]["committed_bytes"])')
    # Committed memory is the sum of the VPSs' memory + swap limits, as configured.
    local expected; expected=$(python3 -c '
import json, sys
total = 0
for path in sys.argv[1:]:
    limits = json.load(open(path))["limits"]
    total += limits.get("memoryBytes", 0) + limits.get("swapBytes", 0)
print(total)' "$WORK"/data/vps/*/config.json)
    expect_eq "$committed" "$expected"
    # Committed CPU: --cpu-limit, else 100 % per CPU of --cpus, else nothing (Docs/cluster.md).
    local cpu; cpu=$(echo "$json" | python3 -c 'import json,sys; print(json.load(sys.stdin)["cpu"]["committed_pct"])')
    expected=$(python3 -c '
import json, sys
def count(cpus):
    return sum(int(b) - int(a) + 1 if "-" in part else 1 for part in cpus.split(",") for a, b in [part.split("-") if "-" in part else (part, part)])
total = 0
for path in sys.argv[1:]:
    limits = json.load(open(path))["limits"]
    total += limits["cpuLimitPercent"] if "cpuLimitPercent" in limits else 100 * count(limits["cpus"]) if "cpus" in limits else 0
print(total)' "$WORK"/data/vps/*/config.json)
    expect_eq "$cpu" "$expected"
    echo "$json" | python3 -c 'import json,sys; d=json.load(sys.stdin); assert d["cpu"]["cpus"] >= 1 and d["memory"]["bytes"] > 0 and d["disk"]["bytes"] > 0 and d["vps_running"] >= 1, d'
    expect_contains "$("$BERTH" node show)" "ALLOCATABLE"
    expect_fail 3 "$BERTH" node show some-other-node >/dev/null
}

t_bad_input() {
    expect_contains "$(expect_fail 2 "$BERTH" create Bad_Name --template busybox)" "name"
    expect_contains "$(expect_fail 64 "$BERTH" create -x --template busybox)" "Missing expected argument"
    expect_contains "$(expect_fail 2 "$BERTH" create "$(printf 'x%.0s' $(seq 64))" --template busybox)" "longer than 63"
    expect_contains "$(expect_fail 3 "$BERTH" create "$(vps_name e)" --template nope)" "template nope does not exist"
    expect_contains "$(expect_fail 4 "$BERTH" create "$A" --template busybox)" "already exists"
    expect_contains "$(expect_fail 4 "$BERTH" start "$A")" "already running"
    expect_contains "$(expect_fail 4 "$BERTH" destroy "$A")" "--force"
    expect_contains "$(expect_fail 2 "$BERTH" create "$(vps_name e)" --template busybox --memory 1.5.G)" "memory"
    expect_contains "$(expect_fail 2 "$BERTH" create "$(vps_name e)" --template busybox --memory=-1)" "memory"
    expect_contains "$(expect_fail 2 "$BERTH" create "$(vps_name e)" --template busybox --memory 99999999999T)" "too large"
    expect_contains "$(expect_fail 2 "$BERTH" create "$(vps_name e)" --template busybox --cpus 0-999)" "cpus"
    expect_contains "$(expect_fail 2 "$BERTH" create "$(vps_name e)" --template busybox --disk 1M)" "disk"
    expect_contains "$(expect_fail 3 "$BERTH" start "$(vps_name nope)")" "does not exist"
    [ ! -e "$WORK/data/vps/$(vps_name e)" ] || fail "a failed create left a directory"
    "$BERTH" status "$A" | grep -q running
}

t_corrupt_config() {
    local F; F=$(vps_name f)
    "$BERTH" create "$F" --template busybox >/dev/null
    local cfg="$WORK/data/vps/$F/config.json"
    cp "$cfg" "$WORK/config.bak"
    python3 - "$cfg" <<'PY'
import json, sys
d = json.load(open(sys.argv[1])); d["surprise"] = 1; json.dump(d, open(sys.argv[1], "w"))
PY
    agent_stop; agent_start
    expect_contains "$(expect_fail 8 "$BERTH" start "$F")" "unknown field(s) surprise"
    expect_contains "$("$BERTH" list --all)" "$F"
    cmp -s <(python3 -c 'import json,sys; d=json.load(open(sys.argv[1])); print(d.get("surprise"))' "$cfg") <(echo 1) || fail "the broken file was modified"
    echo '{"schemaVersion": 1, "name": ' > "$cfg"
    agent_stop; agent_start
    expect_contains "$(expect_fail 8 "$BERTH" status "$F")" "not a JSON object"
    cp "$WORK/config.bak" "$cfg"
    agent_stop; agent_start
    expect_eq "$("$BERTH" status "$F" | cut -d' ' -f2)" stopped
    "$BERTH" destroy "$F" >/dev/null
}

t_template_import_rejects_escapes() {
    local dir="$WORK/tars"; mkdir -p "$dir/root/sbin" "$dir/root/etc"
    ln -sf /bin/busybox "$dir/root/sbin/init"
    python3 - "$dir" <<'PY'
import io, sys, tarfile
d = sys.argv[1]
def make(name, entries):
    with tarfile.open(f"{d}/{name}.tar", "w") as t:
        for e in entries:
            t.addfile(e, io.BytesIO(b"x") if e.isfile() else None)
def f(path):
    i = tarfile.TarInfo(path); i.size = 1; return i
def link(path, target):
    i = tarfile.TarInfo(path); i.type = tarfile.SYMTYPE; i.linkname = target; return i
init = link("sbin/init", "/bin/busybox")
make("absolute", [init, f("/etc/evil")])
make("dotdot", [init, f("etc/../../evil")])
make("symlink-out", [init, link("etc/x", "../../../../etc/shadow")])
make("through-link", [init, link("etc/d", "/tmp"), f("etc/d/evil")])
make("good", [init, f("etc/hostname"), link("etc/rel", "../sbin/init")])
PY
    expect_contains "$(expect_fail 2 "$BERTH" template import bad "$dir/absolute.tar")" "absolute path"
    expect_contains "$(expect_fail 2 "$BERTH" template import bad "$dir/dotdot.tar")" "'..'"
    expect_contains "$(expect_fail 2 "$BERTH" template import bad "$dir/symlink-out.tar")" "outside"
    expect_contains "$(expect_fail 2 "$BERTH" template import bad "$dir/through-link.tar")" "through the symlink"
    "$BERTH" template list | grep -q '^bad' && fail "rejected template was installed"
    [ ! -e /evil ] && [ ! -e /tmp/evil ] || fail "an escaping entry was written"
    "$BERTH" template import good "$dir/good.tar" >/dev/null
    "$BERTH" template list | grep -q '^good'
    "$BERTH" template remove good >/dev/null
    # Export and import round trip: the copy boots like the original.
    expect_contains "$("$BERTH" template export busybox "$dir/bb.tar")" "exported to $dir/bb.tar"
    expect_contains "$(expect_fail 4 "$BERTH" template export busybox "$dir/bb.tar")" "exists"
    expect_contains "$(expect_fail 3 "$BERTH" template export nosuch "$dir/none.tar")" "does not exist"
    [ -e "$dir/none.tar" ] && fail "a failed export left a file"
    "$BERTH" template import "bbcopy-$RUN_ID" "$dir/bb.tar" >/dev/null
    local V; V=$(vps_name copy)
    "$BERTH" create "$V" --template "bbcopy-$RUN_ID" --disk 64M >/dev/null
    "$BERTH" start "$V" >/dev/null
    expect_eq "$("$BERTH" exec "$V" -- cat /etc/os-release | head -1)" 'NAME="Berth busybox"'
    "$BERTH" destroy "$V" --force >/dev/null
    "$BERTH" template remove "bbcopy-$RUN_ID" >/dev/null
}

t_twenty_concurrent() {
    local names=() n
    for i in $(seq 1 20); do names+=("$(vps_name p$i)"); done
    for n in "${names[@]}"; do "$BERTH" create "$n" --template busybox --disk 64M >/dev/null & done; wait
    local pids=()
    for n in "${names[@]}"; do "$BERTH" start "$n" >/dev/null & pids+=($!); done
    for p in "${pids[@]}"; do wait "$p" || fail "a concurrent start failed"; done
    expect_eq "$("$BERTH" list | grep -c "$RUN_ID-p")" 20
    pids=()
    for n in "${names[@]}"; do "$BERTH" stop "$n" --kill >/dev/null & pids+=($!); done
    for p in "${pids[@]}"; do wait "$p" || fail "a concurrent stop failed"; done
    pids=()
    for n in "${names[@]}"; do "$BERTH" destroy "$n" >/dev/null & pids+=($!); done
    for p in "${pids[@]}"; do wait "$p" || fail "a concurrent destroy failed"; done
    for n in "${names[@]}"; do [ -z "$(leftovers_of "$n")" ] || fail "leftovers of $n: $(leftovers_of "$n")"; done
}

# The cgroup v2 driver against this host's real cgroup2 mount: on a hybrid host that mount has
# no resource controllers, but it has cgroup.procs, cgroup.kill and BPF device programs.
t_v2_driver() {
    local mountpoint; mountpoint=$(hybrid_cgroup2_or_skip)
    agent_stop
    AGENT_EXTRA="--cgroup2-root $mountpoint" agent_start
    local V; V=$(vps_name v2)
    "$BERTH" create "$V" --template busybox --disk 64M >/dev/null
    "$BERTH" start "$V" >/dev/null
    local init; init=$(vps_pid "$V")
    grep -qx "0::/$CGROUP_PARENT/$V" "/proc/$init/cgroup" || fail "init is not in its v2 cgroup: $(cat /proc/$init/cgroup)"
    expect_eq "$("$BERTH" exec "$V" -- hostname)" "$V"
    [ "$(wc -l < "$mountpoint/$CGROUP_PARENT/$V/cgroup.procs")" -ge 2 ] || fail "VPS processes missing from the cgroup"
    # Only the BPF program guards devices here (no v1 devices cgroup is used).
    expect_eq "$("$BERTH" exec "$V" -- sh -c 'head -c1 /dev/zero | wc -c')" 1
    "$BERTH" exec "$V" -- sh -c 'mknod /tmp/kmsg c 1 11 && ( exec 3< /tmp/kmsg )' 2>/dev/null && fail "a non-allowlisted device opened"
    # A limit the mount cannot enforce is refused with a reason, never silently dropped.
    if [ ! -e "$mountpoint/$CGROUP_PARENT/$V/memory.max" ]; then
        expect_contains "$(expect_fail 2 "$BERTH" set "$V" --memory 256M)" "memory controller"
        grep -q memoryBytes "$WORK/data/vps/$V/config.json" && grep -q '"memoryBytes" : 268435456' "$WORK/data/vps/$V/config.json" && fail "refused limit was saved"
        # Refused at start, while the monitor already runs and waits for its spec: it exits on
        # the empty spec by itself (the agent kills one that does not), and nothing is left.
        local W err; W=$(vps_name v2refused)
        "$BERTH" create "$W" --template busybox --disk 64M --memory 256M >/dev/null
        err=$("$BERTH" start "$W" 2>&1 >/dev/null) && fail "a start with a limit the mount cannot enforce succeeded"
        expect_contains "$err" "memory controller"
        expect_eq "$("$BERTH" status "$W" | cut -d' ' -f2)" stopped
        [ -z "$(leftovers_of "$W")" ] || fail "the refused start left: $(leftovers_of "$W")"
        grep -q "did not exit: killed" "$WORK/agent.log" && fail "the monitor went on although the agent gave up (the agent had to kill it)"
        "$BERTH" destroy "$W" >/dev/null
    fi
    # Restarting the agent re-adopts; kill uses cgroup.kill; nothing is left behind.
    agent_stop
    AGENT_EXTRA="--cgroup2-root $mountpoint" agent_start
    expect_eq "$("$BERTH" status "$V" | cut -d' ' -f2)" running
    "$BERTH" stop "$V" --kill >/dev/null
    alive "$init" && fail "init survived the kill"
    [ ! -d "$mountpoint/$CGROUP_PARENT/$V" ] || fail "v2 cgroup left after stop"
    "$BERTH" destroy "$V" >/dev/null
    agent_stop
    agent_start
}

run_test "create and start two VPSs" t_create_start
run_test "init ran the template's startup scripts" t_init_ran_startup_scripts
run_test "PID namespace: only the VPS's processes" t_pid_isolation
run_test "mount namespace: host mounts invisible, /sys and /proc/sys read-only, masked paths" t_mount_isolation
run_test "UTS namespace: own hostname" t_uts_isolation
run_test "IPC and abstract sockets not shared" t_ipc_and_abstract_sockets
run_test "network namespace: only lo" t_only_loopback
run_test "user namespace, minimal /dev, dropped capabilities, device cgroup, seccomp" t_dev_and_caps
run_test "--privileged: no user namespace, no CAP_SYS_ADMIN; --capability" t_privileged
run_test "no agent fd, environment or cwd leaks into the VPS" t_no_agent_fds_or_env
run_test "exec streams stdio and returns the exit code" t_exec_streams_and_exit_code
run_test "the host's cgroup option favordynmods is on (or the agent says why not)" t_cgroup_favordynmods
run_test "enter gets a pty inside the VPS" t_enter_has_a_pty
run_test "console replays output from before attach" t_console_ring_buffer
run_test "a file written inside survives stop/start" t_file_survives_stop_start
run_test "reboot inside restarts the VPS, poweroff stops it" t_reboot_and_poweroff_inside
run_test "a reboot inside while the agent is stopped boots the VPS again" t_reboot_while_the_agent_is_stopped
run_test "stop/restart/destroy leave nothing behind" t_stop_restart_destroy_leave_nothing
run_test "a host mount namespace made while a VPS runs holds none of its mounts" t_host_namespace_copy_holds_no_disk
run_test "--storage layered: the template is a shared read-only layer, the disk holds the changes" t_layered_storage
run_test "agent kill -9 and restart re-adopts running VPSs" t_agent_kill9_readopts
run_test "a missing berth-monitor stops the agent; one that cannot run fails the start and leaves nothing" t_monitor_must_run
run_test "onboot VPSs start on the first agent start after a host boot" t_onboot_after_host_boot
run_test "set applies limits live and saves them" t_set_live
run_test "stats: held/peak/limit/failcnt from the kernel" t_stats_beancounters
run_test "Prometheus metrics endpoint: per-VPS gauges and request metrics" t_metrics_endpoint
run_test "node capacity: allocatable and committed resources" t_node_capacity
run_test "--swap 0 means no swap" t_swap_zero
run_test "bad input: clear errors, nothing changes" t_bad_input
run_test "a hand-broken config is reported and left alone" t_corrupt_config
run_test "template import rejects absolute, .., escaping symlinks; export and import round trip" t_template_import_rejects_escapes
run_test "20 VPSs started and stopped concurrently" t_twenty_concurrent
run_test "cgroup v2 driver on this host's cgroup2 mount: lifecycle, exec, BPF devices, refusal, cleanup" t_v2_driver

echo
[ ${#FAILED_NAMES[@]} -eq 0 ] || printf 'failed: %s\n' "${FAILED_NAMES[@]}"
echo "integration: $PASSED passed, $FAILED failed, $SKIPPED skipped"
[ "$FAILED" -eq 0 ]
