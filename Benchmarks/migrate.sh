#!/bin/bash
# Migration benchmarks, on the release build, in one sitting:
#   BUILD=.build/release Benchmarks/migrate.sh [MIGRATIONS] [DATA_MB]   (DEBIAN_ONLY=1: section 5 alone)
#   1. service gap: a busybox VPS with a 1 GiB disk holding DATA_MB (default 256) of random data
#      is moved between two nodes of a namespaced test cluster MIGRATIONS times (default 10) cold,
#      then as many times warm while a writer in the VPS rewrites REWRITE_MB (default 64) of it
#      during the copy, while a prober on the fabric pings it every 10 ms; the longest gap
#      between replies per move (p50, p95, max) beside the anchor: the same VPS's own
#      stop + start, as many times
#   2. transfer: the 1 GiB image moved while the VPS is stopped (digest, copy, commit, delete),
#      beside the anchor: the same bytes through a plain TLS 1.3 pipe on loopback (OpenSSL through
#      Python's ssl, Benchmarks/tls_pipe.py: one process sends, one reads)
#   2b. a stopped pool VPS (btrfs subvolume) holding DATA_MB moved node to node (the pass's rate,
#      from its event) beside a local `btrfs send | btrfs receive` of the same subvolume
#   3. the same move with the nodes' --migration-bandwidth at 64M: the rate it keeps to
#   4. drain: DRAIN_VPSES (default 20) running busybox VPSs on n1 are drained onto n2 and n3
#      (max-parallel 2): the drain's total time, and each VPS's downtime from its
#      stop on n1 to its start on the target (the agents' log lines), longest and median
#   5. a Debian 12 VPS (systemd), DEBIAN_ROUNDS (default 5) times each: its own clean stop, its
#      boot (start until `systemctl is-system-running --wait` answers), and the ICMP gap of a
#      stop + start on one node beside that of a warm migration. Its services are down for the
#      stop, the ICMP gap and the boot; so a migration costs them the difference of the two gaps
#      more than a restart on one node (target: at most 0.5 s more)
set -u
cd "$(dirname "$0")/.." || exit 1
[ "$(id -u)" = 0 ] || { echo "run as root" >&2; exit 1; }
MIGRATIONS=${1:-10}
DATA_MB=${2:-256}
BUILD=$(cd "${BUILD:-.build/release}" && pwd)
export BERTH_CLUSTER=bmg$$ BERTH_CLUSTER_DIR=/tmp/berth-bench-bmg$$ BUILD
DEV=scripts/dev-cluster.sh
FAB=$BERTH_CLUSTER-fab
W=$BERTH_CLUSTER_DIR.work
mkdir -p "$W"
PROBER=""
cleanup() {
    touch "$W/stop"
    [ -n "$PROBER" ] && wait "$PROBER" 2>/dev/null
    "$DEV" down >/dev/null 2>&1
    rm -rf "$W"
}
trap cleanup EXIT
cl() { "$DEV" berth "$@"; }
field() { /usr/bin/python3 -c 'import json,sys; d=json.load(sys.stdin); v=d[sys.argv[1]]; print(",".join(v) if isinstance(v, list) else v)' "$1"; }

"$DEV" up 3 >"$W/up.log" 2>&1 || { cat "$W/up.log"; exit 1; }
V=$BERTH_CLUSTER-v
cl create "$V" --template busybox --disk 1G --ip auto --node n1 >/dev/null || exit 1
cl start "$V" >/dev/null || exit 1
cl exec "$V" -- sh -c "dd if=/dev/urandom of=/data.bin bs=1M count=$DATA_MB 2>/dev/null && sync" || exit 1
IP=$(cl status "$V" --json | field ips)

# Each window's longest gap between echo replies, in ms (the window's edges count as replies:
# a VPS that answered right before and right after has no gap beyond the probe interval).
gaps() { # REPLIES WINDOWS
    /usr/bin/python3 - "$1" "$2" <<'PY'
import sys
replies = [float(l) for l in open(sys.argv[1]) if l.strip()]
for line in open(sys.argv[2]):
    start, end = map(float, line.split())
    inside = [start] + [t for t in replies if start <= t <= end] + [end]
    print("%.0f" % (1000 * max(b - a for a, b in zip(inside, inside[1:]))))
PY
}
summary() { # NAME FILE
    /usr/bin/python3 - "$1" "$2" <<'PY'
import sys
values = sorted(float(l) for l in open(sys.argv[2]) if l.strip())
pick = lambda q: values[min(len(values) - 1, int(round(q * (len(values) - 1))))]
print("   %-28s n=%d  p50 %6.0f ms  p95 %6.0f ms  max %6.0f ms" % (sys.argv[1], len(values), pick(0.5), pick(0.95), values[-1]))
PY
}
window() { local s e; s=$(date +%s.%N); "$@" >/dev/null || echo "   failed: $*" >&2; e=$(date +%s.%N); echo "$s $e"; }

REWRITE_MB=${REWRITE_MB:-64}
# DEBIAN_ONLY=1: section 5 alone.
if [ -z "${DEBIAN_ONLY:-}" ]; then
echo "== 1. service gap of a running busybox VPS (1 GiB disk, $DATA_MB MiB data), probed every 10 ms from the fabric"
ip netns exec "$FAB" /usr/bin/python3 Benchmarks/icmp_prober.py "$IP" "$W/replies" "$W/stop" &
PROBER=$!
sleep 1
: >"$W/anchor.windows"; : >"$W/cold.windows"; : >"$W/warm.windows"
for i in $(seq "$MIGRATIONS"); do
    window bash -c "$DEV berth stop $V && $DEV berth start $V" >>"$W/anchor.windows"; sleep 1
done
for i in $(seq "$MIGRATIONS"); do
    to=n2; [ "$(cl status "$V" --json | field node)" = n2 ] && to=n1
    window cl migrate "$V" --to $to --mode cold >>"$W/cold.windows"; sleep 1
done
for i in $(seq "$MIGRATIONS"); do
    to=n2; [ "$(cl status "$V" --json | field node)" = n2 ] && to=n1
    # The writer rewrites REWRITE_MB of the data file in place while the first pass copies.
    cl exec "$V" -- sh -c "sleep 0.3; dd if=/dev/urandom of=/data.bin bs=1M count=$REWRITE_MB seek=$((i * 13 % (DATA_MB - REWRITE_MB + 1))) conv=notrunc,fsync 2>/dev/null" >/dev/null 2>&1 &
    writer=$!
    window cl migrate "$V" --to $to --mode warm >>"$W/warm.windows"
    wait $writer; sleep 1
done
touch "$W/stop"; wait "$PROBER"; PROBER=""
for k in anchor cold warm; do gaps "$W/replies" "$W/$k.windows" >"$W/$k.gaps"; done
summary "stop + start (anchor)" "$W/anchor.gaps"
summary "cold migration" "$W/cold.gaps"
summary "warm migration, $REWRITE_MB MiB rewritten" "$W/warm.gaps"
for k in cold warm; do
    /usr/bin/python3 -c "import sys; a=sorted(map(float,open(sys.argv[1]))); m=sorted(map(float,open(sys.argv[2]))); p=lambda v: v[min(len(v)-1,int(round(.95*(len(v)-1))))]; print('   ratio p95 %s migration / stop+start: %.2fx' % (sys.argv[3], p(m)/p(a)))" "$W/anchor.gaps" "$W/$k.gaps" $k
done
echo "   passes of the last warm migration (its vps.migrated event):"
cl events --last 200 | grep "vps.migrated  $V" | tail -1 | sed 's/.*by [^;]*; /      /; s/; /\n      /g'

echo; echo "== 2. transfer of the 1 GiB image, node to node (VPS stopped), against a plain TLS pipe"
cl stop "$V" >/dev/null
: >"$W/transfer.s"
for i in 1 2 3; do
    to=n2; [ "$(cl status "$V" --json | field node)" = n2 ] && to=n1
    s=$(date +%s.%N); cl migrate "$V" --to $to >/dev/null; e=$(date +%s.%N)
    echo "$s $e" | awk '{print $2 - $1}' >>"$W/transfer.s"
done
# The copy alone (read, hash, send, write at the target), as the source measured its pass.
cl events --last 50 | grep "vps.migrated  $V" | tail -3 | sed -n 's/.*pass 1 (the VPS is stopped): .* (\([0-9.]*\) MiB\/s).*/\1/p' >"$W/pass.rates"
node=$(cl status "$V" --json | field node)
IMAGE=$BERTH_CLUSTER_DIR/$node/data/vps/$V/disk.img
BYTES=$(stat -c %s "$IMAGE")
ALLOCATED=$(( $(stat -c '%b * %B' "$IMAGE") ))
openssl req -x509 -newkey ec -pkeyopt ec_paramgen_curve:P-256 -nodes -keyout "$W/key.pem" -out "$W/cert.pem" -days 1 -subj /CN=bench 2>/dev/null
: >"$W/tls.s"
for i in 1 2 3; do
    /usr/bin/python3 Benchmarks/tls_pipe.py server 47443 "$W/cert.pem" "$W/key.pem" >"$W/tls.received" &
    server=$!
    sleep 0.5
    s=$(date +%s.%N)
    /usr/bin/python3 Benchmarks/tls_pipe.py client 47443 "$IMAGE"
    wait $server
    e=$(date +%s.%N)
    [ "$(cat "$W/tls.received")" = "$BYTES" ] || echo "   the TLS pipe moved $(cat "$W/tls.received") of $BYTES bytes" >&2
    echo "$s $e" | awk '{print $2 - $1}' >>"$W/tls.s"
done
/usr/bin/python3 - "$BYTES" "$ALLOCATED" "$W/transfer.s" "$W/tls.s" "$W/pass.rates" <<'PY'
import sys
size, allocated = int(sys.argv[1]), int(sys.argv[2])
berth = sorted(float(l) for l in open(sys.argv[3]))
tls = sorted(float(l) for l in open(sys.argv[4]))
rates = sorted(float(l) for l in open(sys.argv[5]) if l.strip())
b, t = berth[len(berth) // 2], tls[len(tls) // 2]
print("   image %d MiB, of which %d MiB allocated (what berth sends at most)" % (size >> 20, allocated >> 20))
print("   berth migrate (stopped VPS)  median %.2f s  %6.0f MiB/s of image, %6.0f MiB/s of data (whole operation)" % (b, size / b / 2**20, allocated / b / 2**20))
print("   TLS 1.3 pipe (OpenSSL)        median %.2f s  %6.0f MiB/s (every byte of the image)" % (t, size / t / 2**20))
print("   ratio, moving the image: berth / TLS pipe %.2fx" % (t / b))
print("   ratio, bytes on the wire per second: berth / TLS pipe %.2fx" % ((allocated / b) / (size / t)))
if rates:
    r = rates[len(rates) // 2]
    print("   the copy alone (the source's pass: read, SHA-256, send, target writes) median %.0f MiB/s of data: %.2fx the TLS pipe" % (r, r * 2**20 / (size / t)))
PY

echo; echo "== 2b. a stopped pool VPS (btrfs subvolume, $DATA_MB MiB data) moved node to node, against a local btrfs send | btrfs receive"
P=$BERTH_CLUSTER-p
cl create "$P" --template busybox --layout pool --disk 1G --node n1 >/dev/null && cl start "$P" >/dev/null || exit 1
cl exec "$P" -- sh -c "dd if=/dev/urandom of=/data.bin bs=1M count=$DATA_MB 2>/dev/null && sync" || exit 1
cl stop "$P" >/dev/null
: >"$W/pool.rates"
for i in 1 2 3; do
    to=n2; [ "$(cl status "$P" --json | field node)" = n2 ] && to=n1
    cl migrate "$P" --to $to >/dev/null || echo "   pool migration failed" >&2
    cl events --last 20 | grep "vps.migrated  $P" | tail -1 | sed -n 's/.*pass 1 (the VPS is stopped): .* (\([0-9.]*\) MiB\/s).*/\1/p' >>"$W/pool.rates"
done
POOL=$BERTH_CLUSTER_DIR/$(cl status "$P" --json | field node)/data/pool
btrfs subvolume snapshot -r "$POOL/vps/$P" "$POOL/bench-snap" >/dev/null && mkdir -p "$POOL/bench-recv"
STREAM=$(btrfs send -q "$POOL/bench-snap" | wc -c)
s=$(date +%s.%N); btrfs send -q "$POOL/bench-snap" | btrfs receive -q "$POOL/bench-recv"; e=$(date +%s.%N)
btrfs subvolume delete "$POOL/bench-recv/bench-snap" "$POOL/bench-snap" >/dev/null; rmdir "$POOL/bench-recv"
/usr/bin/python3 - "$W/pool.rates" "$s" "$e" "$STREAM" <<'PY'
import sys
rates = sorted(float(l) for l in open(sys.argv[1]) if l.strip())
local = int(sys.argv[4]) / (float(sys.argv[3]) - float(sys.argv[2])) / 2**20
print("   local btrfs send | btrfs receive: %.0f MiB/s of stream (%d MiB)" % (local, int(sys.argv[4]) >> 20))
if rates:
    r = rates[len(rates) // 2]
    print("   berth migrate, node to node over mTLS: median %.0f MiB/s of stream: %.2fx the local pipe" % (r, r / local))
PY
cl destroy "$P" --force >/dev/null

echo; echo "== 3. the same move under berth-agent --migration-bandwidth 64M (the nodes restarted with it)"
for k in 1 2; do "$DEV" agent-stop $k; BERTH_AGENT_ARGS="--migration-bandwidth 64M" "$DEV" agent-start $k || exit 1; done
for _ in $(seq 50); do cl node list | grep -c ' ready ' | grep -q 3 && break; sleep 0.2; done
to=n2; [ "$(cl status "$V" --json | field node)" = n2 ] && to=n1
s=$(date +%s.%N); cl migrate "$V" --to $to >/dev/null; e=$(date +%s.%N)
/usr/bin/python3 -c "import sys; t=float(sys.argv[2])-float(sys.argv[1]); a=int(sys.argv[3]); print('   %.2f s for %d MiB of data: %.0f MiB/s (limit 64 MiB/s)' % (t, a >> 20, a / t / 2**20))" "$s" "$e" "$ALLOCATED"

echo; echo "== 4. drain of ${DRAIN_VPSES:=20} running busybox VPSs (64M disks) from n1 onto two nodes"
for k in 1 2; do "$DEV" agent-stop $k; "$DEV" agent-start $k || exit 1; done   # without the bandwidth limit
cl destroy "$V" --force >/dev/null
for i in $(seq "$DRAIN_VPSES"); do
    cl create "$BERTH_CLUSTER-d$i" --template busybox --disk 64M --ip auto --node n1 >/dev/null && cl start "$BERTH_CLUSTER-d$i" >/dev/null || exit 1
done
s=$(date +%s.%N); cl node drain n1 --max-parallel 2 >"$W/drain.out"; rc=$?; e=$(date +%s.%N)
/usr/bin/python3 - "$s" "$e" "$rc" "$BERTH_CLUSTER_DIR" "$BERTH_CLUSTER-d" <<'PY'
import glob, re, sys, datetime
start, end, rc, root, prefix = float(sys.argv[1]), float(sys.argv[2]), sys.argv[3], sys.argv[4], sys.argv[5]
def stamp(line):
    return datetime.datetime.strptime(line[:24], "%Y-%m-%dT%H:%M:%S%z").timestamp()
stopped, started = {}, {}
for log in glob.glob(root + "/n*/agent.log"):
    node = log.split("/")[-2]
    for line in open(log):
        m = re.search(r"vps=(%s\d+) \[NodeAgent\] (stopped|started) VPS" % re.escape(prefix), line)
        if not m or stamp(line) < start - 1:
            continue
        if m.group(2) == "stopped" and node == "n1":
            stopped[m.group(1)] = stamp(line)
        elif m.group(2) == "started" and node != "n1":
            started[m.group(1)] = stamp(line)
gaps = sorted(started[v] - stopped[v] for v in stopped if v in started)
print("   drain: %.1f s for %d VPSs (exit %s)" % (end - start, len(stopped), rc))
if gaps:
    print("   downtime per VPS (agent logs, 1 s resolution): median %.0f s, longest %.0f s" % (gaps[len(gaps) // 2], gaps[-1]))
PY

fi

DEBIAN_ROUNDS=${DEBIAN_ROUNDS:-5}
cl node restore n1 --skip >/dev/null 2>&1   # section 4 left it drained
echo; echo "== 5. a Debian 12 VPS (systemd): stop + boot on one node beside a warm migration, $DEBIAN_ROUNDS times each"
for k in 1 2; do "$BUILD/berth" --agent "$BERTH_CLUSTER_DIR/n$k/agent.sock" template build debian-12 >/dev/null || { echo "   debian-12 template build failed on n$k" >&2; exit 1; }; done
for _ in $(seq 100); do [ "$(cl node list --json | grep -c '"debian-12"')" -ge 2 ] && break; sleep 0.2; done
D=$BERTH_CLUSTER-deb
cl create "$D" --template debian-12 --disk 2G --ip auto --node n1 >/dev/null && cl start "$D" >/dev/null || exit 1
# Until systemd in the VPS answers (its bus is not up at once, so early asks fail: again).
booted() {
    local state=""
    for _ in $(seq 2000); do
        state=$(cl exec "$D" -- systemctl is-system-running --wait 2>/dev/null) || true
        [ -n "$state" ] && { [ "$state" = running ] || echo "   the VPS reports '$state'" >&2; return 0; }
        sleep 0.005
    done
    echo "   systemd did not answer" >&2
}
booted
DIP=$(cl status "$D" --json | field ips)
ms() { echo "$1 $2" | awk '{printf "%.0f\n", ($2 - $1) * 1000}'; }
rm -f "$W/stop"; : >"$W/replies"
ip netns exec "$FAB" /usr/bin/python3 Benchmarks/icmp_prober.py "$DIP" "$W/replies" "$W/stop" &
PROBER=$!
sleep 1
: >"$W/deb.stop"; : >"$W/deb.boot"; : >"$W/deb-anchor.windows"; : >"$W/deb-warm.windows"
for i in $(seq "$DEBIAN_ROUNDS"); do
    s=$(date +%s.%N); cl stop "$D" >/dev/null; m=$(date +%s.%N); cl start "$D" >/dev/null; booted; e=$(date +%s.%N)
    ms "$s" "$m" >>"$W/deb.stop"; ms "$m" "$e" >>"$W/deb.boot"; echo "$s $e" >>"$W/deb-anchor.windows"; sleep 1
done
for i in $(seq "$DEBIAN_ROUNDS"); do
    to=n2; [ "$(cl status "$D" --json | field node)" = n2 ] && to=n1
    s=$(date +%s.%N); cl migrate "$D" --to $to >/dev/null || echo "   migration failed" >&2; booted; e=$(date +%s.%N)
    echo "$s $e" >>"$W/deb-warm.windows"; sleep 1
done
touch "$W/stop"; wait "$PROBER"; PROBER=""
gaps "$W/replies" "$W/deb-anchor.windows" >"$W/deb-anchor.gaps"
gaps "$W/replies" "$W/deb-warm.windows" >"$W/deb-warm.gaps"
summary "clean stop" "$W/deb.stop"
summary "boot (start until running)" "$W/deb.boot"
summary "ICMP gap, stop + start" "$W/deb-anchor.gaps"
summary "ICMP gap, warm migration" "$W/deb-warm.gaps"
/usr/bin/python3 - "$W/deb.stop" "$W/deb.boot" "$W/deb-anchor.gaps" "$W/deb-warm.gaps" <<'PY'
import sys
v = [sorted(float(l) for l in open(f) if l.strip()) for f in sys.argv[1:]]
p95 = lambda x: x[min(len(x) - 1, int(round(.95 * (len(x) - 1))))]
med = lambda x: x[len(x) // 2]
stop, boot, anchor, warm = v
print("   services down, restart on one node: stop %.0f + gap %.0f + boot %.0f = %.0f ms (medians)" % (med(stop), med(anchor), med(boot), med(stop) + med(anchor) + med(boot)))
print("   services down, warm migration:      stop %.0f + gap %.0f (p95) + boot %.0f = %.0f ms; %.0f ms more than a restart (target <= 500)" % (
    med(stop), p95(warm), med(boot), med(stop) + p95(warm) + med(boot), p95(warm) - med(anchor)))
PY
cl events --last 50 | grep "vps.migrated  $D" | tail -1 | sed 's/.*by [^;]*; /   last migration: /'
