/*
 * cycling_buffers - 20 live buffers of 5..25 MiB, one replaced at random over
 * and over, each new one zero-filled by the program.
 *
 * Twenty buffers of uniform random size between 5 and 25 MiB stay live; each
 * step picks one at random, verifies and frees it, allocates a new one of a
 * new random size, clears it with memset (as a program that does not trust
 * malloc would; called through a pointer so the compiler cannot turn
 * malloc + memset into calloc), marks one word per MiB and reads a page back
 * to check that it is zero.  2,000 steps at scale 1.  This measures how the
 * allocator reuses huge mappings: one that unmaps every freed buffer pays a
 * page fault for every page of every new one, one that keeps them pays in
 * peak RSS.
 *
 * usage: cycling_buffers [scale]
 */
#include "wl.h"

#define MiB ((size_t)1 << 20)
#define PAGE 4096
#define LIVE 20

typedef struct { unsigned char *p; size_t size; uint64_t tag; } buf;

static void *(*volatile clear)(void *, int, size_t) = memset;

/* the stamps are intact and one page (between two stamps) is zero */
static void verify(const buf *b, wl_rng *r)
{
    if (!wl_stamped(b->p, b->size, b->size, b->tag, MiB, 1))
        wl_corrupt("cycling buffer stamp", b->p, b->size, b->tag);
    size_t mib = (size_t)wl_below(r, b->size / MiB - 1);
    const uint64_t *w = (const uint64_t *)(b->p + mib * MiB + PAGE);
    for (size_t i = 0; i < PAGE / 8; i++)
        if (w[i] != 0) wl_corrupt("cycling buffer not zero", b->p, b->size, b->tag);
}

static void fill_new(buf *b, wl_rng *r)
{
    b->size = (size_t)wl_range(r, 5 * MiB, 25 * MiB);
    b->tag = wl_next(r);
    b->p = wl_malloc(b->size);
    clear(b->p, 0, b->size);
    wl_stamp(b->p, b->size, b->tag, MiB); /* one word per MiB, and the last word */
}

int main(int argc, char **argv)
{
    double scale = wl_scale(argc, argv);
    long steps = wl_scaled(2000, scale);
    wl_rng r;
    wl_seed(&r, 0xc1c, 20);
    buf live[LIVE];
    uint64_t sum = 0;
    for (int i = 0; i < LIVE; i++) fill_new(&live[i], &r);
    for (long s = 0; s < steps; s++) {
        buf *b = &live[wl_below(&r, LIVE)];
        verify(b, &r);
        sum = wl_acc(sum, b->tag ^ b->size);
        free(b->p);
        fill_new(b, &r);
    }
    for (int i = 0; i < LIVE; i++) {
        verify(&live[i], &r);
        sum = wl_acc(sum, live[i].tag ^ live[i].size);
        free(live[i].p);
    }
    wl_report("cycling_buffers", scale, sum);
    return 0;
}
