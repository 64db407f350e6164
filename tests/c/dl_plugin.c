/*
 * dl_plugin.c - a small shared library that tests/c/lifecycle.c loads with
 * dlopen(), so that memory crosses between a late-loaded object and the
 * program in both directions.
 *
 * Build:  cc -O2 -shared -fPIC -o dl_plugin.so dl_plugin.c
 *
 * Its constructor (run inside dlopen) allocates a block that it keeps, and
 * its destructor (run inside dlclose) checks and frees that block and
 * allocates once more; the outcome is counted in two ints the program hands
 * over with dlp_set_reporter().  dlp_tls() uses a large __thread array: in a
 * dlopen()ed object that is dynamic TLS, which glibc allocates with malloc
 * inside __tls_get_addr on a thread's first access and frees when the
 * thread's stack is reused or released.
 *
 * The byte pattern and the sampled positions must stay the same as
 * lifecycle.c's pattern() and step().
 */
#include <stddef.h>
#include <stdlib.h>
#include <string.h>

#define EXPORT __attribute__((visibility("default")))

static unsigned char plugin_pattern(unsigned seed, size_t i)
{
    return (unsigned char)(seed * 131u + i * 7u + (i >> 9));
}

/* Same sampling as lifecycle.c's step(): all of the first and last 4 KiB,
 * every 251st byte in between. */
static size_t plugin_step(size_t i, size_t n)
{
    if (i < 4096 || i + 4096 >= n)
        return i + 1;
    size_t j = i + 251;
    return j + 4096 > n ? n - 4096 : j;
}

static void plugin_fill(unsigned char *p, size_t n, unsigned seed)
{
    for (size_t i = 0; i < n; i = plugin_step(i, n))
        p[i] = plugin_pattern(seed, i);
}

/* The first `keep` bytes of a block plugin_fill() wrote `filled` bytes of. */
static int plugin_intact_prefix(const unsigned char *p, size_t keep, size_t filled, unsigned seed)
{
    for (size_t i = 0; i < keep && i < filled; i = plugin_step(i, filled))
        if (p[i] != plugin_pattern(seed, i))
            return 0;
    return 1;
}

static int plugin_intact(const unsigned char *p, size_t n, unsigned seed)
{
    return plugin_intact_prefix(p, n, n, seed);
}

#define CTOR_SIZE 777
#define CTOR_SEED 4242u

static unsigned char *ctor_block;
static int *report_ok, *report_bad;

__attribute__((constructor)) static void plugin_init(void)
{
    char *tmp = strdup("allocated in the constructor of a dlopen()ed library");
    ctor_block = malloc(CTOR_SIZE);
    if (ctor_block)
        plugin_fill(ctor_block, CTOR_SIZE, CTOR_SEED);
    free(tmp);
}

__attribute__((destructor)) static void plugin_fini(void)
{
    int ok = ctor_block != NULL && plugin_intact(ctor_block, CTOR_SIZE, CTOR_SEED);
    free(ctor_block);
    ctor_block = NULL;
    unsigned char *t = malloc(12345);
    if (t) {
        plugin_fill(t, 12345, 99);
        ok = ok && plugin_intact(t, 12345, 99);
    } else {
        ok = 0;
    }
    free(t);
    if (ok && report_ok)
        (*report_ok)++;
    else if (!ok && report_bad)
        (*report_bad)++;
}

EXPORT void dlp_set_reporter(int *ok, int *bad)
{
    report_ok = ok;
    report_bad = bad;
}

/* A block made by the constructor; the caller may look but not free. */
EXPORT const unsigned char *dlp_ctor_block(size_t *size, unsigned *seed)
{
    *size = CTOR_SIZE;
    *seed = CTOR_SEED;
    return ctor_block;
}

/* malloc(n) filled with the pattern for `seed`; NULL on failure. */
EXPORT void *dlp_alloc(size_t n, unsigned seed)
{
    unsigned char *p = malloc(n);
    if (p)
        plugin_fill(p, n, seed);
    return p;
}

/* calloc(1, n), checked to be zero, then filled like dlp_alloc. */
EXPORT void *dlp_calloc(size_t n, unsigned seed)
{
    unsigned char *p = calloc(1, n);
    if (!p)
        return NULL;
    for (size_t i = 0; i < n; i++)
        if (p[i] != 0) {
            free(p);
            return NULL;
        }
    plugin_fill(p, n, seed);
    return p;
}

/* Checks an n-byte block filled for `seed`, then frees it.  1 if intact. */
EXPORT int dlp_check_free(void *p, size_t n, unsigned seed)
{
    int ok = p != NULL && plugin_intact(p, n, seed);
    free(p);
    return ok;
}

/* realloc to n bytes; the old contents up to min(old, n) must survive and
 * the whole new block is refilled for new_seed.  NULL on any failure (the
 * old block is then gone or left to the caller as realloc says). */
EXPORT void *dlp_realloc(void *p, size_t old, unsigned old_seed, size_t n, unsigned new_seed)
{
    unsigned char *q = realloc(p, n);
    if (!q)
        return NULL;
    if (!plugin_intact_prefix(q, n, old, old_seed)) {
        free(q);
        return NULL;
    }
    plugin_fill(q, n, new_seed);
    return q;
}

EXPORT char *dlp_strdup(const char *s)
{
    return strdup(s);
}

/* Dynamic TLS.  Each call checks that the calling thread's area still holds
 * what its previous call wrote, then writes the pattern for `seed`.  A
 * thread's first call finds the area zeroed.  Returns 1 when all is well. */
static __thread unsigned char tls_area[65536] __attribute__((aligned(64)));
static __thread unsigned tls_seed;
static __thread int tls_used;

EXPORT int dlp_tls(unsigned seed)
{
    int ok = 1;
    if (tls_used) {
        ok = plugin_intact(tls_area, sizeof tls_area, tls_seed);
    } else {
        for (size_t i = 0; i < sizeof tls_area; i++)
            if (tls_area[i] != 0) {
                ok = 0;
                break;
            }
    }
    plugin_fill(tls_area, sizeof tls_area, seed);
    tls_seed = seed;
    tls_used = 1;
    return ok;
}
