// fork+exec for the multi-threaded agent. The child runs between vfork and execve on the
// parent's stack, so it may only touch async-signal-safe calls and the three result slots below.
#include "cisolation.h"
#include <errno.h>
#include <fcntl.h>
#include <signal.h>
#include <string.h>
#include <sys/syscall.h>
#include <unistd.h>
#include <pthread.h>
#include <sys/wait.h>

#ifndef SYS_pidfd_open
#define SYS_pidfd_open 434
#endif

pid_t berth_spawn(const char *path, char *const argv[], char *const envp[],
                  const int *fds, int nfds, int new_session,
                  int *pidfd, int *stage, int *err) {
    sigset_t all, old;
    sigfillset(&all);
    // Block every signal across vfork so no handler of the parent runs on the shared stack.
    pthread_sigmask(SIG_BLOCK, &all, &old);
    volatile int child_stage = 0, child_err = 0;
    *pidfd = -1;
    pid_t pid = vfork();
    if (pid == 0) {
        struct sigaction dfl;
        memset(&dfl, 0, sizeof dfl);
        dfl.sa_handler = SIG_DFL;
        for (int sig = 1; sig < NSIG; sig++) sigaction(sig, &dfl, NULL);
        if (new_session && setsid() < 0) { child_stage = BERTH_SPAWN_SETSID; goto fail; }
        // Move every source above the target range first, so dup2 into place cannot clobber
        // a source that is itself a target number.
        int moved[64];
        if (nfds > 64) { errno = EINVAL; child_stage = BERTH_SPAWN_DUP; goto fail; }
        for (int i = 0; i < nfds; i++) {
            moved[i] = fcntl(fds[i], F_DUPFD, nfds > 3 ? nfds : 3);
            if (moved[i] < 0) { child_stage = BERTH_SPAWN_DUP; goto fail; }
        }
        for (int i = 0; i < nfds; i++) {
            if (dup2(moved[i], i) < 0) { child_stage = BERTH_SPAWN_DUP; goto fail; }
        }
        // Everything past the placed fds goes: no agent socket, log or pipe may reach a VPS.
        if (syscall(SYS_close_range, (unsigned)nfds, ~0U, 0) < 0) {
            for (int fd = nfds; fd < 65536; fd++) close(fd);
        }
        sigset_t none;
        sigemptyset(&none);
        sigprocmask(SIG_SETMASK, &none, NULL);
        execve(path, argv, envp);
        child_stage = BERTH_SPAWN_EXEC;
    fail:
        child_err = errno;
        if (child_stage == 0) child_stage = BERTH_SPAWN_EXEC;
        _exit(127);
    }
    int saved = errno;
    pthread_sigmask(SIG_SETMASK, &old, NULL);
    if (pid < 0) { *stage = BERTH_SPAWN_FORK; *err = saved; return -1; }
    if (child_stage != 0) {
        // The child already _exit'ed: reap it here so no zombie is left for the caller.
        int status;
        while (waitpid(pid, &status, 0) < 0 && errno == EINTR) {}
        *stage = child_stage;
        *err = child_err;
        return -1;
    }
    int fd = (int)syscall(SYS_pidfd_open, pid, 0);
    *pidfd = fd;
    *stage = 0;
    *err = 0;
    return pid;
}
