/*
 * realloc_grow - realloc-heavy growth of strings and vectors.
 *
 * Several buffers grow side by side, so an allocator cannot always extend a
 * block in place:
 *   - strings grow by appending 1..40 bytes at a time with realloc to the
 *     exact new length (no spare capacity, like naive C string building)
 *     until they reach a random target of up to 64 KiB;
 *   - vectors of 64-bit values grow by doubling their capacity (1.5x for
 *     some) up to 256 Ki elements and are then shrunk to fit;
 * Finished buffers are verified, folded into the checksum and freed.
 *
 * usage: realloc_grow [scale]
 */
#include "wl.h"

#define NSTR 24
#define NVEC 8

typedef struct { char *p; size_t len, target; uint64_t tag; } str_t;
typedef struct { uint64_t *p; size_t len, cap, target; uint64_t tag; int slow; } vec_t;

static wl_rng rng;
static uint64_t sum;

static void str_reset(str_t *s)
{
    s->p = NULL;
    s->len = 0;
    s->target = wl_chance(&rng, 3, 4) ? (size_t)wl_range(&rng, 16, 2048) : (size_t)wl_range(&rng, 2049, 65536);
    s->tag = wl_next(&rng);
}

/* byte i of string with tag t */
static inline char str_byte(uint64_t t, size_t i)
{
    return (char)('a' + (char)((wl_pat_word(t, i / 8) >> (8 * (i % 8))) % 26));
}

static void str_step(str_t *s)
{
    size_t add = (size_t)wl_range(&rng, 1, 40);
    s->p = wl_realloc(s->p, s->len + add + 1);
    for (size_t i = 0; i < add; i++) s->p[s->len + i] = str_byte(s->tag, s->len + i);
    s->len += add;
    s->p[s->len] = '\0';
    if (s->len >= s->target) {
        if (strlen(s->p) != s->len) wl_corrupt("string length", s->p, s->len, s->tag);
        for (size_t i = 0; i < s->len; i++)
            if (s->p[i] != str_byte(s->tag, i)) wl_corrupt("string", s->p, s->len, s->tag);
        sum = wl_acc(sum, s->len ^ (uint64_t)(unsigned char)s->p[s->len / 2]);
        free(s->p);
        str_reset(s);
    }
}

static void vec_reset(vec_t *v)
{
    v->p = NULL;
    v->len = v->cap = 0;
    v->target = (size_t)1 << wl_range(&rng, 6, 18);
    v->target += (size_t)wl_below(&rng, v->target);
    v->tag = wl_next(&rng);
    v->slow = wl_chance(&rng, 1, 3);
}

static void vec_step(vec_t *v)
{
    /* push a few elements */
    for (int k = 0; k < 64; k++) {
        if (v->len == v->cap) {
            size_t ncap = v->cap ? (v->slow ? v->cap + v->cap / 2 + 1 : v->cap * 2) : 4;
            v->p = wl_realloc(v->p, ncap * sizeof(uint64_t));
            v->cap = ncap;
        }
        v->p[v->len] = wl_pat_word(v->tag, v->len);
        v->len++;
    }
    if (v->len >= v->target) {
        v->p = wl_realloc(v->p, v->len * sizeof(uint64_t)); /* shrink to fit */
        for (size_t i = 0; i < v->len; i++)
            if (v->p[i] != wl_pat_word(v->tag, i)) wl_corrupt("vector", v->p, v->len * 8, v->tag);
        sum = wl_acc(sum, v->len ^ v->p[v->len - 1]);
        free(v->p);
        vec_reset(v);
    }
}

int main(int argc, char **argv)
{
    double scale = wl_scale(argc, argv);
    long steps = wl_scaled(6000000, scale);
    wl_seed(&rng, 0x9e11, 7);
    str_t s[NSTR];
    vec_t v[NVEC];
    for (int i = 0; i < NSTR; i++) str_reset(&s[i]);
    for (int i = 0; i < NVEC; i++) vec_reset(&v[i]);

    for (long k = 0; k < steps; k++) {
        str_step(&s[wl_below(&rng, NSTR)]);
        if ((k & 15) == 0) vec_step(&v[wl_below(&rng, NVEC)]);
    }
    for (int i = 0; i < NSTR; i++) {
        sum = wl_acc(sum, s[i].len);
        free(s[i].p);
    }
    for (int i = 0; i < NVEC; i++) {
        sum = wl_acc(sum, v[i].len);
        free(v[i].p);
    }
    wl_report("realloc_grow", scale, sum);
    return 0;
}
