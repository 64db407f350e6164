/*
 * fork_threads.c - fork() while other threads are busy inside the allocator.
 *
 * Build:  cc -O2 -pthread -o fork_threads fork_threads.c
 * Run:    ./fork_threads [number of forks (default 30)]
 *
 * Four threads allocate, fill, verify and free blocks in a tight loop.  While
 * they run, the main thread forks repeatedly.  Each child (which inherits
 * the heap in whatever state the busy threads left it, locks included):
 *   - verifies and frees half of a set of blocks the parent allocated before
 *     forking,
 *   - mallocs/reallocs/frees a few thousand blocks of various sizes and
 *     verifies their contents,
 *   - then, depending on the fork number, execv()s /bin/true, returns from a
 *     normal exit(0), or first starts two threads of its own that allocate
 *     and free, and then exits 0.
 * A child that deadlocks is killed by alarm() after 20 s.  The parent checks
 * that every child exited with status 0, that its own threads never saw
 * corrupted data, and that its pre-fork blocks are intact.
 *
 * Output: "FAIL: ..." lines, then   fork: N passed, M failed
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
#include <unistd.h>

#include "testutil.h"

static void *(*volatile x_malloc)(size_t) = malloc;
static void *(*volatile x_realloc)(void *, size_t) = realloc;
static void *(*volatile x_calloc)(size_t, size_t) = calloc;
static void (*volatile x_free)(void *) = free;

#define BUSY_THREADS 4
#define PARENT_BLOCKS 64

static int stop;                 /* atomic */
static long thread_errors;       /* atomic */
static long thread_rounds;       /* atomic */
static unsigned char *parent_blocks[PARENT_BLOCKS];
static size_t parent_sizes[PARENT_BLOCKS];

static size_t random_size(uint64_t *rng, unsigned max_log2)
{
    unsigned b = (unsigned)(xorshift(rng) % (max_log2 + 1));
    size_t base = (size_t)1 << b;
    return base + (size_t)(xorshift(rng) % base);
}

static inline unsigned char pat(uint64_t tag, size_t i)
{
    return (unsigned char)(tag + i * 7 + (i >> 8));
}

/* The checked bytes of an n-byte block: the first and last 32 bytes and
 * every multiple of 512.  Returns the checked index following i. */
static size_t next_index(size_t i, size_t n)
{
    if (i < 32 || i + 32 >= n)
        return i + 1;
    size_t j = (i | 511) + 1;
    return j + 32 > n ? n - 32 : j;
}

static void fill(unsigned char *p, size_t n, uint64_t tag)
{
    for (size_t i = 0; i < n; i = next_index(i, n))
        p[i] = pat(tag, i);
}

static int intact(const unsigned char *p, size_t n, uint64_t tag)
{
    for (size_t i = 0; i < n; i = next_index(i, n))
        if (p[i] != pat(tag, i))
            return 0;
    return 1;
}

static void *busy_thread(void *arg)
{
    uint64_t rng = 0x1234567ull * ((uintptr_t)arg + 1) | 1;
    enum { RING = 32 };
    unsigned char *ring[RING] = {0};
    size_t size[RING] = {0};
    uint64_t tag[RING] = {0};
    unsigned k = 0;
    while (!__atomic_load_n(&stop, __ATOMIC_RELAXED)) {
        unsigned i = k++ % RING;
        if (ring[i]) {
            if (!intact(ring[i], size[i], tag[i]))
                __atomic_fetch_add(&thread_errors, 1, __ATOMIC_RELAXED);
            x_free(ring[i]);
        }
        size[i] = random_size(&rng, 17); /* up to 256 KiB */
        tag[i] = xorshift(&rng);
        ring[i] = (xorshift(&rng) & 3) == 0 ? x_calloc(1, size[i]) : x_malloc(size[i]);
        if (!ring[i]) {
            __atomic_fetch_add(&thread_errors, 1, __ATOMIC_RELAXED);
            continue;
        }
        fill(ring[i], size[i], tag[i]);
        __atomic_fetch_add(&thread_rounds, 1, __ATOMIC_RELAXED);
    }
    for (unsigned i = 0; i < RING; i++)
        x_free(ring[i]);
    return NULL;
}

static void *child_thread(void *arg)
{
    uint64_t rng = 0xABCDEFull + (uintptr_t)arg;
    for (int i = 0; i < 2000; i++) {
        size_t n = random_size(&rng, 14);
        unsigned char *p = x_malloc(n);
        if (!p)
            return (void *)1;
        fill(p, n, (uint64_t)i);
        if (!intact(p, n, (uint64_t)i))
            return (void *)1;
        x_free(p);
    }
    return NULL;
}

/* Runs in the forked child; returns the exit status to use. */
static int child_work(int round)
{
    /* the parent's blocks came across intact; free every other one */
    for (int i = 0; i < PARENT_BLOCKS; i++) {
        if (!intact(parent_blocks[i], parent_sizes[i], (uint64_t)i)) {
            say("FAIL: fork %d: child sees parent block %d corrupted\n", round, i);
            return 10;
        }
        if (i & 1)
            x_free(parent_blocks[i]);
    }
    uint64_t rng = 0x5555ull + (uint64_t)round * 7919;
    enum { LIVE = 100 };
    unsigned char *live[LIVE] = {0};
    size_t size[LIVE] = {0};
    for (int op = 0; op < 3000; op++) {
        unsigned i = (unsigned)(xorshift(&rng) % LIVE);
        if (live[i]) {
            if (!intact(live[i], size[i], i + (uint64_t)round)) {
                say("FAIL: fork %d: child block of %zu bytes corrupted\n", round, size[i]);
                return 11;
            }
            if (op % 7 == 0) {
                size_t ns = random_size(&rng, 17);
                unsigned char *q = x_realloc(live[i], ns);
                if (!q) {
                    say("FAIL: fork %d: realloc returned NULL in child\n", round);
                    return 12;
                }
                size_t keep = ns < size[i] ? ns : size[i];
                /* the checked positions below `keep` must have survived */
                for (size_t j = 0; j < keep; j = next_index(j, size[i]))
                    if (q[j] != pat(i + (uint64_t)round, j)) {
                        say("FAIL: fork %d: realloc in child lost contents\n", round);
                        return 13;
                    }
                live[i] = q;
                size[i] = ns;
                fill(q, ns, i + (uint64_t)round);
                continue;
            }
            x_free(live[i]);
        }
        size[i] = random_size(&rng, 17);
        live[i] = x_malloc(size[i]);
        if (!live[i]) {
            say("FAIL: fork %d: malloc(%zu) returned NULL in child\n", round, size[i]);
            return 14;
        }
        fill(live[i], size[i], i + (uint64_t)round);
    }
    for (unsigned i = 0; i < LIVE; i++)
        x_free(live[i]);
    for (int i = 0; i < PARENT_BLOCKS; i += 2)
        x_free(parent_blocks[i]);
    return 0;
}

int main(int argc, char **argv)
{
    int nforks = argc > 1 ? atoi(argv[1]) : 30;
    long passed = 0, failed = 0;
    setvbuf(stdout, NULL, _IOLBF, 0);

    for (int i = 0; i < PARENT_BLOCKS; i++) {
        parent_sizes[i] = (size_t)1 << (i % 18);
        parent_sizes[i] += (size_t)i;
        parent_blocks[i] = x_malloc(parent_sizes[i]);
        if (!parent_blocks[i]) {
            printf("FAIL: malloc(%zu) returned NULL\n", parent_sizes[i]);
            return 1;
        }
        fill(parent_blocks[i], parent_sizes[i], (uint64_t)i);
    }

    pthread_t th[BUSY_THREADS];
    for (uintptr_t t = 0; t < BUSY_THREADS; t++)
        if (pthread_create(&th[t], NULL, busy_thread, (void *)t) != 0) {
            printf("FAIL: pthread_create\n");
            return 1;
        }
    /* let the threads get going so that forks hit them mid-operation */
    while (__atomic_load_n(&thread_rounds, __ATOMIC_RELAXED) < 1000)
        sched_yield();

    for (int round = 0; round < nforks; round++) {
        int variant = round % 3;
        fflush(stdout);
        fflush(stderr);
        pid_t pid = fork();
        if (pid < 0) {
            printf("FAIL: fork %d: fork() failed: %s\n", round, strerror(errno));
            failed++;
            continue;
        }
        if (pid == 0) {
            alarm(20);
            int rc = child_work(round);
            if (rc != 0)
                _exit(rc);
            if (variant == 0) {
                char *const args[] = {"true", NULL};
                execv("/bin/true", args);
                execv("/usr/bin/true", args);
                say("FAIL: fork %d: execv(/bin/true) failed\n", round);
                _exit(126);
            }
            if (variant == 2) {
                pthread_t ct[2];
                void *res[2] = {0, 0};
                for (uintptr_t t = 0; t < 2; t++)
                    if (pthread_create(&ct[t], NULL, child_thread, (void *)t) != 0)
                        _exit(20);
                for (int t = 0; t < 2; t++)
                    pthread_join(ct[t], &res[t]);
                if (res[0] || res[1]) {
                    say("FAIL: fork %d: thread in child saw corruption\n", round);
                    _exit(21);
                }
            }
            exit(0);
        }
        int st = 0;
        while (waitpid(pid, &st, 0) < 0 && errno == EINTR)
            ;
        static const char *const vname[] = {"execv /bin/true", "exit 0", "threads + exit 0"};
        if (WIFEXITED(st) && WEXITSTATUS(st) == 0) {
            passed++;
        } else {
            failed++;
            if (WIFSIGNALED(st))
                printf("FAIL: fork %d (%s): child killed by signal %d (%s)%s\n", round,
                       vname[variant], WTERMSIG(st), strsignal(WTERMSIG(st)),
                       WTERMSIG(st) == SIGALRM ? " - deadlocked?" : "");
            else
                printf("FAIL: fork %d (%s): child exited with status %d\n", round,
                       vname[variant], WEXITSTATUS(st));
        }
    }

    __atomic_store_n(&stop, 1, __ATOMIC_RELAXED);
    for (int t = 0; t < BUSY_THREADS; t++)
        pthread_join(th[t], NULL);
    long errs = __atomic_load_n(&thread_errors, __ATOMIC_RELAXED);
    if (errs) {
        printf("FAIL: busy threads saw %ld corrupted or failed allocations\n", errs);
        failed++;
    } else {
        passed++;
    }
    int bad = 0;
    for (int i = 0; i < PARENT_BLOCKS; i++) {
        bad += !intact(parent_blocks[i], parent_sizes[i], (uint64_t)i);
        x_free(parent_blocks[i]);
    }
    if (bad) {
        printf("FAIL: %d parent blocks corrupted after forking\n", bad);
        failed++;
    } else {
        passed++;
    }
    printf("fork: %ld passed, %ld failed\n", passed, failed);
    return failed ? 1 : 0;
}
