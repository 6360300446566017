#include "fuzz_driver.h"
#include <stdio.h>

__attribute__((weak)) int LLVMFuzzerRunDriver(int *argc, char ***argv, int (*callback)(const uint8_t *, size_t)) {
    (void)argc; (void)argv; (void)callback;
    fprintf(stderr, "fuzz-decoders: built without -sanitize=fuzzer; use Tests/fuzz/run.sh\n");
    return 2;
}
