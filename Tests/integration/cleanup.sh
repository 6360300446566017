#!/bin/bash
# Removes leftovers of crashed integration runs: every /tmp/berth-it-* work dir and the
# berth-bit* cgroups, mounts and loop devices that belong to them.
cd "$(dirname "$0")/../.." || exit 1
for work in /tmp/berth-it-*; do
    [ -d "$work" ] || continue
    RUN_ID=${work#/tmp/berth-it-} WORK=$work BUILD=${BUILD:-.build/debug} bash -c 'source Tests/integration/lib.sh; cleanup_all'
    echo "cleaned $work"
done
# Network-tier namespaces (their VPS links go with them).
for ns in $(ip netns list 2>/dev/null | awk '{print $1}' | grep -E '^bnt[0-9]+-(node|lan|lan2)$'); do
    ip netns del "$ns" && echo "removed network namespace $ns"
done
