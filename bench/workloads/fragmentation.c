/*
 * fragmentation - scattered survivors and changing size classes; mostly a
 * peak-RSS test.
 *
 * Each cycle allocates a large population of small objects (16..512 B), frees
 * a random 90% of them so that the survivors are scattered over the heap,
 * and then allocates a population of medium objects (1..8 KiB) that can only
 * reuse the freed memory if the allocator coalesces or recycles spans across
 * size classes.  The medium objects are then freed as well and the next
 * cycle starts with a different small-size range.  A fraction of survivors
 * lives on across cycles.  Peak RSS shows how well freed memory is reused.
 *
 * usage: fragmentation [scale]
 */
#include "wl.h"

#define SMALL_N 200000
#define MED_N 8000
#define BODY 16

static wl_rng rng;
static uint64_t alloc_sum, free_sum, tagseq;

static void *mk(size_t size)
{
    uint64_t t = ++tagseq;
    alloc_sum += wl_hash(t);
    return wl_block_new(size, t, BODY);
}

static void rm(void *p)
{
    free_sum += wl_hash(wl_block_free(p, BODY, "fragmentation object"));
}

int main(int argc, char **argv)
{
    double scale = wl_scale(argc, argv);
    long cycles = wl_scaled(20, scale);
    void **small = wl_calloc(SMALL_N, sizeof(void *));
    void **med = wl_calloc(MED_N, sizeof(void *));
    void **old = NULL; /* survivors carried over from the previous cycle */
    size_t nold = 0;
    wl_seed(&rng, 0xf7a9, 11);

    for (long c = 0; c < cycles; c++) {
        size_t lo = 16 + (size_t)(c % 4) * 64, hi = lo + 64 + (size_t)(c % 3) * 128;
        for (size_t i = 0; i < SMALL_N; i++) small[i] = mk((size_t)wl_range(&rng, lo, hi));
        /* free ~90%, survivors scattered */
        size_t nsurv = 0;
        for (size_t i = 0; i < SMALL_N; i++) {
            if (wl_chance(&rng, 1, 10)) small[nsurv++] = small[i];
            else rm(small[i]);
        }
        for (size_t i = 0; i < MED_N; i++) med[i] = mk((size_t)wl_range(&rng, 1024, 8192));
        for (size_t i = 0; i < MED_N; i++) rm(med[i]);
        /* previous cycle's survivors die now, a third of this cycle's live on */
        for (size_t i = 0; i < nold; i++) rm(old[i]);
        free(old);
        nold = 0;
        old = wl_malloc((nsurv + 1) * sizeof(void *));
        for (size_t i = 0; i < nsurv; i++) {
            if (wl_chance(&rng, 1, 3)) old[nold++] = small[i];
            else rm(small[i]);
        }
    }
    for (size_t i = 0; i < nold; i++) rm(old[i]);
    free(old);
    free(small);
    free(med);
    if (alloc_sum != free_sum) wl_die(3, "fragmentation: freed-tag sum differs from allocated-tag sum");
    wl_report("fragmentation", scale, alloc_sum ^ tagseq);
    return 0;
}
