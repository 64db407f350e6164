/*
 * false_passive - passive false sharing (the cache-scratch idea).
 *
 * The main thread allocates one small object per worker, back to back, so
 * with most allocators they share cache lines.  Each worker receives its
 * object, writes it, frees it and then repeatedly allocates an object of the
 * same size, writes every byte of it many times, sometimes grows and shrinks
 * it with realloc, and frees it.  An allocator that hands the freed (shared
 * cache line) memory back to the worker makes all workers fight over the same
 * lines.  Contents are verified before each free.
 *
 * usage: false_passive [scale] [threads]   (threads default 4)
 */
#include "wl.h"

#define OBJ 8
#define WRITES 400

typedef struct {
    pthread_t th;
    int id;
    long iters;
    char *given;
    uint64_t sum;
} worker;

/* write every byte `reps` times; volatile so the stores really happen */
static void hammer(char *p, size_t n, int reps, uint64_t seed)
{
    volatile char *v = (volatile char *)p;
    for (int k = 0; k < reps; k++)
        for (size_t i = 0; i < n; i++) v[i] = (char)(v[i] + (char)(seed + (uint64_t)i + (uint64_t)k));
}

/* the value every byte holds after hammer() on a block whose bytes were `init` */
static int check(const char *p, size_t n, int reps, uint64_t seed, char init)
{
    uint64_t tri = (uint64_t)reps * (uint64_t)(reps - 1) / 2;
    for (size_t i = 0; i < n; i++) {
        char expect = (char)((uint64_t)(unsigned char)init + (uint64_t)reps * (seed + (uint64_t)i) + tri);
        if (p[i] != expect) return 0;
    }
    return 1;
}

static void *work(void *arg)
{
    worker *w = (worker *)arg;
    wl_rng r;
    wl_seed(&r, (uint64_t)w->id, 0xca5e);
    /* the object handed over by main */
    hammer(w->given, OBJ, WRITES, (uint64_t)w->id);
    if (!check(w->given, OBJ, WRITES, (uint64_t)w->id, 0)) wl_corrupt("given object", w->given, OBJ, 0);
    w->sum = wl_acc(w->sum, (unsigned char)w->given[OBJ - 1]);
    free(w->given);

    for (long it = 0; it < w->iters; it++) {
        uint64_t seed = wl_next(&r);
        char *p = wl_malloc(OBJ);
        memset(p, 0, OBJ);
        hammer(p, OBJ, WRITES, seed);
        if (wl_chance(&r, 1, 8)) {
            /* grow, touch the new part, shrink back */
            p = wl_realloc(p, OBJ * 4);
            memset(p + OBJ, 0x5a, OBJ * 3);
            if (!check(p, OBJ, WRITES, seed, 0)) wl_corrupt("realloc'ed object", p, OBJ * 4, seed);
            p = wl_realloc(p, OBJ);
        }
        if (!check(p, OBJ, WRITES, seed, 0)) wl_corrupt("hammered object", p, OBJ, seed);
        w->sum = wl_acc(w->sum, (unsigned char)p[it % OBJ]);
        free(p);
    }
    return NULL;
}

int main(int argc, char **argv)
{
    double scale = wl_scale(argc, argv);
    int n = (int)wl_int_arg(argc, argv, 2, "WORKLOAD_THREADS", 4, 1, 256);
    long total = wl_scaled(600000, scale);
    worker *ws = wl_calloc((size_t)n, sizeof(worker));
    /* allocate all the handed-over objects first, consecutively */
    for (int i = 0; i < n; i++) {
        ws[i].id = i;
        ws[i].iters = total / n;
        ws[i].given = wl_calloc(1, OBJ);
    }
    for (int i = 0; i < n; i++) wl_spawn(&ws[i].th, work, &ws[i]);
    uint64_t sum = 0;
    for (int i = 0; i < n; i++) {
        wl_join(ws[i].th);
        sum = wl_acc(sum, ws[i].sum);
    }
    free(ws);
    wl_report("false_passive", scale, wl_acc(sum, (uint64_t)n));
    return 0;
}
