#!/bin/bash
# Builds the decoder fuzzer with libFuzzer (+ASan) in its own scratch path and runs it for a
# bounded time per decoder. FUZZ_SECONDS (default 15) per decoder; the corpus is kept in
# .build-fuzz/corpus between runs on the same machine.
set -euo pipefail
cd "$(dirname "$0")/../.."
export PATH=/opt/swift/usr/bin:$PATH
SECONDS_EACH=${FUZZ_SECONDS:-15}
swift build --product fuzz-decoders --scratch-path .build-fuzz -Xswiftc -sanitize=fuzzer -Xswiftc -sanitize=address 2>&1 | tail -1
BIN=.build-fuzz/debug/fuzz-decoders
mkdir -p .build-fuzz/corpus
failed=0
decoders="0 1 2 3 4 5 6 7 8 9"
for selector in $decoders; do
    corpus=.build-fuzz/corpus/$selector
    mkdir -p "$corpus"
    # Seeds: the selector byte plus a small valid-looking input.
    printf "\\x0$selector\\x00\\x00\\x00\\x07\\x02\\x00\\x00\\x00\\x00\\x05\\xaa" > "$corpus/seed"
    if "$BIN" "$corpus" -max_total_time="$SECONDS_EACH" -max_len=4096 -print_final_stats=0 \
        -artifact_prefix=.build-fuzz/crash- >.build-fuzz/log-$selector.txt 2>&1; then
        echo "ok   - fuzz decoder $selector: $(grep -o 'Done [0-9]* runs' .build-fuzz/log-$selector.txt | tail -1)"
    else
        echo "FAIL - fuzz decoder $selector (see .build-fuzz/log-$selector.txt)"; tail -20 .build-fuzz/log-$selector.txt
        failed=$((failed + 1))
    fi
done
echo "fuzz: $(( $(echo $decoders | wc -w) - failed)) passed, $failed failed"
[ "$failed" -eq 0 ]
