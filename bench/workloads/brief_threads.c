/*
 * brief_threads - 50,000 threads that each make one allocation, at most ten
 * alive at a time.
 *
 * The main thread keeps a ring of ten workers: before it starts thread i it
 * joins thread i - 10.  Each worker does one calloc(16, 8), checks that it is
 * zeroed, writes a pattern into it, swaps it into a slot of a shared array
 * (atomic exchange) and frees, after verifying it, the block an earlier
 * thread left in that slot.  Almost all of the time goes to what the
 * allocator does when a thread first allocates and when it exits, with ten
 * threads starting and ending at once on few cores.
 *
 * usage: brief_threads [scale]
 */
#include "wl.h"

#define ALIVE 10
#define SLOTS 64
#define NMEMB 16
#define SIZE 8
#define BYTES (NMEMB * SIZE)

static _Atomic(uint64_t *) slots[SLOTS];
static _Atomic uint64_t freed_sum;

/* a block's first word is its tag; the rest carry the tag's pattern */
static uint64_t check_block(uint64_t *b, const char *what)
{
    uint64_t tag = b[0];
    wl_verify(b + 1, BYTES - 8, tag, what);
    return tag;
}

static void *work(void *arg)
{
    uint64_t id = (uint64_t)(uintptr_t)arg;
    uint64_t *b = (uint64_t *)wl_calloc(NMEMB, SIZE);
    for (size_t i = 0; i < BYTES / 8; i++)
        if (b[i] != 0) wl_corrupt("calloc'd block not zeroed", b, BYTES, id);
    uint64_t tag = wl_mix64(id + 1);
    b[0] = tag;
    wl_fill(b + 1, BYTES - 8, tag);
    uint64_t *old = atomic_exchange(&slots[wl_mix64(id) % SLOTS], b);
    if (old) {
        atomic_fetch_add(&freed_sum, wl_hash(check_block(old, "block left by an earlier thread")));
        free(old);
    }
    return NULL;
}

int main(int argc, char **argv)
{
    double scale = wl_scale(argc, argv);
    long threads = wl_scaled(50000, scale);
    pthread_t ring[ALIVE];
    uint64_t made_sum = 0;
    for (long i = 0; i < threads; i++) {
        if (i >= ALIVE) wl_join(ring[i % ALIVE]);
        wl_spawn(&ring[i % ALIVE], work, (void *)(uintptr_t)i);
        made_sum += wl_hash(wl_mix64((uint64_t)i + 1));
    }
    for (long i = threads > ALIVE ? threads - ALIVE : 0; i < threads; i++) wl_join(ring[i % ALIVE]);
    uint64_t sum = atomic_load(&freed_sum);
    for (int s = 0; s < SLOTS; s++) {
        uint64_t *b = atomic_load(&slots[s]);
        if (!b) continue;
        sum += wl_hash(check_block(b, "block left in the shared array"));
        free(b);
    }
    if (sum != made_sum) wl_die(3, "brief_threads: freed-tag sum differs from allocated-tag sum");
    wl_report("brief_threads", scale, wl_acc((uint64_t)threads, sum));
    return 0;
}
