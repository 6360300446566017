// berth-monitor: the per-VPS monitor between boots, in C with no runtime of its own.
//
// berth-spawn (Swift) boots a VPS and then execs this program in its own process: same pid,
// same mount namespace, same open descriptors. While the VPS runs, this loop is all its monitor
// does: keep the console's history in a ring, serve `berth console` on the console socket and
// wait for init to exit. It holds under a quarter of the memory berth-spawn held as the monitor
// (the static Swift runtime alone dirtied more than this whole program). When init exits it
// execs berth-spawn back (`berth-spawn resume`), which reboots the VPS or tears it down.
//
//   berth-spawn start / resume          berth-monitor (this program)
//     | boot: clone init, report ok        |
//     | spec and console history -> memfds |
//     | exec(berth-monitor, fds) --------->| ring <- history memfd
//     |                                    | loop: console <-> ring, client; SIGCHLD
//     |                                    | init exited: history -> new memfd
//     |<- exec(berth-spawn resume, status) |
//     | reboot: boot again, exec monitor   |
//     | stop: network, unmount, exit file  |
//
// Every descriptor arrives by number on the command line, as berth-spawn opened it; a failed
// exec back leaves the exit file the agent reads and ends the process (the agent then undoes the
// VPS's network and cgroups, and the monitor's mount namespace goes with it).
#define _GNU_SOURCE
#include <errno.h>
#include <fcntl.h>
#include <poll.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <sys/signalfd.h>
#include <sys/socket.h>
#include <sys/syscall.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

#include "helper_protocol.h"

struct options {
    int self;               // berth-spawn's own executable (O_PATH), run again when init exits
    int monitor;            // this program as berth-spawn opened it, handed back for the next boot
    const char *run_dir;    // the VPS's run directory (exit file)
    pid_t init;
    int master, slave, listener, signals, client, spec, history;
    size_t capacity;        // console ring bytes
};

// The newest `capacity` console bytes: `ring` grows up to `capacity`, then wraps at `ring_start`.
static unsigned char *ring;
static size_t ring_size, ring_allocated, ring_start;

static void ring_append(const unsigned char *bytes, size_t n, size_t capacity) {
    if (n > capacity) { bytes += n - capacity; n = capacity; }
    for (size_t i = 0; i < n; i++) {
        if (ring_size < capacity) {
            if (ring_size == ring_allocated) {
                size_t grown = ring_allocated ? ring_allocated * 2 : 4096;
                if (grown > capacity) grown = capacity;
                unsigned char *larger = realloc(ring, grown);
                if (!larger) return; // keep what there is: history is best effort
                ring = larger;
                ring_allocated = grown;
            }
            ring[ring_size++] = bytes[i];
        } else {
            ring[ring_start] = bytes[i];
            ring_start = (ring_start + 1) % capacity;
        }
    }
}

// Calls `out` with the history oldest first, in at most two pieces.
static void ring_contents(void (*out)(int, const unsigned char *, size_t), int fd) {
    if (ring_size == 0) return;
    out(fd, ring + ring_start, ring_size - ring_start);
    if (ring_start) out(fd, ring, ring_start);
}

static void write_all(int fd, const unsigned char *bytes, size_t n) {
    while (n > 0) {
        ssize_t done = write(fd, bytes, n);
        if (done < 0 && errno == EINTR) continue;
        if (done <= 0) return;
        bytes += done;
        n -= (size_t)done;
    }
}

static int client = -1;

// Never blocks the VPS's console: a client that cannot keep up misses live bytes (the ring
// keeps them) and one that went away is dropped.
static void send_to_client(int unused, const unsigned char *bytes, size_t n) {
    (void)unused;
    while (n > 0 && client >= 0) {
        ssize_t done = send(client, bytes, n, MSG_DONTWAIT | MSG_NOSIGNAL);
        if (done < 0 && errno == EINTR) continue;
        if (done < 0 && errno == EAGAIN) return;
        if (done <= 0) { close(client); client = -1; return; }
        bytes += done;
        n -= (size_t)done;
    }
}

// One buffer for every read: the history at start, then the console and the client.
static unsigned char buffer[4096];

static void load_history(int fd, size_t capacity) {
    ssize_t n;
    off_t offset = 0;
    while ((n = pread(fd, buffer, sizeof buffer, offset)) > 0) {
        ring_append(buffer, (size_t)n, capacity);
        offset += n;
    }
    close(fd);
}

static int parse_int(const char *text, long long *value) {
    char *end;
    errno = 0;
    *value = strtoll(text, &end, 10);
    return errno == 0 && end != text && *end == 0 ? 0 : -1;
}

static int parse(int argc, char **argv, struct options *o) {
    memset(o, 0, sizeof *o);
    o->client = -1;
    o->monitor = -1;
    for (int i = 1; i + 1 < argc; i += 2) {
        const char *key = argv[i], *text = argv[i + 1];
        if (!strcmp(key, BERTH_OPTION_RUN_DIR)) { o->run_dir = text; continue; }
        long long value;
        if (parse_int(text, &value) != 0) return -1;
        if (!strcmp(key, BERTH_OPTION_INIT)) o->init = (pid_t)value;
        else if (!strcmp(key, BERTH_OPTION_SELF)) o->self = (int)value;
        else if (!strcmp(key, BERTH_OPTION_MONITOR)) o->monitor = (int)value;
        else if (!strcmp(key, BERTH_OPTION_MASTER)) o->master = (int)value;
        else if (!strcmp(key, BERTH_OPTION_SLAVE)) o->slave = (int)value;
        else if (!strcmp(key, BERTH_OPTION_LISTENER)) o->listener = (int)value;
        else if (!strcmp(key, BERTH_OPTION_SIGNALS)) o->signals = (int)value;
        else if (!strcmp(key, BERTH_OPTION_CLIENT)) o->client = (int)value;
        else if (!strcmp(key, BERTH_OPTION_SPEC)) o->spec = (int)value;
        else if (!strcmp(key, BERTH_OPTION_HISTORY)) o->history = (int)value;
        else if (!strcmp(key, BERTH_OPTION_CAPACITY)) o->capacity = (size_t)value;
        else return -1;
    }
    return o->run_dir && o->self > 2 && o->init > 0 && o->master > 2 && o->listener > 2 && o->signals > 2
        && o->spec > 2 && o->history > 2 && o->capacity >= BERTH_MINIMUM_CAPACITY ? 0 : -1;
}

static void note(const char *text) { write_all(2, (const unsigned char *)text, strlen(text)); }

// The same record berth-spawn's teardown leaves, for the agent (VPSManager.exitReason).
static void give_up(const struct options *o, const char *why) {
    char path[4096], tmp[4096], record[512];
    snprintf(path, sizeof path, "%s/" BERTH_EXIT_FILE, o->run_dir);
    snprintf(tmp, sizeof tmp, "%s/" BERTH_EXIT_FILE ".tmp", o->run_dir);
    int n = snprintf(record, sizeof record, BERTH_EXIT_REASON_KEY BERTH_EXIT_MONITOR_FAILED "%s\n" BERTH_EXIT_TIME_KEY "%lld\n",
                     why, (long long)time(NULL));
    int fd = open(tmp, O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, 0644);
    if (fd >= 0) {
        write_all(fd, (const unsigned char *)record, (size_t)n);
        close(fd);
        rename(tmp, path);
    }
    note("berth-monitor: ");
    note(why);
    note("\n");
    exit(1);
}

static char numbers[16][24];
static int numbers_used;

static char *number(long long value) {
    snprintf(numbers[numbers_used], sizeof numbers[0], "%lld", value);
    return numbers[numbers_used++];
}

// The fence of an HA VPS (Docs/ha.md): when the VPS's run directory holds the armed file and
// the node's lease (written by the agent after each heartbeat the controller answered) has
// lapsed on CLOCK_BOOTTIME, or cannot be read, the VPS is killed here, whether the agent runs
// or not. Its init's death ends the PID namespace; berth-spawn resume then tears it down (its
// network first, so its addresses are withdrawn) and, asked to stop, does not boot it again.
static int fenced;

static int lease_lapsed(const struct options *o) {
    char path[4096], text[256];
    snprintf(path, sizeof path, "%s/../" BERTH_LEASE_FILE, o->run_dir);
    int fd = open(path, O_RDONLY | O_CLOEXEC);
    if (fd < 0) return 1;
    ssize_t n = read(fd, text, sizeof text - 1);
    close(fd);
    if (n <= 0) return 1;
    text[n] = 0;
    char *at = strstr(text, BERTH_LEASE_EXPIRES_KEY);
    if (!at) return 1;
    char *end;
    errno = 0;
    unsigned long long expires = strtoull(at + strlen(BERTH_LEASE_EXPIRES_KEY), &end, 10);
    if (errno || end == at + strlen(BERTH_LEASE_EXPIRES_KEY)) return 1;
    struct timespec now;
    clock_gettime(CLOCK_BOOTTIME, &now);
    return (unsigned long long)now.tv_sec * 1000000000ULL + (unsigned long long)now.tv_nsec >= expires;
}

static void check_fence(const struct options *o) {
    char path[4096];
    if (fenced) return;
    snprintf(path, sizeof path, "%s/" BERTH_LEASE_ARMED_FILE, o->run_dir);
    if (access(path, F_OK) != 0 || !lease_lapsed(o)) return;
    fenced = 1;
    char record[128];
    int n = snprintf(record, sizeof record, "the node's lease lapsed at %lld\n", (long long)time(NULL));
    snprintf(path, sizeof path, "%s/" BERTH_LEASE_FENCED_FILE, o->run_dir);
    int fd = open(path, O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, 0644);
    if (fd >= 0) {
        write_all(fd, (const unsigned char *)record, (size_t)n);
        close(fd);
    }
    snprintf(path, sizeof path, "%s/" BERTH_STOP_REQUEST_FILE, o->run_dir);
    fd = open(path, O_WRONLY | O_CREAT | O_CLOEXEC, 0644);
    if (fd >= 0) close(fd);
    note("berth-monitor: the node's lease lapsed: fencing the VPS\n");
    kill(o->init, SIGKILL);
}

// Hands the VPS back to berth-spawn with init's wait status and the console's history.
static void resume(const struct options *o, int status) {
    int history = memfd_create(BERTH_HISTORY_MEMFD_NAME, 0);
    if (history < 0) give_up(o, "memfd_create for the console history failed");
    ring_contents(write_all, history);
    if (client >= 0) fcntl(client, F_SETFD, 0); // accepted here close-on-exec; berth-spawn takes it over
    char *argv[32];
    int argc = 0;
    argv[argc++] = "berth-spawn";
    argv[argc++] = BERTH_RESUME_COMMAND;
    argv[argc++] = BERTH_OPTION_STATUS;   argv[argc++] = number(status);
    argv[argc++] = BERTH_OPTION_RUN_DIR;  argv[argc++] = (char *)o->run_dir;
    argv[argc++] = BERTH_OPTION_SELF;     argv[argc++] = number(o->self);
    argv[argc++] = BERTH_OPTION_MONITOR;  argv[argc++] = number(o->monitor);
    argv[argc++] = BERTH_OPTION_INIT;     argv[argc++] = number(o->init);
    argv[argc++] = BERTH_OPTION_MASTER;   argv[argc++] = number(o->master);
    argv[argc++] = BERTH_OPTION_SLAVE;    argv[argc++] = number(o->slave);
    argv[argc++] = BERTH_OPTION_LISTENER; argv[argc++] = number(o->listener);
    argv[argc++] = BERTH_OPTION_SIGNALS;  argv[argc++] = number(o->signals);
    argv[argc++] = BERTH_OPTION_CLIENT;   argv[argc++] = number(client);
    argv[argc++] = BERTH_OPTION_SPEC;     argv[argc++] = number(o->spec);
    argv[argc++] = BERTH_OPTION_HISTORY;  argv[argc++] = number(history);
    argv[argc++] = BERTH_OPTION_CAPACITY; argv[argc++] = number((long long)o->capacity);
    argv[argc] = NULL;
    char *environment[] = { NULL };
    // The very binary that booted the VPS, even if an agent upgrade has replaced the file since.
    syscall(SYS_execveat, o->self, "", argv, environment, AT_EMPTY_PATH);
    give_up(o, "cannot run berth-spawn again to end or reboot the VPS");
}

int main(int argc, char **argv) {
    struct options o;
    if (parse(argc, argv, &o) != 0) {
        note("usage: berth-monitor --self FD --run-dir DIR --init PID --master FD --slave FD --listener FD "
             "--signals FD --client FD --spec FD --history FD --capacity BYTES\n"
             "(started by berth-spawn, not meant to be run by hand)\n");
        return 2;
    }
    client = o.client;
    load_history(o.history, o.capacity);
    // This monitor enforces fences: the agent arms one only where it finds this mark.
    char capable[4096];
    snprintf(capable, sizeof capable, "%s/" BERTH_LEASE_CAPABLE_FILE, o.run_dir);
    int mark = open(capable, O_WRONLY | O_CREAT | O_CLOEXEC, 0644);
    if (mark >= 0) close(mark);
    // Init may have exited between berth-spawn's last look and this exec: look once first.
    int status;
    if (waitpid(o.init, &status, WNOHANG) == o.init) resume(&o, status);

    for (;;) {
        // The client polled below: an attach in this round replaces it, and the new one has
        // not been polled (its socket blocks).
        int polled_client = client;
        struct pollfd fds[4] = {
            { .fd = o.master, .events = POLLIN },
            { .fd = o.listener, .events = POLLIN },
            { .fd = o.signals, .events = POLLIN },
            { .fd = client, .events = POLLIN },
        };
        int ready = poll(fds, client >= 0 ? 4 : 3, BERTH_LEASE_CHECK_MILLISECONDS);
        if (ready < 0) {
            if (errno == EINTR) continue;
            give_up(&o, "poll failed");
        }
        check_fence(&o);
        if (ready == 0) continue;
        if (fds[0].revents & POLLIN) {
            ssize_t n = read(o.master, buffer, sizeof buffer);
            if (n > 0) {
                ring_append(buffer, (size_t)n, o.capacity);
                if (client >= 0) send_to_client(-1, buffer, (size_t)n);
            }
        }
        if (fds[1].revents & POLLIN) {
            int accepted = accept4(o.listener, NULL, NULL, SOCK_CLOEXEC | SOCK_NONBLOCK);
            if (accepted >= 0) {
                // One operator at a time, like a serial console: a new attach takes it over.
                if (client >= 0) close(client);
                client = accepted;
                ring_contents(send_to_client, -1);
            }
        }
        if (client >= 0 && client == polled_client && fds[3].revents) {
            ssize_t n = read(client, buffer, sizeof buffer);
            if (n > 0) {
                write_all(o.master, buffer, (size_t)n);
            } else if (n == 0 || (errno != EAGAIN && errno != EINTR)) {
                close(client);
                client = -1;
            }
        }
        if (fds[2].revents & POLLIN) {
            struct signalfd_siginfo info;
            while (read(o.signals, &info, sizeof info) > 0) {}
            if (waitpid(o.init, &status, WNOHANG) == o.init) resume(&o, status);
        }
    }
}
