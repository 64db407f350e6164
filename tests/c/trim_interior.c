/*
 * trim_interior.c - malloc_trim(0) and the free pages inside partly used
 * slabs.
 *
 * Build:  cc -O2 -pthread -o trim_interior trim_interior.c
 * Run:    ./trim_interior          (malloc_trim)
 *         ./trim_interior idle     (no malloc_trim)
 *
 * 1 Mi blocks of 64 bytes are allocated and written, then all but one in
 * 512 are freed: one live block per eight pages, in every slab, so no
 * slab is empty and only giving back the free pages inside slabs lowers
 * the resident set.  Checks:
 *   trim      malloc_trim(0) returns 1 and the resident set falls by at
 *             least 40 MiB (of the ~64 MiB the blocks took; glibc's
 *             malloc_trim does this too; enforced only for chunkmalloc,
 *             CONFORMANCE_EXPECT_CHUNKMALLOC=1)
 *   survive   every kept block still holds its pattern
 *   reuse     as many 64-byte blocks as were freed, allocated again, are
 *             written and read back intact, none overlaps a kept block,
 *             and the resident set ends within 4 MiB of where it was
 *             before the trim; with chunkmalloc, the slab chunk count
 *             (malloc_stats) grows by at most 8: the pages given back are
 *             used again, where new memory would take ~850 more chunks
 *
 * idle: the same blocks, no malloc_trim; the program then allocates and
 * frees blocks of another size (10 ms sleeps between rounds) for up to
 * 4 s, and the resident set must fall by 40 MiB within that time
 * (chunkmalloc gives back the free pages of slabs no allocation has come
 * back to for ten purge delays, 1 s by default; enforced only for
 * chunkmalloc), the kept blocks intact.
 *
 * Output: "FAIL: ..." lines, then   trim_interior: N passed, M failed
 */
#define _GNU_SOURCE
#include <stdint.h>

#include "testutil.h"

#define N (1 << 20)
#define KEEP 512
#define SIZE 64
#define M (N - N / KEEP) /* the blocks freed, allocated again */

static uint64_t pattern(uint64_t i) { return i * 0x9E3779B97F4A7C15ull + 1; }

static int fill_check(uint64_t *p, uint64_t i, int write)
{
    for (int k = 0; k < SIZE / 8; k++) {
        if (write)
            p[k] = pattern(i) ^ (uint64_t)k;
        else if (p[k] != (pattern(i) ^ (uint64_t)k))
            return 0;
    }
    return 1;
}

static int cmp_ptr(const void *a, const void *b)
{
    uintptr_t x = *(const uintptr_t *)a, y = *(const uintptr_t *)b;
    return x < y ? -1 : x > y;
}

/* The kept blocks still hold their patterns. */
static void check_kept(uint64_t **p, const char *what)
{
    int bad = 0;
    for (uint64_t i = 0; i < N; i += KEEP)
        bad += !fill_check(p[i], i, 0);
    check(bad == 0, "%s: %d kept blocks changed", what, bad);
}

/* idle: no malloc_trim; allocations of another size until the resident
 * set has fallen by 40 MiB or 4 s have passed. */
static void idle_phase(uint64_t **p, long before, int enforce)
{
    double t0 = now();
    long r = before;
    while (now() - t0 < 4.0 && before - r < 40 * 1024) {
        void *o[512];
        for (int i = 0; i < 512; i++)
            o[i] = malloc(200);
        for (int i = 0; i < 512; i++)
            free(o[i]);
        sleep_ms(10);
        r = rss_kib();
    }
    say("idle: resident %ld KiB, %ld KiB after %.2f s without malloc_trim\n", before, r, now() - t0);
    if (enforce)
        check(before - r >= 40 * 1024, "idle: resident set fell by %ld KiB only", before - r);
    check_kept(p, "idle");
}

/* trim, survive, reuse (see the top); fills q[0..M). */
static void trim_phase(uint64_t **p, uint64_t **q, uintptr_t *kept, long before, int enforce)
{
    static char table[16384];
    capture_stats(table, sizeof table);
    long chunks_before = stat_row(table, "slab chunks");
    int r = malloc_trim(0);
    long after = rss_kib();
    say("trim: resident %ld KiB before malloc_trim(0), %ld KiB after (returned %d)\n", before, after, r);
    if (enforce) {
        check(r == 1, "trim: malloc_trim(0) returned %d", r);
        check(before - after >= 40 * 1024, "trim: resident set fell by %ld KiB only", before - after);
    }
    check_kept(p, "survive");

    for (uint64_t i = 0; i < M; i++) {
        q[i] = malloc(SIZE);
        if (!q[i]) {
            check(0, "reuse: malloc(64) #%llu failed", (unsigned long long)i);
            return;
        }
        fill_check(q[i], N + i, 1);
    }
    long again = rss_kib();
    int bad = 0;
    for (uint64_t i = 0; i < M; i++)
        bad += !fill_check(q[i], N + i, 0);
    check(bad == 0, "reuse: %d new blocks changed", bad);
    size_t nk = 0;
    for (uint64_t i = 0; i < N; i += KEEP)
        kept[nk++] = (uintptr_t)p[i];
    qsort(kept, nk, sizeof *kept, cmp_ptr);
    long overlaps = 0;
    for (uint64_t i = 0; i < M; i++) {
        uintptr_t a = (uintptr_t)q[i];
        size_t lo = 0, hi = nk;
        while (lo < hi) {
            size_t mid = (lo + hi) / 2;
            if (kept[mid] < a)
                lo = mid + 1;
            else
                hi = mid;
        }
        if ((lo < nk && kept[lo] < a + SIZE) || (lo > 0 && kept[lo - 1] + SIZE > a))
            overlaps++;
    }
    check(overlaps == 0, "reuse: %ld new blocks overlap kept ones", overlaps);
    say("reuse: resident %ld KiB after allocating again\n", again);
    check(again <= before + 4 * 1024, "reuse: resident %ld KiB, %ld KiB before the trim", again, before);
    capture_stats(table, sizeof table);
    long chunks_after = stat_row(table, "slab chunks");
    if (enforce)
        check(chunks_before > 0 && chunks_after <= chunks_before + 8, "reuse: %ld slab chunks, %ld before the trim",
              chunks_after, chunks_before);
}

int main(int argc, char **argv)
{
    int idle = argc > 1 && strcmp(argv[1], "idle") == 0;
    const char *e = getenv("CONFORMANCE_EXPECT_CHUNKMALLOC");
    int enforce = e && e[0] == '1';
    uint64_t **p = malloc(N * sizeof *p);
    uint64_t **q = malloc(N * sizeof *q);
    uintptr_t *kept = malloc((N / KEEP) * sizeof *kept);
    check(p && q && kept, "index arrays");
    if (!p || !q || !kept)
        return 1;
    /* resident from the start, so the later measurements see blocks only
     * (and q all null: the idle run frees it unfilled) */
    memset(q, 0, M * sizeof *q);
    memset(kept, 0, (N / KEEP) * sizeof *kept);
    for (uint64_t i = 0; i < N; i++) {
        p[i] = malloc(SIZE);
        if (!p[i]) {
            check(0, "malloc(64) #%llu failed", (unsigned long long)i);
            return 1;
        }
        fill_check(p[i], i, 1);
    }
    for (uint64_t i = 0; i < N; i++)
        if (i % KEEP) {
            free(p[i]);
            p[i] = NULL;
        }

    long before = rss_kib();
    if (idle)
        idle_phase(p, before, enforce);
    else
        trim_phase(p, q, kept, before, enforce);

    for (uint64_t i = 0; i < M; i++)
        free(q[i]);
    for (uint64_t i = 0; i < N; i += KEEP)
        free(p[i]);
    free(kept);
    free(q);
    free(p);
    say("trim_interior: %ld passed, %ld failed\n", n_passed, n_failed);
    return n_failed != 0;
}
