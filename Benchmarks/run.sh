#!/bin/bash
# Berth benchmarks against crun on the same busybox rootfs, measured side by side in one run.
#   BUILD=.build/release Benchmarks/run.sh [ROUNDS] [DENSITY_N]
# Uses the shared anchor scripts (../shared/anchors) for crun's rootfs/bundle and the timing
# harness; they are run from there, never copied here. Prints four sections:
#   1. start: `berth start` (returns with init running) vs `crun run -d`, wall and CPU, and the
#      95th percentile of each
#   2. exec:  `berth exec v true` vs `crun exec id true`
#   3. density: N running busybox VPSs (DENSITY_STORAGE=layered by default, or image;
#      DENSITY_LAYOUT=pool by default, or loop) and N crun containers: memory per VPS all-in, counted alike for both, agent RSS, agent idle CPU, and a
#      full accounting sweep (a Prometheus scrape reads every VPS's counters from the kernel)
#   4. CPU-bound work inside a VPS vs on the host (the same busybox awk loop, alternating)
set -u
cd "$(dirname "$0")/.." || exit 1
ROUNDS=${1:-30}
DENSITY=${2:-200}
# layered: every VPS reads the template's files from one shared tree (image: its own copy).
DENSITY_STORAGE=${DENSITY_STORAGE:-layered}
# pool: every VPS's disk is a subvolume of one btrfs pool (loop: an ext4 image of its own).
DENSITY_LAYOUT=${DENSITY_LAYOUT:-pool}
ANCHORS=${ANCHORS:-$(cd ../shared/anchors 2>/dev/null && pwd)}
[ -n "$ANCHORS" ] && [ -f "$ANCHORS/bench-lib.sh" ] || { echo "needs the shared anchor scripts (../shared/anchors)" >&2; exit 1; }
[ "$(id -u)" = 0 ] || { echo "run as root" >&2; exit 1; }
# Without the anchor every ratio would compare against a failing command.
command -v crun >/dev/null || { echo "needs crun, the anchor (make bench installs it; or apt-get install crun)" >&2; exit 1; }
BUILD=$(cd "${BUILD:-.build/release}" && pwd)
export ANCHOR_WORK=${ANCHOR_WORK:-/tmp/berth-bench-anchors}
# bench-lib re-execs this script in a private mount namespace (crun 1.8 vs hybrid cgroups).
source "$ANCHORS/bench-lib.sh"
need_root
hide_unified_cgroup2 "$@"
[ -x "$ROOTFS/bin/busybox" ] && [ -f "$BUNDLE/config.json" ] || "$ANCHORS/make-rootfs.sh" >/dev/null

RUN_ID=bench$$
W=/tmp/berth-bench-$RUN_ID
export BERTH_AGENT=$W/run/agent.sock
B="$BUILD/berth"
mkdir -p "$W"
cleanup() {
    crun delete -f bench-crun-d >/dev/null 2>&1
    crun list -q 2>/dev/null | grep '^bench-crun-n' | xargs -r -n1 crun delete -f >/dev/null 2>&1
    [ -n "${AGENT:-}" ] && kill -TERM "$AGENT" 2>/dev/null
    # lib.sh derives the cgroup parent (berth-$RUN_ID) from RUN_ID, as the agent above was told.
    WORK=$W RUN_ID=$RUN_ID BUILD=$BUILD bash -c 'source Tests/integration/lib.sh; cleanup_all' >/dev/null 2>&1
}
trap cleanup EXIT
"$BUILD/berth-agent" --data-dir "$W/data" --run-dir "$W/run" --socket "$BERTH_AGENT" --cgroup-parent "berth-$RUN_ID" --metrics-listen 127.0.0.1:0 --log-level warning >"$W/agent.log" 2>&1 &
AGENT=$!
for _ in $(seq 100); do "$B" list >/dev/null 2>&1 && break; sleep 0.05; done
"$B" template build busybox >/dev/null

# A long-running copy of the anchor bundle for crun run -d / crun exec (init = sleep).
DBUNDLE=$W/bundle-d
mkdir -p "$DBUNDLE"
python3 - "$BUNDLE/config.json" "$DBUNDLE/config.json" <<'PY'
import json, sys
c = json.load(open(sys.argv[1])); c["process"]["args"] = ["/bin/sleep", "3600"]
json.dump(c, open(sys.argv[2], "w"))
PY

echo "host: $(uname -r), $(nproc) CPUs, load $(cut -d' ' -f1-3 /proc/loadavg); crun $(crun --version | sed -n 1p | cut -d' ' -f3); berth $BUILD"
echo
echo "== 1. start: returns with init running (the pair's stop/delete runs after, unmeasured columns)"
"$B" create bv --template busybox --disk 64M >/dev/null
"$B" create bl --template busybox --disk 64M --storage layered >/dev/null
"$B" create bp --template busybox --disk 64M --layout pool >/dev/null || exit 1
"$B" create bq --template busybox --disk 64M --layout pool --storage layered >/dev/null
BENCH_ROTATE=0 BENCH_RAW=$W/start.raw bench "$ROUNDS" \
    "crun run -d (sleep as init)" "crun run -d --bundle $DBUNDLE bench-crun-d" \
    "berth start (busybox init)" "$B start bv" \
    "berth start (--storage layered)" "$B start bl" \
    "berth start (--layout pool)" "$B start bp" \
    "berth start (pool, layered)" "$B start bq" \
    "  (crun delete -f)" "crun delete -f bench-crun-d" \
    "  (berth stop --kill)" "$B stop bv --kill" \
    "  (berth stop --kill, layered)" "$B stop bl --kill" \
    "  (berth stop --kill, pool)" "$B stop bp --kill" \
    "  (berth stop --kill, pool layered)" "$B stop bq --kill"
# The 95th percentile of each start, from the harness's raw samples (ROUND INDEX MICROSECONDS ...).
awk -F'\t' '/^#/ { label[substr($1, 2)] = $2; next }
    { n[$2]++; t[$2, n[$2]] = $3 }
    function p95(i,   j, k, v, a) { for (j = 1; j <= n[i]; j++) a[j] = t[i, j]
        for (j = 2; j <= n[i]; j++) { v = a[j]; k = j - 1; while (k > 0 && a[k] > v) { a[k + 1] = a[k]; k-- } a[k + 1] = v }
        return a[int(n[i] * 0.95 + 0.999)] }
    END { base = p95(0); printf "p95:"
        for (i = 0; i <= 4; i++) printf "  %s %.1f ms (%.2fx)", label[i], p95(i) / 1000, p95(i) / base; print "" }' "$W/start.raw"

echo
echo "== 2. exec: run /bin/true in a running container"
crun run -d --bundle "$DBUNDLE" bench-crun-d >/dev/null 2>&1
"$B" start bv >/dev/null
bench "$ROUNDS" \
    "crun exec true" "crun exec bench-crun-d /bin/true" \
    "berth exec true" "$B exec bv -- /bin/true"
crun delete -f bench-crun-d >/dev/null 2>&1
"$B" stop bv --kill >/dev/null

echo
echo "== 3. density: $DENSITY running busybox VPSs (--storage $DENSITY_STORAGE --layout $DENSITY_LAYOUT) vs $DENSITY crun containers (sleep as init)"
meminfo() { awk -v k="$1:" '$1==k {print $2}' /proc/meminfo; }
rss_kb() { awk '/^VmRSS/ {print $2}' "/proc/$1/status"; }
pss_kb() { awk '/^Pss:/ {s+=$2} END {print s+0}' "/proc/$1/smaps_rollup" 2>/dev/null; }
# The host-wide kernel counters that grow with each VPS or container.
kernel_counters() { echo "$(meminfo Slab) $(meminfo SReclaimable) $(meminfo KernelStack) $(meminfo PageTables) $(meminfo Percpu) $(meminfo VmallocUsed)"; }
quiet_counters() { sync; echo 2 > /proc/sys/vm/drop_caches; sleep 1; kernel_counters; }
# memcg_split_kb CGROUP: "PAGES KERNEL" in kB for a memory cgroup (a path below the hierarchy's
# root). Its usage includes the kernel memory charged to it (slab, stacks, page tables, per-CPU
# data), which the host-wide counters already hold: only the rest, the group's own pages, is
# added from the cgroup.
memcg_split_kb() {
    local usage kernel v1=/sys/fs/cgroup/memory/$1 v2=/sys/fs/cgroup/$1
    if [ -f "$v1/memory.usage_in_bytes" ]; then
        # A kernel without kmem accounting in v1 has no such file: nothing to take off.
        usage=$(cat "$v1/memory.usage_in_bytes"); kernel=$(cat "$v1/memory.kmem.usage_in_bytes" 2>/dev/null || echo 0)
    else
        usage=$(cat "$v2/memory.current")
        # Kernels before 5.18 have no "kernel" line: the same parts, one by one.
        kernel=$(awk '$1 == "kernel" {k = $2; found = 1} $1 ~ /^(slab|kernel_stack|pagetables|percpu|vmalloc)$/ {sum += $2}
                      END {print found ? k : sum}' "$v2/memory.stat")
    fi
    echo $(( (usage - kernel) / 1024 )) $(( kernel / 1024 ))
}
# memcg_of PID: the memory cgroup PID is in (its v1 memory hierarchy, else the unified one).
memcg_of() { awk -F: '$2 == "memory" {m = $3} $1 == "0" {u = $3} END {print (m != "" ? m : u)}' "/proc/$1/cgroup"; }
# account SUBJECT N PAGES PROCESSES BEFORE AFTER: one column of the table, in kB per unit. Kernel
# stacks are vmalloc memory on x86_64 and arm64 (VMAP_STACK): the vmalloc row is the rest.
declare -A per
account() {
    local s=$1 n=$2 pages=$3 procs=$4
    local -a b a
    read -r -a b <<<"$5"; read -r -a a <<<"$6"
    local slab=$((a[0] - b[0])) ks=$((a[2] - b[2])) pt=$((a[3] - b[3])) pc=$((a[4] - b[4])) vm=$(( (a[5] - b[5]) - (a[2] - b[2]) ))
    [ "$vm" -lt 0 ] && vm=0
    per[$s,pages]=$((pages / n)) per[$s,procs]=$((procs / n)) per[$s,slab]=$((slab / n)) per[$s,reclaimable]=$(( (a[1] - b[1]) / n ))
    per[$s,stacks]=$((ks / n)) per[$s,pagetables]=$((pt / n)) per[$s,percpu]=$((pc / n)) per[$s,vmalloc]=$((vm / n))
    per[$s,total]=$(( (pages + procs + slab + ks + pt + pc + vm) / n ))
}

before=$(quiet_counters); agent0=$(rss_kb $AGENT)
t0=$EPOCHREALTIME
for i in $(seq 1 "$DENSITY"); do "$B" create "d$i" --template busybox --disk 64M --storage "$DENSITY_STORAGE" --layout "$DENSITY_LAYOUT" >/dev/null || exit 1; done
t1=$EPOCHREALTIME
for i in $(seq 1 "$DENSITY"); do "$B" start "d$i" >/dev/null || exit 1; done
t2=$EPOCHREALTIME
sleep 3
after=$(kernel_counters); agent1=$(rss_kb $AGENT)
pages=0; charged_kernel=0; monitors=0; monitor_rss=0
for i in $(seq 1 "$DENSITY"); do
    read -r p k <<<"$(memcg_split_kb "berth-$RUN_ID/d$i")"
    pages=$((pages + p)); charged_kernel=$((charged_kernel + k))
    m=$(sed -n 's/^monitor=//p' "$W/run/d$i/state")
    monitors=$((monitors + $(pss_kb "$m"))); monitor_rss=$((monitor_rss + $(rss_kb "$m")))
done
account berth "$DENSITY" "$pages" "$monitors" "$before" "$after"
read -r _ _ _ _ _ _ _ _ _ _ _ _ _ u0 s0 _ < "/proc/$AGENT/stat"
sleep 10
read -r _ _ _ _ _ _ _ _ _ _ _ _ _ u1 s1 _ < "/proc/$AGENT/stat"
hz=$(getconf CLK_TCK)
idle_pct=$(python3 -c "print(f'{($u1+$s1-$u0-$s0)/$hz/10*100:.2f}')")
sweep=$(python3 - "$(cat "$W/run/metrics.addr")" "$DENSITY" <<'PY'
import statistics, sys, time, urllib.request
url, n = f"http://{sys.argv[1]}/metrics", int(sys.argv[2])
times = []
for _ in range(12):
    t0 = time.perf_counter(); body = urllib.request.urlopen(url, timeout=10).read().decode(); times.append((time.perf_counter() - t0) * 1000)
running = sum(1 for line in body.splitlines() if line.startswith("berth_vps_running{") and line.endswith(" 1.0"))
print(f"{statistics.median(times[2:]):.1f} ms for {running} running VPSs")
PY
)
# The anchor, counted the same way: crun leaves no process beside the container's own. Its
# containers start beside the running VPSs, so neither side reuses memory the other freed (the
# kernel keeps freed slab and per-CPU pages for reuse, which would hide a later side's growth).
before=$(quiet_counters)
for i in $(seq 1 "$DENSITY"); do crun run -d --bundle "$DBUNDLE" "bench-crun-n$i" >/dev/null 2>&1 || { echo "crun run -d failed" >&2; exit 1; }; done
sleep 3
after=$(kernel_counters)
pages=0
for i in $(seq 1 "$DENSITY"); do
    pid=$(crun state "bench-crun-n$i" | python3 -c 'import json, sys; print(json.load(sys.stdin)["pid"])')
    read -r p _ <<<"$(memcg_split_kb "$(memcg_of "$pid")")"
    pages=$((pages + p))
done
account crun "$DENSITY" "$pages" 0 "$before" "$after"
for i in $(seq 1 "$DENSITY"); do crun delete -f "bench-crun-n$i" >/dev/null 2>&1; done
for i in $(seq 1 "$DENSITY"); do "$B" stop "d$i" --kill >/dev/null 2>&1; done
sleep 5   # let the kernel finish freeing the stopped VPSs' namespaces and cgroups

printf '%-46s %14s %18s\n' "figure (kB)" "Berth per VPS" "crun per container"
for row in "pages:VPS or container pages (charged, less kernel)" "procs:monitor processes (PSS; RSS sum $monitor_rss kB)" \
           "slab:slab growth" "reclaimable:  of which reclaimable" "stacks:kernel stacks" "pagetables:page tables" \
           "percpu:per-CPU data" "vmalloc:vmalloc besides kernel stacks" "total:all-in"; do
    printf '%-46s %14d %18d\n' "${row#*:}" "${per[berth,${row%%:*}]}" "${per[crun,${row%%:*}]}"
done
echo "kernel memory charged to the VPS cgroups (counted in the rows above): $((charged_kernel / DENSITY)) kB per VPS"
echo "all-in per VPS: $(python3 -c "print(f'{${per[berth,total]}/1024:.2f} MiB, {${per[berth,total]}/max(1, ${per[crun,total]}):.2f}x crun ({${per[crun,total]}/1024:.2f} MiB per container)')") (target <= 0.5 MiB)"
echo "agent RSS: $((agent0 / 1024)) MiB idle before, $((agent1 / 1024)) MiB with $DENSITY VPSs; agent idle CPU over 10 s: ${idle_pct}% of one CPU (target < 1 %)"
echo "create $DENSITY: $(python3 -c "print(f'{($t1-$t0)*1000/$DENSITY:.1f}')") ms/VPS; start $DENSITY sequentially: $(python3 -c "print(f'{($t2-$t1)*1000/$DENSITY:.1f}')") ms/VPS"
echo "accounting sweep (one /metrics scrape: every VPS's memory, pids, CPU from the kernel): $sweep (target < 20 ms for 200)"
echo
echo "density figures: Slab and the other counters move with other work on this machine; run on a quiet host."

echo
echo "== 4. CPU-bound work: busybox awk loop inside a VPS vs on the host (user+sys CPU s, 15 alternating rounds)"
echo "   (a shared VM's CPU time varies by 20 % or more from run to run: the best of each side is the estimate)"
"$B" create cpuv --template busybox --disk 64M >/dev/null
"$B" start cpuv >/dev/null
LOOP='BEGIN { for (i = 0; i < 3000000; i++) s += i }'
# busybox time prints "user<TAB>0m 1.18s": minutes and seconds are separate fields.
cpu_s() { awk '/^user|^sys/ { t += $2 * 60 + $3 } END { printf "%.2f", t }'; }
: >"$W/cpu-host"; : >"$W/cpu-vps"
for r in $(seq 1 15); do
    if [ $((r % 2)) = 1 ]; then
        busybox time busybox awk "$LOOP" 2>&1 >/dev/null | cpu_s >>"$W/cpu-host"; echo >>"$W/cpu-host"
        "$B" exec cpuv -- time awk "$LOOP" 2>&1 >/dev/null | cpu_s >>"$W/cpu-vps"; echo >>"$W/cpu-vps"
    else
        "$B" exec cpuv -- time awk "$LOOP" 2>&1 >/dev/null | cpu_s >>"$W/cpu-vps"; echo >>"$W/cpu-vps"
        busybox time busybox awk "$LOOP" 2>&1 >/dev/null | cpu_s >>"$W/cpu-host"; echo >>"$W/cpu-host"
    fi
done
python3 - "$W/cpu-host" "$W/cpu-vps" <<'PY'
import statistics, sys
host = [float(x) for x in open(sys.argv[1]).read().split()]
vps = [float(x) for x in open(sys.argv[2]).read().split()]
h, v = statistics.median(host), statistics.median(vps)
print(f"best: host {min(host):.2f} s, VPS {min(vps):.2f} s, overhead {100 * (min(vps) - min(host)) / min(host):+.1f} % (target <= 1 %); "
      f"median: host {h:.2f} s, inside a VPS {v:.2f} s, {100 * (v - h) / h:+.1f} %")
print(f"runs: host {host}, VPS {vps}")
PY
