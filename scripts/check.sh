#!/bin/bash
# `make check`: the habits a change must keep (Docs/testing.md). The format (.swift-format), the
# wire edge rule, and a build whose warnings in Berth's own targets are errors.
set -euo pipefail
cd "$(dirname "$0")/.."
export PATH=/opt/swift/usr/bin:$PATH
mapfile -t sources < <(git ls-files '*.swift' | grep -v '^Sources/Wire/berth.pb.swift$')
swift format lint --strict --configuration .swift-format "${sources[@]}"
echo "check: format clean (${#sources[@]} files)"
./scripts/check-wire-edge.sh
if [ "${BERTH_CHECK_BUILD:-1}" = 1 ]; then
    BERTH_STRICT=1 swift build --build-tests
    echo "check: the build has no warnings in Berth's targets"
fi
