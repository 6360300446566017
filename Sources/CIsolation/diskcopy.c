// A consistent copy of a loop VPS's disk image for a snapshot: the VPS's filesystem frozen
// (FIFREEZE flushes it and holds new writes), the image cloned (FICLONE: shared extents, an
// instant) where the data filesystem can, else copied extent by extent, holes kept.
#include "cisolation.h"
#include <errno.h>
#include <fcntl.h>
#include <linux/fs.h>
#include <sys/syscall.h>
#include <sys/ioctl.h>
#include <unistd.h>

int berth_fs_freeze(int fd) { return ioctl(fd, FIFREEZE, 0); }

int berth_fs_thaw(int fd) { return ioctl(fd, FITHAW, 0); }

int berth_reflink(int dst, int src) { return ioctl(dst, FICLONE, src); }

int berth_sparse_copy(int src, int dst, uint64_t size, uint64_t *copied) {
    *copied = 0;
    if (ftruncate(dst, (off_t)size) != 0) return -1;
    off_t at = 0;
    while ((uint64_t)at < size) {
        off_t data = lseek(src, at, SEEK_DATA);
        if (data < 0) {
            if (errno == ENXIO) return 0; /* only a hole is left */
            return -1;
        }
        off_t hole = lseek(src, data, SEEK_HOLE);
        if (hole < 0) return -1;
        off_t in = data, out = data;
        while (in < hole) {
            ssize_t n = copy_file_range(src, &in, dst, &out, (size_t)(hole - in), 0);
            if (n < 0 && errno == EINTR) continue;
            if (n < 0) return -1;
            if (n == 0) break; /* the source shrank */
            *copied += (uint64_t)n;
        }
        at = hole;
    }
    return 0;
}

int berth_rename_exchange(const char *a, const char *b) {
    return (int)syscall(SYS_renameat2, AT_FDCWD, a, AT_FDCWD, b, RENAME_EXCHANGE);
}
