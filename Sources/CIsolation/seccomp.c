// Berth's seccomp denylist as a hand-assembled classic BPF program: a flat list of syscall
// numbers needs no library. LXC's common.seccomp (kexec, open_by_handle_at, modules), plus the
// host-global calls of Docker's default profile that a VPS has no use for (security.md §2):
// kernel keyrings (not namespaced), BPF and perf (kernel attack surface), userfaultfd (a tool of
// kernel exploits), process accounting, swap, the kernel log, the clock, and io_uring (Docker
// blocks it since 25.0: a large, often-patched surface; programs fall back on ENOSYS).
// On a btrfs pool, creating a subvolume or snapshot is refused with ENOTTY, the answer of a
// filesystem without them: data written in a subvolume of its own would count against that
// subvolume's quota group, not the VPS's, and escape the VPS's disk limit.
#include "cisolation.h"
#include <errno.h>
#include <linux/audit.h>
#include <linux/btrfs.h>
#include <linux/filter.h>
#include <linux/seccomp.h>
#include <stddef.h>
#include <sys/prctl.h>
#include <sys/syscall.h>

#if defined(__x86_64__)
#define BERTH_AUDIT_ARCH AUDIT_ARCH_X86_64
#define BERTH_X32_BIT 0x40000000
#elif defined(__aarch64__)
#define BERTH_AUDIT_ARCH AUDIT_ARCH_AARCH64
#define BERTH_X32_BIT 0
#else
#error "unsupported architecture"
#endif

#ifndef SYS_kexec_file_load
#define SYS_kexec_file_load 320
#endif

#ifndef SYS_io_uring_setup
#define SYS_io_uring_setup 425
#define SYS_io_uring_enter 426
#define SYS_io_uring_register 427
#endif

#if __BYTE_ORDER__ == __ORDER_LITTLE_ENDIAN__
#define BERTH_LOW_WORD 0
#else
#define BERTH_LOW_WORD 4
#endif

#define DENY_WITH(nr, err) BPF_JUMP(BPF_JMP | BPF_JEQ | BPF_K, (nr), 0, 1), \
                 BPF_STMT(BPF_RET | BPF_K, SECCOMP_RET_ERRNO | ((err) & SECCOMP_RET_DATA))
#define DENY(nr) DENY_WITH(nr, EPERM)

int berth_install_baseline_seccomp(void) {
    struct sock_filter filter[] = {
        BPF_STMT(BPF_LD | BPF_W | BPF_ABS, offsetof(struct seccomp_data, arch)),
        BPF_JUMP(BPF_JMP | BPF_JEQ | BPF_K, BERTH_AUDIT_ARCH, 1, 0),
        BPF_STMT(BPF_RET | BPF_K, SECCOMP_RET_ERRNO | (ENOSYS & SECCOMP_RET_DATA)),
        BPF_STMT(BPF_LD | BPF_W | BPF_ABS, offsetof(struct seccomp_data, nr)),
#if BERTH_X32_BIT
        BPF_JUMP(BPF_JMP | BPF_JGE | BPF_K, BERTH_X32_BIT, 0, 1),
        BPF_STMT(BPF_RET | BPF_K, SECCOMP_RET_ERRNO | (ENOSYS & SECCOMP_RET_DATA)),
#endif
        DENY(SYS_kexec_load),
        DENY(SYS_kexec_file_load),
        DENY(SYS_open_by_handle_at),
        DENY(SYS_init_module),
        DENY(SYS_finit_module),
        DENY(SYS_delete_module),
        DENY(SYS_add_key),
        DENY(SYS_keyctl),
        DENY(SYS_request_key),
        DENY(SYS_bpf),
        DENY(SYS_perf_event_open),
        DENY(SYS_userfaultfd),
        DENY(SYS_acct),
        DENY(SYS_swapon),
        DENY(SYS_swapoff),
        DENY(SYS_syslog),
        DENY(SYS_settimeofday),
        DENY(SYS_clock_settime),
        DENY(SYS_clock_adjtime),
        DENY(SYS_lookup_dcookie),
#ifdef SYS_uselib
        DENY(SYS_uselib),
#endif
        DENY(SYS_nfsservctl),
        DENY_WITH(SYS_io_uring_setup, ENOSYS),
        DENY_WITH(SYS_io_uring_enter, ENOSYS),
        DENY_WITH(SYS_io_uring_register, ENOSYS),
        /* Not ioctl: skip its request checks (one load and four two-instruction checks). */
        BPF_JUMP(BPF_JMP | BPF_JEQ | BPF_K, SYS_ioctl, 0, 1 + 4 * 2),
        /* The request is an unsigned int: the kernel reads only the low 32 bits of the argument. */
        BPF_STMT(BPF_LD | BPF_W | BPF_ABS, offsetof(struct seccomp_data, args[1]) + BERTH_LOW_WORD),
        DENY_WITH(BTRFS_IOC_SUBVOL_CREATE, ENOTTY),
        DENY_WITH(BTRFS_IOC_SUBVOL_CREATE_V2, ENOTTY),
        DENY_WITH(BTRFS_IOC_SNAP_CREATE, ENOTTY),
        DENY_WITH(BTRFS_IOC_SNAP_CREATE_V2, ENOTTY),
        BPF_STMT(BPF_RET | BPF_K, SECCOMP_RET_ALLOW),
    };
    struct sock_fprog prog = { .len = (unsigned short)(sizeof filter / sizeof filter[0]), .filter = filter };
    return prctl(PR_SET_SECCOMP, SECCOMP_MODE_FILTER, &prog, 0, 0);
}
