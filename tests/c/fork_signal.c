/*
 * fork_signal.c - fork() from a signal handler in a single-threaded process.
 *
 * Build:  cc -O2 -pthread -o fork_signal fork_signal.c
 * Run:    ./fork_signal [seconds (default 4)]
 *
 * The shape of glibc's tst-mallocfork2: a helper process sends SIGUSR1 to
 * the test process every 100-600 us.  The SIGUSR1 handler calls fork(); the
 * child calls _exit(0) at once and the handler waits for it.  Meanwhile
 * the single thread of the test process loops: fork() (every 7th round,
 * child _exit(0), reaped), free() of a random slot of 1009 and malloc() of
 * 0..70000 bytes into it (0.4..4 MiB once in 32 rounds, to reach the
 * allocator's slow paths).  The signal lands in the middle of malloc, free
 * and fork - including inside an allocator's own fork handlers.  glibc
 * takes no malloc locks in fork() while the process has a single thread,
 * so fork is async-signal-safe with respect to malloc there; an allocator
 * whose prepare handler (or slow path) holds a lock that the nested fork's
 * prepare handler waits for hangs.
 *
 * Checks: every child exits 0, malloc never returns NULL, blocks keep their
 * contents, the process finishes (a 20 s watchdog alarm reports a hang,
 * and says whether it is stuck in the handler).
 *
 * Output: "FAIL: ..." lines, then   fork_signal: N passed, M failed
 */
#define _GNU_SOURCE
#include <errno.h>
#include <signal.h>
#include <stdarg.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/prctl.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

#include "testutil.h"

static void *(*volatile x_malloc)(size_t) = malloc;
static void (*volatile x_free)(void *) = free;

#define SLOTS 1009
#define MAX_SMALL 70000
#define WATCHDOG_S 20

static pid_t sender_pid;

/* Written by the SIGUSR1 handler. */
static volatile sig_atomic_t in_handler, handler_forks, handler_errors, got_signal;
/* Children being waited for, killed by the watchdog. */
static volatile pid_t handler_child, loop_child;
/* Where the main loop is (for the watchdog). */
static volatile sig_atomic_t where; /* 0 loop, 1 fork, 2 free, 3 malloc, 4 waitpid */
static volatile long rounds;

static void on_usr1(int sig)
{
    (void)sig;
    int saved = errno;
    got_signal = 1;
    in_handler = 1;
    pid_t pid = fork();
    if (pid == 0)
        _exit(0);
    handler_child = pid;
    if (pid < 0) {
        handler_errors++;
    } else {
        int st = 0;
        pid_t r;
        while ((r = waitpid(pid, &st, 0)) < 0 && errno == EINTR)
            ;
        if (r != pid || !WIFEXITED(st) || WEXITSTATUS(st) != 0)
            handler_errors++;
        handler_forks++;
    }
    handler_child = 0;
    in_handler = 0;
    errno = saved;
}

static void on_alarm(int sig)
{
    (void)sig;
    static const char *const names[] = {"own code", "fork()", "free()", "malloc()", "waitpid()"};
    kill_child(sender_pid);
    kill_child(handler_child);
    kill_child(loop_child);
    say("FAIL: watchdog: no end after %d s: %ld rounds, %ld forks in the handler; stuck %s%s "
        "(a fork handler waiting for a lock its own thread holds?)\n",
        WATCHDOG_S, rounds, (long)handler_forks,
        in_handler ? "in the SIGUSR1 handler's fork(), which interrupted the loop's " : "in the loop's ",
        names[where]);
    watchdog_exit("fork_signal");
}

static void sender(pid_t target)
{
    prctl(PR_SET_PDEATHSIG, SIGKILL);
    if (getppid() != target)
        _exit(0);
    uint64_t rng = 12345;
    for (;;) {
        if (kill(target, SIGUSR1) != 0)
            _exit(0);
        struct timespec ts = {0, 100000 + (long)(xorshift(&rng) % 500000)};
        nanosleep(&ts, NULL);
    }
}

static void *slot[SLOTS];
static size_t slot_size[SLOTS];

int main(int argc, char **argv)
{
    double seconds = argc > 1 ? atof(argv[1]) : 4;
    setvbuf(stdout, NULL, _IONBF, 0);

    struct sigaction sa;
    memset(&sa, 0, sizeof sa);
    sa.sa_handler = on_alarm;
    sigemptyset(&sa.sa_mask);
    sigaction(SIGALRM, &sa, NULL);
    sa.sa_handler = on_usr1;
    sigaction(SIGUSR1, &sa, NULL);
    alarm(WATCHDOG_S);

    pid_t self = getpid();
    sender_pid = fork();
    if (sender_pid < 0) {
        say("FAIL: fork of the signal sender failed\nfork_signal: 0 passed, 1 failed\n");
        return 1;
    }
    if (sender_pid == 0)
        sender(self);

    uint64_t rng = 1;
    long loop_forks = 0, loop_fork_fails = 0, nulls = 0, corrupt = 0;
    long sig_in_fork = 0, sig_in_free = 0, sig_in_malloc = 0;
    double t0 = now();
    while (now() - t0 < seconds) {
        rounds++;
        unsigned i = (unsigned)(xorshift(&rng) % SLOTS);
        size_t n = (xorshift(&rng) % 32 == 0) ? 400000 + (size_t)(xorshift(&rng) % (4u << 20))
                                              : (size_t)(xorshift(&rng) % MAX_SMALL);
        if (xorshift(&rng) % 7 == 0) {
            got_signal = 0;
            where = 1;
            pid_t pid = fork();
            where = 0;
            sig_in_fork += got_signal;
            if (pid == 0)
                _exit(0);
            if (pid < 0) {
                loop_fork_fails++;
            } else {
                loop_child = pid;
                int st = 0;
                where = 4;
                while (waitpid(pid, &st, 0) < 0 && errno == EINTR)
                    ;
                where = 0;
                loop_child = 0;
                if (!WIFEXITED(st) || WEXITSTATUS(st) != 0)
                    loop_fork_fails++;
                loop_forks++;
            }
        }
        unsigned char *old = slot[i];
        if (old && slot_size[i] > 0 &&
            (old[0] != (unsigned char)slot_size[i] ||
             (slot_size[i] > 1 && old[slot_size[i] - 1] != (unsigned char)i)))
            corrupt++;
        got_signal = 0;
        where = 2;
        x_free(old);
        where = 0;
        sig_in_free += got_signal;
        got_signal = 0;
        where = 3;
        unsigned char *p = x_malloc(n);
        where = 0;
        sig_in_malloc += got_signal;
        slot[i] = p;
        slot_size[i] = p ? n : 0;
        if (!p) {
            nulls++;
        } else if (n > 0) {
            /* The size in the first byte, the slot in the last: a 1-byte
             * block holds only the size (it reported "corrupted" before). */
            p[n - 1] = (unsigned char)i;
            p[0] = (unsigned char)n;
        }
    }
    kill(sender_pid, SIGKILL);
    int st;
    while (waitpid(sender_pid, &st, 0) < 0 && errno == EINTR)
        ;
    sender_pid = 0;
    alarm(0);
    for (unsigned i = 0; i < SLOTS; i++)
        x_free(slot[i]);

    check(loop_fork_fails == 0, "%ld of %ld forks in the loop failed or their child did not exit 0",
          loop_fork_fails, loop_forks);
    check(handler_errors == 0, "%ld forks in the SIGUSR1 handler failed or their child did not exit 0",
          (long)handler_errors);
    check(nulls == 0, "malloc returned NULL %ld times", nulls);
    check(corrupt == 0, "%ld blocks corrupted", corrupt);
    check(handler_forks > 0, "the SIGUSR1 handler never forked (no signal arrived?)");
    say("note: %ld rounds, %ld forks in the loop, %ld in the handler; signals during fork %ld, free %ld, "
        "malloc %ld\n",
        rounds, loop_forks, (long)handler_forks, sig_in_fork, sig_in_free, sig_in_malloc);
    say("fork_signal: %ld passed, %ld failed\n", n_passed, n_failed);
    return n_failed ? 1 : 0;
}
