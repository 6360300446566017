#!/bin/bash
# Removes leftovers of crashed integration runs: every /tmp/berth-it-* work dir and the
# berth-bit* cgroups, mounts and loop devices that belong to them.
cd "$(dirname "$0")/../.." || exit 1
# Cluster-tier runs and dev clusters: their own teardown knows the layout (nodes n1..nN).
for work in /tmp/berth-it-bcl* /tmp/berth-cluster-*; do
    [ -d "$work" ] || continue
    name=${work#/tmp/berth-it-}; name=${name#/tmp/berth-cluster-}
    BERTH_CLUSTER=$name BERTH_CLUSTER_DIR=$work BUILD=${BUILD:-.build/debug} scripts/dev-cluster.sh down
done
for work in /tmp/berth-it-*; do
    [ -d "$work" ] || continue
    RUN_ID=${work#/tmp/berth-it-} WORK=$work BUILD=${BUILD:-.build/debug} bash -c 'source Tests/integration/lib.sh; cleanup_all'
    echo "cleaned $work"
done
# Network-tier namespaces (their VPS links go with them).
for ns in $(ip netns list 2>/dev/null | awk '{print $1}' | grep -E '^(bnt|bdt|bsc)[0-9]+-(node|lan|lan2)$'); do
    ip netns del "$ns" && echo "removed network namespace $ns"
done
