#include "cisolation.h"
#include <errno.h>
#include <fcntl.h>
#include <linux/loop.h>
#include <linux/openat2.h>
#include <signal.h>
#include <stdio.h>
#include <string.h>
#include <sys/ioctl.h>
#include <sys/sysmacros.h>
#include <sys/prctl.h>
#include <sys/syscall.h>
#include <termios.h>
#include <unistd.h>

#ifndef SYS_pidfd_open
#define SYS_pidfd_open 434
#endif
#ifndef SYS_pidfd_send_signal
#define SYS_pidfd_send_signal 424
#endif
#ifndef SYS_openat2
#define SYS_openat2 437
#endif
#ifndef TIOCGPTPEER
#define TIOCGPTPEER _IO('T', 0x41)
#endif

pid_t berth_clone_fork(unsigned long flags) {
    return (pid_t)syscall(SYS_clone, flags | SIGCHLD, NULL, NULL, NULL, NULL);
}

int berth_pivot_root(const char *new_root, const char *put_old) {
    return (int)syscall(SYS_pivot_root, new_root, put_old);
}

int berth_pidfd_open(pid_t pid, unsigned int flags) {
    return (int)syscall(SYS_pidfd_open, pid, flags);
}

int berth_pidfd_send_signal(int pidfd, int sig) {
    return (int)syscall(SYS_pidfd_send_signal, pidfd, sig, NULL, 0);
}

int berth_close_range(unsigned int first, unsigned int last, unsigned int flags) {
    return (int)syscall(SYS_close_range, first, last, flags);
}

int berth_set_nondumpable(void) { return prctl(PR_SET_DUMPABLE, 0, 0, 0, 0); }
int berth_set_pdeathsig(int sig) { return prctl(PR_SET_PDEATHSIG, sig, 0, 0, 0); }
int berth_set_child_subreaper(void) { return prctl(PR_SET_CHILD_SUBREAPER, 1, 0, 0, 0); }

int berth_tiocsctty(int fd) { return ioctl(fd, TIOCSCTTY, 0); }

int berth_set_winsize(int fd, unsigned short rows, unsigned short cols) {
    struct winsize ws;
    memset(&ws, 0, sizeof ws);
    ws.ws_row = rows;
    ws.ws_col = cols;
    return ioctl(fd, TIOCSWINSZ, &ws);
}

int berth_get_winsize(int fd, unsigned short *rows, unsigned short *cols) {
    struct winsize ws;
    if (ioctl(fd, TIOCGWINSZ, &ws) < 0) return -1;
    *rows = ws.ws_row;
    *cols = ws.ws_col;
    return 0;
}

int berth_open_pty_master(const char *ptmx_path, int *pts_number) {
    int fd = open(ptmx_path, O_RDWR | O_NOCTTY | O_CLOEXEC | O_NOFOLLOW);
    if (fd < 0) return -1;
    int unlock = 0;
    unsigned int n = 0;
    if (ioctl(fd, TIOCSPTLCK, &unlock) < 0 || ioctl(fd, TIOCGPTN, &n) < 0) {
        int e = errno;
        close(fd);
        errno = e;
        return -1;
    }
    *pts_number = (int)n;
    return fd;
}

int berth_open_pty_peer(int master_fd, int flags) {
    return ioctl(master_fd, TIOCGPTPEER, flags | O_NOCTTY);
}

static int open_with_resolve(int dir_fd, const char *path, int flags, mode_t mode, unsigned long long resolve) {
    struct open_how how;
    memset(&how, 0, sizeof how);
    how.flags = (unsigned long long)(flags | O_CLOEXEC);
    how.mode = (flags & (O_CREAT | O_TMPFILE)) ? mode : 0;
    how.resolve = resolve;
    return (int)syscall(SYS_openat2, dir_fd, path, &how, sizeof how);
}

int berth_open_in_root(int root_fd, const char *path, int flags, mode_t mode) {
    return open_with_resolve(root_fd, path, flags, mode, RESOLVE_IN_ROOT | RESOLVE_NO_MAGICLINKS | RESOLVE_NO_XDEV);
}

int berth_open_beneath_nofollow(int dir_fd, const char *path, int flags, mode_t mode) {
    return open_with_resolve(dir_fd, path, flags, mode, RESOLVE_BENEATH | RESOLVE_NO_SYMLINKS | RESOLVE_NO_MAGICLINKS);
}

int berth_loop_attach(const char *image, int read_only, char *devpath, size_t devpath_len) {
    int backing = open(image, (read_only ? O_RDONLY : O_RDWR) | O_CLOEXEC);
    if (backing < 0) return -1;
    int control = open("/dev/loop-control", O_RDWR | O_CLOEXEC);
    if (control < 0) { int e = errno; close(backing); errno = e; return -1; }
    // Another process may grab the free device between GET_FREE and CONFIGURE: retry then.
    for (int attempt = 0; attempt < 64; attempt++) {
        int n = ioctl(control, LOOP_CTL_GET_FREE);
        if (n < 0) break;
        snprintf(devpath, devpath_len, "/dev/loop%d", n);
        int loopfd = open(devpath, (read_only ? O_RDONLY : O_RDWR) | O_CLOEXEC);
        if (loopfd < 0) {
            if (errno == ENOENT) continue;
            break;
        }
        struct loop_config config;
        memset(&config, 0, sizeof config);
        config.fd = (unsigned)backing;
        // Direct I/O to the image: without it every block a VPS reads is cached twice, once in
        // its own filesystem and once as the image file's pages on the host, both charged to
        // the VPS. The kernel falls back to buffered I/O where the image's filesystem cannot.
        config.info.lo_flags = LO_FLAGS_AUTOCLEAR | LO_FLAGS_DIRECT_IO | (read_only ? LO_FLAGS_READ_ONLY : 0);
        if (ioctl(loopfd, LOOP_CONFIGURE, &config) == 0) {
            close(control);
            close(backing);
            return loopfd;
        }
        int e = errno;
        close(loopfd);
        if (e != EBUSY) { errno = e; break; }
    }
    int e = errno;
    close(control);
    close(backing);
    errno = e;
    return -1;
}

int berth_loop_set_capacity(int loop_fd) { return ioctl(loop_fd, LOOP_SET_CAPACITY, 0); }

/* <linux/ext4.h> is not in every libc's headers: _IOW('f', 16, __u64). */
#define BERTH_EXT4_IOC_RESIZE_FS _IOW('f', 16, uint64_t)
int berth_ext4_resize(int fs_fd, uint64_t blocks) { return ioctl(fs_fd, BERTH_EXT4_IOC_RESIZE_FS, &blocks); }

#include <sys/vfs.h>
long berth_fs_magic(const char *path) {
    struct statfs fs;
    if (statfs(path, &fs) != 0) return 0;
    return (long)fs.f_type;
}

#include <sched.h>
#include <sys/signalfd.h>
#include <sys/socket.h>
int berth_setns(int fd, int nstype) { return setns(fd, nstype); }
int berth_unshare(int flags) { return unshare(flags); }
int berth_sigchld_fd(void) {
    sigset_t mask;
    sigemptyset(&mask);
    sigaddset(&mask, SIGCHLD);
    if (sigprocmask(SIG_BLOCK, &mask, NULL) != 0) return -1;
    return signalfd(-1, &mask, SFD_CLOEXEC | SFD_NONBLOCK);
}
void berth_drain_signalfd(int fd) {
    struct signalfd_siginfo info;
    while (read(fd, &info, sizeof info) > 0) {}
}
int berth_execvpe(const char *file, char *const argv[], char *const envp[]) { return execvpe(file, argv, envp); }
int berth_execveat_empty(int fd, char *const argv[], char *const envp[]) {
    return (int)syscall(SYS_execveat, fd, "", argv, envp, AT_EMPTY_PATH);
}
int berth_accept_cloexec_nonblock(int fd) { return accept4(fd, NULL, NULL, SOCK_CLOEXEC | SOCK_NONBLOCK); }
#include <sys/mman.h>
int berth_memfd(const char *name) { return memfd_create(name, MFD_CLOEXEC); }
int berth_pipe_cloexec(int fds[2]) { return pipe2(fds, O_CLOEXEC); }
#include <sys/eventfd.h>
int berth_eventfd(void) { return eventfd(0, EFD_CLOEXEC | EFD_NONBLOCK); }

unsigned int berth_major(dev_t dev) { return major(dev); }
unsigned int berth_minor(dev_t dev) { return minor(dev); }
