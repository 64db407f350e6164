/*
 * thread_exit.c - what a thread's attach and exit leave behind.
 *
 * Build:  cc -O2 -pthread -o thread_exit thread_exit.c
 * Run:    ./thread_exit
 *
 * chunkmalloc registers each thread's exit hook with glibc's
 * __cxa_thread_atexit_impl, which callocs a 32-byte list node during the
 * thread's first allocation and frees it after the hook has run, when the
 * thread has no heap any more.  That node is served from the thread's own
 * TLS (thread.rs, the "exit node"), not from a heap, and its free is
 * recognised and ignored.  Checks:
 *   registration  a thread whose first allocation is malloc(100) adds
 *                 exactly malloc_usable_size() of that block to the bytes
 *                 in use (mallinfo2().uordblks, exact in chunkmalloc),
 *                 not another 32-byte block for the node (5 threads, one
 *                 at a time; chunkmalloc only)
 *   churn         2,000 threads, 10 alive at a time, each callocs one
 *                 block, swaps it into a shared array and frees what was
 *                 there (checking its pattern): every block is intact,
 *                 and nothing is written to stderr, where chunkmalloc
 *                 reports a pointer it did not hand out (glibc's free of
 *                 each node would be one, were it not recognised)
 *
 * Output: "FAIL: ..." lines, then   thread_exit: N passed, M failed
 */
#define _GNU_SOURCE
#include <fcntl.h>
#include <pthread.h>
#include <stdint.h>

#include "testutil.h"

#define SLOTS 64
#define THREADS 2000
#define ALIVE 10

static pthread_barrier_t start_bar, done_bar;
static void *held;

static void *registration_thread(void *arg)
{
    (void)arg;
    pthread_barrier_wait(&start_bar); /* main has read the bytes in use */
    held = malloc(100);               /* this thread's first allocation */
    pthread_barrier_wait(&done_bar);  /* main reads them again */
    pthread_barrier_wait(&start_bar); /* main has checked and freed */
    return NULL;
}

static uint64_t *slots[SLOTS];
static long bad_blocks;

static void *churn_thread(void *arg)
{
    uintptr_t id = (uintptr_t)arg;
    uint64_t *p = calloc(16, 8);
    if (!p) {
        __atomic_fetch_add(&bad_blocks, 1, __ATOMIC_RELAXED);
        return NULL;
    }
    for (int i = 0; i < 16; i++) {
        if (p[i] != 0)
            __atomic_fetch_add(&bad_blocks, 1, __ATOMIC_RELAXED);
        p[i] = id * 16 + (uint64_t)i;
    }
    uint64_t *old = __atomic_exchange_n(&slots[id % SLOTS], p, __ATOMIC_ACQ_REL);
    if (old) {
        uint64_t base = old[0];
        for (int i = 0; i < 16; i++)
            if (old[i] != base + (uint64_t)i)
                __atomic_fetch_add(&bad_blocks, 1, __ATOMIC_RELAXED);
        free(old);
    }
    return NULL;
}

int main(void)
{
    static char table[16384];
    capture_stats(table, sizeof table);
    int cm = is_chunkmalloc(table);

    /* stderr to a file, read back at the end */
    char errpath[] = "/tmp/thread_exit_stderr.XXXXXX";
    int errfd = mkstemp(errpath);
    int saved_err = dup(2);
    check(errfd >= 0 && saved_err >= 0, "stderr capture: mkstemp/dup failed");
    if (errfd >= 0) {
        unlink(errpath);
        fflush(stderr);
        dup2(errfd, 2);
    }

    /* registration */
    for (int round = 0; round < 5; round++) {
        pthread_t t;
        pthread_barrier_init(&start_bar, NULL, 2);
        pthread_barrier_init(&done_bar, NULL, 2);
        if (pthread_create(&t, NULL, registration_thread, NULL) != 0) {
            check(0, "pthread_create failed");
            break;
        }
        size_t before = mallinfo2().uordblks;
        pthread_barrier_wait(&start_bar);
        pthread_barrier_wait(&done_bar);
        size_t after = mallinfo2().uordblks;
        size_t usable = held ? malloc_usable_size(held) : 0;
        if (cm)
            check(held && after - before == usable,
                  "registration round %d: the thread's first malloc(100) added %zu bytes in use, "
                  "its block is %zu (the exit hook's node came from a heap?)",
                  round, after - before, usable);
        else
            check(held != NULL, "registration round %d: malloc(100) failed", round);
        free(held);
        held = NULL;
        pthread_barrier_wait(&start_bar);
        pthread_join(t, NULL);
        pthread_barrier_destroy(&start_bar);
        pthread_barrier_destroy(&done_bar);
    }

    /* churn */
    pthread_t alive[ALIVE];
    for (int i = 0; i < THREADS; i++) {
        pthread_t *t = &alive[i % ALIVE];
        if (i >= ALIVE)
            pthread_join(*t, NULL);
        if (pthread_create(t, NULL, churn_thread, (void *)(uintptr_t)i) != 0) {
            check(0, "pthread_create %d failed", i);
            return 1;
        }
    }
    for (int i = 0; i < ALIVE; i++)
        pthread_join(alive[(THREADS + i) % ALIVE], NULL);
    check(bad_blocks == 0, "churn: %ld blocks were not zeroed or lost their contents", bad_blocks);
    for (int i = 0; i < SLOTS; i++) {
        free(slots[i]);
        slots[i] = NULL;
    }

    /* stderr back; what was written meanwhile? */
    fflush(stderr);
    dup2(saved_err, 2);
    char err[4096] = {0};
    ssize_t n = errfd >= 0 ? pread(errfd, err, sizeof err - 1, 0) : -1;
    check(n == 0, "churn: %zd bytes on stderr, beginning: %.300s", n, n > 0 ? err : "");
    if (!cm)
        say("note: not chunkmalloc; registration checks skipped\n");

    say("thread_exit: %ld passed, %ld failed\n", n_passed, n_failed);
    return n_failed != 0;
}
