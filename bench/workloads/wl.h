/*
 * wl.h - tiny helper layer shared by the chunkmalloc benchmark workloads.
 *
 * Every workload is one C file that includes this header and is built with
 *   cc -O2 -pthread -o NAME NAME.c
 * It provides:
 *   - the scale factor (argv[1], else $WORKLOAD_SCALE, else 1.0);
 *   - a deterministic PRNG (splitmix64) with range helpers;
 *   - content patterns that are written into blocks and verified before free;
 *   - order-independent checksum accumulation for multi-threaded workloads;
 *   - the final "checksum NAME HEX" line that scripts/bench.sh compares
 *     across allocators.
 * Exit codes: 0 ok, 2 usage error, 3 memory corruption detected, 4 OOM.
 */
#ifndef WL_H
#define WL_H

#ifndef _GNU_SOURCE
#define _GNU_SOURCE
#endif
#include <errno.h>
#include <pthread.h>
#include <stdatomic.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#define WL_UNUSED __attribute__((unused))
#define WL_NOINLINE __attribute__((noinline))
#define WL_COLD __attribute__((cold, noreturn))

/* ------------------------------------------------------------------ */
/* errors                                                              */

static WL_COLD WL_UNUSED void wl_die(int code, const char *fmt, ...);

#include <stdarg.h>
static void wl_die(int code, const char *fmt, ...)
{
    va_list ap;
    va_start(ap, fmt);
    fputs("workload error: ", stderr);
    vfprintf(stderr, fmt, ap);
    fputc('\n', stderr);
    va_end(ap);
    fflush(stdout);
    exit(code);
}

static WL_UNUSED void *wl_malloc(size_t n)
{
    void *p = malloc(n);
    if (!p && n) wl_die(4, "malloc(%zu) returned NULL", n);
    return p;
}

static WL_UNUSED void *wl_realloc(void *old, size_t n)
{
    void *p = realloc(old, n);
    if (!p && n) wl_die(4, "realloc(%p, %zu) returned NULL", old, n);
    return p;
}

static WL_UNUSED void *wl_calloc(size_t k, size_t n)
{
    void *p = calloc(k, n);
    if (!p && k && n) wl_die(4, "calloc(%zu, %zu) returned NULL", k, n);
    return p;
}

/* ------------------------------------------------------------------ */
/* arguments                                                           */

static WL_UNUSED double wl_parse_scale(const char *s, const char *what)
{
    char *end = NULL;
    errno = 0;
    double v = strtod(s, &end);
    if (errno || end == s || *end != '\0' || !(v > 0.0) || v > 1000.0)
        wl_die(2, "bad scale %s '%s' (want a number in (0, 1000])", what, s);
    return v;
}

/* scale = argv[1] if given, else $WORKLOAD_SCALE, else 1.0 */
static WL_UNUSED double wl_scale(int argc, char **argv)
{
    if (argc > 1 && argv[1][0] != '\0') return wl_parse_scale(argv[1], "argument");
    const char *e = getenv("WORKLOAD_SCALE");
    if (e && *e) return wl_parse_scale(e, "WORKLOAD_SCALE");
    return 1.0;
}

/* integer option = argv[idx] if given, else $env, else def */
static WL_UNUSED long wl_int_arg(int argc, char **argv, int idx, const char *env,
                                 long def, long lo, long hi)
{
    const char *s = NULL;
    if (argc > idx && argv[idx][0] != '\0') s = argv[idx];
    else if (env && getenv(env) && *getenv(env)) s = getenv(env);
    if (!s) return def;
    char *end = NULL;
    errno = 0;
    long v = strtol(s, &end, 10);
    if (errno || end == s || *end != '\0' || v < lo || v > hi)
        wl_die(2, "bad integer argument '%s' (want %ld..%ld)", s, lo, hi);
    return v;
}

/* base work amount multiplied by the scale, at least 1 */
static WL_UNUSED long wl_scaled(long base, double scale)
{
    double v = (double)base * scale + 0.5;
    return v < 1.0 ? 1 : (long)v;
}

/* ------------------------------------------------------------------ */
/* PRNG: splitmix64, one state per thread, seeded deterministically    */

typedef struct { uint64_t s; } wl_rng;

static inline uint64_t wl_mix64(uint64_t z)
{
    z = (z ^ (z >> 30)) * 0xbf58476d1ce4e5b9ULL;
    z = (z ^ (z >> 27)) * 0x94d049bb133111ebULL;
    return z ^ (z >> 31);
}

static inline void wl_seed(wl_rng *r, uint64_t a, uint64_t b)
{
    r->s = wl_mix64(a * 0x9e3779b97f4a7c15ULL + 0x632be59bd9b4e019ULL) ^ wl_mix64(b + 0x1234567ULL);
}

static inline uint64_t wl_next(wl_rng *r)
{
    r->s += 0x9e3779b97f4a7c15ULL;
    return wl_mix64(r->s);
}

/* uniform in [0, n) (n > 0), multiply-shift, no modulo bias worth caring about */
static inline uint64_t wl_below(wl_rng *r, uint64_t n)
{
    return (uint64_t)(((unsigned __int128)wl_next(r) * n) >> 64);
}

/* uniform in [lo, hi] */
static inline uint64_t wl_range(wl_rng *r, uint64_t lo, uint64_t hi)
{
    return lo + wl_below(r, hi - lo + 1);
}

/* uniform double in [0, 1) */
static inline double wl_unit(wl_rng *r)
{
    return (double)(wl_next(r) >> 11) * (1.0 / 9007199254740992.0);
}

/* true with probability num/den */
static inline int wl_chance(wl_rng *r, uint64_t num, uint64_t den)
{
    return wl_below(r, den) < num;
}

/* ------------------------------------------------------------------ */
/* content patterns                                                    */

/* the 64-bit word number i of the pattern identified by tag */
static inline uint64_t wl_pat_word(uint64_t tag, size_t i)
{
    return (tag * 0xd6e8feb86659fd93ULL) ^ ((uint64_t)i * 0x9e3779b97f4a7c15ULL) ^ (uint64_t)i;
}

/* fill n bytes at p with the pattern of tag (p need not be aligned) */
static inline void wl_fill(void *p, size_t n, uint64_t tag)
{
    unsigned char *c = (unsigned char *)p;
    size_t words = n / 8, i;
    for (i = 0; i < words; i++) {
        uint64_t w = wl_pat_word(tag, i);
        memcpy(c + 8 * i, &w, 8);
    }
    if (n % 8) {
        uint64_t w = wl_pat_word(tag, words);
        memcpy(c + 8 * words, &w, n % 8);
    }
}

/* returns 1 if the n bytes at p carry the pattern of tag */
static inline int wl_matches(const void *p, size_t n, uint64_t tag)
{
    const unsigned char *c = (const unsigned char *)p;
    size_t words = n / 8, i;
    for (i = 0; i < words; i++) {
        uint64_t w;
        memcpy(&w, c + 8 * i, 8);
        if (w != wl_pat_word(tag, i)) return 0;
    }
    if (n % 8) {
        uint64_t w = wl_pat_word(tag, words), g = 0;
        memcpy(&g, c + 8 * words, n % 8);
        if (memcmp(&g, &w, n % 8) != 0) return 0;
    }
    return 1;
}

static WL_UNUSED WL_NOINLINE WL_COLD void wl_corrupt(const char *what, const void *p, size_t n, uint64_t tag)
{
    wl_die(3, "CORRUPTION in %s: block %p size %zu tag %016llx", what, p, n, (unsigned long long)tag);
}

/* verify-or-die */
static inline void wl_verify(const void *p, size_t n, uint64_t tag, const char *what)
{
    if (!wl_matches(p, n, tag)) wl_corrupt(what, p, n, tag);
}

/*
 * Stamps for large buffers: the word tag ^ offset every `stride` bytes from
 * the start and ~tag in the last 8 bytes (n >= 16), so that every page or
 * MiB written is checked without filling all of it.
 */
static inline void wl_stamp(unsigned char *p, size_t n, uint64_t tag, size_t stride)
{
    for (size_t off = 0; off + 8 <= n; off += stride) {
        uint64_t v = tag ^ off;
        memcpy(p + off, &v, 8);
    }
    uint64_t last = ~tag;
    memcpy(p + n - 8, &last, 8);
}

/* 1 if the stamps in the first `upto` bytes (and, with tail, the last
 * word) are intact; stamps overlapping the last word are not checked */
static inline int wl_stamped(const unsigned char *p, size_t n, size_t upto, uint64_t tag, size_t stride,
                             int tail)
{
    for (size_t off = 0; off + 8 <= upto && off + 8 <= n - 8; off += stride) {
        uint64_t v;
        memcpy(&v, p + off, 8);
        if (v != (tag ^ off)) return 0;
    }
    if (tail) {
        uint64_t last;
        memcpy(&last, p + n - 8, 8);
        if (last != ~tag) return 0;
    }
    return 1;
}

/*
 * Self-describing block: the first 16 bytes hold (tag, size) and the rest
 * (up to `body` bytes of it) carry the pattern, so whichever thread frees the
 * block can verify it without knowing who allocated it.  size >= 16.
 */
typedef struct { uint64_t tag; uint64_t size; } wl_hdr;

static inline void *wl_block_new(size_t size, uint64_t tag, size_t body_limit)
{
    if (size < sizeof(wl_hdr)) size = sizeof(wl_hdr);
    wl_hdr *h = (wl_hdr *)wl_malloc(size);
    h->tag = tag;
    h->size = size;
    size_t body = size - sizeof(wl_hdr);
    if (body >= body_limit + 8) {
        /* pattern on a prefix plus the last 8 bytes */
        wl_fill(h + 1, body_limit, tag);
        uint64_t last = ~tag;
        memcpy((char *)h + size - 8, &last, 8);
    } else {
        wl_fill(h + 1, body, tag);
    }
    return h;
}

/* verify a self-describing block, return its tag, free it */
static inline uint64_t wl_block_free(void *p, size_t body_limit, const char *what)
{
    wl_hdr *h = (wl_hdr *)p;
    uint64_t tag = h->tag;
    size_t size = h->size;
    size_t body = size - sizeof(wl_hdr);
    if (size < sizeof(wl_hdr) || size > ((size_t)1 << 40)) wl_corrupt(what, p, size, tag);
    if (body >= body_limit + 8) {
        uint64_t last;
        memcpy(&last, (char *)h + size - 8, 8);
        if (last != ~tag || !wl_matches(h + 1, body_limit, tag)) wl_corrupt(what, p, size, tag);
    } else if (!wl_matches(h + 1, body, tag)) {
        wl_corrupt(what, p, size, tag);
    }
    free(p);
    return tag;
}

/* ------------------------------------------------------------------ */
/* checksums                                                           */

/* order-dependent accumulation (single thread, fixed order) */
static inline uint64_t wl_acc(uint64_t h, uint64_t v)
{
    return wl_mix64(h ^ (v + 0x9e3779b97f4a7c15ULL + (h << 6) + (h >> 2)));
}

/* order-independent accumulation: add the hash of each value */
static inline uint64_t wl_hash(uint64_t v)
{
    return wl_mix64(v ^ 0x5851f42d4c957f2dULL);
}

static WL_UNUSED void wl_report(const char *name, double scale, uint64_t sum)
{
    printf("checksum %s scale=%g %016llx\n", name, scale, (unsigned long long)sum);
    fflush(stdout);
}

/* ------------------------------------------------------------------ */
/* threads                                                             */

static WL_UNUSED void wl_spawn(pthread_t *t, void *(*fn)(void *), void *arg)
{
    int rc = pthread_create(t, NULL, fn, arg);
    if (rc) wl_die(4, "pthread_create failed: %s", strerror(rc));
}

static WL_UNUSED void wl_join(pthread_t t)
{
    int rc = pthread_join(t, NULL);
    if (rc) wl_die(4, "pthread_join failed: %s", strerror(rc));
}

/* keeps the compiler from dropping writes/reads we want performed */
#define WL_KEEP(x) __asm__ volatile("" : : "g"(x) : "memory")

#endif /* WL_H */
