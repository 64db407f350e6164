/*
 * larson - server-like "bleeding" loop (after the idea of Larson & Krishnan's
 * benchmark).
 *
 * A shared array of slots holds live blocks.  Each worker thread repeatedly
 * allocates a block of random size (16..1024 B), writes it, swaps it into a
 * random slot with an atomic exchange and frees the block it displaced - a
 * block usually allocated by another thread.  Workers run for a number of
 * rounds and are then replaced by fresh threads (epochs) while the slot
 * contents survive, like a server that recycles its worker threads.
 *
 * The checksum is the order-independent sum of the tags of all blocks ever
 * allocated; the program also checks that every allocated block was freed
 * exactly once (sum of freed tags == sum of allocated tags).
 *
 * usage: larson [scale] [threads]   (threads default 4, env WORKLOAD_THREADS)
 */
#include "wl.h"

#define NSLOTS 16384
#define EPOCHS 5
#define BODY 48 /* pattern bytes checked per block (plus the last 8) */

static _Atomic(void *) slots[NSLOTS];
static long rounds_per_thread;

typedef struct {
    pthread_t th;
    int epoch, id;
    uint64_t alloc_sum, free_sum, nops;
} worker;

static void *work(void *arg)
{
    worker *w = (worker *)arg;
    wl_rng r;
    wl_seed(&r, (uint64_t)w->epoch * 1000 + (uint64_t)w->id, 0x1a75);
    uint64_t tagbase = ((uint64_t)w->epoch << 48) | ((uint64_t)w->id << 40);
    for (long i = 0; i < rounds_per_thread; i++) {
        size_t size = (size_t)wl_range(&r, 16, 1024);
        /* bias towards small requests, as real servers do */
        if (wl_chance(&r, 3, 4)) size = 16 + size / 8;
        uint64_t tag = tagbase | (uint64_t)i;
        void *p = wl_block_new(size, tag, BODY);
        w->alloc_sum += wl_hash(tag);
        size_t k = (size_t)wl_below(&r, NSLOTS);
        void *old = atomic_exchange_explicit(&slots[k], p, memory_order_acq_rel);
        if (old) w->free_sum += wl_hash(wl_block_free(old, BODY, "larson block"));
    }
    w->nops = (uint64_t)rounds_per_thread;
    return NULL;
}

int main(int argc, char **argv)
{
    double scale = wl_scale(argc, argv);
    int nthreads = (int)wl_int_arg(argc, argv, 2, "WORKLOAD_THREADS", 4, 1, 256);
    /* fixed total work, shared by the threads */
    rounds_per_thread = wl_scaled(8000000, scale) / EPOCHS / nthreads;
    if (rounds_per_thread < 1) rounds_per_thread = 1;

    /* warm start: fill half of the slots from the main thread */
    uint64_t alloc_sum = 0, free_sum = 0;
    wl_rng r;
    wl_seed(&r, 77, 77);
    for (size_t k = 0; k < NSLOTS; k += 2) {
        uint64_t tag = ((uint64_t)0xff << 48) | k;
        atomic_store(&slots[k], wl_block_new((size_t)wl_range(&r, 16, 256), tag, BODY));
        alloc_sum += wl_hash(tag);
    }

    worker *ws = wl_calloc((size_t)nthreads, sizeof(worker));
    for (int e = 0; e < EPOCHS; e++) {
        for (int t = 0; t < nthreads; t++) {
            ws[t] = (worker){.epoch = e, .id = t};
            wl_spawn(&ws[t].th, work, &ws[t]);
        }
        for (int t = 0; t < nthreads; t++) {
            wl_join(ws[t].th);
            alloc_sum += ws[t].alloc_sum;
            free_sum += ws[t].free_sum;
        }
    }
    for (size_t k = 0; k < NSLOTS; k++) {
        void *p = atomic_exchange(&slots[k], NULL);
        if (p) free_sum += wl_hash(wl_block_free(p, BODY, "larson block"));
    }
    free(ws);
    if (alloc_sum != free_sum) wl_die(3, "larson: freed-tag sum differs from allocated-tag sum");
    wl_report("larson", scale, alloc_sum ^ (uint64_t)nthreads);
    return 0;
}
