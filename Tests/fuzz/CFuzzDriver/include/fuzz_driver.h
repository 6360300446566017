#include <stddef.h>
#include <stdint.h>
/// libFuzzer's entry when the binary is built with -sanitize=fuzzer; a weak stub otherwise so a
/// plain `swift build` still links (the stub reports that fuzzing is not compiled in).
int LLVMFuzzerRunDriver(int *argc, char ***argv, int (*callback)(const uint8_t *data, size_t size));
