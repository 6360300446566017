#!/bin/bash
# Debian 12 boot and clean stop, Berth vs systemd-nspawn on the same tree, in one run:
#   BUILD=.build/release Benchmarks/debian.sh [ROUNDS]
#   boot: from `berth start` (or launching `systemd-nspawn --boot`) until systemd inside reports
#         the boot finished (`systemctl is-system-running --wait` answers; multi-user.target is
#         reached), wall time; also systemd's own "Startup finished" userspace figure
#   stop: `berth stop` (SIGRTMIN+3, systemd's clean halt) vs SIGTERM to nspawn (which sends the
#         container SIGRTMIN+3), until the process is gone
# The template comes from `berth template build debian-12` (cached tree in /var/cache/berth).
# nspawn runs on a copy of the template's rootfs, unregistered (no machined on this host).
set -u
cd "$(dirname "$0")/.." || exit 1
ROUNDS=${1:-10}
[ "$(id -u)" = 0 ] || { echo "run as root" >&2; exit 1; }
for tool in systemd-nspawn debootstrap nsenter python3; do
    command -v $tool >/dev/null || { echo "missing $tool (BERTH_BENCH=1 scripts/install-deps.sh)" >&2; exit 1; }
done
BUILD=$(cd "${BUILD:-.build/release}" && pwd)
B="$BUILD/berth"
RUN_ID=bdb$$
W=/tmp/berth-bench-$RUN_ID
export BERTH_AGENT=$W/run/agent.sock
AGENT="" NSPAWN=""
cleanup() {
    [ -n "$NSPAWN" ] && kill -KILL "$NSPAWN" 2>/dev/null
    [ -n "$AGENT" ] && kill -TERM "$AGENT" 2>/dev/null
    WORK=$W RUN_ID=$RUN_ID BUILD=$BUILD bash -c 'source Tests/integration/lib.sh; cleanup_all' >/dev/null 2>&1
    rm -rf "$W"
    true
}
trap cleanup EXIT
mkdir -p "$W"
now_ms() { date +%s%3N; }

"$BUILD/berth-agent" --data-dir "$W/data" --run-dir "$W/run" --socket "$BERTH_AGENT" --cgroup-parent "berth-$RUN_ID" --log-level warning >"$W/agent.log" 2>&1 &
AGENT=$!
for _ in $(seq 100); do "$B" list >/dev/null 2>&1 && break; sleep 0.05; done
"$B" template build debian-12 >/dev/null || { echo "template build failed" >&2; exit 1; }
V=$RUN_ID-v
"$B" create "$V" --template debian-12 >/dev/null

# Waits until systemd in the guest answers is-system-running --wait; $@ runs systemctl there.
wait_booted() {
    local state=""
    for _ in $(seq 2000); do
        state=$("$@" systemctl is-system-running --wait 2>/dev/null) || true
        [ -n "$state" ] && { echo "$state"; return 0; }
        sleep 0.005
    done
    echo "timeout"
}

declare -a BERTH_BOOT BERTH_STOP BERTH_USER NSPAWN_BOOT NSPAWN_STOP NSPAWN_USER
for round in $(seq "$ROUNDS"); do
    t0=$(now_ms)
    "$B" start "$V" >/dev/null
    state=$(wait_booted "$B" exec "$V" --)
    t1=$(now_ms)
    [ "$state" = running ] || echo "round $round: berth VPS reports '$state': $("$B" exec "$V" -- systemctl --failed --no-legend --plain 2>&1 | tr '\n' ' ')" >&2
    BERTH_USER+=("$("$B" exec "$V" -- systemd-analyze 2>/dev/null | sed -n 's/.*in \([0-9.]*m\?s\) (userspace).*/\1/p')")
    t2=$(now_ms)
    "$B" stop "$V" >/dev/null
    t3=$(now_ms)
    BERTH_BOOT+=($((t1 - t0))); BERTH_STOP+=($((t3 - t2)))
done

"$B" destroy "$V" >/dev/null
TREE=$W/nspawn-root
cp -a "$W/data/templates/debian-12/rootfs" "$TREE"
for round in $(seq "$ROUNDS"); do
    t0=$(now_ms)
    systemd-nspawn --quiet --keep-unit --register=no --console=passive -D "$TREE" --boot >"$W/nspawn.log" 2>&1 &
    NSPAWN=$!
    leader=""
    for _ in $(seq 2000); do
        # nspawn's child that became the container's PID 1.
        leader=$(ps -o pid= --ppid "$NSPAWN" 2>/dev/null | head -1 | tr -d ' ')
        [ -n "$leader" ] && [ "$(cat /proc/"$leader"/comm 2>/dev/null)" = systemd ] && break
        sleep 0.002
    done
    state=$(wait_booted nsenter -t "$leader" -a)
    t1=$(now_ms)
    [ "$state" = running ] || echo "round $round: nspawn container reports '$state': $(nsenter -t "$leader" -a systemctl --failed --no-legend --plain 2>&1 | tr '\n' ' ')" >&2
    NSPAWN_USER+=("$(nsenter -t "$leader" -a systemd-analyze 2>/dev/null | sed -n 's/.*in \([0-9.]*m\?s\) (userspace).*/\1/p')")
    t2=$(now_ms)
    kill -TERM "$NSPAWN"
    wait "$NSPAWN" 2>/dev/null
    t3=$(now_ms)
    NSPAWN=""
    NSPAWN_BOOT+=($((t1 - t0))); NSPAWN_STOP+=($((t3 - t2)))
done

median() { printf '%s\n' "$@" | sort -n | awk '{a[NR]=$1} END {print a[int((NR+1)/2)]}'; }
bb=$(median "${BERTH_BOOT[@]}") nb=$(median "${NSPAWN_BOOT[@]}")
bs=$(median "${BERTH_STOP[@]}") ns=$(median "${NSPAWN_STOP[@]}")
echo
echo "Debian 12 (systemd $(chroot "$TREE" /lib/systemd/systemd --version 2>/dev/null | head -1 | awk '{print $2}')), $ROUNDS rounds, medians, $(nproc) CPUs, cgroup $(stat -f -c %T /sys/fs/cgroup)"
printf '%-34s %10s %10s %8s\n' "" "berth" "nspawn" "ratio"
printf '%-34s %8s ms %8s ms %8s\n' "boot to multi-user (wall)" "$bb" "$nb" "$(python3 -c "print(f'{$bb/$nb:.2f}')")"
printf '%-34s %10s %10s\n' "systemd userspace (its own figure)" "$(median "${BERTH_USER[@]}")" "$(median "${NSPAWN_USER[@]}")"
printf '%-34s %8s ms %8s ms %8s\n' "clean stop (wall)" "$bs" "$ns" "$(python3 -c "print(f'{$bs/$ns:.2f}')")"
echo "target: boot < 1500 ms: $([ "$bb" -lt 1500 ] && echo met || echo NOT met)"
echo "all rounds (ms): berth boot ${BERTH_BOOT[*]} | stop ${BERTH_STOP[*]} || nspawn boot ${NSPAWN_BOOT[*]} | stop ${NSPAWN_STOP[*]}"
