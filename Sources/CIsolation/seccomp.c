// The denylist of LXC's common.seccomp as a hand-assembled classic BPF program. Hand-written
// because the list is six syscalls; libseccomp comes with the full profile of the hardening work.
#include "cisolation.h"
#include <errno.h>
#include <linux/audit.h>
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

#define DENY(nr) BPF_JUMP(BPF_JMP | BPF_JEQ | BPF_K, (nr), 0, 1), \
                 BPF_STMT(BPF_RET | BPF_K, SECCOMP_RET_ERRNO | (EPERM & SECCOMP_RET_DATA))

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
        BPF_STMT(BPF_RET | BPF_K, SECCOMP_RET_ALLOW),
    };
    struct sock_fprog prog = { .len = (unsigned short)(sizeof filter / sizeof filter[0]), .filter = filter };
    return prctl(PR_SET_SECCOMP, SECCOMP_MODE_FILTER, &prog, 0, 0);
}
