// The cgroup-v2 device allowlist as a hand-assembled BPF program (what runc and crun generate).
// Context (struct bpf_cgroup_dev_ctx): u32 access_type = access << 16 | type, u32 major, u32 minor.
#include "cisolation.h"
#include <errno.h>
#include <linux/bpf.h>
#include <stdlib.h>
#include <string.h>
#include <sys/syscall.h>
#include <unistd.h>

#define INSN(c, d, s, o, i) ((struct bpf_insn){ .code = (c), .dst_reg = (d), .src_reg = (s), .off = (o), .imm = (i) })

int berth_load_device_filter(const struct berth_device_rule *rules, int count) {
    if (count < 0 || count > 64) { errno = EINVAL; return -1; }
    // 6 set-up instructions + at most 8 per rule + the final deny (2).
    struct bpf_insn *prog = calloc((size_t)(8 + 8 * count), sizeof *prog);
    if (!prog) return -1;
    int n = 0;
    prog[n++] = INSN(BPF_LDX | BPF_W | BPF_MEM, BPF_REG_2, BPF_REG_1, 0, 0);    // r2 = access_type
    prog[n++] = INSN(BPF_ALU64 | BPF_MOV | BPF_X, BPF_REG_3, BPF_REG_2, 0, 0);  // r3 = type
    prog[n++] = INSN(BPF_ALU64 | BPF_AND | BPF_K, BPF_REG_3, 0, 0, 0xffff);
    prog[n++] = INSN(BPF_ALU64 | BPF_RSH | BPF_K, BPF_REG_2, 0, 0, 16);         // r2 = access
    prog[n++] = INSN(BPF_LDX | BPF_W | BPF_MEM, BPF_REG_4, BPF_REG_1, 4, 0);    // r4 = major
    prog[n++] = INSN(BPF_LDX | BPF_W | BPF_MEM, BPF_REG_5, BPF_REG_1, 8, 0);    // r5 = minor
    for (int r = 0; r < count; r++) {
        const struct berth_device_rule *rule = &rules[r];
        int jumps[4], nj = 0;
        if (rule->type == 'b' || rule->type == 'c') {
            jumps[nj++] = n;
            prog[n++] = INSN(BPF_JMP | BPF_JNE | BPF_K, BPF_REG_3, 0, 0,
                             rule->type == 'b' ? BPF_DEVCG_DEV_BLOCK : BPF_DEVCG_DEV_CHAR);
        }
        // Every requested access bit must be among the rule's.
        prog[n++] = INSN(BPF_ALU64 | BPF_MOV | BPF_X, BPF_REG_6, BPF_REG_2, 0, 0);
        prog[n++] = INSN(BPF_ALU64 | BPF_AND | BPF_K, BPF_REG_6, 0, 0, (int)(~rule->access & 7));
        jumps[nj++] = n;
        prog[n++] = INSN(BPF_JMP | BPF_JNE | BPF_K, BPF_REG_6, 0, 0, 0);
        if (rule->major >= 0) { jumps[nj++] = n; prog[n++] = INSN(BPF_JMP | BPF_JNE | BPF_K, BPF_REG_4, 0, 0, rule->major); }
        if (rule->minor >= 0) { jumps[nj++] = n; prog[n++] = INSN(BPF_JMP | BPF_JNE | BPF_K, BPF_REG_5, 0, 0, rule->minor); }
        prog[n++] = INSN(BPF_ALU64 | BPF_MOV | BPF_K, BPF_REG_0, 0, 0, 1);          // allow
        prog[n++] = INSN(BPF_JMP | BPF_EXIT, 0, 0, 0, 0);
        for (int j = 0; j < nj; j++) prog[jumps[j]].off = (short)(n - jumps[j] - 1);  // to the next rule
    }
    prog[n++] = INSN(BPF_ALU64 | BPF_MOV | BPF_K, BPF_REG_0, 0, 0, 0);              // deny
    prog[n++] = INSN(BPF_JMP | BPF_EXIT, 0, 0, 0, 0);

    union bpf_attr attr;
    memset(&attr, 0, sizeof attr);
    attr.prog_type = BPF_PROG_TYPE_CGROUP_DEVICE;
    attr.insns = (unsigned long)prog;
    attr.insn_cnt = (unsigned)n;
    attr.license = (unsigned long)"Apache-2.0";
    int prog_fd = (int)syscall(SYS_bpf, BPF_PROG_LOAD, &attr, sizeof attr);  // close-on-exec
    int saved = errno;
    free(prog);
    errno = saved;
    return prog_fd;
}

int berth_attach_device_program(int cgroup_fd, int prog_fd) {
    union bpf_attr attr;
    memset(&attr, 0, sizeof attr);
    attr.target_fd = (unsigned)cgroup_fd;
    attr.attach_bpf_fd = (unsigned)prog_fd;
    attr.attach_type = BPF_CGROUP_DEVICE;
    return (int)syscall(SYS_bpf, BPF_PROG_ATTACH, &attr, sizeof attr);
}
