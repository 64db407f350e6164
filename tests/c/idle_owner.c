/*
 * idle_owner.c - memory freed by another thread while its owner sits idle.
 *
 * Build:  cc -O2 -pthread -o idle_owner idle_owner.c
 * Run:    CHUNKMALLOC_BUDGET=320MiB ./idle_owner budget
 *         ./idle_owner rss
 *
 * In every phase a producer thread allocates blocks and touches every byte,
 * hands them to main and then blocks on a condition variable - alive, but
 * never calling the allocator again until main releases it at the end of
 * the phase.  main frees all of the blocks.  An allocator that only lets
 * the owning thread take back blocks freed by other threads keeps all of
 * that memory committed for as long as the owner stays idle.
 *
 * budget  (meant for CHUNKMALLOC_BUDGET=320MiB; without a budget it only
 *         checks that nothing fails)
 *   large  producer: 256 x 1 MiB; main frees them, then must get
 *          64 x 1 MiB (touched) without a NULL
 *   small  producer: 200 MiB of 64..4096-byte blocks; main frees them,
 *          then must get 200 x 1 MiB (touched) without a NULL
 *   The producer's own allocations must not fail either.
 * rss     (no budget) the resident set after main's frees must drop below
 *         32 MiB:
 *   large-trim   256 x 1 MiB, then malloc_trim(0), checked at once
 *   large-idle   256 x 1 MiB, no malloc_trim; main keeps allocating and
 *                freeing small blocks for up to 2 s (10 ms sleeps), the
 *                resident set must drop below the bound within that time
 *                (chunkmalloc decommits after a purge delay, 100 ms by
 *                default).  Enforced only with
 *                CONFORMANCE_EXPECT_CHUNKMALLOC=1: glibc keeps a free
 *                thread-arena heap (64 MiB here) resident until
 *                malloc_trim, by design.
 *   small-trim   200 MiB of 64..4096-byte blocks, then malloc_trim(0)
 *   small-idle   200 MiB of 64..4096-byte blocks, no malloc_trim, up to 2 s
 *                (enforced as large-idle)
 * Between phases the producer is released and joined and malloc_trim(0)
 * is called, so each phase starts from a clean state.
 *
 * Output: "FAIL: ..." lines, "note: ..." lines with the numbers, then
 *   idle_owner: N passed, M failed
 */
#define _GNU_SOURCE
#include <errno.h>
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

#define MIB ((size_t)1 << 20)
#define RSS_BOUND_KIB (32L * 1024)
#define IDLE_WAIT_MS 2000
#define MAX_BLOCKS 200000

/* ------------------------------------------------------------------------
 * The producer.
 */
enum kind { LARGE, SMALL };

static pthread_mutex_t mu = PTHREAD_MUTEX_INITIALIZER;
static pthread_cond_t cv = PTHREAD_COND_INITIALIZER;
static int ready, release_producer;
static enum kind want_kind;
static unsigned char *blocks[MAX_BLOCKS];
static size_t block_size[MAX_BLOCKS];
static size_t n_blocks, producer_nulls, produced_bytes;

static void *producer(void *arg)
{
    (void)arg;
    size_t n = 0, nulls = 0, bytes = 0;
    if (want_kind == LARGE) {
        for (; n < 256; n++) {
            blocks[n] = x_malloc(MIB);
            block_size[n] = MIB;
            if (!blocks[n]) {
                nulls++;
                continue;
            }
            memset(blocks[n], (int)(n & 0xff), MIB);
            bytes += MIB;
        }
    } else {
        uint64_t s = 0x2545F4914F6CDD1Dull;
        while (bytes < 200 * MIB && n < MAX_BLOCKS) {
            s ^= s << 13;
            s ^= s >> 7;
            s ^= s << 17;
            size_t sz = 64 + (size_t)(s % (4096 - 64 + 1));
            blocks[n] = x_malloc(sz);
            block_size[n] = sz;
            if (!blocks[n]) {
                nulls++;
                n++;
                if (nulls > 1000)
                    break;
                continue;
            }
            memset(blocks[n], (int)(n & 0xff), sz);
            bytes += sz;
            n++;
        }
    }
    pthread_mutex_lock(&mu);
    n_blocks = n;
    producer_nulls = nulls;
    produced_bytes = bytes;
    ready = 1;
    pthread_cond_broadcast(&cv);
    /* idle: alive, but no allocator call until released */
    while (!release_producer)
        pthread_cond_wait(&cv, &mu);
    pthread_mutex_unlock(&mu);
    return NULL;
}

static pthread_t producer_thread;

/* Starts a producer and waits until it has handed over its blocks. */
static int start_producer(enum kind k)
{
    want_kind = k;
    ready = 0;
    release_producer = 0;
    if (pthread_create(&producer_thread, NULL, producer, NULL) != 0) {
        check(0, "pthread_create failed");
        return 0;
    }
    pthread_mutex_lock(&mu);
    while (!ready)
        pthread_cond_wait(&cv, &mu);
    pthread_mutex_unlock(&mu);
    return 1;
}

static void stop_producer(void)
{
    pthread_mutex_lock(&mu);
    release_producer = 1;
    pthread_cond_broadcast(&cv);
    pthread_mutex_unlock(&mu);
    pthread_join(producer_thread, NULL);
}

/* main frees every block the producer handed over (checking a byte). */
static size_t free_all(void)
{
    size_t bad = 0;
    for (size_t i = 0; i < n_blocks; i++) {
        if (!blocks[i])
            continue;
        if (blocks[i][0] != (unsigned char)(i & 0xff) || blocks[i][block_size[i] - 1] != (unsigned char)(i & 0xff))
            bad++;
        x_free(blocks[i]);
        blocks[i] = NULL;
    }
    return bad;
}

static const char *kind_name(enum kind k) { return k == LARGE ? "large" : "small"; }

/* ------------------------------------------------------------------------
 * budget
 */
static void budget_phase(enum kind k, size_t want_mib)
{
    const char *name = kind_name(k);
    if (!start_producer(k))
        return;
    check(producer_nulls == 0, "budget %s: the producer's malloc returned NULL %zu times (%zu MiB allocated)",
          name, producer_nulls, produced_bytes / MIB);
    size_t bad = free_all();
    check(bad == 0, "budget %s: %zu blocks corrupted", name, bad);
    unsigned char *mine[256] = {0};
    size_t got = 0;
    for (size_t i = 0; i < want_mib && i < 256; i++) {
        mine[i] = x_malloc(MIB);
        if (mine[i]) {
            memset(mine[i], 0x77, MIB);
            got++;
        }
    }
    say("note: budget %s: producer allocated %zu MiB in %zu blocks; after main freed them, %zu of %zu "
        "1 MiB allocations succeeded (in use %zu MiB, committed %zu MiB)\n",
        name, produced_bytes / MIB, n_blocks, got, want_mib, mallinfo2().uordblks / MIB, mallinfo2().arena / MIB);
    check(got == want_mib,
          "budget %s: only %zu of %zu 1 MiB allocations succeeded after main freed the idle producer's %zu MiB "
          "(memory freed by a non-owner is not reusable while the owner is idle?)",
          name, got, want_mib, produced_bytes / MIB);
    for (size_t i = 0; i < 256; i++)
        x_free(mine[i]);
    stop_producer();
    malloc_trim(0);
}

static void run_budget(void)
{
    const char *b = getenv("CHUNKMALLOC_BUDGET");
    if (!b)
        say("note: CHUNKMALLOC_BUDGET is not set; the budget phases only check that nothing fails\n");
    else
        say("note: CHUNKMALLOC_BUDGET=%s\n", b);
    budget_phase(LARGE, 64);
    budget_phase(SMALL, 200);
}

/* ------------------------------------------------------------------------
 * rss
 */
/* The idle phases' bound holds only for an allocator that purges on its
 * own after a delay (chunkmalloc): CONFORMANCE_EXPECT_CHUNKMALLOC=1. */
static int strict_idle;

static void rss_phase(enum kind k, int trim)
{
    char name[32];
    snprintf(name, sizeof name, "%s-%s", kind_name(k), trim ? "trim" : "idle");
    long base = rss_kib();
    if (!start_producer(k))
        return;
    long peak = rss_kib();
    check(producer_nulls == 0, "rss %s: the producer's malloc returned NULL %zu times", name, producer_nulls);
    size_t bad = free_all();
    check(bad == 0, "rss %s: %zu blocks corrupted", name, bad);
    long after_free = rss_kib();
    long end;
    double waited = 0;
    if (trim) {
        malloc_trim(0);
        end = rss_kib();
    } else {
        double t0 = now();
        unsigned char *small[64] = {0};
        unsigned r = 0;
        for (;;) {
            end = rss_kib();
            waited = now() - t0;
            if (end >= 0 && end < RSS_BOUND_KIB)
                break;
            if (waited * 1000 >= IDLE_WAIT_MS)
                break;
            /* main keeps using the allocator: small blocks come and go */
            for (int j = 0; j < 64; j++, r++) {
                x_free(small[j]);
                small[j] = x_malloc(16 + (r * 37) % 2000);
                if (small[j])
                    small[j][0] = (unsigned char)r;
            }
            sleep_ms(10);
        }
        for (int j = 0; j < 64; j++)
            x_free(small[j]);
    }
    char when[64];
    if (trim)
        snprintf(when, sizeof when, "after malloc_trim(0)");
    else
        snprintf(when, sizeof when, "after %.2f s of small allocations", waited);
    say("note: rss %s: resident %ld MiB before, %ld MiB with the producer's %zu MiB, %ld MiB after main's "
        "frees, %ld MiB %s (bound %ld MiB)\n",
        name, base / 1024, peak / 1024, produced_bytes / MIB, after_free / 1024, end / 1024, when,
        RSS_BOUND_KIB / 1024);
    if (!trim && !strict_idle) {
        if (end < 0 || end >= RSS_BOUND_KIB)
            say("note: rss %s: bound not enforced (set CONFORMANCE_EXPECT_CHUNKMALLOC=1; glibc keeps a free "
                "thread-arena heap resident until malloc_trim)\n",
                name);
    } else if (trim)
        check(end >= 0 && end < RSS_BOUND_KIB,
              "rss %s: resident set %ld MiB after main freed the idle producer's %zu MiB and called malloc_trim(0) "
              "(bound %ld MiB)",
              name, end / 1024, produced_bytes / MIB, RSS_BOUND_KIB / 1024);
    else
        check(end >= 0 && end < RSS_BOUND_KIB,
              "rss %s: resident set still %ld MiB %.1f s after main freed the idle producer's %zu MiB "
              "(bound %ld MiB; no malloc_trim)",
              name, end / 1024, waited, produced_bytes / MIB, RSS_BOUND_KIB / 1024);
    stop_producer();
    malloc_trim(0);
}

static void run_rss(void)
{
    const char *e = getenv("CONFORMANCE_EXPECT_CHUNKMALLOC");
    strict_idle = e && strcmp(e, "1") == 0;
    rss_phase(LARGE, 1);
    rss_phase(LARGE, 0);
    rss_phase(SMALL, 1);
    rss_phase(SMALL, 0);
}

int main(int argc, char **argv)
{
    if (argc != 2 || (strcmp(argv[1], "budget") != 0 && strcmp(argv[1], "rss") != 0)) {
        fprintf(stderr, "usage: %s budget|rss\n", argv[0]);
        return 2;
    }
    if (strcmp(argv[1], "budget") == 0)
        run_budget();
    else
        run_rss();
    say("idle_owner: %ld passed, %ld failed\n", n_passed, n_failed);
    return n_failed ? 1 : 0;
}
