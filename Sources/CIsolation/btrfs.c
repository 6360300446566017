// The btrfs storage pool of `--layout pool` VPSs: one subvolume per VPS, its size limited by a
// quota group. Plain ioctls on directory fds; nothing here mounts or forks.
#include "cisolation.h"
#include <errno.h>
#include <fcntl.h>
#include <linux/btrfs.h>
#include <stdio.h>
#include <string.h>
#include <sys/ioctl.h>
#include <unistd.h>

/* BTRFS_QUOTA_CTL_ENABLE_SIMPLE_QUOTA (linux 6.7), which older headers lack. */
#define BERTH_QUOTA_CTL_ENABLE_SIMPLE 4
/* The inode number of every subvolume's top directory (<linux/btrfs_tree.h>). */
#define BERTH_FIRST_FREE_OBJECTID 256ULL

/* One ioctl on the directory `path` (never through a final symlink); errno survives the close. */
static int directory_ioctl(const char *path, unsigned long request, void *args) {
    int dir = open(path, O_RDONLY | O_DIRECTORY | O_CLOEXEC | O_NOFOLLOW);
    if (dir < 0) return -1;
    int rc = ioctl(dir, request, args);
    int saved = errno;
    close(dir);
    errno = saved;
    return rc;
}

/* The ioctls that take a single name (a subvolume of `parent`, or a resize size). */
static int named_ioctl(const char *parent, const char *name, unsigned long request) {
    if (strlen(name) > BTRFS_PATH_NAME_MAX || strchr(name, '/') != NULL) { errno = EINVAL; return -1; }
    struct btrfs_ioctl_vol_args args;
    memset(&args, 0, sizeof args);
    strncpy(args.name, name, BTRFS_PATH_NAME_MAX);
    return directory_ioctl(parent, request, &args);
}

int berth_btrfs_subvolume_create(const char *parent, const char *name) {
    return named_ioctl(parent, name, BTRFS_IOC_SUBVOL_CREATE);
}

int berth_btrfs_subvolume_delete(const char *parent, const char *name) {
    return named_ioctl(parent, name, BTRFS_IOC_SNAP_DESTROY);
}

int berth_btrfs_quota_enable(const char *path) {
    /* Simple quotas count each extent once, against the subvolume that wrote it, at a fraction
       of full qgroups' cost; kernels before 6.7 refuse them (EINVAL) and get full qgroups. */
    struct btrfs_ioctl_quota_ctl_args args = { .cmd = BERTH_QUOTA_CTL_ENABLE_SIMPLE };
    if (directory_ioctl(path, BTRFS_IOC_QUOTA_CTL, &args) == 0) return 0;
    args.cmd = BTRFS_QUOTA_CTL_ENABLE;
    args.status = 0;
    return directory_ioctl(path, BTRFS_IOC_QUOTA_CTL, &args);
}

long long berth_btrfs_subvolume_id(const char *path) {
    struct btrfs_ioctl_ino_lookup_args args;
    memset(&args, 0, sizeof args);
    args.objectid = BERTH_FIRST_FREE_OBJECTID;
    return directory_ioctl(path, BTRFS_IOC_INO_LOOKUP, &args) == 0 ? (long long)args.treeid : -1;
}

int berth_btrfs_qgroup_limit(const char *pool, uint64_t subvolume_id, uint64_t bytes) {
    /* Through the pool's top, not the subvolume: the ioctl's transaction reserves metadata in
       the root of its fd, which a subvolume at its limit refuses (EDQUOT) to the very call that
       would raise it. */
    struct btrfs_ioctl_qgroup_limit_args args;
    memset(&args, 0, sizeof args);
    /* Level 0: the subvolume's own quota group has the subvolume's id. Referenced and exclusive
       are the same figure under simple quotas; under full qgroups the VPS's extents are its own. */
    args.qgroupid = subvolume_id;
    args.lim.flags = BTRFS_QGROUP_LIMIT_MAX_RFER | BTRFS_QGROUP_LIMIT_MAX_EXCL;
    args.lim.max_rfer = bytes;
    args.lim.max_excl = bytes;
    return directory_ioctl(pool, BTRFS_IOC_QGROUP_LIMIT, &args);
}

int berth_btrfs_grow_to_device(const char *path) {
    return named_ioctl(path, "max", BTRFS_IOC_RESIZE);
}

int berth_btrfs_fsid(const char *path, char *uuid, size_t uuid_len) {
    struct btrfs_ioctl_fs_info_args info;
    memset(&info, 0, sizeof info);
    if (directory_ioctl(path, BTRFS_IOC_FS_INFO, &info) != 0) return -1;
    const unsigned char *b = info.fsid;
    snprintf(uuid, uuid_len, "%02x%02x%02x%02x-%02x%02x-%02x%02x-%02x%02x-%02x%02x%02x%02x%02x%02x",
             b[0], b[1], b[2], b[3], b[4], b[5], b[6], b[7], b[8], b[9], b[10], b[11], b[12], b[13], b[14], b[15]);
    return 0;
}
