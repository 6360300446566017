#ifndef BERTH_CISOLATION_H
#define BERTH_CISOLATION_H
#include <stddef.h>
#include <stdint.h>
#include <sys/types.h>

/// Stage at which berth_spawn failed, reported with errno (0 = success).
enum berth_spawn_stage {
    BERTH_SPAWN_OK = 0,
    BERTH_SPAWN_FORK = 1,
    BERTH_SPAWN_SETSID = 2,
    BERTH_SPAWN_DUP = 3,
    BERTH_SPAWN_EXEC = 4,
    BERTH_SPAWN_PIDFD = 5,
};

/// fork+exec for a multi-threaded parent. `fds[i]` becomes fd i in the child (for i < nfds); every
/// other fd is closed; every signal handler is reset and the mask cleared; nothing but async-signal
/// safe calls happen between vfork and execve. On success returns the pid and stores a pidfd in
/// *pidfd (or -1 when the kernel has no pidfd_open). On failure returns -1 with *stage/*err set.
pid_t berth_spawn(const char *path, char *const argv[], char *const envp[],
                  const int *fds, int nfds, int new_session,
                  int *pidfd, int *stage, int *err);

/// clone(2) without a new stack: behaves like fork() but with namespace flags. Only for
/// single-threaded callers (berth-spawn).
pid_t berth_clone_fork(unsigned long flags);

int berth_pivot_root(const char *new_root, const char *put_old);
int berth_pidfd_open(pid_t pid, unsigned int flags);
int berth_pidfd_send_signal(int pidfd, int sig);
int berth_close_range(unsigned int first, unsigned int last, unsigned int flags);
int berth_set_nondumpable(void);
int berth_set_pdeathsig(int sig);
int berth_set_child_subreaper(void);
int berth_tiocsctty(int fd);
int berth_set_winsize(int fd, unsigned short rows, unsigned short cols);
int berth_get_winsize(int fd, unsigned short *rows, unsigned short *cols);
/// Opens a fresh pty master from the devpts instance `ptmx_path` (non-blocking, CLOEXEC), unlocks
/// it, and writes the slave's number to *pts_number.
int berth_open_pty_master(const char *ptmx_path, int *pts_number);
/// Opens the slave of an already opened master without a path lookup (TIOCGPTPEER).
int berth_open_pty_peer(int master_fd, int flags);

/// openat2 with RESOLVE_IN_ROOT|RESOLVE_NO_MAGICLINKS: paths are resolved as if `root_fd` were
/// "/", so symlinks planted inside a VPS root can never lead outside it.
int berth_open_in_root(int root_fd, const char *path, int flags, mode_t mode);

/// openat2 with RESOLVE_BENEATH|RESOLVE_NO_SYMLINKS: for mount targets, which must be real
/// directories or files below `dir_fd`, never a symlink of any kind.
int berth_open_beneath_nofollow(int dir_fd, const char *path, int flags, mode_t mode);

/// Attaches `image` to a free loop device with autoclear (the device frees itself on the last
/// umount). Writes "/dev/loopN" to devpath and returns an fd of the loop device.
int berth_loop_attach(const char *image, int read_only, char *devpath, size_t devpath_len);

unsigned int berth_major(dev_t dev);
unsigned int berth_minor(dev_t dev);

/// ext4 online grow is an ioctl too: resizes the loop device after the backing file grew.
int berth_loop_set_capacity(int loop_fd);
/* Grows the mounted ext4 that fs_fd is a directory of to `blocks` filesystem blocks (online). */
int berth_ext4_resize(int fs_fd, uint64_t blocks);

#endif

/* The btrfs storage pool (btrfs.c). Each returns -1 with errno on failure. */
/// Creates the subvolume `name` in the directory `parent`.
int berth_btrfs_subvolume_create(const char *parent, const char *name);
/// Deletes the subvolume `name` of `parent`, and everything in it.
int berth_btrfs_subvolume_delete(const char *parent, const char *name);
/// Turns quotas on for the filesystem of `path`: simple quotas, or full qgroups on kernels
/// before 6.7.
int berth_btrfs_quota_enable(const char *path);
/// The id of the subvolume `path` is the top of (its quota group is 0/id).
long long berth_btrfs_subvolume_id(const char *path);
/// Limits the subvolume with id `subvolume_id` to `bytes` of data and metadata; `pool` is the
/// filesystem's top directory (outside every limited subvolume).
int berth_btrfs_qgroup_limit(const char *pool, uint64_t subvolume_id, uint64_t bytes);
/// Grows the (single-device) btrfs that `path` is in to the whole of its device.
int berth_btrfs_grow_to_device(const char *path);
/// The filesystem's UUID as /sys/fs/btrfs names its directory.
int berth_btrfs_fsid(const char *path, char *uuid, size_t uuid_len);

/* A snapshot's copy of a loop image (diskcopy.c). Each returns -1 with errno on failure. */
/// FIFREEZE / FITHAW of the filesystem `fd` is a file or directory of.
int berth_fs_freeze(int fd);
int berth_fs_thaw(int fd);
/// FICLONE: `dst` shares all of `src`'s extents (EOPNOTSUPP/EXDEV/EINVAL where it cannot).
int berth_reflink(int dst, int src);
/// Copies the first `size` bytes of `src` into `dst` (same size, holes kept), data extent by
/// data extent; `copied` counts the data bytes.
int berth_sparse_copy(int src, int dst, uint64_t size, uint64_t *copied);
/// Swaps the paths `a` and `b` in one step (renameat2 RENAME_EXCHANGE).
int berth_rename_exchange(const char *a, const char *b);

/// Installs Berth's seccomp denylist (seccomp.c lists it and says why): kexec, open_by_handle_at,
/// module loading, keyrings, bpf, perf, userfaultfd, acct, swap, syslog, clock setting fail with
/// EPERM, io_uring with ENOSYS, btrfs subvolume and snapshot creation with ENOTTY, and any non-native syscall ABI (x32, i386) fails with ENOSYS so
/// the list cannot be bypassed.
/// Must be called while the caller still holds CAP_SYS_ADMIN or after PR_SET_NO_NEW_PRIVS.
int berth_install_baseline_seccomp(void);

/// f_type of statfs(path), or 0 when it fails (statfs is not in Swift's Glibc module).
long berth_fs_magic(const char *path);

/* GNU extensions that Swift's Glibc module does not export (it is built without _GNU_SOURCE). */
int berth_setns(int fd, int nstype);
// Announce a VPS address from this node's interface `ifname` (announce.c): a gratuitous ARP
// (IPv4, network byte order) or an unsolicited neighbour advertisement (IPv6). -1 + errno.
int berth_announce_ipv4(const char *ifname, const unsigned char address[4]);
int berth_announce_ipv6(const char *ifname, const unsigned char address[16]);
int berth_unshare(int flags);
/// Blocks SIGCHLD and returns a non-blocking, close-on-exec signalfd that reports it.
int berth_sigchld_fd(void);
/// Empties a signalfd (each record is 128 bytes).
void berth_drain_signalfd(int fd);
int berth_execvpe(const char *file, char *const argv[], char *const envp[]);
/// Runs the program open at `fd` (execveat with AT_EMPTY_PATH): the file checked, not a path
/// that may have been replaced since. Returns only on failure.
int berth_execveat_empty(int fd, char *const argv[], char *const envp[]);
/// A connection that neither leaks into an exec nor blocks a poll loop on a read it was not polled for.
int berth_accept_cloexec_nonblock(int fd);
/* An anonymous file (close-on-exec) that carries state across the monitor's execs. */
int berth_memfd(const char *name);
int berth_pipe_cloexec(int fds[2]);
/// A non-blocking, close-on-exec eventfd (for waking poll loops).
int berth_eventfd(void);

/// One device rule of a VPS's allowlist: type 'a' (any), 'b' or 'c'; major/minor -1 = any;
/// access bits 1 = mknod, 2 = read, 4 = write (the cgroup-v1 "c 1:3 rwm" rule, in numbers).
struct berth_device_rule {
    char type;
    int major;
    int minor;
    unsigned access;
};

/// cgroup v2 has no devices.allow: builds and loads a BPF_PROG_TYPE_CGROUP_DEVICE program that
/// allows exactly `rules` and denies everything else. Returns its close-on-exec fd, or -1 with errno.
int berth_load_device_filter(const struct berth_device_rule *rules, int count);
/// Attaches a loaded device program to the cgroup directory `cgroup_fd` (the attachment holds
/// the program). Returns 0, or -1 with errno (EEXIST: the cgroup already has a device program).
int berth_attach_device_program(int cgroup_fd, int prog_fd);

/* User namespaces (userns.c). */
/// A detached copy of the mount at `path` whose file ownership is seen through the uid/gid maps
/// of the user namespace `userns_fd` (open_tree(OPEN_TREE_CLONE) + mount_setattr(IDMAP)), with
/// nosuid and nodev cleared (the host's mount of the disk has them).
/// Returns the mount fd, or -1 with errno.
int berth_idmapped_tree(const char *path, int userns_fd);
/// A detached read-only, nosuid, nodev, noexec copy of the mount tree at `path`, for a VPS to
/// attach with berth_move_mount_to (host files it may read but never change).
int berth_readonly_tree(const char *path);
/// Binds the directory `source` at `target` (a detached clone attached there): nosuid and nodev
/// set when `host_view_only` (the host's view of a disk whose VPS sees an idmapped copy), cleared
/// otherwise (a privileged VPS boots from this very mount).
int berth_bind_tree_to(const char *source, const char *target, int host_view_only);
/* Layered VPS roots (overlay.c). */
/// A detached overlayfs mount: `lower` (a template's tree, shared read-only by every VPS made
/// from it) under `disk`/upper with `disk`/work (the VPS's own disk). With userns_fd >= 0 both
/// layers are idmapped through that user namespace and the overlay is created as the VPS's root
/// (`host_root`), so what the VPS writes lands on its disk owned as in an image VPS. Redirects,
/// metacopy and the inode index are off. Returns the mount fd, or -1 with errno.
int berth_overlay_tree(const char *lower, const char *disk, int userns_fd, unsigned int host_root);
/// Attaches a detached mount (from berth_idmapped_tree) at `target` in the caller's mount ns.
int berth_move_mount_to(int tree_fd, const char *target);
/// The same onto the directory `target_fd` (an O_PATH fd; move_mount follows no final symlink,
/// so a /proc/self/fd path would name the link itself).
int berth_move_mount_to_fd(int tree_fd, int target_fd);
/// One byte plus, when fd >= 0, that fd (SCM_RIGHTS) over a Unix stream socket.
int berth_send_byte_and_fd(int sock, char byte, int fd);
/// Receives what berth_send_byte_and_fd sent; *fd is -1 when no fd came with the byte.
int berth_recv_byte_and_fd(int sock, char *byte, int *fd);
int berth_socketpair_cloexec(int fds[2]);
/// setresgid/setgroups/setresuid to 0: root of the user namespace the caller just entered.
int berth_become_root(void);
/// RLIMIT_NOFILE (soft = hard) of another process: set from outside a VPS's user namespace,
/// where raising a hard limit is allowed.
int berth_set_nofile_limit(pid_t pid, unsigned long long value);
/// clone(flags) with the effective uid switched to `owner` for the call: a new user namespace
/// then belongs to that uid, so the kernel charges the VPS's per-user objects (inotify
/// instances, ...) to it rather than to host root. The caller's euid is 0 again on return.
pid_t berth_clone_fork_owned(unsigned long flags, uid_t owner);
/// berth_set_nofile_limit with the effective uid of the owner of the target's user namespace:
/// the owner is privileged there without needing CAP_SYS_RESOURCE on the host (it can lower
/// or keep the hard limit, not raise it).
int berth_set_nofile_limit_as(pid_t pid, unsigned long long value, uid_t owner);

/* Superblock options (superblock.c). */
/// Reconfigures the filesystem mounted at `path` (fspick + fsconfig + FSCONFIG_CMD_RECONFIGURE)
/// with `options` ("flag" or "key=value"); the mount's own flags (nosuid, ro, ...) are untouched.
/// Returns 0, or -1 with errno.
int berth_reconfigure_superblock(const char *path, const char *const *options, int count);
