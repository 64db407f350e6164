/*
 * lifo_sets - sets of equally sized blocks freed in LIFO order.
 *
 * Each round picks a block size from a fixed list (8 B .. 32 KiB), allocates
 * a set of blocks of that size, writes a pattern into each, and then frees
 * them newest-first after verifying them.  Up to three sets of different
 * sizes are nested (set B is allocated and released while set A is live),
 * which is the stack-like pattern of recursive parsers and compilers.
 *
 * usage: lifo_sets [scale]
 */
#include "wl.h"

static const size_t sizes[] = {8, 16, 24, 32, 48, 64, 80, 96, 128, 160, 256,
                               384, 512, 1024, 2048, 4096, 8192, 32768};
#define NSIZES (sizeof(sizes) / sizeof(sizes[0]))
#define MAXSET 4096
#define SET_BYTES (1u << 20) /* a set holds at most ~1 MiB */

static wl_rng rng;
static uint64_t sum;
static uint64_t tagseq;

typedef struct {
    void *p[MAXSET];
    uint64_t tag[MAXSET];
    size_t n, size;
} set_t;

static void set_alloc(set_t *s, size_t size)
{
    size_t n = SET_BYTES / size;
    if (n > MAXSET) n = MAXSET;
    n = n / 2 + wl_below(&rng, n / 2 + 1);
    s->n = n;
    s->size = size;
    for (size_t i = 0; i < n; i++) {
        uint64_t t = ++tagseq;
        s->tag[i] = t;
        s->p[i] = wl_malloc(size);
        /* small blocks: full pattern; larger ones: first 64 and last 8 bytes */
        if (size <= 64) {
            wl_fill(s->p[i], size, t);
        } else {
            wl_fill(s->p[i], 64, t);
            memcpy((char *)s->p[i] + size - 8, &t, 8);
        }
    }
}

static void set_free_lifo(set_t *s)
{
    for (size_t i = s->n; i-- > 0;) {
        void *p = s->p[i];
        uint64_t t = s->tag[i];
        if (s->size <= 64) {
            wl_verify(p, s->size, t, "lifo block");
        } else {
            uint64_t last;
            memcpy(&last, (char *)p + s->size - 8, 8);
            if (last != t) wl_corrupt("lifo block tail", p, s->size, t);
            wl_verify(p, 64, t, "lifo block head");
        }
        sum += wl_hash(t ^ s->size);
        free(p);
    }
    s->n = 0;
}

static set_t sets[3];

int main(int argc, char **argv)
{
    double scale = wl_scale(argc, argv);
    long rounds = wl_scaled(2000, scale);
    wl_seed(&rng, 0x11f0, 2);

    for (long r = 0; r < rounds; r++) {
        int depth = 1 + (int)wl_below(&rng, 3);
        for (int d = 0; d < depth; d++) set_alloc(&sets[d], sizes[wl_below(&rng, NSIZES)]);
        for (int d = depth; d-- > 0;) {
            /* re-fill the innermost set once before releasing it */
            if (d == depth - 1 && wl_chance(&rng, 1, 2)) {
                size_t sz = sets[d].size;
                set_free_lifo(&sets[d]);
                set_alloc(&sets[d], sz);
            }
            set_free_lifo(&sets[d]);
        }
    }
    wl_report("lifo_sets", scale, sum);
    return 0;
}
