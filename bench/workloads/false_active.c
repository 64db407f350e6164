/*
 * false_active - active false sharing (the cache-thrash idea).
 *
 * All worker threads start together; each one repeatedly allocates a small
 * object itself, writes every byte of it many times, verifies and frees it.
 * It also keeps a handful of its own small objects live and keeps updating
 * them.  If the allocator places objects of different threads on the same
 * cache line, the writes keep bouncing the line between cores.
 *
 * usage: false_active [scale] [threads]   (threads default 4)
 */
#include "wl.h"

#define OBJ 16
#define WRITES 300
#define KEEP 8

static pthread_barrier_t start;

typedef struct {
    pthread_t th;
    int id;
    long iters;
    uint64_t sum;
} worker;

static void *work(void *arg)
{
    worker *w = (worker *)arg;
    wl_rng r;
    wl_seed(&r, (uint64_t)w->id, 0xac71);
    uint64_t *keep[KEEP];
    for (int i = 0; i < KEEP; i++) keep[i] = wl_calloc(1, sizeof(uint64_t) * 2);
    pthread_barrier_wait(&start);

    for (long it = 0; it < w->iters; it++) {
        size_t size = OBJ / 2 + (size_t)wl_below(&r, OBJ); /* 8..23 bytes */
        volatile unsigned char *p = wl_malloc(size);
        unsigned char base = (unsigned char)wl_next(&r);
        for (size_t i = 0; i < size; i++) p[i] = base;
        for (int k = 0; k < WRITES; k++) p[(size_t)k % size] += 1;
        /* every byte i received ceil((WRITES - i) / size) increments */
        for (size_t i = 0; i < size; i++) {
            unsigned n = (unsigned)((WRITES - (int)i + (int)size - 1) / (int)size);
            if (p[i] != (unsigned char)(base + n)) wl_corrupt("thrashed object", (void *)p, size, base);
        }
        w->sum = wl_acc(w->sum, p[size - 1]);
        free((void *)p);
        /* update one of the kept objects */
        uint64_t *kp = keep[it % KEEP];
        kp[0] += 1;
        kp[1] += (uint64_t)it;
    }
    for (int i = 0; i < KEEP; i++) {
        w->sum = wl_acc(w->sum, keep[i][0] ^ keep[i][1]);
        free(keep[i]);
    }
    return NULL;
}

int main(int argc, char **argv)
{
    double scale = wl_scale(argc, argv);
    int n = (int)wl_int_arg(argc, argv, 2, "WORKLOAD_THREADS", 4, 1, 256);
    long total = wl_scaled(2000000, scale);
    pthread_barrier_init(&start, NULL, (unsigned)n);
    worker *ws = wl_calloc((size_t)n, sizeof(worker));
    for (int i = 0; i < n; i++) {
        ws[i].id = i;
        ws[i].iters = total / n;
        wl_spawn(&ws[i].th, work, &ws[i]);
    }
    uint64_t sum = 0;
    for (int i = 0; i < n; i++) {
        wl_join(ws[i].th);
        sum = wl_acc(sum, ws[i].sum);
    }
    free(ws);
    pthread_barrier_destroy(&start);
    wl_report("false_active", scale, wl_acc(sum, (uint64_t)n));
    return 0;
}
