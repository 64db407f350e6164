/*
 * pareto - allocation-heavy loop with Pareto-distributed request sizes up to
 * 1 KiB.
 *
 * scripts/bench.sh runs it with 1, 2 and 4 threads (pareto_1t/_2t/_4t).
 * Request sizes follow a Pareto distribution (minimum 8 bytes, shape 1.1,
 * capped at 1024), so most requests are tiny and a long tail is larger.
 * Each thread keeps a table of live objects; every operation allocates a new
 * object, writes its header and puts it in a random table slot, freeing the
 * previous occupant.  Object lifetimes are mixed further with bursts of
 * temporary allocations released in bulk.  The total amount of work is fixed
 * and divided among the threads, so with ideal scaling 2 threads take half
 * the wall time of 1 (on a machine with >= 2 free cores).
 *
 * usage: pareto [scale] [threads]   (threads default 1, env WORKLOAD_THREADS)
 */
#include "wl.h"
#include <math.h>

#define TABLE 8192
#define BODY 16

typedef struct {
    pthread_t th;
    int id;
    long ops;
    uint64_t alloc_sum, free_sum;
} worker;

static size_t pareto_size(wl_rng *r)
{
    /* inverse transform: x = xm / u^(1/alpha), u in (0, 1] */
    double u = 1.0 - wl_unit(r);
    double x = 8.0 * pow(u, -1.0 / 1.1);
    if (x > 1024.0) x = 1024.0;
    return (size_t)x;
}

static void *work(void *arg)
{
    worker *w = (worker *)arg;
    wl_rng r;
    wl_seed(&r, (uint64_t)w->id, 0x9a3e70);
    void **table = wl_calloc(TABLE, sizeof(void *));
    void *burst[512];
    uint64_t seq = (uint64_t)w->id << 48;
    for (long i = 0; i < w->ops; i++) {
        uint64_t t = seq++;
        void *p = wl_block_new(pareto_size(&r), t, BODY);
        w->alloc_sum += wl_hash(t);
        size_t k = (size_t)wl_below(&r, TABLE);
        if (table[k]) w->free_sum += wl_hash(wl_block_free(table[k], BODY, "pareto object"));
        table[k] = p;
        if ((i & 4095) == 4095) {
            int n = 64 + (int)wl_below(&r, 448);
            for (int j = 0; j < n; j++) {
                uint64_t bt = seq++;
                burst[j] = wl_block_new(pareto_size(&r), bt, BODY);
                w->alloc_sum += wl_hash(bt);
            }
            for (int j = 0; j < n; j++) w->free_sum += wl_hash(wl_block_free(burst[j], BODY, "burst object"));
        }
    }
    for (size_t k = 0; k < TABLE; k++)
        if (table[k]) w->free_sum += wl_hash(wl_block_free(table[k], BODY, "pareto object"));
    free(table);
    return NULL;
}

int main(int argc, char **argv)
{
    double scale = wl_scale(argc, argv);
    int n = (int)wl_int_arg(argc, argv, 2, "WORKLOAD_THREADS", 1, 1, 256);
    long total = wl_scaled(10000000, scale);
    worker *ws = wl_calloc((size_t)n, sizeof(worker));
    for (int i = 0; i < n; i++) {
        ws[i].id = i;
        ws[i].ops = total / n;
        wl_spawn(&ws[i].th, work, &ws[i]);
    }
    uint64_t alloc_sum = 0, free_sum = 0;
    for (int i = 0; i < n; i++) {
        wl_join(ws[i].th);
        alloc_sum += ws[i].alloc_sum;
        free_sum += ws[i].free_sum;
    }
    free(ws);
    if (alloc_sum != free_sum) wl_die(3, "pareto: freed-tag sum differs from allocated-tag sum");
    wl_report("pareto", scale, wl_acc(alloc_sum, (uint64_t)n));
    return 0;
}
