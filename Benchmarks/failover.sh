#!/bin/bash
# Failover and replication benchmarks (Docs/ha.md), in one sitting on a namespaced test cluster:
#   BUILD=.build/release Benchmarks/failover.sh [ROUNDS] [INTERVAL]
#   1. detection to running: a busybox HA VPS (--layout pool) runs on one node; that node's link
#      is cut ROUNDS times (default 10; the VPS is on another node each round); from the instant
#      of the cut, when its processes are gone there (fenced) and when it runs on another node
#      (from each node's run state, every 50 ms): p50, p95, max, beside the configured fence and
#      failover times (the controller's defaults unless FENCE_MS / FAILOVER_MS are set), and
#      beside the anchor: the same VPS's own stop + start on one node, as many times
#   2. replication cost: the VPS rewrites 1 MiB/s of its disk for 10 intervals of INTERVAL
#      seconds (default 10): bytes sent per round, the primary agent's CPU per round, and the
#      recovery point achieved (the replica's age, sampled every second) against the interval
# Every round also checks that the VPS never ran on two nodes at once.
set -u
cd "$(dirname "$0")/.." || exit 1
[ "$(id -u)" = 0 ] || { echo "run as root" >&2; exit 1; }
ROUNDS=${1:-10}
INTERVAL=${2:-10}
FENCE_MS=${FENCE_MS:-10000}
FAILOVER_MS=${FAILOVER_MS:-15000}
BUILD=$(cd "${BUILD:-.build/release}" && pwd)
export BERTH_CLUSTER=bfo$$ BERTH_CLUSTER_DIR=/tmp/berth-bench-bfo$$ BUILD
export BERTH_CONTROLLER_JSON="{\"heartbeatIntervalMs\": 1000, \"downAfterMs\": 5000, \"fenceAfterMs\": $FENCE_MS, \"failoverAfterMs\": $FAILOVER_MS, \"failoverRatePercent\": 100, \"failoverWindowMs\": 1000}"
DEV=scripts/dev-cluster.sh
DIR=$BERTH_CLUSTER_DIR
W=$DIR.work
mkdir -p "$W"
cleanup() {
    for k in 1 2 3; do ip -n "$BERTH_CLUSTER-n$k" link set eth0 up 2>/dev/null; done
    "$DEV" down >/dev/null 2>&1
    rm -rf "$W"
}
trap cleanup EXIT
cl() { "$DEV" berth "$@"; }
json() { cl status "$V" --json | /usr/bin/python3 -c "import json,sys; d=json.load(sys.stdin); print($1)"; }
now_ms() { date +%s%3N; }
running_on() {
    local k s p
    for k in 1 2 3; do
        s=$DIR/n$k/run/$V/state; [ -f "$s" ] || continue
        p=$(sed -n 's/^init=//p' "$s" 2>/dev/null); [ -n "$p" ] && [ -d "/proc/$p" ] && printf 'n%s ' "$k"
    done
    echo
}
await_replicated() {
    local since; since=$(now_ms)
    for _ in $(seq 600); do
        [ "$(json 'min([r["replicated_unix_ms"] for r in d["replicas"]] or [0])')" -gt "$since" ] && return 0
        sleep 0.2
    done
    echo "not replicated within 2 min: $(cl status "$V")" >&2; exit 1
}
stats() { # FILE (one number per line): p50 p95 max
    /usr/bin/python3 - "$1" <<'PY'
import sys
v = sorted(float(l) for l in open(sys.argv[1]) if l.strip())
q = lambda p: v[min(len(v) - 1, int(round(p * (len(v) - 1))))]
print(f"{q(0.5):.0f} {q(0.95):.0f} {v[-1]:.0f}")
PY
}

"$DEV" up 3 >"$W/up.log" 2>&1 || { cat "$W/up.log"; exit 1; }
V=$BERTH_CLUSTER-v
cl create "$V" --template busybox --layout pool --disk 512M --ip auto --node n1 --ha --replication-interval "${INTERVAL}s" >/dev/null || exit 1
cl start "$V" >/dev/null || exit 1
await_replicated

# 1. The anchor first: the VPS's own stop + start on its node.
for _ in $(seq "$ROUNDS"); do
    t0=$(now_ms)
    cl stop "$V" >/dev/null && cl start "$V" >/dev/null || exit 1
    echo $(( $(now_ms) - t0 )) >>"$W/restart"
done
await_replicated
twice=0
for round in $(seq "$ROUNDS"); do
    node=$(json 'd["node"]')
    t0=$(now_ms); fenced=""; running=""
    ip -n "$BERTH_CLUSTER-$node" link set eth0 down
    while [ $(( $(now_ms) - t0 )) -lt 120000 ]; do
        on=$(running_on)
        [ "$(wc -w <<<"$on")" -gt 1 ] && twice=$((twice + 1))
        [ -z "$fenced" ] && [[ " $on" != *" $node "* ]] && fenced=$(( $(now_ms) - t0 ))
        if [ -n "$on" ] && [[ " $on" != *" $node "* ]]; then running=$(( $(now_ms) - t0 )); break; fi
        sleep 0.05
    done
    ip -n "$BERTH_CLUSTER-$node" link set eth0 up
    [ -n "$running" ] || { echo "round $round: $V did not run elsewhere within 120 s" >&2; exit 1; }
    echo "$fenced" >>"$W/fenced"; echo "$running" >>"$W/running"
    echo "round $round: $node cut; fenced there after $fenced ms, running on $(running_on)after $running ms"
    # The old node deletes its copy; the VPS is protected again before the next cut.
    for _ in $(seq 300); do
        [ -z "$(ls "$DIR/$node/data/vps/" 2>/dev/null | grep -x "$V")" ] && break
        sleep 0.1
    done
    await_replicated
done
read -r f50 f95 fmax < <(stats "$W/fenced")
read -r r50 r95 rmax < <(stats "$W/running")
read -r a50 a95 amax < <(stats "$W/restart")
echo
echo "detection to running elsewhere, from the cut ($ROUNDS rounds; fence-after ${FENCE_MS} ms, failover-after ${FAILOVER_MS} ms):"
printf '  fenced on the cut node     p50 %6s ms  p95 %6s ms  max %6s ms\n' "$f50" "$f95" "$fmax"
printf '  running on another node    p50 %6s ms  p95 %6s ms  max %6s ms   (target p95 <= 30000 ms)\n' "$r50" "$r95" "$rmax"
printf '  anchor: stop + start       p50 %6s ms  p95 %6s ms  max %6s ms\n' "$a50" "$a95" "$amax"
/usr/bin/python3 -c "print(f'  beyond failover-after: p95 {$r95 - $FAILOVER_MS} ms = {($r95 - $FAILOVER_MS) / max($a95, 1):.2f}x the anchor\'s stop + start; fenced {$FAILOVER_MS - $f95} ms before the failover at p95')"
echo "  two copies at once: $twice samples (must be 0)"

# 2. Replication cost while the VPS rewrites 1 MiB/s.
node=$(json 'd["node"]')
agent=$(cat "$DIR/$node/agent.pid")
# A plain background job (the template has no nohup): it outlives the exec.
cl exec "$V" -- sh -c 'mkdir -p /srv; sh -c "while :; do dd if=/dev/urandom of=/srv/churn bs=1M count=1 conv=notrunc 2>/dev/null; sync; sleep 1; done" </dev/null >/dev/null 2>&1 &'
sleep 2
cl exec "$V" -- test -s /srv/churn || { echo "the writer in $V does not run" >&2; exit 1; }
await_replicated
cpu() { awk '{print $14 + $15}' "/proc/$1/stat"; }
ticks=$(getconf CLK_TCK)
c0=$(cpu "$agent"); sent0=$(json 'sum(r["total_bytes_sent"] for r in d["replicas"])'); t0=$(now_ms)
: >"$W/age"
for _ in $(seq $((INTERVAL * 10))); do
    json 'max(0, int(__import__("time").time() * 1000) - min(r["replicated_unix_ms"] for r in d["replicas"]))' >>"$W/age"
    sleep 1
done
c1=$(cpu "$agent"); sent1=$(json 'sum(r["total_bytes_sent"] for r in d["replicas"])'); t1=$(now_ms)
rounds=$(( (t1 - t0) / (INTERVAL * 1000) ))
read -r g50 g95 gmax < <(stats "$W/age")
echo
echo "replication of a VPS rewriting 1 MiB/s, interval ${INTERVAL} s, over $(( (t1 - t0) / 1000 )) s:"
/usr/bin/python3 -c "
r = max($rounds, 1)
print(f'  sent {($sent1 - $sent0) / r / 1048576:.2f} MiB per round; the primary agent used {($c1 - $c0) / $ticks / r * 1000:.0f} ms CPU per round ({($c1 - $c0) / $ticks / (($t1 - $t0) / 1000) * 100:.1f} % of a CPU)')
print(f'  recovery point (the replica\'s age): p50 {$g50 / 1000:.1f} s, p95 {$g95 / 1000:.1f} s, max {$gmax / 1000:.1f} s, configured interval ${INTERVAL} s')
"
