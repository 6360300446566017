#!/bin/bash
# Debian tier: `berth template build debian-12` (debootstrap) and VPSs that boot Debian's own
# systemd. The template is built with the agent in the host's network namespace (debootstrap
# downloads from Debian's archive the first time on a machine; later runs unpack the tree cached
# in $TEMPLATE_CACHE). The VPSs then run with the agent in a node namespace made here
# ($RUN_ID-node), with addresses from 198.18.20.0/24 and no route out.
cd "$(dirname "$0")/../.." || exit 1
RUN_ID=${RUN_ID:-bdt$$}
source Tests/integration/lib.sh
TEMPLATE_CACHE=${TEMPLATE_CACHE:-/var/cache/berth/templates}

tier_prelude debian debootstrap ip nsenter
NODE=$RUN_ID-node
debian_cleanup() {
    cleanup_all
    ip netns del "$NODE" 2>/dev/null
    true
}
trap debian_cleanup EXIT

A=$(vps_name a); B=$(vps_name b)
A4=198.18.20.10 B4=198.18.20.11 A4B=198.18.20.12

# in_vps NAME CMD...: runs CMD inside the VPS (its namespaces, cgroup and root).
in_vps() { local name=$1; shift; "$BERTH" exec "$name" -- "$@"; }
# Waits for systemd in the VPS to finish booting; prints its verdict (running/degraded/...).
# Right after start its bus socket may not exist yet: systemctl then prints nothing.
booted() {
    local state=""
    for _ in $(seq 200); do
        state=$(in_vps "$1" timeout 60 systemctl is-system-running --wait 2>/dev/null) || true
        # "offline": systemd has not yet made /run/systemd/system (start returns once init was
        # exec'd, and an exec right after can be that early).
        [ -n "$state" ] && [ "$state" != offline ] && break
        sleep 0.05
    done
    echo "$state"
}

t_template_build() {
    local out started=$SECONDS
    out=$("$BERTH" template build debian-12 2>&1) || fail "template build failed: $out"
    echo "built in $((SECONDS - started)) s: $(echo "$out" | head -1)"
    expect_contains "$out" "template debian-12 built"
    expect_contains "$out" "masked systemd-firstboot.service"
    [ -f "$TEMPLATE_CACHE/debootstrap-bookworm-minbase.tar" ] || fail "the downloaded tree was not cached in $TEMPLATE_CACHE"
    expect_contains "$("$BERTH" template list)" "debian-12"
    # The template ships no identity of its own: every VPS gets one at its first start.
    [ ! -s "$WORK/data/templates/debian-12/rootfs/etc/machine-id" ] || fail "the template has a machine-id"
}

t_template_bad_input() {
    expect_contains "$(expect_fail 2 "$BERTH" template build debian-12 --name bad --include 'Not_A_Package')" "include"
    expect_contains "$(expect_fail 2 "$BERTH" template build debian-12 --name bad --mirror 'ftp://198.18.20.1/debian')" "mirror"
    expect_contains "$(expect_fail 2 "$BERTH" template build debian-13)" "debian-12"
    expect_contains "$(expect_fail 2 "$BERTH" template build busybox --name bad --include openssh-server)" "include"
    [ ! -e "$WORK/data/templates/bad" ] || fail "a refused build left a template behind"
}

t_boot_to_running() {
    "$BERTH" create "$A" --template debian-12 --ip "$A4" >/dev/null
    "$BERTH" create "$B" --template debian-12 --ip "$B4" >/dev/null
    "$BERTH" start "$A" >/dev/null
    "$BERTH" start "$B" >/dev/null
    expect_eq "$(booted "$A")" "running" "(systemctl --failed: $(in_vps "$A" systemctl --failed --no-legend 2>&1))"
    expect_eq "$(booted "$B")" "running"
    expect_eq "$(in_vps "$A" cat /proc/1/comm)" "systemd"
    expect_eq "$(in_vps "$A" systemctl is-active multi-user.target)" "active"
    # Each VPS has its own machine-id, and keeps it.
    local idA idB
    idA=$(in_vps "$A" cat /etc/machine-id); idB=$(in_vps "$B" cat /etc/machine-id)
    [[ $idA =~ ^[0-9a-f]{32}$ ]] || fail "machine-id of $A is '$idA'"
    [ "$idA" != "$idB" ] || fail "two VPSs share machine-id $idA"
}

t_journald() {
    in_vps "$A" logger -t berth-test "hello from $RUN_ID"
    local found=""
    for _ in $(seq 50); do
        found=$(in_vps "$A" journalctl -t berth-test --no-pager -o cat 2>/dev/null) || true
        [ -n "$found" ] && break
        sleep 0.1
    done
    expect_contains "$found" "hello from $RUN_ID"
    expect_eq "$(in_vps "$A" systemctl is-active systemd-journald.service)" "active"
}

t_identity_and_network() {
    expect_contains "$(in_vps "$A" hostnamectl)" "Static hostname: $A"
    expect_contains "$(in_vps "$A" ip -o addr show dev eth0)" "$A4/32"
    in_vps "$A" ping -c 1 -W 2 "$B4" >/dev/null || fail "ping from $A to $B ($B4) failed"
    in_vps "$B" ping -c 1 -W 2 "$A4" >/dev/null || fail "ping from $B to $A ($A4) failed"
}

t_set_hostname_and_ip() {
    "$BERTH" set "$A" --hostname "web-$RUN_ID" >/dev/null
    expect_contains "$(in_vps "$A" hostnamectl)" "Static hostname: web-$RUN_ID"
    expect_eq "$(in_vps "$A" hostname)" "web-$RUN_ID"
    "$BERTH" set "$A" --ip-add "$A4B" >/dev/null
    expect_contains "$(in_vps "$A" ip -o addr show dev eth0)" "$A4B/32"
    in_vps "$B" ping -c 1 -W 2 "$A4B" >/dev/null || fail "the added address $A4B does not answer"
}

t_install_deb() {
    # A real package from Debian's archive, fetched by the host (the VPS has no way out).
    local deb
    mkdir -p "$WORK/debs"
    if ! (cd "$WORK/debs" && apt-get download hello >/dev/null 2>&1); then
        apt-get update -qq >/dev/null 2>&1 || true
        (cd "$WORK/debs" && apt-get download hello >/dev/null 2>&1) || skip "apt-get download hello failed on the host, even after apt-get update"
    fi
    deb=$(ls "$WORK"/debs/hello_*.deb)
    in_vps "$A" sh -c 'cat > /tmp/hello.deb' <"$deb"
    in_vps "$A" dpkg -i /tmp/hello.deb >/dev/null
    expect_eq "$(in_vps "$A" hello)" "Hello, world!"
    expect_contains "$(in_vps "$A" dpkg -s hello)" "Status: install ok installed"
}

t_clean_stop() {
    "$BERTH" stop "$A" >/dev/null
    # "poweroff", not "killed": systemd halted before the stop timeout.
    expect_contains "$("$BERTH" status "$A")" 'last_exit="poweroff"'
    # systemd went through its own shutdown, not a kill; the console log outlives the run.
    expect_contains "$("$BERTH" console "$A" --show-log)" "systemd-halt.service"
    expect_contains "$(expect_fail 3 "$BERTH" console "$RUN_ID-nosuch" --show-log)" "does not exist"
    expect_eq "$(leftovers_of "$A")" ""
    "$BERTH" start "$A" >/dev/null
    expect_eq "$(booted "$A")" "running"
    # What was installed and configured survived the stop.
    expect_eq "$(in_vps "$A" hostname)" "web-$RUN_ID"
}

t_reboot_inside() {
    local before after
    before=$(vps_pid "$A")
    in_vps "$A" systemctl reboot >/dev/null 2>&1 || true
    for _ in $(seq 100); do
        after=$(vps_pid "$A")
        [ "$after" != 0 ] && [ "$after" != "$before" ] && break
        sleep 0.1
    done
    [ "$after" != "$before" ] && [ "$after" != 0 ] || fail "no new boot after reboot (pid $before -> $after)"
    expect_eq "$(booted "$A")" "running"
    expect_contains "$("$BERTH" status "$A")" "running"
}

t_poweroff_inside() {
    in_vps "$B" systemctl poweroff >/dev/null 2>&1 || true
    for _ in $(seq 100); do "$BERTH" status "$B" | grep -q ' stopped ' && break; sleep 0.1; done
    expect_contains "$("$BERTH" status "$B")" 'stopped'
    expect_contains "$("$BERTH" status "$B")" 'last_exit="poweroff"'
    expect_eq "$(leftovers_of "$B")" ""
}

t_destroy_leaves_nothing() {
    # systemd made its own slices and scopes under the VPS's cgroup: all must go.
    [ -d "/sys/fs/cgroup/systemd/$CGROUP_PARENT/$A/system.slice" ] || [ -d "/sys/fs/cgroup/$CGROUP_PARENT/$A/system.slice" ] ||
        fail "systemd in $A made no system.slice (is its cgroup mount writable?)"
    "$BERTH" destroy "$A" --force >/dev/null
    "$BERTH" destroy "$B" >/dev/null
    expect_eq "$(leftovers_of "$A")$(leftovers_of "$B")" ""
}

# A layered VPS: systemd boots from the shared template tree; what it changes (a package, its
# journal, its identity) lands on its own disk, never in the template.
t_layered_boot() {
    local L; L=$(vps_name lay)
    local template="$WORK/data/templates/debian-12/rootfs"
    local before; before=$(cd "$template" && sha256sum var/lib/dpkg/status etc/machine-id 2>/dev/null; ls usr/bin | wc -l)
    "$BERTH" create "$L" --template debian-12 --storage layered --disk 256M >/dev/null
    "$BERTH" start "$L" >/dev/null
    expect_eq "$(booted "$L")" "running" "(systemctl --failed: $(in_vps "$L" systemctl --failed --no-legend 2>&1))"
    # A file of its own in a directory the template fills, always; a package too when the host
    # could fetch one (t_install_deb).
    in_vps "$L" sh -c 'echo mine > /usr/bin/berth-layer-check'
    expect_eq "$(in_vps "$L" cat /usr/bin/berth-layer-check)" mine
    local deb; deb=$(ls "$WORK"/debs/hello_*.deb 2>/dev/null | head -1)
    if [ -n "$deb" ]; then
        in_vps "$L" sh -c 'cat > /tmp/hello.deb' <"$deb"
        in_vps "$L" dpkg -i /tmp/hello.deb >/dev/null
        expect_eq "$(in_vps "$L" hello)" "Hello, world!"
    fi
    expect_eq "$(cd "$template" && sha256sum var/lib/dpkg/status etc/machine-id 2>/dev/null; ls usr/bin | wc -l)" "$before" "(the shared template changed)"
    "$BERTH" stop "$L" >/dev/null
    expect_contains "$("$BERTH" status "$L")" 'last_exit="poweroff"'
    [ -z "$(leftovers_of "$L")" ] || fail "leftovers after stop: $(leftovers_of "$L")"
    "$BERTH" destroy "$L" >/dev/null
    expect_eq "$(leftovers_of "$L")" ""
}

# A pool VPS: systemd boots from a subvolume of the node's btrfs pool (idmapped, no loop device
# of its own), reboots inside it, and keeps what it wrote.
t_pool_boot() {
    grep -qw btrfs /proc/filesystems || modprobe btrfs 2>/dev/null || true
    grep -qw btrfs /proc/filesystems || skip "this kernel has no btrfs, which --layout pool needs"
    command -v mkfs.btrfs >/dev/null || skip "no mkfs.btrfs (btrfs-progs) to make the storage pool"
    local P; P=$(vps_name pool)
    "$BERTH" create "$P" --template debian-12 --layout pool --disk 1G >/dev/null
    "$BERTH" start "$P" >/dev/null
    expect_eq "$(booted "$P")" "running" "(systemctl --failed: $(in_vps "$P" systemctl --failed --no-legend 2>&1))"
    in_vps "$P" sh -c 'echo mine > /root/pool-check'
    local first; first=$(vps_pid "$P")
    in_vps "$P" systemctl reboot || true
    for _ in $(seq 200); do
        local now; now=$(vps_pid "$P")
        [ "$now" != 0 ] && [ "$now" != "$first" ] && break
        sleep 0.1
    done
    [ "$(vps_pid "$P")" != "$first" ] || fail "the VPS did not come back from its reboot"
    expect_eq "$(booted "$P")" "running" "(after the reboot; systemctl --failed: $(in_vps "$P" systemctl --failed --no-legend 2>&1))"
    expect_eq "$(in_vps "$P" cat /root/pool-check)" mine
    "$BERTH" stop "$P" >/dev/null
    expect_contains "$("$BERTH" status "$P")" 'last_exit="poweroff"'
    [ -z "$(leftovers_of "$P")" ] || fail "leftovers after stop: $(leftovers_of "$P")"
    "$BERTH" destroy "$P" >/dev/null
    expect_eq "$(leftovers_of "$P")" ""
    [ ! -e "$WORK/data/pool/vps/$P" ] || fail "destroy left the subvolume"
}

# systemd on a cgroup2 mount (its "unified" mode, what production v2 hosts give a VPS): on a
# hybrid host, through the v2 driver on the host's own cgroup2 mount.
t_v2_boot() {
    local mountpoint; mountpoint=$(hybrid_cgroup2_or_skip)
    agent_stop
    AGENT_EXTRA="$AGENT_EXTRA --cgroup2-root $mountpoint" agent_start
    local C; C=$(vps_name c)
    "$BERTH" create "$C" --template debian-12 >/dev/null
    "$BERTH" start "$C" >/dev/null
    expect_eq "$(booted "$C")" "running" "(systemctl --failed: $(in_vps "$C" systemctl --failed --no-legend 2>&1))"
    expect_eq "$(in_vps "$C" stat -fc %T /sys/fs/cgroup)" "cgroup2fs"
    [ -d "$mountpoint/$CGROUP_PARENT/$C/system.slice" ] || fail "systemd made no system.slice in its cgroup2 subtree"
    "$BERTH" stop "$C" >/dev/null
    expect_contains "$("$BERTH" status "$C")" 'last_exit="poweroff"'
    "$BERTH" destroy "$C" >/dev/null
    expect_eq "$(leftovers_of "$C")" ""
    [ ! -e "$mountpoint/$CGROUP_PARENT/$C" ] || fail "the VPS's cgroup2 subtree is left"
}

echo "debian run $RUN_ID (work dir $WORK, template cache $TEMPLATE_CACHE)"
AGENT_EXTRA="--template-cache $TEMPLATE_CACHE"
agent_start || exit 1
run_test "template build debian-12 (debootstrap, cached tree)" t_template_build
run_test "template build refuses bad input and leaves nothing" t_template_bad_input
agent_stop

# The VPSs run with the agent in a node namespace: their traffic never leaves it.
ip netns add "$NODE" && ip -n "$NODE" link set lo up || exit 1
cat >"$WORK/node.json" <<EOF
{ "network": { "ranges": ["198.18.20.0/24", "fd00:b17:20::/64"] } }
EOF
export AGENT_WRAPPER="nsenter --net=/run/netns/$NODE"
AGENT_EXTRA="--template-cache $TEMPLATE_CACHE --config $WORK/node.json"
agent_start || exit 1
if "$BERTH" template list | grep -q '^debian-12'; then
    run_test "Debian boots systemd to running (two VPSs)" t_boot_to_running
    run_test "journald works" t_journald
    run_test "hostnamectl, ip a and ping show what Berth configured" t_identity_and_network
    run_test "set --hostname and --ip-add reach the running system" t_set_hostname_and_ip
    run_test "dpkg -i of a package from the host's apt" t_install_deb
    run_test "berth stop is systemd's clean shutdown" t_clean_stop
    run_test "reboot inside restarts the VPS" t_reboot_inside
    run_test "poweroff inside stops the VPS" t_poweroff_inside
    run_test "destroy removes systemd's cgroups too" t_destroy_leaves_nothing
    run_test "a layered Debian VPS boots systemd from the shared template and keeps its changes to itself" t_layered_boot
    run_test "a pool Debian VPS boots systemd from its btrfs subvolume, reboots, keeps its files" t_pool_boot
    run_test "systemd boots on a cgroup2 mount (v2 driver)" t_v2_boot
else
    FAILED=$((FAILED + 1)); FAILED_NAMES+=("no debian-12 template"); echo "FAIL - no debian-12 template: the VPS tests cannot run"
fi

echo "debian: $PASSED passed, $FAILED failed, $SKIPPED skipped"
[ "$FAILED" -eq 0 ]
