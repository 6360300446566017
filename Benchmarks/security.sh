#!/bin/bash
# What the hardening costs at start, measured side by side in one run:
#   BUILD=.build/release Benchmarks/security.sh [ROUNDS]
# `berth start` (returns once the VPS's init runs) of a busybox VPS with the defaults (own user
# namespace with an idmapped root, seccomp denylist, capability set) vs the same VPS created
# --privileged (host user namespace; the same seccomp list). Rounds alternate between the two;
# each VPS is stopped (--kill) between its rounds. Target: ratio <= 1.2.
set -u
cd "$(dirname "$0")/.." || exit 1
ROUNDS=${1:-30}
[ "$(id -u)" = 0 ] || { echo "run as root" >&2; exit 1; }
BUILD=$(cd "${BUILD:-.build/release}" && pwd)
B="$BUILD/berth"
RUN_ID=bsb$$
W=/tmp/berth-bench-$RUN_ID
export BERTH_AGENT=$W/run/agent.sock
AGENT=""
cleanup() {
    [ -n "$AGENT" ] && kill -TERM "$AGENT" 2>/dev/null
    WORK=$W RUN_ID=$RUN_ID BUILD=$BUILD bash -c 'source Tests/integration/lib.sh; cleanup_all' >/dev/null 2>&1
    true
}
trap cleanup EXIT
mkdir -p "$W"
"$BUILD/berth-agent" --data-dir "$W/data" --run-dir "$W/run" --socket "$BERTH_AGENT" --cgroup-parent "berth-$RUN_ID" --log-level warning >"$W/agent.log" 2>&1 &
AGENT=$!
for _ in $(seq 100); do "$B" list >/dev/null 2>&1 && break; sleep 0.05; done
"$B" template build busybox >/dev/null
U=$RUN_ID-userns P=$RUN_ID-priv
"$B" create "$U" --template busybox --disk 64M >/dev/null
"$B" create "$P" --template busybox --disk 64M --privileged >/dev/null

now_us() { echo $(( $(date +%s%N) / 1000 )); }
declare -a US PS
for _ in $(seq "$ROUNDS"); do
    for which in U P; do
        name=${!which}
        t0=$(now_us); "$B" start "$name" >/dev/null; t1=$(now_us)
        "$B" stop "$name" --kill >/dev/null
        if [ "$which" = U ]; then US+=($((t1 - t0))); else PS+=($((t1 - t0))); fi
    done
done
median() { printf '%s\n' "$@" | sort -n | awk '{a[NR]=$1} END {print a[int((NR+1)/2)]}'; }
mu=$(median "${US[@]}") mp=$(median "${PS[@]}")
echo
echo "berth start, busybox VPS, $ROUNDS rounds each, medians, $(nproc) CPUs, cgroup $(stat -f -c %T /sys/fs/cgroup)"
printf '%-52s %8s us\n' "defaults (user namespace, idmapped root, seccomp)" "$mu"
printf '%-52s %8s us\n' "--privileged (host user namespace, seccomp)" "$mp"
ratio=$(python3 -c "print(f'{$mu/$mp:.2f}')")
echo "ratio: $ratio (target <= 1.2: $(python3 -c "print('met' if $mu/$mp <= 1.2 else 'NOT met')"))"
