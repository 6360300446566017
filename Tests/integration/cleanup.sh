#!/bin/bash
# Removes leftovers of crashed integration runs: every /tmp/berth-it-* work dir and the
# berth-bit* cgroups, mounts and loop devices that belong to them.
cd "$(dirname "$0")/../.." || exit 1
for work in /tmp/berth-it-*; do
    [ -d "$work" ] || continue
    RUN_ID=${work#/tmp/berth-it-} WORK=$work BUILD=${BUILD:-.build/debug} bash -c 'source Tests/integration/lib.sh; cleanup_all'
    echo "cleaned $work"
done
