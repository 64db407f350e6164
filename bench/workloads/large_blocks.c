/*
 * large_blocks - 5..25 MiB blocks with few of them live at once.
 *
 * A ring of at most three live blocks: every step allocates a block of random
 * size between 5 and 25 MiB (not page-aligned), writes one word in every
 * 4 KiB page so that all of its memory becomes resident, and releases the
 * oldest block after verifying it.  Some blocks are resized with realloc
 * (growing or shrinking within the same range) and checked afterwards.  This
 * exercises the allocator's path to the OS (mmap/munmap, caching of large
 * spans) and shows how much memory it keeps around.
 *
 * usage: large_blocks [scale]
 */
#include "wl.h"

#define MiB ((size_t)1 << 20)
#define PAGE 4096
#define LIVE 3

typedef struct { unsigned char *p; size_t size; uint64_t tag; } blk;

/* one 8-byte word per page, plus the very last word */
static void touch(blk *b) { wl_stamp(b->p, b->size, b->tag, PAGE); }

/* verify the first `upto` bytes' page words (and the tail if it is intact) */
static void verify(const blk *b, size_t upto, int tail)
{
    if (!wl_stamped(b->p, b->size, upto, b->tag, PAGE, tail))
        wl_corrupt("large block page word or tail", b->p, b->size, b->tag);
}

int main(int argc, char **argv)
{
    double scale = wl_scale(argc, argv);
    long steps = wl_scaled(160, scale);
    wl_rng r;
    wl_seed(&r, 0xb16, 5);
    blk ring[LIVE] = {{0}};
    uint64_t sum = 0;

    for (long s = 0; s < steps; s++) {
        blk *b = &ring[s % LIVE];
        if (b->p) {
            verify(b, b->size, 1);
            sum = wl_acc(sum, b->tag ^ b->size);
            free(b->p);
        }
        b->size = (size_t)wl_range(&r, 5 * MiB, 25 * MiB);
        b->tag = wl_next(&r);
        b->p = wl_malloc(b->size);
        touch(b);
        if (wl_chance(&r, 1, 4)) {
            /* resize: the common prefix must survive */
            size_t nsize = (size_t)wl_range(&r, 5 * MiB, 25 * MiB);
            size_t keep = nsize < b->size ? nsize : b->size;
            b->p = wl_realloc(b->p, nsize);
            blk old = *b;
            verify(&old, keep - 8, 0);
            b->size = nsize;
            b->tag = wl_next(&r);
            touch(b);
        }
    }
    for (int i = 0; i < LIVE; i++) {
        if (ring[i].p) {
            verify(&ring[i], ring[i].size, 1);
            sum = wl_acc(sum, ring[i].tag ^ ring[i].size);
            free(ring[i].p);
        }
    }
    wl_report("large_blocks", scale, sum);
    return 0;
}
