#!/bin/bash
# make demo: start an agent on this node (default paths), build the busybox template, create
# and start two VPSs and show that they run isolated from each other and from the host.
# The demo node is a network namespace (berth-demo-node) with an uplink to a "LAN" namespace
# (berth-demo-lan), so VPS networking is shown without touching this host's own network.
# `make demo-stop` removes the demo VPSs, stops the agent it started and deletes both namespaces.
set -euo pipefail
cd "$(dirname "$0")/.."
BUILD=$(cd "${BUILD:-.build/debug}" && pwd)
BERTH="$BUILD/berth"
export BERTH_AGENT=/run/berth/agent.sock
PIDFILE=/run/berth/demo-agent.pid
NODE_NS=berth-demo-node LAN_NS=berth-demo-lan
NODE_CONFIG=/run/berth/demo-node.json
# lxcfs renders /proc/meminfo and friends per VPS; the demo starts it when nothing serves yet.
LXCFS_PIDFILE=/run/berth/demo-lxcfs.pid LXCFS_DIR=/var/lib/lxcfs
# say COMMAND [COMMENT]: shows what runs next, the way an operator would type it.
say() { printf '\n\033[1m$ %s\033[0m  %s\n' "$1" "${2:-}"; }

# The cluster part runs on the local testbed (scripts/dev-cluster.sh) named "berth-demo".
export BERTH_CLUSTER=bdemo BERTH_CLUSTER_DIR=/run/berth/demo-cluster BUILD
DEV=scripts/dev-cluster.sh

if [ "${1:-}" = stop ]; then
    [ -d "$BERTH_CLUSTER_DIR" ] && "$DEV" down >/dev/null
    for v in demo1 demo2; do "$BERTH" destroy "$v" --force 2>/dev/null || true; done
    [ -f "$PIDFILE" ] && kill -TERM "$(cat "$PIDFILE")" 2>/dev/null && rm -f "$PIDFILE"
    # The agent runs its helpers from read-only binds of them (Docs/security.md).
    for helper in berth-spawn berth-monitor; do while umount -l /run/berth/$helper 2>/dev/null; do :; done; done
    ip netns del "$NODE_NS" 2>/dev/null || true
    ip netns del "$LAN_NS" 2>/dev/null || true
    rm -f "$NODE_CONFIG"
    if [ -f "$LXCFS_PIDFILE" ]; then
        kill -TERM "$(cat "$LXCFS_PIDFILE")" 2>/dev/null || true
        for _ in $(seq 50); do mountpoint -q "$LXCFS_DIR" || break; sleep 0.1; done
        mountpoint -q "$LXCFS_DIR" && umount -l "$LXCFS_DIR"
        rm -f "$LXCFS_PIDFILE"
    fi
    # The agent's (empty) per-node parent cgroups; rmdir refuses any that still hold a VPS.
    for dir in /sys/fs/cgroup/*/berth /sys/fs/cgroup/berth; do [ -d "$dir" ] && rmdir "$dir" 2>/dev/null; done
    echo "demo VPSs destroyed; demo agent stopped; demo namespaces removed"
    exit 0
fi
[ "$(id -u)" = 0 ] || { echo "make demo needs root (namespaces, cgroups, loop devices)" >&2; exit 1; }

mkdir -p /run/berth /var/log
if ! [ -e "$LXCFS_DIR/proc/meminfo" ] && command -v lxcfs >/dev/null && [ -e /dev/fuse ]; then
    mkdir -p "$LXCFS_DIR"
    lxcfs -f "$LXCFS_DIR" >>/var/log/lxcfs.log 2>&1 &
    echo $! >"$LXCFS_PIDFILE"
    for _ in $(seq 50); do [ -e "$LXCFS_DIR/proc/meminfo" ] && break; sleep 0.1; done
    echo "lxcfs started (pid $(cat "$LXCFS_PIDFILE"), $LXCFS_DIR)"
fi
if ! "$BERTH" list >/dev/null 2>&1; then
    if ! ip netns list | grep -qw "$NODE_NS"; then
        ip netns add "$NODE_NS"; ip netns add "$LAN_NS"
        ip -n "$NODE_NS" link set lo up
        ip -n "$NODE_NS" link add uplink0 type veth peer name lan0 netns "$LAN_NS"
        ip -n "$NODE_NS" addr add 198.18.200.1/24 dev uplink0
        ip -n "$NODE_NS" link set uplink0 up
        ip -n "$LAN_NS" addr add 198.18.200.100/24 dev lan0
        ip -n "$LAN_NS" addr add fd00:b17:200::100/64 dev lan0 nodad
        ip -n "$LAN_NS" link set lan0 up
    fi
    echo '{"network": {"uplink": "uplink0", "ranges": ["198.18.200.0/24", "fd00:b17:200::/64"]}}' >"$NODE_CONFIG"
    nsenter --net=/run/netns/"$NODE_NS" "$BUILD/berth-agent" --config "$NODE_CONFIG" >>/var/log/berth-agent.log 2>&1 &
    echo $! >"$PIDFILE"
    for _ in $(seq 100); do "$BERTH" list >/dev/null 2>&1 && break; sleep 0.05; done
    echo "berth-agent started (pid $(cat "$PIDFILE"), log /var/log/berth-agent.log, data /var/lib/berth)"
fi
for v in demo1 demo2; do "$BERTH" destroy "$v" --force >/dev/null 2>&1 || true; done

say "berth template build busybox"
"$BERTH" template build busybox
say "berth create demo1 --template busybox --memory 256M --pids 200 --label tenant=acme --ip 198.18.200.10 --ip fd00:b17:200::10"
"$BERTH" create demo1 --template busybox --memory 256M --pids 200 --label tenant=acme --ip 198.18.200.10 --ip fd00:b17:200::10
say "berth create demo2 --template busybox --hostname shop.example --cpu-units 500 --ip 198.18.200.11"
"$BERTH" create demo2 --template busybox --hostname shop.example --cpu-units 500 --ip 198.18.200.11
say "berth start demo1 && berth start demo2"
"$BERTH" start demo1
"$BERTH" start demo2
sleep 0.3
say "berth list"
"$BERTH" list
say "berth exec demo1 -- ps" "# only demo1's own processes; its init is PID 1"
"$BERTH" exec demo1 -- ps
say "berth exec demo1 -- cat /proc/self/uid_map" "# its own user namespace: root inside is an unprivileged uid on the host"
"$BERTH" exec demo1 -- cat /proc/self/uid_map
say "ps -o user,pid,comm -p \$(berth status demo1 --json | … pid)" "# the same init, seen from the host"
ps -o user,pid,comm -p "$("$BERTH" status demo1 --json | python3 -c 'import json,sys; print(json.load(sys.stdin)["pid"])')"
say "berth exec demo2 -- hostname"
"$BERTH" exec demo2 -- hostname
say "berth exec demo1 -- ip -o addr show eth0" "# its own network namespace, addresses set by the host"
"$BERTH" exec demo1 -- ip -o addr show eth0
say "berth exec demo2 -- ping -c1 198.18.200.10" "# routed VPS to VPS"
"$BERTH" exec demo2 -- ping -c1 -W2 198.18.200.10
say "ip netns exec $LAN_NS busybox ping -c1 198.18.200.11" "# a LAN client reaches demo2 (proxy ARP on the node's uplink)"
ip netns exec "$LAN_NS" busybox ping -c1 -W2 198.18.200.11
say "berth exec demo2 -- sh -c 'ip addr add 198.18.200.10/32 dev eth0; ping -c1 -W1 -I 198.18.200.10 198.18.200.100'" "# spoofing demo1's address: dropped on the node"
"$BERTH" exec demo2 -- sh -c 'ip addr add 198.18.200.10/32 dev eth0; ping -c1 -W1 -I 198.18.200.10 198.18.200.100' || true
"$BERTH" exec demo2 -- ip addr del 198.18.200.10/32 dev eth0
say "berth exec demo1 -- sh -c 'cat /run/boot-complete; mount | wc -l'" "# rcS ran; a private mount table"
"$BERTH" exec demo1 -- sh -c 'cat /run/boot-complete; mount | wc -l'
say "berth exec demo2 -- mount -t tmpfs x /mnt" "# no CAP_SYS_ADMIN inside"
"$BERTH" exec demo2 -- mount -t tmpfs x /mnt || true
say "berth status demo1 --json"
"$BERTH" status demo1 --json
say "berth exec demo1 -- free -m" "# its own 256M (lxcfs renders /proc/meminfo from its cgroup)"
"$BERTH" exec demo1 -- free -m
say "berth exec demo1 -- cat /run/beancounters/user_beancounters" "# the table of 'berth stats demo1', read-only inside"
"$BERTH" exec demo1 -- cat /run/beancounters/user_beancounters
# The fleet: a controller and three agents in their own network namespaces, enrolled with
# single-use tokens over mutual TLS; the scheduler spreads VPSs across them.
[ -d "$BERTH_CLUSTER_DIR" ] && "$DEV" down >/dev/null
say "scripts/dev-cluster.sh up 3" "# CA, controller, 3 nodes enrolled over mTLS, IP pool 198.18.101.0/24"
"$DEV" up 3
say "berth node list" "# (in the cluster's fabric namespace, as its admin)"
"$DEV" berth node list
for v in web1 web2 web3; do
    say "berth create $v --template busybox --ip auto --disk 256M --anti-affinity web"
    "$DEV" berth create "$v" --template busybox --ip auto --disk 256M --anti-affinity web
    "$DEV" berth start "$v" >/dev/null
done
say "berth list" "# placed across the three nodes, addresses from the pool"
"$DEV" berth list
say "berth create web4 --template busybox --anti-affinity web" "# a 4th member has nowhere to go"
"$DEV" berth create web4 --template busybox --anti-affinity web || true
say "berth exec web2 -- hostname" "# exec streams through the controller to the VPS's node"
"$DEV" berth exec web2 -- hostname

cat <<EOT

Both VPSs keep running, and so does the three-node cluster. Try:
  BERTH_CLUSTER=$BERTH_CLUSTER BERTH_CLUSTER_DIR=$BERTH_CLUSTER_DIR scripts/dev-cluster.sh berth node list
  BERTH_CLUSTER=$BERTH_CLUSTER BERTH_CLUSTER_DIR=$BERTH_CLUSTER_DIR scripts/dev-cluster.sh berth exec web1 -- ps
  $BERTH enter demo1            # a shell inside (exit to leave)
  $BERTH console demo2          # its console; Ctrl-] detaches
  $BERTH exec demo1 -- reboot   # restarts the VPS, not the host
  make demo-stop                # destroy the demo VPSs and the cluster, stop the demo agent
EOT
