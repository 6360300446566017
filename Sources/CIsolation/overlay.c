#include "cisolation.h"
#include <errno.h>
#include <fcntl.h>
#include <linux/capability.h>
#include <linux/mount.h>
#include <stdio.h>
#include <string.h>
#include <sys/fsuid.h>
#include <sys/syscall.h>
#include <unistd.h>

#ifndef SYS_fsopen
#define SYS_fsopen 430
#endif
#ifndef SYS_fsconfig
#define SYS_fsconfig 431
#endif
#ifndef SYS_fsmount
#define SYS_fsmount 432
#endif

/* setfsuid drops the file capabilities from the effective set; the permitted set keeps them. */
static int raise_effective_capabilities(void) {
    struct __user_cap_header_struct header = { _LINUX_CAPABILITY_VERSION_3, 0 };
    struct __user_cap_data_struct data[2];
    if (syscall(SYS_capget, &header, data) != 0) return -1;
    data[0].effective = data[0].permitted;
    data[1].effective = data[1].permitted;
    return (int)syscall(SYS_capset, &header, data);
}

static int set_string(int fs, const char *key, const char *value) {
    return (int)syscall(SYS_fsconfig, fs, FSCONFIG_SET_STRING, key, value, 0);
}

int berth_overlay_tree(const char *lower, const char *disk, int userns_fd, unsigned int host_root) {
    int lower_tree = -1, disk_tree = -1, fs = -1, mount_fd = -1, saved = 0;
    char lower_path[4096], upper_path[4096], work_path[4096];
    if (userns_fd >= 0) {
        lower_tree = berth_idmapped_tree(lower, userns_fd);
        if (lower_tree < 0) return -1;
        disk_tree = berth_idmapped_tree(disk, userns_fd);
        if (disk_tree < 0) { saved = errno; goto out; }
        snprintf(lower_path, sizeof lower_path, "/proc/self/fd/%d", lower_tree);
        snprintf(upper_path, sizeof upper_path, "/proc/self/fd/%d/upper", disk_tree);
        snprintf(work_path, sizeof work_path, "/proc/self/fd/%d/work", disk_tree);
        /* overlayfs does its own work (work dir, copy-up) with the mounter's credentials, which
           must map into the idmapped layers: act as the VPS's root for the file system. */
        setfsuid(host_root);
        setfsgid(host_root);
        if (raise_effective_capabilities() != 0) { saved = errno; goto out; }
    } else {
        snprintf(lower_path, sizeof lower_path, "%s", lower);
        snprintf(upper_path, sizeof upper_path, "%s/upper", disk);
        snprintf(work_path, sizeof work_path, "%s/work", disk);
    }
    fs = (int)syscall(SYS_fsopen, "overlay", FSOPEN_CLOEXEC);
    if (fs < 0) { saved = errno; goto out; }
    /* A VPS must not steer lookups through redirect or metacopy xattrs into other layers. */
    if (set_string(fs, "lowerdir", lower_path) != 0 || set_string(fs, "upperdir", upper_path) != 0 ||
        set_string(fs, "workdir", work_path) != 0 || set_string(fs, "redirect_dir", "nofollow") != 0 ||
        set_string(fs, "metacopy", "off") != 0 || set_string(fs, "index", "off") != 0 ||
        syscall(SYS_fsconfig, fs, FSCONFIG_CMD_CREATE, NULL, NULL, 0) != 0) {
        saved = errno;
        goto out;
    }
    mount_fd = (int)syscall(SYS_fsmount, fs, FSMOUNT_CLOEXEC, 0);
    if (mount_fd < 0) saved = errno;
out:
    if (userns_fd >= 0) {
        setfsuid(0);
        setfsgid(0);
        raise_effective_capabilities();
    }
    if (fs >= 0) close(fs);
    if (lower_tree >= 0) close(lower_tree);
    if (disk_tree >= 0) close(disk_tree);
    if (mount_fd < 0) errno = saved;
    return mount_fd;
}
