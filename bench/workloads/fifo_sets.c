/*
 * fifo_sets - sets of equally sized blocks freed in FIFO order.
 *
 * Two patterns alternate:
 *  1. batch: allocate a set of blocks of one size, then free them oldest
 *     first;
 *  2. queue: a sliding window of live blocks; every allocation pushes a new
 *     block and, once the window is full, the oldest block is released.  The
 *     block size changes every few thousand pushes, so blocks of the old size
 *     drain from the front while blocks of the new size fill the back.
 * All blocks carry a pattern that is checked before free.
 *
 * usage: fifo_sets [scale]
 */
#include "wl.h"

static const size_t sizes[] = {8, 16, 24, 32, 48, 64, 96, 128, 192, 256, 512,
                               1024, 2048, 4096, 16384};
#define NSIZES (sizeof(sizes) / sizeof(sizes[0]))
#define QCAP 8192 /* power of two */

typedef struct { void *p; uint64_t tag; size_t size; } ent;

static wl_rng rng;
static uint64_t sum, tagseq;
static ent q[QCAP];
static size_t qhead, qtail; /* head: oldest; tail: next free */

static void *make(size_t size, uint64_t *tag)
{
    uint64_t t = ++tagseq;
    void *p = wl_malloc(size);
    size_t n = size < 48 ? size : 48;
    wl_fill(p, n, t);
    if (size >= 56) memcpy((char *)p + size - 8, &t, 8);
    *tag = t;
    return p;
}

static void drop(void *p, size_t size, uint64_t t)
{
    size_t n = size < 48 ? size : 48;
    wl_verify(p, n, t, "fifo block");
    if (size >= 56) {
        uint64_t last;
        memcpy(&last, (char *)p + size - 8, 8);
        if (last != t) wl_corrupt("fifo block tail", p, size, t);
    }
    sum += wl_hash(t * 31 + size);
    free(p);
}

static void push(size_t size)
{
    ent *e = &q[qtail++ & (QCAP - 1)];
    e->size = size;
    e->p = make(size, &e->tag);
}

static void pop(void)
{
    ent *e = &q[qhead++ & (QCAP - 1)];
    drop(e->p, e->size, e->tag);
}

int main(int argc, char **argv)
{
    double scale = wl_scale(argc, argv);
    long rounds = wl_scaled(3600, scale);
    wl_seed(&rng, 0xf1f0, 3);

    for (long r = 0; r < rounds; r++) {
        size_t size = sizes[wl_below(&rng, NSIZES)];
        size_t budget = (size_t)1 << 20; /* ~1 MiB per set */
        size_t n = budget / size;
        if (n > QCAP / 2) n = QCAP / 2;
        n = n / 2 + wl_below(&rng, n / 2 + 1);

        if (r % 2 == 0) {
            /* batch: all in, then all out oldest first */
            for (size_t i = 0; i < n; i++) push(size);
            while (qhead != qtail) pop();
        } else {
            /* sliding window; the previous window's tail drains first */
            size_t window = n;
            for (size_t i = 0; i < 3 * n; i++) {
                push(size);
                while (qtail - qhead > window) pop();
            }
            /* leave up to half a window live into the next round */
            while (qtail - qhead > window / 2) pop();
        }
    }
    while (qhead != qtail) pop();
    wl_report("fifo_sets", scale, sum);
    return 0;
}
