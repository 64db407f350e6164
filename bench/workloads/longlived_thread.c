/*
 * longlived_thread - every short-lived thread leaves one object behind, which
 * a later thread frees.
 *
 * Threads are started two at a time, over and over.  Each thread does a
 * little private allocation work, then frees the object left in its ring slot
 * by an earlier (dead) thread and leaves one new object of random size
 * (16 B .. 8 KiB) there.  Allocators with per-thread heaps must cope with
 * memory owned by threads that no longer exist and with a stream of threads
 * whose heaps are created and abandoned.
 *
 * usage: longlived_thread [scale]
 */
#include "wl.h"

#define RING 64
#define BODY 32

static void *ring[RING];

typedef struct {
    pthread_t th;
    long id;
    uint64_t alloc_sum, free_sum;
} worker;

static void *work(void *arg)
{
    worker *w = (worker *)arg;
    wl_rng r;
    wl_seed(&r, (uint64_t)w->id, 0x1011);
    uint64_t seq = 0;
    /* some private work: a small list built and torn down */
    void *tmp[64];
    int n = 16 + (int)wl_below(&r, 48);
    for (int i = 0; i < n; i++) {
        uint64_t t = ((uint64_t)w->id << 16) | seq++;
        tmp[i] = wl_block_new((size_t)wl_range(&r, 16, 512), t, BODY);
        w->alloc_sum += wl_hash(t);
    }
    for (int i = 0; i < n; i++) w->free_sum += wl_hash(wl_block_free(tmp[i], BODY, "temp object"));

    /* the object left behind by an earlier thread */
    size_t slot = (size_t)(w->id % RING);
    if (ring[slot]) w->free_sum += wl_hash(wl_block_free(ring[slot], BODY, "left-behind object"));
    uint64_t t = ((uint64_t)w->id << 16) | 0xffff;
    size_t size = wl_chance(&r, 3, 4) ? (size_t)wl_range(&r, 16, 256) : (size_t)wl_range(&r, 257, 8192);
    ring[slot] = wl_block_new(size, t, BODY);
    w->alloc_sum += wl_hash(t);
    return NULL;
}

int main(int argc, char **argv)
{
    double scale = wl_scale(argc, argv);
    long pairs = wl_scaled(12000, scale);
    uint64_t alloc_sum = 0, free_sum = 0;
    worker w[2];
    for (long k = 0; k < pairs; k++) {
        for (int j = 0; j < 2; j++) {
            w[j] = (worker){.id = 2 * k + j};
            wl_spawn(&w[j].th, work, &w[j]);
        }
        for (int j = 0; j < 2; j++) {
            wl_join(w[j].th);
            alloc_sum += w[j].alloc_sum;
            free_sum += w[j].free_sum;
        }
    }
    for (int i = 0; i < RING; i++)
        if (ring[i]) free_sum += wl_hash(wl_block_free(ring[i], BODY, "left-behind object"));
    if (alloc_sum != free_sum) wl_die(3, "longlived_thread: freed-tag sum differs from allocated-tag sum");
    wl_report("longlived_thread", scale, alloc_sum);
    return 0;
}
