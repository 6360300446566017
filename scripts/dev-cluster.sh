#!/bin/bash
# A local multi-node Berth cluster on one machine (Docs/cluster.md "Local testbed").
#
#   scripts/dev-cluster.sh up [N]        CA, a controller and N enrolled agents (default 3)
#   scripts/dev-cluster.sh berth ARGS…   the CLI as the cluster admin, from the fabric namespace
#   scripts/dev-cluster.sh down          destroys the VPSs, stops everything, removes it all
#   scripts/dev-cluster.sh agent-start|agent-stop|agent-kill K, controller-start|controller-stop|controller-kill
#
# Layout (every name carries $BERTH_CLUSTER, default "bcl", so leftovers are easy to find):
#   netns NAME-fab   bridge br0 198.18.100.1/24, fd00:b17:100::1/64; the controller listens on
#                    198.18.100.1:7443; a route to the VPS pool 198.18.101.0/24 (proxy ARP on
#                    the nodes answers for the VPSs each node runs)
#   netns NAME-nK    eth0 198.18.100.(10+K)/24 on br0; agent nK serves the controller on :7000
#                    and routes its VPSs' addresses (pool 198.18.101.0/24, fd00:b17:101::/64)
# Nothing gets a default route; no traffic leaves these namespaces.
set -uo pipefail
cd "$(dirname "$0")/.."
BUILD=$(cd "${BUILD:-.build/debug}" && pwd)
NAME=${BERTH_CLUSTER:-bcl}
DIR=${BERTH_CLUSTER_DIR:-/tmp/berth-cluster-$NAME}
FAB=$NAME-fab
CONTROLLER=198.18.100.1:7443
ZONES=(a b c)

in_fab() { nsenter --net=/run/netns/"$FAB" "$@"; }
cli() { BERTH_CONTROLLER=$CONTROLLER BERTH_CONFIG=$DIR/ca/admin in_fab "$BUILD/berth" "$@"; }
node_ip() { echo "198.18.100.$((10 + $1))"; }
alive() { [ -n "${1:-}" ] && kill -0 "$1" 2>/dev/null; }

controller_start() {
    # BERTH_CONTROLLER_JSON: the controller's settings instead of these (Docs/cluster.md).
    [ -f "$DIR/controller.json" ] ||
        echo "${BERTH_CONTROLLER_JSON:-{\"heartbeatIntervalMs\": 1000, \"downAfterMs\": 5000, \"strategy\": \"spread\"\}}" >"$DIR/controller.json"
    # nsenter execs the daemon, so $! is the daemon itself (a shell function here would be a
    # subshell in between, and signals would miss it).
    nsenter --net=/run/netns/"$FAB" "$BUILD/berth-controller" --data-dir "$DIR/controller" --listen "$CONTROLLER" --ca-dir "$DIR/ca" \
        --config "$DIR/controller.json" >>"$DIR/controller.log" 2>&1 &
    echo $! >"$DIR/controller.pid"
    disown $! 2>/dev/null || true
    for _ in $(seq 100); do cli node list >/dev/null 2>&1 && return 0; sleep 0.05; done
    echo "controller did not come up; log:" >&2; tail -20 "$DIR/controller.log" >&2; return 1
}

stop_pid() { # FILE SIGNAL: stops the process whose pid is in FILE and waits for it (KILL after 10 s)
    local pid; pid=$(cat "$1" 2>/dev/null) || return 0
    kill -"$2" "$pid" 2>/dev/null
    for _ in $(seq 200); do alive "$pid" || break; sleep 0.05; done
    alive "$pid" && { kill -KILL "$pid" 2>/dev/null; sleep 0.2; }
    rm -f "$1"
}

controller_stop() { stop_pid "$DIR/controller.pid" TERM; }
controller_kill() { stop_pid "$DIR/controller.pid" KILL; }

agent_start() { # K [TOKEN]
    local k=$1 token=${2:-} n=n$1
    local join=() extra=()
    [ -n "$token" ] && join=(--join "$token")
    # BERTH_AGENT_ARGS: more flags for every agent (e.g. --migration-bandwidth 100M).
    read -r -a extra <<<"${BERTH_AGENT_ARGS:-}"
    nsenter --net=/run/netns/"$NAME-$n" "$BUILD/berth-agent" --name "$n" --data-dir "$DIR/$n/data" --run-dir "$DIR/$n/run" \
        --socket "$DIR/$n/agent.sock" --cgroup-parent "berth-$NAME-$n" --config "$DIR/$n/node.json" \
        --controller "$CONTROLLER" --listen "$(node_ip "$k"):7000" --label "zone=${ZONES[$(( (k - 1) % 3 ))]}" \
        "${join[@]}" "${extra[@]}" >>"$DIR/$n/agent.log" 2>&1 &
    echo $! >"$DIR/$n/agent.pid"
    disown $! 2>/dev/null || true
    for _ in $(seq 200); do [ -S "$DIR/$n/agent.sock" ] && "$BUILD/berth" --agent "$DIR/$n/agent.sock" list >/dev/null 2>&1 && return 0; sleep 0.05; done
    echo "agent $n did not come up; log:" >&2; tail -20 "$DIR/$n/agent.log" >&2; return 1
}

agent_stop() { stop_pid "$DIR/n$1/agent.pid" TERM; }
agent_kill() { stop_pid "$DIR/n$1/agent.pid" KILL; }

up() {
    local count=${1:-3}
    [ "$(id -u)" = 0 ] || { echo "dev-cluster needs root (namespaces, cgroups, loop devices)" >&2; exit 1; }
    [ -e "$DIR" ] && { echo "$DIR exists: run '$0 down' first" >&2; exit 1; }
    mkdir -p "$DIR"
    "$BUILD/berth" ca init --dir "$DIR/ca" >/dev/null || exit 1
    ip netns add "$FAB" || exit 1
    set -e   # any failing step of the network set-up stops here
    ip -n "$FAB" link set lo up
    # A fixed address: a bridge without one takes its ports' lowest MAC, which changes as nodes
    # join, and a node that cached the old one loses the controller until its ARP entry expires.
    ip -n "$FAB" link add br0 address 02:b1:7f:ab:00:01 type bridge
    ip -n "$FAB" addr add 198.18.100.1/24 dev br0
    ip -n "$FAB" addr add fd00:b17:100::1/64 dev br0 nodad
    ip -n "$FAB" link set br0 up
    ip -n "$FAB" route add 198.18.101.0/24 dev br0
    ip -n "$FAB" route add fd00:b17:101::/64 dev br0
    set +e
    controller_start || exit 1
    cli ippool add pool 198.18.101.0/24 >/dev/null || exit 1
    for k in $(seq "$count"); do
        local n=n$k
        ip netns add "$NAME-$n" || exit 1
        set -e
        ip -n "$NAME-$n" link set lo up
        ip -n "$FAB" link add "$n" type veth peer name eth0 netns "$NAME-$n"
        ip -n "$FAB" link set "$n" master br0
        ip -n "$FAB" link set "$n" up
        ip -n "$NAME-$n" addr add "$(node_ip "$k")/24" dev eth0
        ip -n "$NAME-$n" addr add "fd00:b17:100::$((10 + k))/64" dev eth0 nodad
        ip -n "$NAME-$n" link set eth0 up
        set +e
        mkdir -p "$DIR/$n"
        echo '{"network": {"uplink": "eth0", "ranges": ["198.18.101.0/24", "fd00:b17:101::/64"]}}' >"$DIR/$n/node.json"
        agent_start "$k" "$(cli node join-token --ttl 10m)" || exit 1
        "$BUILD/berth" --agent "$DIR/$n/agent.sock" template build busybox >/dev/null || exit 1
    done
    # Every node has sent a heartbeat with its template list.
    for _ in $(seq 100); do
        [ "$(cli node list --json | grep -c '"busybox"')" = "$count" ] && break
        sleep 0.1
    done
    echo "cluster $NAME: controller $CONTROLLER, $count nodes, admin bundle $DIR/ca/admin"
    local prefix=""
    [ "$NAME" = bcl ] || prefix="BERTH_CLUSTER=$NAME "
    [ -z "${BERTH_CLUSTER_DIR:-}" ] || prefix="${prefix}BERTH_CLUSTER_DIR=$DIR "
    echo "CLI: $prefix$0 berth node list   (or: nsenter --net=/run/netns/$FAB berth --controller $CONTROLLER --config-dir $DIR/ca/admin …)"
}

down() {
    # VPSs first, through each node's own agent (works even when the controller is gone).
    for sock in "$DIR"/n*/agent.sock; do
        [ -S "$sock" ] || continue
        for vps in $("$BUILD/berth" --agent "$sock" list --all --json 2>/dev/null | sed -n 's/^    "name": "\(.*\)",$/\1/p'); do
            "$BUILD/berth" --agent "$sock" destroy "$vps" --force >/dev/null 2>&1
        done
    done
    controller_stop
    # Each node directory has the integration tier's layout (agent.pid, run/, data/; cgroup
    # parent berth-NAME-nK): its cleanup stops the agent and removes whatever a crash left.
    for node in "$DIR"/n*/; do
        [ -d "$node" ] || continue
        WORK=${node%/} RUN_ID=$NAME-$(basename "$node") BUILD=$BUILD bash -c 'source Tests/integration/lib.sh; cleanup_all' >/dev/null 2>&1
    done
    for ns in $(ip netns list 2>/dev/null | awk '{print $1}' | grep -E "^$NAME-(fab|n[0-9]+)$"); do ip netns del "$ns"; done
    rm -rf "$DIR"
    echo "cluster $NAME removed"
}

case "${1:-}" in
    up) shift; up "$@" ;;
    down) down ;;
    berth) shift; cli "$@" ;;
    agent-start|agent-stop|agent-kill)
        [ -n "${2:-}" ] || { echo "$1 needs a node number (1 for n1)" >&2; exit 2; }
        case "$1" in agent-start) agent_start "$2" ;; agent-stop) agent_stop "$2" ;; *) agent_kill "$2" ;; esac ;;
    controller-start) controller_start ;;
    controller-stop) controller_stop ;;
    controller-kill) controller_kill ;;
    *) sed -n '2,9p' "$0" | sed 's/^# \{0,1\}//' >&2; exit 2 ;;
esac
