/*
 * budget_enomem.c - behaviour at an allocation limit.
 *
 * Build:  cc -O2 -pthread -o budget_enomem budget_enomem.c -ldl
 * Run:    CHUNKMALLOC_BUDGET=64MiB LD_PRELOAD=libchunkmalloc.so ./budget_enomem
 *
 * Allocates 1 MiB blocks until malloc returns NULL (giving up at 4096 blocks,
 * i.e. 4 GiB, when there is no limit).  When NULL came back it checks that
 * errno is ENOMEM, that requests larger than what is left fail cleanly
 * (realloc keeps the old block, calloc and posix_memalign report ENOMEM),
 * and that after freeing half of the blocks malloc works again.
 *
 * When CHUNKMALLOC_BUDGET is set below 4 GiB and malloc comes from
 * libchunkmalloc, the limit must be hit and no more than the budget may be
 * handed out.  For any other allocator (glibc, jemalloc) the variable means
 * nothing, the loop normally reaches 4096 blocks, and the test passes with
 * a note.
 *
 * Output: "FAIL: ..." lines, a line with the number of blocks obtained, then
 *         budget: N passed, M failed
 */
#define _GNU_SOURCE
#include <ctype.h>
#include <dlfcn.h>
#include <errno.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>

static void *(*volatile x_malloc)(size_t) = malloc;
static void *(*volatile x_calloc)(size_t, size_t) = calloc;
static void *(*volatile x_realloc)(void *, size_t) = realloc;
static int (*volatile x_posix_memalign)(void **, size_t, size_t) = posix_memalign;
static void (*volatile x_free)(void *) = free;

#define MIB ((size_t)1 << 20)
#define MAX_BLOCKS 4096

static long passed, failed;

static void check(int ok, const char *what)
{
    if (ok) {
        passed++;
    } else {
        failed++;
        printf("FAIL: %s\n", what);
    }
}

/* "64MiB", "64M", "64mb", "1GiB", "65536K", "67108864" -> bytes; 0 if unparsable. */
static size_t parse_size(const char *s)
{
    char *end;
    errno = 0;
    unsigned long long v = strtoull(s, &end, 10);
    if (errno || end == s)
        return 0;
    while (isspace((unsigned char)*end))
        end++;
    size_t mult = 1;
    switch (toupper((unsigned char)*end)) {
    case '\0':
        return (size_t)v;
    case 'K':
        mult = (size_t)1 << 10;
        break;
    case 'M':
        mult = (size_t)1 << 20;
        break;
    case 'G':
        mult = (size_t)1 << 30;
        break;
    default:
        return 0;
    }
    const char *rest = end + 1;
    if (*rest && strcasecmp(rest, "iB") != 0 && strcasecmp(rest, "B") != 0)
        return 0;
    return (size_t)v * mult;
}

static int chunkmalloc_active(void)
{
    Dl_info info;
    void *f = dlsym(RTLD_DEFAULT, "malloc");
    return f && dladdr(f, &info) && info.dli_fname && strstr(info.dli_fname, "chunkmalloc");
}

static unsigned char tag_of(int i) { return (unsigned char)(i * 13 + 7); }

int main(void)
{
    static unsigned char *blk[MAX_BLOCKS];
    setvbuf(stdout, NULL, _IOLBF, 0);

    const char *env = getenv("CHUNKMALLOC_BUDGET");
    size_t budget = env ? parse_size(env) : 0;
    int expect_limit = budget && budget < (size_t)MAX_BLOCKS * MIB && chunkmalloc_active();

    int n, hit_null = 0, err = 0;
    for (n = 0; n < MAX_BLOCKS; n++) {
        errno = 0;
        unsigned char *p = x_malloc(MIB);
        if (!p) {
            hit_null = 1;
            err = errno;
            break;
        }
        p[0] = p[MIB / 2] = p[MIB - 1] = tag_of(n);
        blk[n] = p;
    }
    printf("budget: %d blocks of 1 MiB succeeded%s\n", n,
           hit_null ? " before malloc returned NULL" : " (no limit hit)");

    char msg[200];
    if (hit_null) {
        snprintf(msg, sizeof msg, "malloc(1 MiB) returned NULL with errno %d (%s), want ENOMEM",
                 err, strerror(err));
        check(err == ENOMEM, msg);
        check(n >= 1, "the very first 1 MiB allocation failed");
        if (budget && chunkmalloc_active()) {
            snprintf(msg, sizeof msg, "%d MiB handed out, more than CHUNKMALLOC_BUDGET=%s", n,
                     env);
            check((size_t)n * MIB <= budget, msg);
        }
        /* requests bigger than everything obtained so far must fail cleanly */
        size_t too_big = (size_t)(n + 1) * MIB;
        if (n >= 1) {
            errno = 0;
            unsigned char *q = x_realloc(blk[0], too_big);
            int e = errno;
            snprintf(msg, sizeof msg, "realloc to %zu MiB at the limit: got %p errno %d, want "
                                      "NULL ENOMEM", too_big / MIB, (void *)q, e);
            check(q == NULL && e == ENOMEM, msg);
            if (q)
                blk[0] = q;
            check(blk[0][0] == tag_of(0) && blk[0][MIB - 1] == tag_of(0),
                  "failed realloc at the limit damaged the block");
        }
        errno = 0;
        void *q = x_calloc((size_t)n + 1, MIB);
        int e = errno;
        snprintf(msg, sizeof msg, "calloc(%d, 1 MiB) at the limit: got %p errno %d, want NULL "
                                  "ENOMEM", n + 1, q, e);
        check(q == NULL && e == ENOMEM, msg);
        x_free(q);
        q = NULL;
        int r = x_posix_memalign(&q, 4096, too_big);
        snprintf(msg, sizeof msg, "posix_memalign(4096, %zu MiB) at the limit returned %d, want "
                                  "ENOMEM", too_big / MIB, r);
        check(r == ENOMEM, msg);
        if (r == 0)
            x_free(q);
    } else if (expect_limit) {
        snprintf(msg, sizeof msg, "CHUNKMALLOC_BUDGET=%s is set but %d MiB were allocated "
                                  "without malloc returning NULL", env, n);
        check(0, msg);
    } else {
        printf("budget: note: no allocation limit in force (expected unless libchunkmalloc is "
               "preloaded with CHUNKMALLOC_BUDGET below 4 GiB)\n");
        passed++;
    }

    int bad = 0;
    for (int i = 0; i < n; i++)
        bad += blk[i][0] != tag_of(i) || blk[i][MIB / 2] != tag_of(i) ||
               blk[i][MIB - 1] != tag_of(i);
    check(bad == 0, "1 MiB blocks were corrupted");

    /* free half, then allocation must work again */
    for (int i = 0; i < n; i += 2) {
        x_free(blk[i]);
        blk[i] = NULL;
    }
    unsigned char *p = x_malloc(MIB);
    check(p != NULL, "malloc(1 MiB) still fails after freeing half of the blocks");
    x_free(p);
    int again = n / 4 > 0 ? n / 4 : 1, got = 0;
    for (int i = 0; i < n && got < again; i += 2) {
        blk[i] = x_malloc(MIB);
        if (!blk[i])
            break;
        blk[i][0] = blk[i][MIB - 1] = tag_of(i);
        got++;
    }
    snprintf(msg, sizeof msg, "only %d of %d 1 MiB blocks could be allocated again after "
                              "freeing %d", got, again, (n + 1) / 2);
    check(got == again || n == 0, msg);
    p = x_malloc(100);
    check(p != NULL, "malloc(100) fails after freeing half of the blocks");
    x_free(p);
    for (int i = 0; i < n; i++)
        x_free(blk[i]);

    printf("budget: %ld passed, %ld failed\n", passed, failed);
    return failed ? 1 : 0;
}
