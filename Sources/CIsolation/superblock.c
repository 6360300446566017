#include "cisolation.h"
#include <errno.h>
#include <fcntl.h>
#include <linux/mount.h>
#include <string.h>
#include <sys/syscall.h>
#include <unistd.h>

#ifndef SYS_fspick
#define SYS_fspick 433
#endif
#ifndef SYS_fsconfig
#define SYS_fsconfig 431
#endif

int berth_reconfigure_superblock(const char *path, const char *const *options, int count) {
    int fs = (int)syscall(SYS_fspick, AT_FDCWD, path, FSPICK_CLOEXEC);
    if (fs < 0) return -1;
    for (int i = 0; i < count; i++) {
        const char *equals = strchr(options[i], '=');
        long rc;
        if (equals == NULL) {
            rc = syscall(SYS_fsconfig, fs, FSCONFIG_SET_FLAG, options[i], NULL, 0);
        } else {
            char key[128];
            size_t length = (size_t)(equals - options[i]);
            if (length >= sizeof key) { close(fs); errno = ENAMETOOLONG; return -1; }
            memcpy(key, options[i], length);
            key[length] = 0;
            rc = syscall(SYS_fsconfig, fs, FSCONFIG_SET_STRING, key, equals + 1, 0);
        }
        if (rc != 0) { int saved = errno; close(fs); errno = saved; return -1; }
    }
    long rc = syscall(SYS_fsconfig, fs, FSCONFIG_CMD_RECONFIGURE, NULL, NULL, 0);
    int saved = errno;
    close(fs);
    errno = saved;
    return rc == 0 ? 0 : -1;
}
