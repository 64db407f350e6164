/*
 * fork_atfork_alloc.c - pthread_atfork handlers that allocate.
 *
 * Build:  cc -O2 -pthread -o fork_atfork_alloc fork_atfork_alloc.c
 * Run:    ./fork_atfork_alloc [single|threaded|child-handler]
 *         (default: single and threaded)
 *
 * A constructor registers prepare/parent/child handlers with
 * pthread_atfork() before the program makes any allocation, so they are
 * registered before the ones an allocator installs at its first allocation
 * (which main makes next, before it forks): the prepare handler runs after
 * the allocator's (handlers registered earlier prepare later) and the
 * parent/child handlers run before the allocator's.  Every handler does free(malloc(16 MiB)) (touching the first
 * and last byte) and a small malloc/fill/check/free.  glibc calls malloc
 * from its own fork code after all prepare handlers and before the
 * parent/child ones, so this is legal there; an allocator whose prepare
 * handler leaves its locks held across the others deadlocks (in the
 * parent's prepare handler or in the child's child handler).
 *
 * Phases:
 *   single    main forks 6 times, no other thread running
 *   threaded  a second thread forks 6 times while a third thread allocates,
 *             fills, checks and frees blocks of up to 1 MiB in a loop
 *   child-handler  (only when asked for) as single, but only the child
 *             handler allocates: the prepare and parent handlers just
 *             count, so the parent cannot hang in them and a deadlock
 *             in the child handler shows as a killed child
 * Each child checks that its child handler ran and allocated, does a few
 * mallocs of its own and exits 0.  The parent waits up to 5 s per child
 * (then kills it and reports a hang) and checks the exit status and that
 * the prepare and parent handlers ran once per fork.  A watchdog alarm
 * (15 s per phase) reports a hang of the parent itself.
 *
 * Output: "FAIL: ..." lines, then   fork_atfork_alloc: N passed, M failed
 */
#define _GNU_SOURCE
#include <errno.h>
#include <malloc.h>
#include <pthread.h>
#include <signal.h>
#include <stdarg.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

#include "testutil.h"

static void *(*volatile x_malloc)(size_t) = malloc;
static void (*volatile x_free)(void *) = free;

#define BIG ((size_t)16 << 20)
#define SMALL 100
#define FORKS_PER_PHASE 6
#define CHILD_WAIT_MS 5000
#define WATCHDOG_S 15

static int atfork_registered;   /* set by the constructor */
static size_t committed_at_ctor; /* mallinfo2().arena after registering */

/* Handler counters; in a child they are the child's copies. */
static long prepare_runs, parent_runs, child_runs; /* atomic */
static long handler_failures;                      /* atomic */
static const char *volatile phase = "startup";

/* What every handler does: a 16 MiB block (first and last byte touched)
 * and a small block, both freed.  Counts a failure instead of printing
 * (the handlers run inside fork). */
static void handler_work(long *counter)
{
    unsigned char *big = x_malloc(BIG);
    if (big) {
        big[0] = 1;
        big[BIG - 1] = 2;
        if (big[0] != 1 || big[BIG - 1] != 2)
            __atomic_add_fetch(&handler_failures, 1, __ATOMIC_RELAXED);
        x_free(big);
    } else {
        __atomic_add_fetch(&handler_failures, 1, __ATOMIC_RELAXED);
    }
    unsigned char *s = x_malloc(SMALL);
    if (s) {
        memset(s, 0x5a, SMALL);
        for (int i = 0; i < SMALL; i++)
            if (s[i] != 0x5a) {
                __atomic_add_fetch(&handler_failures, 1, __ATOMIC_RELAXED);
                break;
            }
        x_free(s);
    } else {
        __atomic_add_fetch(&handler_failures, 1, __ATOMIC_RELAXED);
    }
    __atomic_add_fetch(counter, 1, __ATOMIC_RELAXED);
}

static int only_child_allocates; /* child-handler mode */

static void on_prepare(void)
{
    if (only_child_allocates)
        __atomic_add_fetch(&prepare_runs, 1, __ATOMIC_RELAXED);
    else
        handler_work(&prepare_runs);
}

static void on_parent(void)
{
    if (only_child_allocates)
        __atomic_add_fetch(&parent_runs, 1, __ATOMIC_RELAXED);
    else
        handler_work(&parent_runs);
}

static void on_child(void) { handler_work(&child_runs); }

/* Runs before main and before the program's first allocation: nothing in
 * here may allocate before pthread_atfork (glibc keeps the first fork
 * handlers in static storage). */
__attribute__((constructor)) static void register_handlers(void)
{
    atfork_registered = pthread_atfork(on_prepare, on_parent, on_child) == 0;
    committed_at_ctor = mallinfo2().arena;
}

/* The child being waited for (killed by the watchdog, so that no
 * deadlocked child outlives the test). */
static volatile pid_t current_child;

static void watchdog(int sig)
{
    (void)sig;
    kill_child(current_child);
    say("FAIL: watchdog: phase '%s' still running after %d s (deadlock in a fork handler?)\n",
        phase, WATCHDOG_S);
    watchdog_exit("fork_atfork_alloc");
}

/* Runs in the child after fork() returned 0: only async-signal-safe calls
 * and malloc/free; exits with a status that says what went wrong. */
static void child_body(void)
{
    if (__atomic_load_n(&child_runs, __ATOMIC_RELAXED) != 1)
        _exit(3);
    if (__atomic_load_n(&handler_failures, __ATOMIC_RELAXED) != 0)
        _exit(4);
    for (int i = 0; i < 200; i++) {
        size_t n = (size_t)(i * 997 % 70000) + 1;
        unsigned char *p = x_malloc(n);
        if (!p)
            _exit(5);
        p[0] = (unsigned char)i;
        p[n - 1] = (unsigned char)i;
        x_free(p);
    }
    _exit(0);
}

/* Waits for `pid` for up to CHILD_WAIT_MS; kills it if it is still there.
 * Returns 1 when it exited 0. */
static int reap(pid_t pid, const char *what, int round)
{
    int st = 0;
    for (long waited = 0;; waited += 5) {
        pid_t r = waitpid(pid, &st, WNOHANG);
        if (r == pid)
            break;
        if (r < 0 && errno != EINTR) {
            check(0, "%s fork %d: waitpid: %s", what, round, strerror(errno));
            return 0;
        }
        if (waited >= CHILD_WAIT_MS) {
            kill(pid, SIGKILL);
            while (waitpid(pid, &st, 0) < 0 && errno == EINTR)
                ;
            check(0, "%s fork %d: child still running after %d s, killed (deadlocked in the child handler?)",
                  what, round, CHILD_WAIT_MS / 1000);
            return 0;
        }
        sleep_ms(5);
    }
    if (WIFEXITED(st) && WEXITSTATUS(st) == 0)
        return 1;
    static const char *const why[] = {[3] = "the child handler did not run once",
                                      [4] = "an allocation in a fork handler failed",
                                      [5] = "malloc returned NULL in the child"};
    if (WIFEXITED(st))
        check(0, "%s fork %d: child exited with status %d%s%s", what, round, WEXITSTATUS(st),
              WEXITSTATUS(st) >= 3 && WEXITSTATUS(st) <= 5 ? ": " : "",
              WEXITSTATUS(st) >= 3 && WEXITSTATUS(st) <= 5 ? why[WEXITSTATUS(st)] : "");
    else
        check(0, "%s fork %d: child killed by signal %d (%s)", what, round,
              WIFSIGNALED(st) ? WTERMSIG(st) : 0, WIFSIGNALED(st) ? strsignal(WTERMSIG(st)) : "?");
    return 0;
}

/* Forks `n` times from the calling thread; returns the number of children
 * that exited 0. */
static int fork_rounds(int n, const char *what)
{
    int good = 0;
    for (int round = 0; round < n; round++) {
        long pre = __atomic_load_n(&prepare_runs, __ATOMIC_RELAXED);
        long par = __atomic_load_n(&parent_runs, __ATOMIC_RELAXED);
        pid_t pid = fork();
        if (pid < 0) {
            check(0, "%s fork %d: fork() failed: %s", what, round, strerror(errno));
            continue;
        }
        if (pid == 0)
            child_body();
        current_child = pid;
        check(__atomic_load_n(&prepare_runs, __ATOMIC_RELAXED) == pre + 1 &&
                  __atomic_load_n(&parent_runs, __ATOMIC_RELAXED) == par + 1,
              "%s fork %d: prepare/parent handlers ran %ld/%ld times, want 1/1", what, round,
              __atomic_load_n(&prepare_runs, __ATOMIC_RELAXED) - pre,
              __atomic_load_n(&parent_runs, __ATOMIC_RELAXED) - par);
        good += reap(pid, what, round);
        current_child = 0;
    }
    return good;
}

static int stop_alloc; /* atomic */
static long alloc_rounds, alloc_errors; /* atomic */

static void *alloc_thread(void *arg)
{
    (void)arg;
    uint64_t s = 88172645463325252ull;
    enum { RING = 16 };
    unsigned char *ring[RING] = {0};
    size_t size[RING] = {0};
    unsigned k = 0;
    while (!__atomic_load_n(&stop_alloc, __ATOMIC_RELAXED)) {
        unsigned i = k++ % RING;
        if (ring[i]) {
            if (ring[i][0] != (unsigned char)size[i] || ring[i][size[i] - 1] != (unsigned char)(size[i] >> 3))
                __atomic_add_fetch(&alloc_errors, 1, __ATOMIC_RELAXED);
            x_free(ring[i]);
        }
        s ^= s << 13;
        s ^= s >> 7;
        s ^= s << 17;
        unsigned b = 1 + (unsigned)(s % 20); /* 2 B to 1 MiB */
        size[i] = ((size_t)1 << b) + (size_t)((s >> 8) % ((size_t)1 << b));
        ring[i] = x_malloc(size[i]);
        if (!ring[i]) {
            __atomic_add_fetch(&alloc_errors, 1, __ATOMIC_RELAXED);
            continue;
        }
        ring[i][0] = (unsigned char)size[i];
        ring[i][size[i] - 1] = (unsigned char)(size[i] >> 3);
        __atomic_add_fetch(&alloc_rounds, 1, __ATOMIC_RELAXED);
    }
    for (unsigned i = 0; i < RING; i++)
        x_free(ring[i]);
    return NULL;
}

static int forker_good;

static void *forker_thread(void *arg)
{
    (void)arg;
    forker_good = fork_rounds(FORKS_PER_PHASE, "threaded");
    return NULL;
}

int main(int argc, char **argv)
{
    const char *only = argc > 1 ? argv[1] : "";
    only_child_allocates = strcmp(only, "child-handler") == 0;
    int run_single = !*only || strcmp(only, "single") == 0 || only_child_allocates;
    int run_threaded = !*only || strcmp(only, "threaded") == 0;
    if (!run_single && !run_threaded) {
        say("usage: %s [single|threaded|child-handler]\n", argv[0]);
        return 2;
    }
    signal(SIGALRM, watchdog);
    alarm(WATCHDOG_S);
    /* The program's first allocation: an allocator that registers its fork
     * handlers now does so after the constructor registered ours (and
     * before the first fork: handlers registered while fork runs the
     * prepare handlers are left out of that fork). */
    x_free(x_malloc(100));
    check(atfork_registered, "pthread_atfork in the constructor failed");
    say("note: %zu bytes committed when the constructor had registered its handlers\n", committed_at_ctor);

    if (run_single) {
        phase = "single";
        int good = fork_rounds(FORKS_PER_PHASE, "single");
        check(good == FORKS_PER_PHASE, "single: %d of %d children exited 0", good, FORKS_PER_PHASE);
    }

    phase = "threaded";
    alarm(WATCHDOG_S);
    pthread_t at, ft;
    if (!run_threaded) {
        /* skipped */
    } else if (pthread_create(&at, NULL, alloc_thread, NULL) != 0) {
        check(0, "pthread_create (allocating thread) failed");
    } else {
        while (__atomic_load_n(&alloc_rounds, __ATOMIC_RELAXED) < 200)
            sched_yield();
        if (pthread_create(&ft, NULL, forker_thread, NULL) != 0) {
            check(0, "pthread_create (forking thread) failed");
        } else {
            pthread_join(ft, NULL);
            check(forker_good == FORKS_PER_PHASE, "threaded: %d of %d children exited 0", forker_good,
                  FORKS_PER_PHASE);
        }
        __atomic_store_n(&stop_alloc, 1, __ATOMIC_RELAXED);
        pthread_join(at, NULL);
        check(__atomic_load_n(&alloc_errors, __ATOMIC_RELAXED) == 0,
              "threaded: the allocating thread saw %ld NULLs or corrupted blocks",
              __atomic_load_n(&alloc_errors, __ATOMIC_RELAXED));
    }
    phase = "end";
    check(__atomic_load_n(&handler_failures, __ATOMIC_RELAXED) == 0,
          "an allocation in a prepare/parent handler failed %ld times",
          __atomic_load_n(&handler_failures, __ATOMIC_RELAXED));
    int forks = (run_single + run_threaded) * FORKS_PER_PHASE;
    check(prepare_runs == forks && parent_runs == forks, "prepare/parent handlers ran %ld/%ld times, want %d",
          prepare_runs, parent_runs, forks);
    alarm(0);
    long f = __atomic_load_n(&n_failed, __ATOMIC_RELAXED);
    say("fork_atfork_alloc: %ld passed, %ld failed\n", __atomic_load_n(&n_passed, __ATOMIC_RELAXED), f);
    return f ? 1 : 0;
}
