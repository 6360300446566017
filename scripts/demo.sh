#!/bin/bash
# make demo: start an agent on this node (default paths), build the busybox template, create
# and start two VPSs and show that they run isolated from each other and from the host.
# `make demo-stop` removes the demo VPSs and stops the agent it started.
set -euo pipefail
cd "$(dirname "$0")/.."
BUILD=$(cd "${BUILD:-.build/debug}" && pwd)
BERTH="$BUILD/berth"
export BERTH_AGENT=/run/berth/agent.sock
PIDFILE=/run/berth/demo-agent.pid
# say COMMAND [COMMENT]: shows what runs next, the way an operator would type it.
say() { printf '\n\033[1m$ %s\033[0m  %s\n' "$1" "${2:-}"; }

if [ "${1:-}" = stop ]; then
    for v in demo1 demo2; do "$BERTH" destroy "$v" --force 2>/dev/null || true; done
    [ -f "$PIDFILE" ] && kill -TERM "$(cat "$PIDFILE")" 2>/dev/null && rm -f "$PIDFILE"
    echo "demo VPSs destroyed; demo agent stopped"
    exit 0
fi
[ "$(id -u)" = 0 ] || { echo "make demo needs root (namespaces, cgroups, loop devices)" >&2; exit 1; }

if ! "$BERTH" list >/dev/null 2>&1; then
    mkdir -p /run/berth /var/log
    "$BUILD/berth-agent" >>/var/log/berth-agent.log 2>&1 &
    echo $! >"$PIDFILE"
    for _ in $(seq 100); do "$BERTH" list >/dev/null 2>&1 && break; sleep 0.05; done
    echo "berth-agent started (pid $(cat "$PIDFILE"), log /var/log/berth-agent.log, data /var/lib/berth)"
fi
for v in demo1 demo2; do "$BERTH" destroy "$v" --force >/dev/null 2>&1 || true; done

say "berth template build busybox"
"$BERTH" template build busybox
say "berth create demo1 --template busybox --memory 256M --pids 200 --label tenant=acme"
"$BERTH" create demo1 --template busybox --memory 256M --pids 200 --label tenant=acme
say "berth create demo2 --template busybox --hostname shop.example --cpu-units 500"
"$BERTH" create demo2 --template busybox --hostname shop.example --cpu-units 500
say "berth start demo1 && berth start demo2"
"$BERTH" start demo1
"$BERTH" start demo2
sleep 0.3
say "berth list"
"$BERTH" list
say "berth exec demo1 -- ps" "# only demo1's own processes; its init is PID 1"
"$BERTH" exec demo1 -- ps
say "berth exec demo2 -- hostname"
"$BERTH" exec demo2 -- hostname
say "berth exec demo1 -- ls /sys/class/net" "# its own network namespace"
"$BERTH" exec demo1 -- ls /sys/class/net
say "berth exec demo1 -- sh -c 'cat /run/boot-complete; mount | wc -l'" "# rcS ran; a private mount table"
"$BERTH" exec demo1 -- sh -c 'cat /run/boot-complete; mount | wc -l'
say "berth exec demo2 -- mount -t tmpfs x /mnt" "# no CAP_SYS_ADMIN inside"
"$BERTH" exec demo2 -- mount -t tmpfs x /mnt || true
say "berth status demo1 --json"
"$BERTH" status demo1 --json
cat <<EOT

Both VPSs keep running. Try:
  $BERTH enter demo1            # a shell inside (exit to leave)
  $BERTH console demo2          # its console; Ctrl-] detaches
  $BERTH exec demo1 -- reboot   # restarts the VPS, not the host
  make demo-stop                # destroy the demo VPSs and stop the demo agent
EOT
