/*
 * first_alloc_last_round.c - a thread whose first allocation is made in the
 * last round of its pthread key destructors.
 *
 * Build:  cc -O2 -pthread -o first_alloc_last_round first_alloc_last_round.c
 * Run:    ./first_alloc_last_round
 *
 * 200 threads, 20 at a time.  A thread does nothing but set a value for a
 * pthread key and return: it never calls the allocator (no stdio either).
 * The key's destructor re-sets the value in rounds 1 .. PTHREAD_DESTRUCTOR_
 * ITERATIONS-1 without allocating, and in the last round glibc runs makes
 * the thread's first allocations: malloc(64 KiB), filled and freed,
 * malloc(100) kept for main (which checks and frees it after the join),
 * and malloc(24) + free.  An allocator that attaches a per-thread heap on
 * a thread's first allocation and arms its own key destructor to give the
 * heap back at thread exit is too late here: no round is left to run that
 * destructor, and the heap (with the 64 KiB it cached) is never returned.
 * lifecycle.c's last-round check covers threads that already allocated
 * before their destructors ran; this is the variant where the very first
 * allocation is in the last round.
 *
 * main allocates once before it creates the key, so an allocator's own
 * thread-exit key (created at the first allocation) comes before ours in
 * glibc's per-round key order, as it does in any program that allocated
 * before main.
 *
 * After all threads are joined and their blocks freed, malloc_trim(0) is
 * called twice (50 ms apart).  Checks:
 *   - every thread's destructor ran all rounds and its allocations worked
 *   - with chunkmalloc (its malloc_stats() table is parsed from a pipe):
 *     committed memory (mallinfo2().arena) below 8 MiB, and at most 4 more
 *     live heaps than before the threads ran (~200 leaked heaps, ~14 MiB
 *     committed, before the fix).  With another allocator these are
 *     skipped ("note: ...").
 *
 * Output: "FAIL: ..." lines, then   first_alloc_last_round: N passed, M failed
 */
#define _GNU_SOURCE
#include <errno.h>
#include <limits.h>
#include <malloc.h>
#include <pthread.h>
#include <stdarg.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

#include "testutil.h"

static void *(*volatile x_malloc)(size_t) = malloc;
static void (*volatile x_free)(void *) = free;

#define THREADS 200
#define BATCH 20
#define COMMITTED_BOUND ((size_t)8 << 20)
#define EXTRA_HEAPS_BOUND 4

/* ------------------------------------------------------------------------ */
static pthread_key_t key;
static void *keep[THREADS];
static long rounds_seen[THREADS][PTHREAD_DESTRUCTOR_ITERATIONS + 1];
static int alloc_failed[THREADS];

struct arg {
    int index;
};
static struct arg args[THREADS];

/* value: (index << 8) | round */
static void destructor(void *v)
{
    uintptr_t val = (uintptr_t)v;
    int index = (int)(val >> 8);
    int round = (int)(val & 0xff);
    if (index < 0 || index >= THREADS || round < 1 || round > PTHREAD_DESTRUCTOR_ITERATIONS)
        return;
    rounds_seen[index][round]++;
    if (round < PTHREAD_DESTRUCTOR_ITERATIONS) {
        /* no allocation: the first one is kept for the last round */
        pthread_setspecific(key, (void *)(((uintptr_t)index << 8) | (uintptr_t)(round + 1)));
        return;
    }
    unsigned char *big = x_malloc(64 * 1024);
    if (!big) {
        alloc_failed[index] = 1;
    } else {
        memset(big, index & 0xff, 64 * 1024);
        if (big[12345] != (unsigned char)(index & 0xff))
            alloc_failed[index] = 1;
        x_free(big);
    }
    unsigned char *small = x_malloc(100);
    if (!small) {
        alloc_failed[index] = 1;
    } else {
        memset(small, (index + 1) & 0xff, 100);
        keep[index] = small;
    }
    unsigned char *tiny = x_malloc(24);
    if (!tiny)
        alloc_failed[index] = 1;
    else
        tiny[0] = 1;
    x_free(tiny);
}

static void *thread_main(void *p)
{
    const struct arg *a = p;
    pthread_setspecific(key, (void *)(((uintptr_t)a->index << 8) | 1u));
    return NULL;
}

int main(void)
{
    static char table[16384];
    /* Allocate before creating the key, so that an allocator which creates
     * its thread-exit key at its first allocation (as real programs make it
     * do before main) has a lower key index than ours: glibc runs the
     * destructors of one round in key order, and a higher-indexed allocator
     * key would still get its destructor called in the last round. */
    x_free(x_malloc(16));
    if (pthread_key_create(&key, destructor) != 0) {
        say("FAIL: pthread_key_create\nfirst_alloc_last_round: 0 passed, 1 failed\n");
        return 1;
    }
    malloc_trim(0);
    capture_stats(table, sizeof table);
    int cm = is_chunkmalloc(table);
    long heaps_before = cm ? stat_row(table, "live heaps") : -1;
    size_t committed_before = mallinfo2().arena;

    pthread_t th[BATCH];
    int created = 0;
    for (int base = 0; base < THREADS; base += BATCH) {
        int n = 0;
        for (int i = base; i < base + BATCH && i < THREADS; i++) {
            args[i].index = i;
            if (pthread_create(&th[n], NULL, thread_main, &args[i]) != 0) {
                check(0, "pthread_create of thread %d failed", i);
                continue;
            }
            n++;
        }
        for (int j = 0; j < n; j++)
            pthread_join(th[j], NULL);
        created += n;
    }

    int all_rounds = 1, allocs_ok = 1, intact = 1;
    for (int i = 0; i < THREADS; i++) {
        for (int r = 1; r <= PTHREAD_DESTRUCTOR_ITERATIONS; r++)
            if (rounds_seen[i][r] != 1)
                all_rounds = 0;
        if (alloc_failed[i] || !keep[i])
            allocs_ok = 0;
        if (keep[i]) {
            unsigned char *b = keep[i];
            for (int j = 0; j < 100; j++)
                if (b[j] != (unsigned char)((i + 1) & 0xff)) {
                    intact = 0;
                    break;
                }
            x_free(b);
            keep[i] = NULL;
        }
    }
    check(created == THREADS, "only %d of %d threads were created", created, THREADS);
    check(all_rounds, "a thread's key destructor did not run once in each of the %d rounds",
          PTHREAD_DESTRUCTOR_ITERATIONS);
    check(allocs_ok, "an allocation in the last destructor round failed");
    check(intact, "a block allocated in the last destructor round was corrupted");

    malloc_trim(0);
    sleep_ms(50);
    malloc_trim(0);
    size_t committed = mallinfo2().arena;
    capture_stats(table, sizeof table);
    if (!cm || !is_chunkmalloc(table)) {
        say("note: not chunkmalloc (no 'chunkmalloc statistics' from malloc_stats); committed and heap "
            "checks skipped (mallinfo2().arena %zu KiB before, %zu KiB after)\n",
            committed_before >> 10, committed >> 10);
    } else {
        long heaps = stat_row(table, "live heaps");
        long abandoned = stat_row(table, "abandoned heaps");
        say("note: live heaps %ld before, %ld after (%ld abandoned); committed %zu KiB before, %zu KiB after\n",
            heaps_before, heaps, abandoned, committed_before >> 10, committed >> 10);
        check(committed < COMMITTED_BOUND,
              "committed memory %zu KiB after %d threads whose first allocation was in the last destructor round "
              "(bound %zu KiB; a heap leaked per thread?)",
              committed >> 10, THREADS, COMMITTED_BOUND >> 10);
        check(heaps >= 0 && heaps_before >= 0 && heaps <= heaps_before + EXTRA_HEAPS_BOUND,
              "%ld live heaps after %d such threads had exited (%ld before; bound +%d)", heaps, THREADS,
              heaps_before, EXTRA_HEAPS_BOUND);
    }
    say("first_alloc_last_round: %ld passed, %ld failed\n", n_passed, n_failed);
    return n_failed ? 1 : 0;
}
