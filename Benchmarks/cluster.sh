#!/bin/bash
# Cluster benchmarks on the release build:
#   BUILD=.build/release Benchmarks/cluster.sh [AGENTS] [HEARTBEAT_SECONDS]
#   1. RPC over mTLS on loopback: 64 concurrent callers (calls/s, p50, p99), one caller (p50);
#      against a server process of its own (as the controller runs), then in one process
#   2. the scheduler: 10,000 simulated nodes, 100,000 placements (spread and binpack)
#   3. the controller store with 100,000 VPS records (import, load, resident memory)
#   4. heartbeats: AGENTS simulated agents (default 1000) enrol with real tokens and beat every
#      second against a real berth-controller; its CPU share over the window
#   5. exec streaming: 1 GiB through `berth exec v -- cat` vs the same bytes through a plain `cat`
#      pipe, measured side by side (the anchor)
# SECTIONS="1 4" runs only those.
set -u
cd "$(dirname "$0")/.." || exit 1
[ "$(id -u)" = 0 ] || { echo "run as root" >&2; exit 1; }
AGENTS=${1:-1000}
BEAT_SECONDS=${2:-10}
BUILD=$(cd "${BUILD:-.build/release}" && pwd)
BENCH=$BUILD/cluster-bench
RUN_ID=bcb$$
W=/tmp/berth-bench-$RUN_ID
mkdir -p "$W"
CONTROLLER_PID="" AGENT=""
cleanup() {
    [ -n "$CONTROLLER_PID" ] && kill -TERM "$CONTROLLER_PID" 2>/dev/null
    [ -n "$AGENT" ] && kill -TERM "$AGENT" 2>/dev/null
    WORK=$W RUN_ID=$RUN_ID BUILD=$BUILD bash -c 'source Tests/integration/lib.sh; cleanup_all' >/dev/null 2>&1
    rm -rf "$W"
}
trap cleanup EXIT
SECTIONS=${SECTIONS:-1 2 3 4 5}
want() { [[ " $SECTIONS " == *" $1 "* ]]; }

if want 1; then
echo "== 1. RPC over mTLS (targets: >= 30,000 calls/s with p99 < 2 ms at 64 callers; p50 < 0.25 ms for one)"
echo "   (client and server share this machine's cores: the server gets about half of them)"
echo "   (first line pair: server in its own process, as deployed; second: both in one process)"
"$BENCH" rpc --callers 64 --connections 8 --seconds 5
fi

if want 2; then
echo; echo "== 2. scheduler (target: >= 20,000 placements/s; Nomad C1M ~3,750/s on 5 servers)"
"$BENCH" scheduler --nodes 10000 --placements 100000
fi

if want 3; then
echo; echo "== 3. controller store"
"$BENCH" store --vpses 100000
fi

if want 4; then
echo; echo "== 4. heartbeats: $AGENTS simulated agents at 1 s"
"$BUILD/berth" ca init --dir "$W/ca" >/dev/null
"$BUILD/berth-controller" --ca-dir "$W/ca" --data-dir "$W/controller" --listen 127.0.0.1:0 --port-file "$W/port" --log-level warning >"$W/controller.log" 2>&1 &
CONTROLLER_PID=$!
for _ in $(seq 100); do [ -s "$W/port" ] && break; sleep 0.05; done
cpu_ticks() { awk '{print $14 + $15}' /proc/"$1"/stat; }
"$BENCH" heartbeats --controller "127.0.0.1:$(cat "$W/port")" --admin "$W/ca/admin" --agents "$AGENTS" --seconds "$BEAT_SECONDS" >"$W/beats.out" 2>&1 &
BEATS=$!
# Measure the controller over the steady part only: once every agent has enrolled and connected.
for _ in $(seq 1200); do grep -q "enrolled and connected" "$W/beats.out" && break; sleep 0.1; done
sleep 1
t0=$(cpu_ticks "$CONTROLLER_PID"); s0=$(date +%s%N)
wait "$BEATS"
t1=$(cpu_ticks "$CONTROLLER_PID"); s1=$(date +%s%N)
cat "$W/beats.out"
hz=$(getconf CLK_TCK)
awk -v t="$((t1 - t0))" -v hz="$hz" -v ns="$((s1 - s0))" -v a="$AGENTS" 'BEGIN {
    cpu = t / hz; wall = ns / 1e9
    printf "controller CPU while they beat (%.1f s): %.2f s = %.1f %% of one core for %d agents (%.0f us per heartbeat)\n", wall, cpu, 100 * cpu / wall, a, 1e6 * cpu / (a * wall) }'
echo "controller resident memory: $(awk '/VmRSS/ {print $2 / 1024 " MiB"}' /proc/"$CONTROLLER_PID"/status)"
fi

if want 5; then
echo; echo "== 5. exec stream: 1 GiB through berth exec v -- cat vs a plain cat pipe"
export BERTH_AGENT=$W/run/agent.sock
"$BUILD/berth-agent" --data-dir "$W/data" --run-dir "$W/run" --socket "$BERTH_AGENT" --cgroup-parent "berth-$RUN_ID" --log-level warning >"$W/agent.log" 2>&1 &
AGENT=$!
for _ in $(seq 100); do "$BUILD/berth" list >/dev/null 2>&1 && break; sleep 0.05; done
"$BUILD/berth" template build busybox >/dev/null
"$BUILD/berth" create "$RUN_ID-x" --template busybox --disk 64M >/dev/null
"$BUILD/berth" start "$RUN_ID-x" >/dev/null
measure() { # label command...: MiB/s of 1 GiB through the command
    local t0 t1 bytes
    t0=$(date +%s%N)
    bytes=$(head -c 1073741824 /dev/zero | "$@" | wc -c)
    t1=$(date +%s%N)
    [ "$bytes" = 1073741824 ] || echo "(moved $bytes bytes, not 1 GiB)"
    echo $(( 1024 * 1000000000 / (t1 - t0) ))
}
for round in 1 2 3; do
    anchor=$(measure cat)
    ours=$(measure "$BUILD/berth" exec "$RUN_ID-x" -- cat)
    awk -v o="$ours" -v a="$anchor" -v r="$round" 'BEGIN { printf "round %d: berth exec cat %d MiB/s, plain cat pipe %d MiB/s, ratio %.2f\n", r, o, a, o / a }'
done
"$BUILD/berth" destroy "$RUN_ID-x" --force >/dev/null
fi
