/*
 * fork_stdio.c - fork() while other threads allocate and use stdio.
 *
 * Build:  cc -O2 -pthread -o fork_stdio fork_stdio.c
 * Run:    ./fork_stdio [forks (default 200)] [seconds (default 10)]
 *
 * The shape of glibc's tst-malloc-fork-deadlock: four threads loop doing
 * malloc/free of sizes from 2 bytes to 4 MiB, fprintf to a FILE of their own
 * on /dev/null and to an open_memstream() stream (whose buffer is
 * malloc'ed and realloc'ed by libc under the stream's lock), getline() from
 * an fmemopen() stream of lines of 10 bytes to 2 MiB (getdelim grows the
 * line with realloc while it holds the stream's lock), fflush of the
 * streams, fflush(NULL) (which takes libc's list lock and then the lock of
 * every stream), and now and then fclose + reopen of the streams.
 * Meanwhile the main thread forks up to `forks` times within `seconds`;
 * each child mallocs, fills, checks and frees a few blocks and calls
 * _exit(0).  glibc's fork takes the stdio list lock and then its malloc
 * locks, after the pthread_atfork prepare handlers: an allocator that takes
 * its own locks in a prepare handler holds them while fork waits for the
 * list lock, which a thread in fflush(NULL) holds while it waits for a
 * stream that a thread in getline holds while it waits for the allocator:
 * a deadlock.
 *
 * The parent waits up to 10 s per child (then kills it and reports a
 * hang); a 25 s watchdog alarm reports a hang of the parent itself.
 *
 * Output: "FAIL: ..." lines, then   fork_stdio: N passed, M failed
 */
#define _GNU_SOURCE
#include <errno.h>
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

#define TESTUTIL_MAX_SHOWN_FAILURES 20
#include "testutil.h"

static void *(*volatile x_malloc)(size_t) = malloc;
static void (*volatile x_free)(void *) = free;

#define WORKERS 4
#define CHILD_WAIT_MS 10000
#define WATCHDOG_S 25

static int stop;                      /* atomic */
static long worker_rounds, worker_errors; /* atomic */

static int forks_done; /* for the watchdog */

static volatile pid_t current_child; /* killed by the watchdog */

static void watchdog(int sig)
{
    (void)sig;
    kill_child(current_child);
    say("FAIL: watchdog: still running after %d s, %d forks done (deadlock in fork?)\n", WATCHDOG_S,
        forks_done);
    watchdog_exit("fork_stdio");
}

/* 2 bytes .. 256 KiB log-uniform, and 1..4 MiB once in 64. */
static size_t random_size(uint64_t *rng)
{
    if (xorshift(rng) % 64 == 0)
        return ((size_t)1 << 20) + (size_t)(xorshift(rng) % ((size_t)3 << 20));
    unsigned b = 1 + (unsigned)(xorshift(rng) % 17);
    return ((size_t)1 << b) + (size_t)(xorshift(rng) % ((size_t)1 << b));
}

/* The text the getline() streams read: lines of 10 bytes to 2 MiB. */
static char *text;
static size_t text_len;
static const size_t line_lengths[] = {10, 300, 5000, 70000, 250000, 700000, 2u << 20, 40, 1200, 33000, 150000};

static int make_text(void)
{
    size_t total = 0;
    for (unsigned i = 0; i < sizeof line_lengths / sizeof line_lengths[0]; i++)
        total += line_lengths[i] + 1;
    text = malloc(total);
    if (!text)
        return 0;
    char *p = text;
    for (unsigned i = 0; i < sizeof line_lengths / sizeof line_lengths[0]; i++) {
        for (size_t j = 0; j < line_lengths[i]; j++)
            *p++ = (char)('a' + (i + j) % 26);
        *p++ = '\n';
    }
    text_len = total;
    return 1;
}

static void *worker(void *arg)
{
    unsigned id = (unsigned)(uintptr_t)arg;
    uint64_t rng = 0x9E3779B97F4A7C15ull * (id + 1);
    enum { RING = 16 };
    unsigned char *ring[RING] = {0};
    size_t size[RING] = {0};
    FILE *null = fopen("/dev/null", "w");
    char *mbuf = NULL;
    size_t mlen = 0;
    FILE *mem = open_memstream(&mbuf, &mlen);
    FILE *in = fmemopen(text, text_len, "r");
    unsigned line_no = 0;
    if (!null || !mem || !in) {
        __atomic_add_fetch(&worker_errors, 1, __ATOMIC_RELAXED);
        return NULL;
    }
    for (unsigned k = 0; !__atomic_load_n(&stop, __ATOMIC_RELAXED); k++) {
        unsigned i = k % RING;
        if (ring[i]) {
            if (ring[i][0] != (unsigned char)(i + id) || ring[i][size[i] - 1] != (unsigned char)size[i])
                __atomic_add_fetch(&worker_errors, 1, __ATOMIC_RELAXED);
            x_free(ring[i]);
        }
        size[i] = random_size(&rng);
        ring[i] = x_malloc(size[i]);
        if (!ring[i]) {
            __atomic_add_fetch(&worker_errors, 1, __ATOMIC_RELAXED);
        } else {
            ring[i][0] = (unsigned char)(i + id);
            ring[i][size[i] - 1] = (unsigned char)size[i];
        }
        fprintf(null, "worker %u round %u size %zu %s\n", id, k, size[i], "padding-padding-padding");
        fprintf(mem, "worker %u round %u size %zu %.*s\n", id, k, size[i], (int)(k % 200),
                "0123456789012345678901234567890123456789012345678901234567890123456789012345678901234567890123"
                "4567890123456789012345678901234567890123456789012345678901234567890123456789012345678901234567"
                "890123456789");
        if (k % 4 == 0) {
            /* a fresh line buffer each time: getdelim mallocs and grows it */
            char *line = NULL;
            size_t cap = 0;
            ssize_t got = getline(&line, &cap, in);
            unsigned want = line_no % (unsigned)(sizeof line_lengths / sizeof line_lengths[0]);
            if (got < 0) {
                rewind(in);
                line_no = 0;
            } else {
                if ((size_t)got != line_lengths[want] + 1 || line[0] != (char)('a' + want % 26))
                    __atomic_add_fetch(&worker_errors, 1, __ATOMIC_RELAXED);
                line_no++;
            }
            free(line);
        }
        if (k % 8 == 0)
            fflush(mem);
        if (k % 16 == 0)
            fflush(null);
        if (k % 32 == 0)
            fflush(NULL);
        if (k % 128 == 127) {
            /* the memstream buffer has grown: give it back, start again */
            fclose(mem);
            free(mbuf);
            mbuf = NULL;
            mlen = 0;
            mem = open_memstream(&mbuf, &mlen);
            fclose(null);
            null = fopen("/dev/null", "w");
            if (k % 512 == 511) {
                fclose(in);
                in = fmemopen(text, text_len, "r");
                line_no = 0;
            }
            if (!null || !mem || !in) {
                __atomic_add_fetch(&worker_errors, 1, __ATOMIC_RELAXED);
                break;
            }
        }
        __atomic_add_fetch(&worker_rounds, 1, __ATOMIC_RELAXED);
    }
    if (mem)
        fclose(mem);
    free(mbuf);
    if (null)
        fclose(null);
    if (in)
        fclose(in);
    for (unsigned i = 0; i < RING; i++)
        x_free(ring[i]);
    return NULL;
}

/* Waits up to CHILD_WAIT_MS for the child; 1 when it exited 0. */
static int reap(pid_t pid, int round)
{
    int st = 0;
    for (long waited = 0;; waited++) {
        pid_t r = waitpid(pid, &st, WNOHANG);
        if (r == pid)
            break;
        if (r < 0 && errno != EINTR) {
            check(0, "fork %d: waitpid: %s", round, strerror(errno));
            return 0;
        }
        if (waited >= CHILD_WAIT_MS) {
            kill(pid, SIGKILL);
            while (waitpid(pid, &st, 0) < 0 && errno == EINTR)
                ;
            check(0, "fork %d: child still running after %d s, killed (deadlocked?)", round,
                  CHILD_WAIT_MS / 1000);
            return 0;
        }
        sleep_ms(1);
    }
    if (WIFEXITED(st) && WEXITSTATUS(st) == 0)
        return 1;
    if (WIFEXITED(st))
        check(0, "fork %d: child exited with status %d", round, WEXITSTATUS(st));
    else
        check(0, "fork %d: child killed by signal %d (%s)", round, WIFSIGNALED(st) ? WTERMSIG(st) : 0,
              WIFSIGNALED(st) ? strsignal(WTERMSIG(st)) : "?");
    return 0;
}

int main(int argc, char **argv)
{
    int max_forks = argc > 1 ? atoi(argv[1]) : 200;
    double seconds = argc > 2 ? atof(argv[2]) : 10;
    signal(SIGALRM, watchdog);
    alarm(WATCHDOG_S);
    if (!make_text()) {
        say("FAIL: malloc for the text failed\nfork_stdio: 0 passed, 1 failed\n");
        return 1;
    }

    pthread_t th[WORKERS];
    int started = 0;
    for (uintptr_t t = 0; t < WORKERS; t++) {
        if (pthread_create(&th[t], NULL, worker, (void *)t) != 0) {
            check(0, "pthread_create failed");
            break;
        }
        started++;
    }
    while (__atomic_load_n(&worker_rounds, __ATOMIC_RELAXED) < 500)
        sched_yield();

    double t0 = now();
    int good = 0;
    for (int round = 0; round < max_forks && now() - t0 < seconds; round++) {
        pid_t pid = fork();
        if (pid < 0) {
            check(0, "fork %d: fork() failed: %s", round, strerror(errno));
            break;
        }
        if (pid == 0) {
            for (int i = 0; i < 50; i++) {
                size_t n = (size_t)2 << (i % 22);
                unsigned char *p = x_malloc(n);
                if (!p)
                    _exit(3);
                p[0] = (unsigned char)i;
                p[n - 1] = (unsigned char)(i + 1);
                if (p[0] != (unsigned char)i)
                    _exit(4);
                x_free(p);
            }
            _exit(0);
        }
        current_child = pid;
        good += reap(pid, round);
        current_child = 0;
        forks_done = round + 1;
    }
    double elapsed = now() - t0;
    __atomic_store_n(&stop, 1, __ATOMIC_RELAXED);
    for (int t = 0; t < started; t++)
        pthread_join(th[t], NULL);
    alarm(0);
    check(good == forks_done, "%d of %d children exited 0", good, forks_done);
    check(forks_done >= 20, "only %d forks in %.1f s", forks_done, elapsed);
    check(__atomic_load_n(&worker_errors, __ATOMIC_RELAXED) == 0,
          "worker threads saw %ld NULLs, corrupted blocks or stream errors",
          __atomic_load_n(&worker_errors, __ATOMIC_RELAXED));
    free(text);
    say("note: %d forks in %.1f s, %ld worker rounds\n", forks_done, elapsed,
        __atomic_load_n(&worker_rounds, __ATOMIC_RELAXED));
    long f = __atomic_load_n(&n_failed, __ATOMIC_RELAXED);
    say("fork_stdio: %ld passed, %ld failed\n", __atomic_load_n(&n_passed, __ATOMIC_RELAXED), f);
    return f ? 1 : 0;
}
