/*
 * prodcons - producer/consumer: some threads only allocate, others only free
 * (the xmalloc-test idea).
 *
 * Producers allocate blocks of random size (16 B .. 2 KiB, mostly small),
 * write them and push them in batches of 128 through a bounded queue
 * (mutex + condition variables).  Consumers pop batches, verify every block
 * and free it.  Each block is therefore always freed by a thread that did not
 * allocate it.  The batch arrays themselves are also malloc'ed by producers
 * and freed by consumers.
 *
 * usage: prodcons [scale] [producers] [consumers]   (default 2 and 2)
 */
#include "wl.h"

#define BATCH 128
#define QCAP 32
#define BODY 32

typedef struct { void *blk[BATCH]; } batch;

static pthread_mutex_t mu = PTHREAD_MUTEX_INITIALIZER;
static pthread_cond_t not_full = PTHREAD_COND_INITIALIZER;
static pthread_cond_t not_empty = PTHREAD_COND_INITIALIZER;
static batch *queue[QCAP];
static size_t qh, qt; /* head, tail counters */
static int producers_left;
static long batches_per_producer;

typedef struct { pthread_t th; int id; uint64_t sum, nblk; } actor;

static void *produce(void *arg)
{
    actor *a = (actor *)arg;
    wl_rng r;
    wl_seed(&r, (uint64_t)a->id, 0x9d0d);
    for (long b = 0; b < batches_per_producer; b++) {
        batch *bt = wl_malloc(sizeof(batch));
        for (int i = 0; i < BATCH; i++) {
            size_t size = wl_chance(&r, 7, 8) ? (size_t)wl_range(&r, 16, 128) : (size_t)wl_range(&r, 129, 2048);
            uint64_t tag = ((uint64_t)a->id << 48) | ((uint64_t)b << 8) | (uint64_t)i;
            bt->blk[i] = wl_block_new(size, tag, BODY);
            a->sum += wl_hash(tag);
        }
        a->nblk += BATCH;
        pthread_mutex_lock(&mu);
        while (qt - qh == QCAP) pthread_cond_wait(&not_full, &mu);
        queue[qt++ % QCAP] = bt;
        pthread_cond_signal(&not_empty);
        pthread_mutex_unlock(&mu);
    }
    pthread_mutex_lock(&mu);
    producers_left--;
    pthread_cond_broadcast(&not_empty);
    pthread_mutex_unlock(&mu);
    return NULL;
}

static void *consume(void *arg)
{
    actor *a = (actor *)arg;
    for (;;) {
        pthread_mutex_lock(&mu);
        while (qt == qh && producers_left > 0) pthread_cond_wait(&not_empty, &mu);
        if (qt == qh) {
            pthread_mutex_unlock(&mu);
            return NULL;
        }
        batch *bt = queue[qh++ % QCAP];
        pthread_cond_signal(&not_full);
        pthread_mutex_unlock(&mu);
        for (int i = 0; i < BATCH; i++) a->sum += wl_hash(wl_block_free(bt->blk[i], BODY, "prodcons block"));
        a->nblk += BATCH;
        free(bt);
    }
}

int main(int argc, char **argv)
{
    double scale = wl_scale(argc, argv);
    int np = (int)wl_int_arg(argc, argv, 2, "WORKLOAD_PRODUCERS", 2, 1, 64);
    int nc = (int)wl_int_arg(argc, argv, 3, "WORKLOAD_CONSUMERS", 2, 1, 64);
    batches_per_producer = wl_scaled(64000, scale) / np;
    if (batches_per_producer < 1) batches_per_producer = 1;
    producers_left = np;

    actor *ps = wl_calloc((size_t)np, sizeof(actor));
    actor *cs = wl_calloc((size_t)nc, sizeof(actor));
    for (int i = 0; i < nc; i++) { cs[i].id = 1000 + i; wl_spawn(&cs[i].th, consume, &cs[i]); }
    for (int i = 0; i < np; i++) { ps[i].id = i; wl_spawn(&ps[i].th, produce, &ps[i]); }
    uint64_t made = 0, freed = 0, nmade = 0, nfreed = 0;
    for (int i = 0; i < np; i++) { wl_join(ps[i].th); made += ps[i].sum; nmade += ps[i].nblk; }
    for (int i = 0; i < nc; i++) { wl_join(cs[i].th); freed += cs[i].sum; nfreed += cs[i].nblk; }
    if (made != freed || nmade != nfreed) wl_die(3, "prodcons: %llu made, %llu freed, sums differ",
                                                 (unsigned long long)nmade, (unsigned long long)nfreed);
    free(ps);
    free(cs);
    wl_report("prodcons", scale, wl_acc(made, nmade));
    return 0;
}
