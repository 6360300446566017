#!/bin/bash
# The wire edge rule (Docs/architecture.md): protobuf types (Berth_V1_*) belong to Sources/Wire,
# the CLI (a wire client), and each daemon's RPC layer. Anywhere else they are a finding, except
# in the files listed in scripts/wire-edge-debt.txt, which still hold them and may only shrink:
# a file that no longer needs its line there is a finding too, so the list cannot go stale.
set -euo pipefail
cd "$(dirname "$0")/.."
rpc_layer='^Sources/(Wire/|WireTLS/|berth/|NodeAgent/(AgentService[^/]*|AgentCall|ClusterMember)\.swift$|Controller/(ControllerService|ControllerCall|ServedCall[^/]*|Records\+Wire|AgentLinks[^/]*)\.swift$)'
debt=scripts/wire-edge-debt.txt
found=$(git ls-files 'Sources/*.swift' | xargs grep -l 'Berth_V1_' | grep -Ev "$rpc_layer" || true)
listed=$(grep -v '^#' "$debt" | sed '/^$/d' || true)
status=0
for file in $found; do
    grep -qxF "$file" <<<"$listed" || { echo "check-wire-edge: $file uses Berth_V1_* outside the RPC layer (convert at the edge, see Docs/architecture.md)"; status=1; }
done
for file in $listed; do
    grep -qxF "$file" <<<"$found" || { echo "check-wire-edge: $file no longer uses Berth_V1_*: remove it from $debt"; status=1; }
done
[ $status -eq 0 ] && echo "check-wire-edge: wire types only at the edge ($(wc -w <<<"$listed") files of known debt in $debt)"
exit $status
