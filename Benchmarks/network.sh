#!/bin/bash
# Network benchmarks, measured side by side in one run:
#   BUILD=.build/release Benchmarks/network.sh [ROUNDS] [IPERF_SECONDS] [STOP_N]
#   1. network set-up per VPS start (wall and CPU of berth-spawn's netlink work, as it reports in
#      the monitor log) vs the anchor's netns+veth set-up with 2 `ip -batch` processes
#      (../shared/anchors/bench-net.sh, run here); start wall time with and without a network
#   2. TCP throughput (iperf3, 1 stream): VPS<->VPS and VPS<->LAN client vs a bare veth pair
#      between two plain namespaces
#   3. stopping STOP_N networked VPSs at once: wall time vs STOP_N x one synchronous veth deletion
# Everything runs in namespaces made here (prefix bnb<pid>), addresses in 198.18.0.0/15 and
# fd00:b17::/32.
set -u
cd "$(dirname "$0")/.." || exit 1
ROUNDS=${1:-20}
IPERF_SECONDS=${2:-5}
STOP_N=${3:-50}
ANCHORS=${ANCHORS:-$(cd ../shared/anchors 2>/dev/null && pwd)}
[ "$(id -u)" = 0 ] || { echo "run as root" >&2; exit 1; }
for tool in iperf3 nft ip nsenter python3; do command -v $tool >/dev/null || { echo "missing $tool (BERTH_BENCH=1 scripts/install-deps.sh)" >&2; exit 1; }; done
BUILD=$(cd "${BUILD:-.build/release}" && pwd)
B="$BUILD/berth"
RUN_ID=bnb$$
W=/tmp/berth-bench-$RUN_ID
NODE=$RUN_ID-node LAN=$RUN_ID-lan P1=$RUN_ID-p1 P2=$RUN_ID-p2 R=$RUN_ID-r X=$RUN_ID-x Y=$RUN_ID-y
export BERTH_AGENT=$W/run/agent.sock
AGENT=""
cleanup() {
    [ -n "$AGENT" ] && kill -TERM "$AGENT" 2>/dev/null
    WORK=$W RUN_ID=$RUN_ID BUILD=$BUILD bash -c 'source Tests/integration/lib.sh; cleanup_all' >/dev/null 2>&1
    for ns in "$NODE" "$LAN" "$P1" "$P2" "$R" "$X" "$Y"; do ip netns del "$ns" 2>/dev/null; done
    true
}
trap cleanup EXIT
mkdir -p "$W"

ip netns add "$NODE"; ip netns add "$LAN"; ip netns add "$P1"; ip netns add "$P2"
ip -n "$NODE" link set lo up
ip -n "$NODE" link add up0 type veth peer name lan0 netns "$LAN"
ip -n "$NODE" addr add 198.18.0.1/24 dev up0
ip -n "$NODE" link set up0 up
ip -n "$LAN" addr add 198.18.0.100/24 dev lan0
ip -n "$LAN" link set lan0 up
ip -n "$LAN" link set lo up
# The bare reference: one veth pair between two plain namespaces.
ip -n "$P1" link add p1 type veth peer name p2 netns "$P2"
ip -n "$P1" addr add 198.18.9.1/30 dev p1; ip -n "$P1" link set p1 up
ip -n "$P2" addr add 198.18.9.2/30 dev p2; ip -n "$P2" link set p2 up
# The same two-hop routed topology as two VPSs on a node, without any filter: what routing costs.
ip netns add "$R"; ip netns add "$X"; ip netns add "$Y"
ip netns exec "$R" sysctl -qw net.ipv4.ip_forward=1
for pair in "$X:rx:198.18.10.1" "$Y:ry:198.18.10.2"; do
    IFS=: read -r ns dev addr <<<"$pair"
    ip -n "$R" link add "$dev" type veth peer name eth0 netns "$ns"
    ip -n "$R" addr add 169.254.0.1/32 dev "$dev"; ip -n "$R" link set "$dev" up
    ip -n "$R" route add "$addr/32" dev "$dev"
    ip -n "$ns" addr add "$addr/32" dev eth0; ip -n "$ns" link set eth0 up
    ip -n "$ns" route add default via 169.254.0.1 dev eth0 onlink
done

echo '{"network": {"uplink": "up0", "ranges": ["198.18.0.0/24", "fd00:b17::/64"]}}' >"$W/node.json"
nsenter --net=/run/netns/"$NODE" "$BUILD/berth-agent" --config "$W/node.json" --data-dir "$W/data" --run-dir "$W/run" \
    --socket "$BERTH_AGENT" --cgroup-parent "berth-$RUN_ID" --log-level warning >"$W/agent.log" 2>&1 &
AGENT=$!
for _ in $(seq 100); do "$B" list >/dev/null 2>&1 && break; sleep 0.05; done
"$B" template build busybox >/dev/null || { echo "agent not up: $(cat "$W/agent.log")" >&2; exit 1; }
"$B" create vnet --template busybox --disk 64M --ip 198.18.0.10 --ip fd00:b17::10 >/dev/null
"$B" create vlo --template busybox --disk 64M >/dev/null
median() { python3 -c "import sys, statistics; v=[float(x) for x in sys.stdin.read().split()]; print(f'{statistics.median(v):.3f}' if v else 'n/a')"; }

echo "host: $(uname -r), $(nproc) CPUs, load $(cut -d' ' -f1-3 /proc/loadavg); berth $BUILD"
echo
echo "== 1. network set-up per VPS start ($ROUNDS rounds; veth over rtnetlink, IPv4 + IPv6, routes, neighbours, proxy entries, filter elements)"
: >"$W/net.tsv"; : >"$W/start-net"; : >"$W/start-lo"
start_timed() { # VPS OUTFILE
    local t0 t1
    t0=${EPOCHREALTIME/[.,]/}; "$B" start "$1" >/dev/null; t1=${EPOCHREALTIME/[.,]/}
    echo $(( t1 - t0 )) >>"$2"
}
for r in $(seq 1 "$ROUNDS"); do
    # Alternating order, and a pause after the stops: a namespace freed asynchronously by the
    # previous stop would otherwise slow whichever start comes first.
    if [ $((r % 2)) = 1 ]; then start_timed vnet "$W/start-net"; start_timed vlo "$W/start-lo"
    else start_timed vlo "$W/start-lo"; start_timed vnet "$W/start-net"; fi
    sed -n 's/.*network set-up of .*: wall_us=\([0-9]*\) cpu_us=\([0-9]*\)/\1 \2/p' "$W/run/vnet/monitor.log" | tail -1 >>"$W/net.tsv"
    "$B" stop vnet --kill >/dev/null; "$B" stop vlo --kill >/dev/null
    sleep 0.3
done
net_wall=$(awk '{print $1/1000}' "$W/net.tsv" | median); net_cpu=$(awk '{print $2/1000}' "$W/net.tsv" | median)
start_net=$(awk '{print $1/1000}' "$W/start-net" | median); start_lo=$(awk '{print $1/1000}' "$W/start-lo" | median)
anchor_cpu=""
if [ -x "$ANCHORS/bench-net.sh" ]; then
    echo "anchor, same run: $ANCHORS/bench-net.sh $ROUNDS"
    "$ANCHORS/bench-net.sh" "$ROUNDS" >"$W/anchor.txt" 2>&1
    grep '^|' "$W/anchor.txt"
    anchor_cpu=$(awk -F'|' "/\\(f'\\) same setup, 2x ip -batch/ {gsub(/ /, \"\", \$10); print \$10}" "$W/anchor.txt")
    anchor_wall=$(awk -F'|' "/\\(f'\\) same setup, 2x ip -batch/ {gsub(/ /, \"\", \$5); print \$5}" "$W/anchor.txt")
fi
printf '| %-52s | %10s | %10s |\n' "figure (median)" "wall ms" "CPU ms"
printf '|%s|\n' "------------------------------------------------------|------------|-----------"
printf '| %-52s | %10s | %10s |\n' "berth network set-up (berth-spawn, netlink)" "$net_wall" "$net_cpu"
[ -n "$anchor_cpu" ] && printf '| %-52s | %10s | %10s |\n' "anchor: netns+veth with 2x ip -batch" "$anchor_wall" "$anchor_cpu"
printf '| %-52s | %10s | %10s |\n' "berth start, routed VPS (v4+v6)" "$start_net" "-"
printf '| %-52s | %10s | %10s |\n' "berth start, loopback only" "$start_lo" "-"
[ -n "$anchor_cpu" ] && echo "CPU ratio berth/anchor: $(python3 -c "print(f'{$net_cpu/$anchor_cpu:.2f}')")x; target: <= 2 ms CPU -> $(python3 -c "print('met' if $net_cpu <= 2 else 'not met')")"

echo
echo "== 2. TCP throughput, iperf3 -t $IPERF_SECONDS, one stream (Gbit/s; median of 3 interleaved runs)"
"$B" start vnet >/dev/null
"$B" create vnet2 --template busybox --disk 64M --ip 198.18.0.11 >/dev/null
"$B" start vnet2 >/dev/null
pid_of() { "$B" status "$1" --json | python3 -c 'import json,sys; print(json.load(sys.stdin)["pid"])'; }
N1=/proc/$(pid_of vnet)/ns/net N2=/proc/$(pid_of vnet2)/ns/net
iperf() { # SERVER_NS_PATH CLIENT_NS_PATH ADDRESS -> Gbit/s of one run
    nsenter --net="$1" iperf3 -s -1 -B "$3" >/dev/null 2>&1 & local server=$!
    sleep 0.3
    nsenter --net="$2" iperf3 -c "$3" -t "$IPERF_SECONDS" -J 2>/dev/null | python3 -c 'import json,sys; print(json.load(sys.stdin)["end"]["sum_received"]["bits_per_second"]/1e9)' 2>/dev/null || echo 0
    wait $server 2>/dev/null
}
# Interleaved rounds so drift on this shared machine hits every path alike; medians reported.
: >"$W/bare"; : >"$W/v2v"; : >"$W/v2l"; : >"$W/routed"
for _ in 1 2 3; do
    iperf /run/netns/"$P2" /run/netns/"$P1" 198.18.9.2 >>"$W/bare"
    iperf /run/netns/"$X" /run/netns/"$Y" 198.18.10.1 >>"$W/routed"
    iperf "$N1" "$N2" 198.18.0.10 >>"$W/v2v"
    iperf /run/netns/"$LAN" "$N1" 198.18.0.100 >>"$W/v2l"
done
bare=$(median <"$W/bare"); v2v=$(median <"$W/v2v"); v2l=$(median <"$W/v2l"); routed=$(median <"$W/routed")
printf '| %-44s | %8s | %9s |\n' "path" "Gbit/s" "vs bare"
printf '|%s|\n' "----------------------------------------------|----------|----------"
printf '| %-44s | %8s | %9s |\n' "bare veth pair, two plain namespaces" "$bare" "1.00"
printf '| %-44s | %8s | %9s |\n' "plain namespaces routed via a third, no filter" "$routed" "$(python3 -c "print(f'{$routed/$bare:.2f}' if $bare else 'n/a')")"
printf '| %-44s | %8s | %9s |\n' "VPS -> VPS (2 veths, routed, filtered)" "$v2v" "$(python3 -c "print(f'{$v2v/$bare:.2f}' if $bare else 'n/a')")"
printf '| %-44s | %8s | %9s |\n' "VPS -> LAN client (2 veths, routed, filtered)" "$v2l" "$(python3 -c "print(f'{$v2l/$bare:.2f}' if $bare else 'n/a')")"
echo "target: >= 0.95 of the bare pair"
"$B" destroy vnet2 --force >/dev/null
"$B" stop vnet --kill >/dev/null

echo
echo "== 3. stopping $STOP_N VPSs at once: networked vs loopback only"
stop_all() { # PREFIX: creates and starts STOP_N VPSs, then times stopping them all concurrently
    local prefix=$1 ips=() stoppers=() t0 t1 t2 i
    for i in $(seq 1 "$STOP_N"); do
        [ "$prefix" = sn ] && ips=(--ip "198.18.0.$((100 + i))") || ips=()
        "$B" create "$prefix$i" --template busybox --disk 64M "${ips[@]}" >/dev/null || exit 1
    done
    for i in $(seq 1 "$STOP_N"); do "$B" start "$prefix$i" >/dev/null || exit 1; done
    sleep 1
    t0=${EPOCHREALTIME/[.,]/}
    for i in $(seq 1 "$STOP_N"); do "$B" stop "$prefix$i" --kill >/dev/null & stoppers+=($!); done
    wait "${stoppers[@]}"   # not a bare wait: the agent is a child of this script too
    t1=${EPOCHREALTIME/[.,]/}
    for _ in $(seq 400); do ip -n "$NODE" -o link | grep -q " bv-$prefix" || break; sleep 0.025; done
    t2=${EPOCHREALTIME/[.,]/}
    for i in $(seq 1 "$STOP_N"); do "$B" destroy "$prefix$i" >/dev/null; done
    echo "$prefix $(( (t1 - t0) / 1000 )) $(( (t2 - t0) / 1000 ))" >"$W/stop-$prefix"
}
stop_all sl; read -r _ lo_ms _ <"$W/stop-sl"
stop_all sn; read -r _ net_ms gone_ms <"$W/stop-sn"
ip -n "$P1" link add px type veth peer name py
t0=${EPOCHREALTIME/[.,]/}; ip -n "$P1" link del px; t1=${EPOCHREALTIME/[.,]/}
one_del=$(( (t1 - t0) / 1000 ))
printf '| %-52s | %10s |\n' "figure" "wall ms"
printf '|%s|\n' "------------------------------------------------------|-----------"
printf '| %-52s | %10s |\n' "stop $STOP_N loopback-only VPSs concurrently" "$lo_ms"
printf '| %-52s | %10s |\n' "stop $STOP_N routed VPSs concurrently" "$net_ms"
printf '| %-52s | %10s |\n' "  ... until their host links were gone" "$gone_ms"
printf '| %-52s | %10s |\n' "one synchronous veth deletion (for scale)" "$one_del"
echo "a serial teardown would add about $(( one_del * STOP_N )) ms; the veths go with the namespaces, freed by the kernel in batches"
