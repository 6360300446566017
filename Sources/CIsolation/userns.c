#include "cisolation.h"
#include <errno.h>
#include <fcntl.h>
#include <grp.h>
#include <linux/mount.h>
#include <string.h>
#include <sys/resource.h>
#include <sys/socket.h>
#include <sys/syscall.h>
#include <stdlib.h>
#include <unistd.h>

#ifndef SYS_open_tree
#define SYS_open_tree 428
#endif
#ifndef SYS_move_mount
#define SYS_move_mount 429
#endif
#ifndef SYS_mount_setattr
#define SYS_mount_setattr 442
#endif
#ifndef OPEN_TREE_CLONE
#define OPEN_TREE_CLONE 1
#endif
#ifndef MOUNT_ATTR_IDMAP
#define MOUNT_ATTR_IDMAP 0x00100000
#endif
#ifndef MOVE_MOUNT_F_EMPTY_PATH
#define MOVE_MOUNT_F_EMPTY_PATH 0x00000004
#endif
#ifndef MOVE_MOUNT_T_EMPTY_PATH
#define MOVE_MOUNT_T_EMPTY_PATH 0x00000040
#endif

/* Mirrors struct mount_attr of <linux/mount.h> (kernel 5.12), which older headers lack. */
struct berth_mount_attr {
    unsigned long long attr_set;
    unsigned long long attr_clr;
    unsigned long long propagation;
    unsigned long long userns_fd;
};

/* A detached copy of the mount tree at `path` with `attr` applied to it. */
static int detached_tree(const char *path, struct berth_mount_attr *attr) {
    int tree = (int)syscall(SYS_open_tree, AT_FDCWD, path, OPEN_TREE_CLONE | O_CLOEXEC);
    if (tree < 0) return -1;
    if (syscall(SYS_mount_setattr, tree, "", AT_EMPTY_PATH, attr, sizeof *attr) != 0) {
        int saved = errno;
        close(tree);
        errno = saved;
        return -1;
    }
    return tree;
}

int berth_idmapped_tree(const char *path, int userns_fd) {
    struct berth_mount_attr attr;
    memset(&attr, 0, sizeof attr);
    attr.attr_set = MOUNT_ATTR_IDMAP;
    /* The host's own view of the disk is nosuid,nodev (setuid files the VPS planted must mean
       nothing there); the VPS's view gets them back. */
    attr.attr_clr = MOUNT_ATTR_NOSUID | MOUNT_ATTR_NODEV;
    attr.userns_fd = (unsigned long long)userns_fd;
    return detached_tree(path, &attr);
}

int berth_readonly_tree(const char *path) {
    struct berth_mount_attr attr;
    memset(&attr, 0, sizeof attr);
    attr.attr_set = MOUNT_ATTR_RDONLY | MOUNT_ATTR_NOSUID | MOUNT_ATTR_NODEV | MOUNT_ATTR_NOEXEC;
    return detached_tree(path, &attr);
}

int berth_bind_tree_to(const char *source, const char *target, int host_view_only) {
    struct berth_mount_attr attr;
    memset(&attr, 0, sizeof attr);
    if (host_view_only) attr.attr_set = MOUNT_ATTR_NOSUID | MOUNT_ATTR_NODEV;
    else attr.attr_clr = MOUNT_ATTR_NOSUID | MOUNT_ATTR_NODEV;
    int tree = detached_tree(source, &attr);
    if (tree < 0) return -1;
    int rc = berth_move_mount_to(tree, target);
    int saved = errno;
    close(tree);
    errno = saved;
    return rc;
}

int berth_move_mount_to(int tree_fd, const char *target) {
    return (int)syscall(SYS_move_mount, tree_fd, "", AT_FDCWD, target, MOVE_MOUNT_F_EMPTY_PATH);
}

int berth_move_mount_to_fd(int tree_fd, int target_fd) {
    return (int)syscall(SYS_move_mount, tree_fd, "", target_fd, "", MOVE_MOUNT_F_EMPTY_PATH | MOVE_MOUNT_T_EMPTY_PATH);
}

int berth_send_byte_and_fd(int sock, char byte, int fd) {
    struct iovec iov = { .iov_base = &byte, .iov_len = 1 };
    union { char buffer[CMSG_SPACE(sizeof(int))]; struct cmsghdr align; } control;
    struct msghdr message;
    memset(&message, 0, sizeof message);
    message.msg_iov = &iov;
    message.msg_iovlen = 1;
    if (fd >= 0) {
        memset(&control, 0, sizeof control);
        message.msg_control = control.buffer;
        message.msg_controllen = sizeof control.buffer;
        struct cmsghdr *header = CMSG_FIRSTHDR(&message);
        header->cmsg_level = SOL_SOCKET;
        header->cmsg_type = SCM_RIGHTS;
        header->cmsg_len = CMSG_LEN(sizeof(int));
        memcpy(CMSG_DATA(header), &fd, sizeof(int));
    }
    ssize_t sent;
    do { sent = sendmsg(sock, &message, MSG_NOSIGNAL); } while (sent < 0 && errno == EINTR);
    return sent == 1 ? 0 : -1;
}

int berth_recv_byte_and_fd(int sock, char *byte, int *fd) {
    struct iovec iov = { .iov_base = byte, .iov_len = 1 };
    union { char buffer[CMSG_SPACE(sizeof(int))]; struct cmsghdr align; } control;
    struct msghdr message;
    memset(&message, 0, sizeof message);
    memset(&control, 0, sizeof control);
    message.msg_iov = &iov;
    message.msg_iovlen = 1;
    message.msg_control = control.buffer;
    message.msg_controllen = sizeof control.buffer;
    *fd = -1;
    ssize_t got;
    do { got = recvmsg(sock, &message, MSG_CMSG_CLOEXEC); } while (got < 0 && errno == EINTR);
    if (got != 1) {
        if (got == 0) errno = EPIPE;
        return -1;
    }
    struct cmsghdr *header = CMSG_FIRSTHDR(&message);
    if (header && header->cmsg_level == SOL_SOCKET && header->cmsg_type == SCM_RIGHTS) {
        memcpy(fd, CMSG_DATA(header), sizeof(int));
    }
    return 0;
}

int berth_socketpair_cloexec(int fds[2]) {
    return socketpair(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0, fds);
}

int berth_become_root(void) {
    if (setresgid(0, 0, 0) != 0) return -1;
    if (setgroups(0, NULL) != 0) return -1;
    return setresuid(0, 0, 0);
}

int berth_set_nofile_limit(pid_t pid, unsigned long long value) {
    struct rlimit limit = { .rlim_cur = value, .rlim_max = value };
    return prlimit(pid, RLIMIT_NOFILE, &limit, NULL);
}

pid_t berth_clone_fork_owned(unsigned long flags, uid_t owner) {
    /* The new user namespace belongs to the caller's effective uid: switch it for the clone
       only. The saved uid stays 0, so the way back is open. */
    if (setresuid((uid_t)-1, owner, (uid_t)-1) != 0) return -1;
    pid_t pid = berth_clone_fork(flags);
    if (pid != 0) {
        int saved = errno;
        if (setresuid((uid_t)-1, 0, (uid_t)-1) != 0) abort();
        errno = saved;
    }
    return pid;
}

int berth_set_nofile_limit_as(pid_t pid, unsigned long long value, uid_t owner) {
    if (setresuid((uid_t)-1, owner, (uid_t)-1) != 0) return -1;
    int result = berth_set_nofile_limit(pid, value);
    int saved = errno;
    if (setresuid((uid_t)-1, 0, (uid_t)-1) != 0) abort();
    errno = saved;
    return result;
}
