/*
 * conformance.c - checks the edge cases of the malloc ABI that glibc
 * documents and that any drop-in replacement loaded with LD_PRELOAD must
 * honour.
 *
 * Build:  cc -O2 -pthread -o conformance conformance.c -ldl
 * Run:    ./conformance                      (glibc's own malloc)
 *         LD_PRELOAD=/path/lib.so ./conformance
 *         ./conformance --provider           (print the object providing malloc)
 *
 * Output: one "FAIL: <what>" line per failed check, "SKIP:"/"XFAIL:"/"INFO:"
 * lines for information, and as the very last line
 *         conformance: N passed, M failed
 * The exit status is non-zero when M > 0.
 *
 * Environment:
 *   CONFORMANCE_EXPECT_CHUNKMALLOC=1  strict mode for libchunkmalloc.so:
 *       - malloc must come from an object whose path contains "chunkmalloc";
 *       - every malloc-family symbol glibc also exports (pvalloc, cfree,
 *         __libc_malloc & co., mallinfo2, ...) must be provided by that same
 *         object, otherwise a program calling it would mix two heaps;
 *       - free() of pointers the allocator never handed out (static array,
 *         stack array, private mmap) must not crash, must not write to the
 *         foreign memory, and must report the address on stderr; also with
 *         a deferred cancellation request pending, which it must not act on.
 *     Without it, a function that the preloaded allocator does not provide
 *     (so that glibc's version would be called on a foreign heap) is reported
 *     as XFAIL (functions glibc's manual says a replacement should provide) or
 *     SKIP (mallinfo2), and the foreign-free checks are skipped.
 *   CONFORMANCE_NOFORK=1  run every section in the main process (debugging).
 *
 * Two known deviations of the reference allocators this program was checked
 * against (glibc < 2.38's aligned_alloc, jemalloc 5.3's realloc errno) are
 * reported as XFAIL for exactly those allocators; see "Known deviations".
 *
 * Every section runs in a forked child so that a crash in one section is
 * reported as a failure of that section and the others still run.  All
 * allocator entry points are called through volatile function pointers so
 * that the compiler cannot use its built-in knowledge of malloc (folding
 * malloc/free pairs, assuming calloc memory is zero, ...).
 */
#define _GNU_SOURCE
#include <dlfcn.h>
#include <errno.h>
#include <malloc.h>
#include <pthread.h>
#include <signal.h>
#include <stdarg.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <sys/wait.h>
#include <unistd.h>
#ifdef __GLIBC__
#include <gnu/libc-version.h>
#endif

/* ------------------------------------------------------------------------ */
/* Entry points, called through volatile pointers.                          */

static void *(*volatile cm_malloc)(size_t) = malloc;
static void (*volatile cm_free)(void *) = free;
static void *(*volatile cm_calloc)(size_t, size_t) = calloc;
static void *(*volatile cm_realloc)(void *, size_t) = realloc;
static int (*volatile cm_posix_memalign)(void **, size_t, size_t) = posix_memalign;
static void *(*volatile cm_aligned_alloc)(size_t, size_t) = aligned_alloc;
static void *(*volatile cm_memalign)(size_t, size_t) = memalign;
static void *(*volatile cm_valloc)(size_t) = valloc;
static void *(*volatile cm_pvalloc)(size_t) = pvalloc;
static size_t (*volatile cm_usable)(void *) = malloc_usable_size;
static int (*volatile cm_malloc_trim)(size_t) = malloc_trim;
static int (*volatile cm_mallopt)(int, int) = mallopt;
static void (*volatile cm_malloc_stats)(void) = malloc_stats;

/*
 * Optional symbols.  They are declared weak under a private C name bound to
 * the real symbol with an asm label, so that the declarations never clash
 * with the C library headers (glibc >= 2.43 declares free_sized itself).
 * A weak reference left undefined at link time still gets a dynamic
 * relocation, so a preloaded library that defines the symbol is found.
 */
struct cm_mallinfo2 {
    size_t arena, ordblks, smblks, hblks, hblkhd, usmblks, fsmblks, uordblks,
        fordblks, keepcost;
};
extern void w_free_sized(void *, size_t) __asm__("free_sized") __attribute__((weak));
extern void w_free_aligned_sized(void *, size_t, size_t)
    __asm__("free_aligned_sized") __attribute__((weak));
extern void w_cfree(void *) __asm__("cfree") __attribute__((weak));
extern void *w_reallocarray(void *, size_t, size_t) __asm__("reallocarray")
    __attribute__((weak));
extern struct cm_mallinfo2 w_mallinfo2(void) __asm__("mallinfo2") __attribute__((weak));
extern void *w_libc_malloc(size_t) __asm__("__libc_malloc") __attribute__((weak));
extern void w_libc_free(void *) __asm__("__libc_free") __attribute__((weak));
extern void *w_libc_calloc(size_t, size_t) __asm__("__libc_calloc") __attribute__((weak));
extern void *w_libc_realloc(void *, size_t) __asm__("__libc_realloc") __attribute__((weak));
extern void *w_libc_memalign(size_t, size_t) __asm__("__libc_memalign") __attribute__((weak));

/* ------------------------------------------------------------------------ */
/* Result bookkeeping, shared with the forked section children.             */

struct shared_state {
    long pass, fail, skip, xfail;
    void *foreign_ptr; /* address a foreign-free child is about to free */
};
static struct shared_state *S;
static int strict_mode;
/*
 * Known deviations of the reference allocators this program is validated
 * against.  Each one breaks the documented contract, so the check stays a
 * hard failure for every other allocator (chunkmalloc included); only the
 * named allocator gets an XFAIL line instead:
 *  - glibc < 2.38: aligned_alloc() accepts any alignment and rounds it up to
 *    a power of two instead of failing with EINVAL (fixed in glibc 2.38).
 *  - jemalloc 5.3 (Debian's libjemalloc2): realloc(p, n) with n beyond its
 *    largest size class (e.g. SIZE_MAX) returns NULL but leaves errno alone;
 *    POSIX and glibc require ENOMEM.
 */
static int glibc_pre_2_38_active; /* glibc's malloc is in use and older than 2.38 */
static int jemalloc_active;       /* malloc comes from a libjemalloc */
static const char *section_name = "";

static void check(int ok, const char *fmt, ...) __attribute__((format(printf, 2, 3)));
static void check(int ok, const char *fmt, ...)
{
    if (ok) {
        S->pass++;
        return;
    }
    S->fail++;
    va_list ap;
    va_start(ap, fmt);
    printf("FAIL: [%s] ", section_name);
    vprintf(fmt, ap);
    printf("\n");
    va_end(ap);
    fflush(stdout);
}

static void note(const char *kind, const char *fmt, ...) __attribute__((format(printf, 2, 3)));
static void note(const char *kind, const char *fmt, ...)
{
    va_list ap;
    va_start(ap, fmt);
    printf("%s: [%s] ", kind, section_name);
    vprintf(fmt, ap);
    printf("\n");
    va_end(ap);
    fflush(stdout);
    if (strcmp(kind, "SKIP") == 0)
        S->skip++;
    else if (strcmp(kind, "XFAIL") == 0)
        S->xfail++;
}

/* ------------------------------------------------------------------------ */
/* Helpers.                                                                 */

static uint64_t rng_state = 0x2545F4914F6CDD1Dull;
static uint64_t rnd(void)
{
    uint64_t x = rng_state;
    x ^= x << 13;
    x ^= x >> 7;
    x ^= x << 17;
    return rng_state = x;
}

/* A size in [1, 2^max_log2], log-uniformly distributed. */
static size_t log_size(unsigned max_log2)
{
    unsigned b = (unsigned)(rnd() % max_log2);
    size_t base = (size_t)1 << b;
    return base + (size_t)(rnd() % base);
}

/* Reference data: REF_LEN pseudo-random bytes, mapped outside the heap under
 * test.  Blocks are filled with memcpy(ref + off) and checked with memcmp. */
#define REF_MAX_OFF ((size_t)65536)
#define REF_LEN (((size_t)64 << 20) + REF_MAX_OFF)
static unsigned char *ref;

static void init_ref(void)
{
    ref = mmap(NULL, REF_LEN, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
    if (ref == MAP_FAILED) {
        perror("mmap reference buffer");
        exit(2);
    }
    uint64_t x = 0x9E3779B97F4A7C15ull;
    for (size_t i = 0; i < REF_LEN; i += 8) {
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        memcpy(ref + i, &x, 8);
    }
}

/* Index of the first byte of p[0..n) that differs from c, or n. */
static size_t first_not(const void *p, unsigned char c, size_t n)
{
    const unsigned char *b = p;
    for (size_t i = 0; i < n; i++)
        if (b[i] != c)
            return i;
    return n;
}

static int is_aligned(const void *p, size_t a) { return ((uintptr_t)p & (a - 1)) == 0; }

static const char *object_of(const void *addr)
{
    Dl_info info;
    if (addr == NULL)
        return NULL;
    if (dladdr(addr, &info) == 0 || info.dli_fname == NULL)
        return "(unknown object)";
    if (info.dli_fname[0] == '\0')
        return "(main program)";
    return info.dli_fname;
}

/* The object that provides symbol `name` (addr is our weak/direct reference
 * to it, used when dlsym cannot see it, e.g. glibc's compat-only cfree). */
static const char *provider(const char *name, const void *addr)
{
    void *f = dlsym(RTLD_DEFAULT, name);
    return object_of(f ? f : addr);
}

static const char *malloc_provider(void) { return provider("malloc", NULL); }

enum level {
    L_MIN,      /* glibc's minimum set: must always come from the allocator */
    L_GENERAL,  /* a general-purpose replacement should provide it (XFAIL) */
    L_OPTIONAL, /* may legitimately be left to glibc (SKIP) */
};

/* Decide whether the checks that use symbol `name` can run: it must exist
 * and come from the same object as malloc. */
static int usable_symbol(const char *name, const void *addr, enum level lvl)
{
    if (addr == NULL) {
        note("SKIP", "%s is not available in this process", name);
        return 0;
    }
    const char *mine = provider(name, addr);
    const char *mal = malloc_provider();
    if (mine && mal && strcmp(mine, mal) == 0)
        return 1;
    if (strict_mode || lvl == L_MIN) {
        check(0, "%s comes from %s but malloc comes from %s: %s", name, mine, mal,
              lvl == L_OPTIONAL ? "it would describe a heap nobody uses"
                                : "its callers would mix two heaps");
    } else if (lvl == L_GENERAL) {
        note("XFAIL", "%s is not provided by the active allocator (%s); glibc's %s in %s would "
                      "be used on a foreign heap, so its checks are not run",
             name, mal, name, mine);
    } else {
        note("SKIP", "%s is not provided by the active allocator (%s); glibc's is not "
                     "meaningful here", name, mal);
    }
    return 0;
}

/* Whether these functions come from the same object as malloc (computed in
 * main).  A section does not call a function the active allocator does not
 * provide: glibc's version would be handed pointers from another heap.  The
 * "provider" section reports those functions once (XFAIL or FAIL). */
static int own_posix_memalign, own_aligned_alloc, own_memalign, own_valloc, own_usable;

static int same_as_malloc(const char *name, const void *addr)
{
    const char *mine = provider(name, addr), *mal = malloc_provider();
    return mine && mal && strcmp(mine, mal) == 0;
}

static int own(const char *name, int flag)
{
    if (!flag)
        note("SKIP", "%s is not provided by the active allocator; its checks are skipped",
             name);
    return flag;
}

/* malloc_usable_size, or "unknown" (SIZE_MAX) when glibc's would be used. */
static size_t usable(void *p) { return own_usable ? cm_usable(p) : SIZE_MAX; }

/* ------------------------------------------------------------------------ */
/* Sections.                                                                */

static void sec_provider(void)
{
    const char *mal = malloc_provider();
    printf("INFO: malloc is provided by %s\n", mal ? mal : "(nothing?)");
    if (strict_mode)
        check(mal && strstr(mal, "chunkmalloc") != NULL,
              "malloc should come from libchunkmalloc but comes from %s (preload not active?)",
              mal);
    static const struct {
        const char *name;
        enum level lvl;
    } fns[] = {
        {"free", L_MIN},           {"calloc", L_MIN},
        {"realloc", L_MIN},        {"posix_memalign", L_GENERAL},
        {"aligned_alloc", L_GENERAL}, {"memalign", L_GENERAL},
        {"valloc", L_GENERAL},     {"malloc_usable_size", L_GENERAL},
    };
    for (size_t i = 0; i < sizeof fns / sizeof fns[0]; i++)
        if (usable_symbol(fns[i].name, dlsym(RTLD_DEFAULT, fns[i].name), fns[i].lvl))
            check(1, "%s provider", fns[i].name);
}

static void sec_malloc0(void)
{
    void *a = cm_malloc(0), *b = cm_malloc(0);
    check(a != NULL, "malloc(0) returned NULL");
    check(b != NULL, "second malloc(0) returned NULL");
    check(a == NULL || a != b, "two live malloc(0) blocks share the address %p", a);
    cm_free(a);
    cm_free(b);

    enum { N = 256 };
    void *p[N];
    int nulls = 0, dups = 0;
    for (int i = 0; i < N; i++) {
        p[i] = cm_malloc(0);
        nulls += p[i] == NULL;
    }
    for (int i = 0; i < N; i++)
        for (int j = i + 1; j < N; j++)
            dups += p[i] && p[i] == p[j];
    check(nulls == 0, "%d of %d malloc(0) calls returned NULL", nulls, N);
    check(dups == 0, "%d duplicate pointers among %d live malloc(0) blocks", dups, N);
    for (int i = 0; i < N; i += 2)
        cm_free(p[i]);
    /* the survivors must still be distinct from fresh blocks */
    void *q = cm_malloc(0);
    int clash = 0;
    for (int i = 1; i < N; i += 2)
        clash += q == p[i];
    check(q != NULL && clash == 0, "malloc(0) after frees returned NULL or a live block");
    cm_free(q);
    for (int i = 1; i < N; i += 2)
        cm_free(p[i]);

    void *r = cm_realloc(cm_malloc(0), 100);
    check(r != NULL, "realloc(malloc(0), 100) returned NULL");
    if (r)
        memset(r, 0x5A, 100);
    cm_free(r);
}

static void sec_free_null_errno(void)
{
    errno = 1234;
    cm_free(NULL);
    check(errno == 1234, "free(NULL) changed errno to %d", errno);

    static const size_t sizes[] = {0, 1, 16, 24, 100, 1000, 4096, 5000, 65536, 100000,
                                   131072, 200000, 1 << 20, 4 << 20, 16 << 20, 64 << 20};
    for (size_t i = 0; i < sizeof sizes / sizeof sizes[0]; i++) {
        size_t n = sizes[i];
        void *p = cm_malloc(n);
        if (!p) {
            check(0, "malloc(%zu) returned NULL", n);
            continue;
        }
        memset(p, 0x11, n);
        errno = 1234;
        cm_free(p);
        check(errno == 1234, "free of a malloc(%zu) block changed errno to %d", n, errno);

        p = cm_calloc(1, n);
        errno = 1234;
        cm_free(p);
        check(errno == 1234, "free of a calloc(1, %zu) block changed errno to %d", n, errno);
    }

    /* free of aligned and realloc'ed blocks */
    void *p;
    if (own_memalign) {
        p = cm_memalign(1 << 20, 1000);
        errno = 1234;
        cm_free(p);
        check(errno == 1234, "free of a memalign(1 MiB, 1000) block changed errno to %d", errno);
    }
    p = cm_realloc(cm_malloc(10), 3 << 20);
    errno = 1234;
    cm_free(p);
    check(errno == 1234, "free of a realloc'ed 3 MiB block changed errno to %d", errno);

    /* many frees in a row, which makes trimming/purging likely */
    enum { N = 4000 };
    static void *blocks[N];
    for (int i = 0; i < N; i++)
        blocks[i] = cm_malloc(i % 3 == 0 ? 20000 : 700);
    int changed = 0;
    for (int i = 0; i < N; i++) {
        errno = 1234;
        cm_free(blocks[i]);
        changed += errno != 1234;
    }
    check(changed == 0, "%d of %d frees in a bulk release changed errno", changed, N);
}

static void sec_calloc_zero(void)
{
    static const size_t sizes[] = {1, 7, 8, 24, 100, 1000, 4095, 4096, 4097, 20000,
                                   65536, 131072, 200000, 1 << 20, 3 << 20};
    for (size_t i = 0; i < sizeof sizes / sizeof sizes[0]; i++) {
        size_t n = sizes[i];
        int bad = 0;
        size_t where = 0;
        /* dirty a block of the same size, free it, calloc the same size */
        for (int round = 0; round < 40 && !bad; round++) {
            unsigned char *p = cm_malloc(n);
            if (!p) {
                bad = 1;
                break;
            }
            memset(p, 0xAA, n);
            cm_free(p);
            unsigned char *q = cm_calloc(1, n);
            if (!q) {
                bad = 1;
                break;
            }
            where = first_not(q, 0, n);
            if (where != n)
                bad = 2;
            /* also dirty q so that the next round's calloc may reuse it */
            memset(q, 0xAA, n);
            cm_free(q);
        }
        check(bad == 0, "calloc(1, %zu) after reuse of dirtied memory: %s (byte %zu)", n,
              bad == 1 ? "allocation failed" : "memory not zeroed", where);
    }

    /* many dirty blocks freed at once, then many callocs of mixed shapes */
    enum { N = 512 };
    static void *blk[N];
    for (int i = 0; i < N; i++) {
        size_t n = 16 + (size_t)(i % 64) * 24;
        blk[i] = cm_malloc(n);
        if (blk[i])
            memset(blk[i], 0xAA, n);
    }
    for (int i = 0; i < N; i++)
        cm_free(blk[i]);
    int bad = 0;
    for (int i = 0; i < N; i++) {
        size_t nm = 1 + (size_t)(i % 64), sz = 8 + (size_t)(i % 5) * 8;
        blk[i] = cm_calloc(nm, sz);
        if (!blk[i] || first_not(blk[i], 0, nm * sz) != nm * sz)
            bad++;
    }
    for (int i = 0; i < N; i++)
        cm_free(blk[i]);
    check(bad == 0, "%d of %d calloc(n, m) blocks were NULL or not zeroed", bad, N);

    /* a big calloc after a big dirty free (mmap-sized blocks) */
    unsigned char *p = cm_malloc(32 << 20);
    if (p)
        memset(p, 0xAA, 32 << 20);
    cm_free(p);
    p = cm_calloc(32, 1 << 20);
    check(p && first_not(p, 0, 32 << 20) == (size_t)(32 << 20),
          "calloc(32, 1 MiB) after freeing a dirty 32 MiB block is not zeroed");
    cm_free(p);
}

static void sec_calloc_overflow(void)
{
    static const struct {
        size_t n, m;
        const char *what;
    } cases[] = {
        {SIZE_MAX / 2, 4, "SIZE_MAX/2, 4"},
        {SIZE_MAX, SIZE_MAX, "SIZE_MAX, SIZE_MAX"},
        {SIZE_MAX / 2 + 1, 2, "SIZE_MAX/2+1, 2"},
        {2, SIZE_MAX / 2 + 1, "2, SIZE_MAX/2+1"},
        {(size_t)1 << 32, (size_t)1 << 32, "2^32, 2^32"},
        {SIZE_MAX / 3 + 1, 3, "SIZE_MAX/3+1, 3"},
        {PTRDIFF_MAX, 2, "PTRDIFF_MAX, 2"},
        {1, SIZE_MAX, "1, SIZE_MAX (no overflow, too large)"},
        {SIZE_MAX, 1, "SIZE_MAX, 1 (no overflow, too large)"},
        {1, (size_t)PTRDIFF_MAX + 1, "1, PTRDIFF_MAX+1 (no overflow, too large)"},
    };
    for (size_t i = 0; i < sizeof cases / sizeof cases[0]; i++) {
        errno = 0;
        void *p = cm_calloc(cases[i].n, cases[i].m);
        int e = errno;
        check(p == NULL, "calloc(%s) returned %p instead of NULL", cases[i].what, p);
        check(p != NULL || e == ENOMEM, "calloc(%s) returned NULL with errno %d, not ENOMEM",
              cases[i].what, e);
        if (p)
            cm_free(p);
    }
    /* a zero factor is not an overflow: behaves like malloc(0) */
    static const size_t zero_cases[][2] = {{0, SIZE_MAX}, {SIZE_MAX, 0}, {0, 0}};
    for (size_t i = 0; i < 3; i++) {
        void *p = cm_calloc(zero_cases[i][0], zero_cases[i][1]);
        check(p != NULL, "calloc(%zu, %zu) returned NULL (0 * x is not an overflow)",
              zero_cases[i][0], zero_cases[i][1]);
        cm_free(p);
    }
}

static void sec_malloc_huge(void)
{
    static const struct {
        size_t n;
        const char *what;
    } cases[] = {
        {SIZE_MAX, "SIZE_MAX"},
        {SIZE_MAX - 4096, "SIZE_MAX-4096"},
        {SIZE_MAX - 15, "SIZE_MAX-15"},
        {(size_t)PTRDIFF_MAX + 1, "PTRDIFF_MAX+1"},
        {(size_t)1 << 62, "2^62"},
    };
    for (size_t i = 0; i < sizeof cases / sizeof cases[0]; i++) {
        errno = 0;
        void *p = cm_malloc(cases[i].n);
        int e = errno;
        check(p == NULL, "malloc(%s) returned %p instead of NULL", cases[i].what, p);
        check(p != NULL || e == ENOMEM, "malloc(%s) returned NULL with errno %d, not ENOMEM",
              cases[i].what, e);
        if (p)
            cm_free(p);
    }
    /* the allocator still works afterwards */
    void *p = cm_malloc(100);
    check(p != NULL, "malloc(100) after huge requests returned NULL");
    cm_free(p);
}

static void sec_realloc_null(void)
{
    static const size_t sizes[] = {0, 1, 100, 4096, 100000, 4 << 20};
    for (size_t i = 0; i < sizeof sizes / sizeof sizes[0]; i++) {
        size_t n = sizes[i];
        unsigned char *p = cm_realloc(NULL, n);
        check(p != NULL, "realloc(NULL, %zu) returned NULL", n);
        if (!p)
            continue;
        check(usable(p) >= n, "realloc(NULL, %zu): usable size %zu too small", n,
              usable(p));
        memcpy(p, ref, n);
        check(memcmp(p, ref, n) == 0, "realloc(NULL, %zu) block does not hold data", n);
        cm_free(p);
    }
}

/* Walk one block through a list of sizes with realloc, checking after every
 * step that the common prefix survived; returns 0 on success. */
static int realloc_walk(const char *label, const size_t *sizes, size_t count, size_t off)
{
    unsigned char *p = NULL;
    size_t cur = 0;
    for (size_t i = 0; i < count; i++) {
        size_t ns = sizes[i];
        unsigned char *q = cm_realloc(p, ns);
        if (!q) {
            check(0, "%s: realloc(%zu -> %zu) returned NULL", label, cur, ns);
            cm_free(p);
            return 1;
        }
        size_t keep = cur < ns ? cur : ns;
        if (memcmp(q, ref + off, keep) != 0) {
            size_t k = 0;
            while (k < keep && q[k] == ref[off + k])
                k++;
            check(0, "%s: realloc(%zu -> %zu) lost contents at byte %zu", label, cur, ns, k);
            cm_free(q);
            return 1;
        }
        if (usable(q) < ns) {
            check(0, "%s: realloc(.., %zu): usable size %zu too small", label, ns, usable(q));
            cm_free(q);
            return 1;
        }
        memcpy(q + keep, ref + off + keep, ns - keep);
        p = q;
        cur = ns;
    }
    cm_free(p);
    check(1, "%s", label);
    return 0;
}

static void sec_realloc_contents(void)
{
    static size_t seq[20000];
    size_t n;

    /* doubling up to 64 MiB, then halving back down */
    n = 0;
    for (size_t s = 1; s <= ((size_t)64 << 20); s *= 2)
        seq[n++] = s;
    for (size_t s = (size_t)32 << 20; s >= 1; s /= 2)
        seq[n++] = s;
    realloc_walk("realloc doubling 1 B .. 64 MiB and back", seq, n, 0);

    /* one byte at a time across the small size classes, up and down */
    n = 0;
    for (size_t s = 1; s <= 3000; s++)
        seq[n++] = s;
    for (size_t s = 2999; s >= 1; s--)
        seq[n++] = s;
    realloc_walk("realloc +1/-1 steps 1 B .. 3000 B", seq, n, 17);

    /* geometric growth by ~1.3x up to 64 MiB, shrinking by 1.7x */
    n = 0;
    for (size_t s = 1; s <= ((size_t)64 << 20); s = s + s / 3 + 1)
        seq[n++] = s;
    for (size_t s = (size_t)60 << 20; s >= 1; s = s * 10 / 17)
        seq[n++] = s;
    realloc_walk("realloc x1.3 growth to 64 MiB, /1.7 shrink", seq, n, 333);

    /* boundary sizes, jumping back and forth between size classes */
    static const size_t jumps[] = {
        100, 4095, 4097, 16, 65535, 65537, 24, 131071, 131073, 1,
        (1 << 20) - 1, (1 << 20) + 1, 8000, (8 << 20) + 3, 100, (33 << 20) + 7, 5,
        (2 << 20), (2 << 20) - 4096, (2 << 20) + 4096, 262144, 48, 64 << 20, 12};
    realloc_walk("realloc across size-class boundaries", jumps, sizeof jumps / sizeof jumps[0],
                 4096);

    /* same size repeatedly */
    static const size_t same[] = {777, 777, 777, 300000, 300000, 300000};
    realloc_walk("realloc to the same size", same, 6, 99);

    /* random walk, log-uniform sizes up to 4 MiB */
    n = 0;
    for (int i = 0; i < 400; i++)
        seq[n++] = log_size(22);
    realloc_walk("realloc random walk 1 B .. 4 MiB", seq, n, 12345);

    /* many blocks reallocated alternately so growth is often not in place */
    enum { NB = 32, OPS = 4000 };
    unsigned char *blk[NB] = {0};
    size_t len[NB] = {0}, off[NB];
    for (int i = 0; i < NB; i++)
        off[i] = (size_t)i * 1999;
    int bad = 0;
    for (int op = 0; op < OPS && !bad; op++) {
        int i = (int)(rnd() % NB);
        size_t ns = log_size(op % 50 == 0 ? 21 : 14);
        unsigned char *q = cm_realloc(blk[i], ns);
        if (!q) {
            bad = 1;
            break;
        }
        size_t keep = len[i] < ns ? len[i] : ns;
        if (memcmp(q, ref + off[i], keep) != 0)
            bad = 2;
        memcpy(q + keep, ref + off[i] + keep, ns - keep);
        blk[i] = q;
        len[i] = ns;
    }
    for (int i = 0; i < NB; i++) {
        if (!bad && blk[i] && memcmp(blk[i], ref + off[i], len[i]) != 0)
            bad = 3;
        cm_free(blk[i]);
    }
    check(bad == 0, "interleaved realloc of %d blocks: %s", NB,
          bad == 1 ? "realloc returned NULL" : "contents lost");
}

static void sec_realloc_fail(void)
{
    static const struct {
        size_t n;
        const char *what;
    } huge[] = {{SIZE_MAX, "SIZE_MAX"},
                {SIZE_MAX - 4096, "SIZE_MAX-4096"},
                {(size_t)PTRDIFF_MAX + 1, "PTRDIFF_MAX+1"}};
    static const size_t base[] = {1000, 8 << 20};
    for (size_t b = 0; b < 2; b++) {
        size_t n = base[b];
        unsigned char *p = cm_malloc(n);
        if (!p) {
            check(0, "malloc(%zu) returned NULL", n);
            continue;
        }
        memcpy(p, ref + 5, n);
        for (size_t i = 0; i < 3; i++) {
            errno = 0;
            void *q = cm_realloc(p, huge[i].n);
            int e = errno;
            check(q == NULL, "realloc(%zu-byte block, %s) returned %p instead of NULL", n,
                  huge[i].what, q);
            if (q) { /* should not happen; keep the test going */
                p = q;
                continue;
            }
            if (e != ENOMEM && jemalloc_active)
                note("XFAIL", "realloc(%zu-byte block, %s) failed with errno %d, not ENOMEM "
                              "(known jemalloc deviation)", n, huge[i].what, e);
            else
                check(e == ENOMEM,
                      "realloc(%zu-byte block, %s) failed with errno %d, not ENOMEM", n,
                      huge[i].what, e);
            check(memcmp(p, ref + 5, n) == 0 && usable(p) >= n,
                  "failed realloc(%zu-byte block, %s) damaged the original block", n,
                  huge[i].what);
        }
        /* the original is still a valid heap block */
        unsigned char *r = cm_realloc(p, n + 10);
        check(r != NULL && memcmp(r, ref + 5, n) == 0,
              "block of %zu bytes unusable after failed realloc", n);
        cm_free(r ? r : p);
    }
}

static void sec_reallocarray(void)
{
    /* glibc's reallocarray only wraps realloc, so it works with any
     * replacement malloc; no provider check needed. */
    if (!w_reallocarray) {
        note("SKIP", "reallocarray is not available");
        return;
    }
    unsigned char *p = w_reallocarray(NULL, 10, 100);
    check(p != NULL, "reallocarray(NULL, 10, 100) returned NULL");
    if (!p)
        return;
    memcpy(p, ref + 1, 1000);
    unsigned char *q = w_reallocarray(p, 100, 100);
    check(q != NULL && memcmp(q, ref + 1, 1000) == 0,
          "reallocarray(p, 100, 100) failed or lost contents");
    if (q)
        p = q;
    errno = 0;
    q = w_reallocarray(p, SIZE_MAX / 2, 4);
    int e = errno;
    check(q == NULL, "reallocarray(p, SIZE_MAX/2, 4) returned non-NULL");
    check(q != NULL || e == ENOMEM, "reallocarray overflow set errno %d, not ENOMEM", e);
    check(memcmp(p, ref + 1, 1000) == 0, "overflowing reallocarray damaged the block");
    if (q)
        p = q;
    errno = 0;
    q = w_reallocarray(NULL, SIZE_MAX, SIZE_MAX);
    e = errno;
    check(q == NULL && e == ENOMEM,
          "reallocarray(NULL, SIZE_MAX, SIZE_MAX): got %p, errno %d (want NULL, ENOMEM)", q, e);
    cm_free(q);
    cm_free(p);
}

static void sec_posix_memalign_errors(void)
{
    if (!own("posix_memalign", own_posix_memalign))
        return;
    static const size_t bad_align[] = {0, 1, 2, 3, sizeof(void *) / 2, 12, 24, 48,
                                       4097, 3 * 4096, (size_t)1 << 20 | 8};
    for (size_t i = 0; i < sizeof bad_align / sizeof bad_align[0]; i++) {
        void *p = NULL;
        int r = cm_posix_memalign(&p, bad_align[i], 64);
        check(r == EINVAL, "posix_memalign(alignment %zu) returned %d, want EINVAL (%d)",
              bad_align[i], r, EINVAL);
        if (r == 0)
            cm_free(p);
    }
    void *p = NULL;
    int r = cm_posix_memalign(&p, sizeof(void *), SIZE_MAX);
    check(r == ENOMEM, "posix_memalign(%zu, SIZE_MAX) returned %d, want ENOMEM",
          sizeof(void *), r);
    if (r == 0)
        cm_free(p);
    r = cm_posix_memalign(&p, 4096, (size_t)PTRDIFF_MAX + 1);
    check(r == ENOMEM, "posix_memalign(4096, PTRDIFF_MAX+1) returned %d, want ENOMEM", r);
    if (r == 0)
        cm_free(p);
}

enum { AL_POSIX, AL_ALIGNED_ALLOC, AL_MEMALIGN };
static const char *const al_names[] = {"posix_memalign", "aligned_alloc", "memalign"};

static void *aligned_with(int how, size_t align, size_t size)
{
    void *p = NULL;
    switch (how) {
    case AL_POSIX:
        if (cm_posix_memalign(&p, align, size) != 0)
            p = NULL;
        return p;
    case AL_ALIGNED_ALLOC:
        return cm_aligned_alloc(align, size);
    default:
        return cm_memalign(align, size);
    }
}

static void sec_aligned(void)
{
    const int owned[3] = {own_posix_memalign, own_aligned_alloc, own_memalign};
    for (int how = 0; how < 3; how++) {
        if (!own(al_names[how], owned[how]))
            continue;
        for (unsigned lg = 0; lg <= 30; lg++) {
            size_t align = (size_t)1 << lg;
            if (how == AL_POSIX && align < sizeof(void *))
                continue;
            size_t sizes[5];
            int ns = 0;
            sizes[ns++] = 1;
            if (align <= 4096) {
                sizes[ns++] = align;
                sizes[ns++] = 3 * align + 1;
                sizes[ns++] = 100;
                sizes[ns++] = 5000;
            } else if (align <= ((size_t)1 << 20)) {
                sizes[ns++] = 4096;
                sizes[ns++] = align;
            } else {
                sizes[ns++] = 4096;
                sizes[ns++] = 65536;
            }
            void *p[5];
            char why[200] = "";
            for (int i = 0; i < ns; i++) {
                p[i] = aligned_with(how, align, sizes[i]);
                if (!p[i]) {
                    if (!why[0])
                        snprintf(why, sizeof why, "size %zu: returned NULL", sizes[i]);
                    continue;
                }
                if (!is_aligned(p[i], align) && !why[0])
                    snprintf(why, sizeof why, "size %zu: %p is misaligned", sizes[i], p[i]);
                if (usable(p[i]) < sizes[i] && !why[0])
                    snprintf(why, sizeof why, "size %zu: usable size %zu too small", sizes[i],
                             usable(p[i]));
                memset(p[i], 0x40 + i, sizes[i]);
            }
            /* all blocks live at once: none may overlap another */
            for (int i = 0; i < ns; i++)
                if (p[i] && first_not(p[i], (unsigned char)(0x40 + i), sizes[i]) != sizes[i] &&
                    !why[0])
                    snprintf(why, sizeof why, "size %zu: contents overwritten", sizes[i]);
            for (int i = 0; i < ns; i++)
                cm_free(p[i]);
            check(!why[0], "%s(alignment %zu): %s", al_names[how], align, why);
        }
    }

    /* realloc of aligned blocks keeps the contents */
    static const size_t aligns[] = {64, 4096, 1 << 16, 1 << 21};
    for (size_t i = 0; i < 4 && own_memalign; i++) {
        unsigned char *p = cm_memalign(aligns[i], 3000);
        if (!p) {
            check(0, "memalign(%zu, 3000) returned NULL", aligns[i]);
            continue;
        }
        memcpy(p, ref + 77, 3000);
        unsigned char *q = cm_realloc(p, 300000);
        check(q && memcmp(q, ref + 77, 3000) == 0,
              "realloc of a memalign(%zu) block lost contents", aligns[i]);
        q = cm_realloc(q ? q : p, 1000);
        check(q && memcmp(q, ref + 77, 1000) == 0,
              "shrinking realloc of a formerly aligned block lost contents");
        cm_free(q);
    }
}

static void sec_aligned_alloc_bad(void)
{
    if (!own("aligned_alloc", own_aligned_alloc))
        return;
    static const size_t bad[] = {0, 3, 24, 48, 4095, 4097, 3 * 4096};
    for (size_t i = 0; i < sizeof bad / sizeof bad[0]; i++) {
        errno = 0;
        void *p = cm_aligned_alloc(bad[i], 48);
        int e = errno;
        if (p != NULL && glibc_pre_2_38_active) {
            /* glibc before 2.38 silently rounds the alignment up to a power
             * of two; 2.38 and later (and chunkmalloc) must return NULL. */
            note("XFAIL", "aligned_alloc(%zu, 48) returned non-NULL: glibc < 2.38 rounds the "
                          "alignment up", bad[i]);
            cm_free(p);
            continue;
        }
        check(p == NULL, "aligned_alloc(%zu, 48) returned %p, want NULL", bad[i], p);
        check(p != NULL || e == EINVAL, "aligned_alloc(%zu, 48) set errno %d, want EINVAL",
              bad[i], e);
        if (p)
            cm_free(p);
    }
}

/*
 * memalign with glibc's documented rules: an alignment above SIZE_MAX/2 + 1
 * is EINVAL; any other alignment that is not a power of two is rounded up to
 * the next one; a valid alignment too large to satisfy is NULL + ENOMEM.
 * aligned_alloc and posix_memalign reject bad alignments by their own rules
 * (checked above) but fail a valid, unsatisfiable one with ENOMEM as well.
 */
static void sec_memalign_errors(void)
{
    const size_t p62 = (size_t)1 << 62, p63 = (size_t)1 << 63;
    static const char *const fn_names[] = {"memalign", "__libc_memalign"};
    void *(*fns[2])(size_t, size_t) = {NULL, NULL};
    if (own("memalign", own_memalign))
        fns[0] = cm_memalign;
    if (w_libc_memalign && same_as_malloc("__libc_memalign", (void *)w_libc_memalign))
        fns[1] = w_libc_memalign;
    const struct {
        size_t align, size;
        int want;
        const char *what;
    } fail_cases[] = {
        {p62, 16, ENOMEM, "2^62, 16"},
        {p63, 16, ENOMEM, "2^63, 16"},
        {p62 + 1, 16, ENOMEM, "2^62+1 (rounds up to 2^63), 16"},
        {p63 - 1, 16, ENOMEM, "2^63-1 (rounds up to 2^63), 16"},
        {p62, SIZE_MAX, ENOMEM, "2^62, SIZE_MAX"},
        {p63 + 1, 16, EINVAL, "2^63+1 (above SIZE_MAX/2+1), 16"},
        {SIZE_MAX, 16, EINVAL, "SIZE_MAX, 16"},
        {16, SIZE_MAX, ENOMEM, "16, SIZE_MAX"},
        {4096, (size_t)PTRDIFF_MAX + 1, ENOMEM, "4096, PTRDIFF_MAX+1"},
    };
    /* not a power of two: rounded up, so the block has the next power's
     * alignment (a request at most 16 is plain malloc alignment) */
    static const struct {
        size_t align, size, want_align;
    } round_cases[] = {
        {0, 100, 16},       {3, 100, 4},         {24, 100, 32},
        {4097, 100, 8192},  {3 * 4096, 5000, 16384}, {((size_t)1 << 20) + 1, 100, (size_t)2 << 20},
    };
    for (int f = 0; f < 2; f++) {
        if (!fns[f])
            continue;
        for (size_t i = 0; i < sizeof fail_cases / sizeof fail_cases[0]; i++) {
            errno = 0;
            void *p = fns[f](fail_cases[i].align, fail_cases[i].size);
            int e = errno;
            check(p == NULL && e == fail_cases[i].want,
                  "%s(%s): got %p errno %d, want NULL errno %s", fn_names[f], fail_cases[i].what,
                  p, e, fail_cases[i].want == ENOMEM ? "ENOMEM" : "EINVAL");
            if (p)
                cm_free(p);
        }
        for (size_t i = 0; i < sizeof round_cases / sizeof round_cases[0]; i++) {
            size_t a = round_cases[i].align, n = round_cases[i].size;
            unsigned char *p = fns[f](a, n);
            check(p && is_aligned(p, round_cases[i].want_align) && usable(p) >= n,
                  "%s(%zu, %zu) returned %p, want a block aligned to %zu", fn_names[f], a, n,
                  (void *)p, round_cases[i].want_align);
            if (p)
                memset(p, 0x5A, n);
            cm_free(p);
        }
    }
    const size_t huge[] = {p62, p63};
    for (size_t i = 0; i < 2; i++) {
        if (own_aligned_alloc) {
            errno = 0;
            void *p = cm_aligned_alloc(huge[i], 16);
            int e = errno;
            check(p == NULL && e == ENOMEM,
                  "aligned_alloc(2^%d, 16): got %p errno %d, want NULL errno ENOMEM", 62 + (int)i,
                  p, e);
            if (p)
                cm_free(p);
        }
        if (own_posix_memalign) {
            void *p = NULL;
            int r = cm_posix_memalign(&p, huge[i], 16);
            check(r == ENOMEM, "posix_memalign(2^%d, 16) returned %d, want ENOMEM", 62 + (int)i,
                  r);
            if (r == 0)
                cm_free(p);
        }
    }
    if (own_aligned_alloc) {
        errno = 0;
        void *p = cm_aligned_alloc(p63 + 1, 16);
        int e = errno;
        check(p == NULL && e == EINVAL,
              "aligned_alloc(2^63+1, 16): got %p errno %d, want NULL errno EINVAL", p, e);
        if (p)
            cm_free(p);
    }
}

static void sec_valloc_pvalloc(void)
{
    size_t page = (size_t)sysconf(_SC_PAGESIZE);
    static const size_t sizes[] = {1, 100, 4095, 4096, 4097, 5000, 100000, (1 << 20) + 1};
    for (size_t i = 0; own_valloc && i < sizeof sizes / sizeof sizes[0]; i++) {
        size_t n = sizes[i];
        void *p = cm_valloc(n);
        check(p && is_aligned(p, page), "valloc(%zu) returned %p (want page aligned)", n, p);
        if (p) {
            check(usable(p) >= n, "valloc(%zu): usable size %zu", n, usable(p));
            memset(p, 0x33, n);
        }
        cm_free(p);
    }
    own("valloc", own_valloc);
    if (!usable_symbol("pvalloc", (void *)pvalloc, L_GENERAL))
        return;
    for (size_t i = 0; i < sizeof sizes / sizeof sizes[0]; i++) {
        size_t n = sizes[i], rounded = (n + page - 1) / page * page;
        void *p = cm_pvalloc(n);
        check(p && is_aligned(p, page), "pvalloc(%zu) returned %p (want page aligned)", n, p);
        if (!p)
            continue;
        check(usable(p) >= rounded, "pvalloc(%zu): usable size %zu < page-rounded %zu", n,
              usable(p), rounded);
        memset(p, 0x44, rounded);
        cm_free(p);
    }
    errno = 0;
    void *p = cm_pvalloc(SIZE_MAX - 100);
    int e = errno;
    check(p == NULL && e == ENOMEM, "pvalloc(SIZE_MAX-100): got %p errno %d, want NULL ENOMEM",
          p, e);
    if (p)
        cm_free(p);
}

/* Allocate `count` blocks of `size`, fill every block's full usable size
 * with its own byte, then make sure no block's bytes were overwritten. */
static void usable_batch(size_t size, int count)
{
    void *p[16];
    size_t u[16];
    int small = 0, nul = 0;
    for (int i = 0; i < count; i++) {
        p[i] = cm_malloc(size);
        u[i] = p[i] ? usable(p[i]) : 0;
        nul += p[i] == NULL;
        small += p[i] && u[i] < size;
    }
    check(nul == 0 && small == 0, "malloc(%zu): %d NULL results, %d with usable size < request",
          size, nul, small);
    for (int i = 0; i < count; i++)
        if (p[i])
            memset(p[i], (unsigned char)(i * 37 + size), u[i]);
    int bad = -1;
    for (int i = 0; i < count && bad < 0; i++)
        if (p[i] && first_not(p[i], (unsigned char)(i * 37 + size), u[i]) != u[i])
            bad = i;
    check(bad < 0, "malloc(%zu): writing the full usable size of a block corrupted block %d",
          size, bad);
    for (int i = 0; i < count; i++)
        cm_free(p[i]);
}

static void sec_usable_size(void)
{
    if (!own("malloc_usable_size", own_usable))
        return;
    check(cm_usable(NULL) == 0, "malloc_usable_size(NULL) = %zu, want 0", cm_usable(NULL));
    for (size_t s = 1; s <= 2048; s++)
        usable_batch(s, 8);
    for (unsigned b = 12; b <= 20; b++) {
        size_t s = (size_t)1 << b;
        usable_batch(s - 1, b <= 16 ? 16 : 4);
        usable_batch(s, b <= 16 ? 16 : 4);
        usable_batch(s + 1, b <= 16 ? 16 : 4);
        usable_batch(s + s / 2, b <= 16 ? 16 : 4);
    }
    /* other allocation functions */
    void *p = cm_calloc(7, 300);
    check(p && usable(p) >= 2100, "calloc(7, 300): usable size too small");
    cm_free(p);
    p = cm_realloc(cm_malloc(10), 70000);
    check(p && usable(p) >= 70000, "realloc(.., 70000): usable size too small");
    cm_free(p);
    if (own_memalign) {
        p = cm_memalign(65536, 12345);
        check(p && cm_usable(p) >= 12345, "memalign(65536, 12345): usable size too small");
        if (p)
            memset(p, 1, cm_usable(p));
        cm_free(p);
    }
}

static void sec_free_sized(void)
{
    if (!w_free_sized && !w_free_aligned_sized) {
        note("SKIP", "free_sized/free_aligned_sized are not available (glibc < 2.43)");
        return;
    }
    if (w_free_sized && usable_symbol("free_sized", (void *)w_free_sized, L_GENERAL)) {
        static const size_t sizes[] = {0, 1, 8, 100, 1000, 4096, 65536, 200000, 5 << 20};
        int changed = 0;
        w_free_sized(NULL, 0);
        for (size_t i = 0; i < sizeof sizes / sizeof sizes[0]; i++) {
            void *p = cm_malloc(sizes[i]);
            if (p)
                memset(p, 0x21, sizes[i]);
            errno = 1234;
            w_free_sized(p, sizes[i]);
            changed += errno != 1234;
            p = cm_calloc(3, sizes[i]);
            w_free_sized(p, 3 * sizes[i]);
            p = cm_realloc(cm_malloc(5), sizes[i] + 7);
            w_free_sized(p, sizes[i] + 7);
        }
        check(changed == 0, "free_sized changed errno %d times", changed);
    }
    if (w_free_aligned_sized && own("aligned_alloc", own_aligned_alloc) &&
        usable_symbol("free_aligned_sized", (void *)w_free_aligned_sized, L_GENERAL)) {
        w_free_aligned_sized(NULL, 64, 0);
        for (unsigned lg = 0; lg <= 21; lg++) {
            size_t a = (size_t)1 << lg;
            void *p = cm_aligned_alloc(a, a * 2);
            if (p)
                memset(p, 0x22, a * 2);
            w_free_aligned_sized(p, a, a * 2);
            p = cm_aligned_alloc(a, 24);
            w_free_aligned_sized(p, a, 24);
        }
        check(1, "free_aligned_sized");
    }
}

static void sec_cfree(void)
{
    if (!usable_symbol("cfree", (void *)w_cfree, L_GENERAL))
        return;
    w_cfree(NULL);
    for (int i = 0; i < 100; i++) {
        void *p = cm_malloc((size_t)i * 37);
        w_cfree(p);
    }
    check(1, "cfree");
}

static void sec_libc_aliases(void)
{
    int have_malloc = usable_symbol("__libc_malloc", (void *)w_libc_malloc, L_GENERAL);
    int have_free = usable_symbol("__libc_free", (void *)w_libc_free, L_GENERAL);
    int have_calloc = usable_symbol("__libc_calloc", (void *)w_libc_calloc, L_GENERAL);
    int have_realloc = usable_symbol("__libc_realloc", (void *)w_libc_realloc, L_GENERAL);
    int have_memalign = usable_symbol("__libc_memalign", (void *)w_libc_memalign, L_GENERAL);
    if (have_malloc) {
        unsigned char *p = w_libc_malloc(1000);
        check(p != NULL, "__libc_malloc(1000) returned NULL");
        if (p) {
            memcpy(p, ref, 1000);
            check(usable(p) >= 1000, "__libc_malloc block has usable size %zu", usable(p));
            unsigned char *q = cm_realloc(p, 50000);
            check(q && memcmp(q, ref, 1000) == 0, "realloc of a __libc_malloc block failed");
            cm_free(q ? q : p);
        }
        p = w_libc_malloc(0);
        check(p != NULL, "__libc_malloc(0) returned NULL");
        cm_free(p);
    }
    if (have_free) {
        w_libc_free(NULL);
        for (size_t n = 1; n < (4 << 20); n *= 3)
            w_libc_free(cm_malloc(n));
        check(1, "__libc_free of malloc blocks");
    }
    if (have_calloc) {
        unsigned char *p = cm_malloc(4000);
        if (p)
            memset(p, 0xAA, 4000);
        cm_free(p);
        p = w_libc_calloc(40, 100);
        check(p && first_not(p, 0, 4000) == 4000, "__libc_calloc(40, 100) not zeroed");
        cm_free(p);
        errno = 0;
        p = w_libc_calloc(SIZE_MAX / 2, 4);
        check(p == NULL && errno == ENOMEM, "__libc_calloc overflow did not fail with ENOMEM");
    }
    if (have_realloc) {
        unsigned char *p = cm_malloc(3000);
        if (p)
            memcpy(p, ref + 3, 3000);
        unsigned char *q = w_libc_realloc(p, 3 << 20);
        check(q && memcmp(q, ref + 3, 3000) == 0, "__libc_realloc lost contents");
        cm_free(q ? q : p);
    }
    if (have_memalign) {
        void *p = w_libc_memalign(4096, 100);
        check(p && is_aligned(p, 4096), "__libc_memalign(4096, 100) returned %p", p);
        if (p)
            memset(p, 1, 100);
        cm_free(p);
    }
}

static void sec_trim_mallinfo_mallopt(void)
{
    enum { N = 1024 };
    static void *blk[N];
    for (int i = 0; i < N; i++) {
        blk[i] = cm_malloc(1024);
        if (blk[i])
            memset(blk[i], 0x5C, 1024);
    }
    void *big = cm_malloc(1 << 20);
    if (big)
        memset(big, 0x5D, 1 << 20);

    if (usable_symbol("mallinfo2", (void *)w_mallinfo2, L_OPTIONAL)) {
        struct cm_mallinfo2 mi = w_mallinfo2();
        check(mi.uordblks > 0, "mallinfo2().uordblks is 0 with ~2 MiB of live data");
    }

    for (int i = 0; i < N; i += 2)
        cm_free(blk[i]);
    int r = cm_malloc_trim(0);
    check(r == 0 || r == 1, "malloc_trim(0) returned %d", r);
    r = cm_malloc_trim(1 << 20);
    check(r == 0 || r == 1, "malloc_trim(1 MiB) returned %d", r);
    int damaged = 0;
    for (int i = 1; i < N; i += 2)
        damaged += blk[i] && first_not(blk[i], 0x5C, 1024) != 1024;
    check(damaged == 0, "malloc_trim damaged %d live blocks", damaged);
    for (int i = 1; i < N; i += 2)
        cm_free(blk[i]);
    cm_free(big);

    static const struct {
        int param, value;
        const char *what;
    } opts[] = {
        {M_ARENA_MAX, 4, "M_ARENA_MAX, 4"},
        {M_MMAP_THRESHOLD, 1 << 20, "M_MMAP_THRESHOLD, 1 MiB"},
        {M_TRIM_THRESHOLD, 256 << 10, "M_TRIM_THRESHOLD, 256 KiB"},
        {12345, 1, "12345 (unknown), 1"},
    };
    for (size_t i = 0; i < sizeof opts / sizeof opts[0]; i++) {
        r = cm_mallopt(opts[i].param, opts[i].value);
        check(r == 0 || r == 1, "mallopt(%s) returned %d", opts[i].what, r);
    }
    void *p = cm_malloc(3 << 20);
    check(p != NULL, "malloc after mallopt returned NULL");
    cm_free(p);
    r = cm_malloc_trim(0);
    check(r == 0 || r == 1, "malloc_trim(0) after mallopt returned %d", r);
}

/* ------------------------------------------------------------------------ */
/* Foreign frees (chunkmalloc only).                                        */

static unsigned char static_area[4096] __attribute__((aligned(64)));

static int foreign_child(int kind)
{
    unsigned char stack_area[1024] __attribute__((aligned(64)));
    unsigned char *area, *ptr;
    size_t len;
    if (kind == 0) {
        area = static_area;
        len = sizeof static_area;
        ptr = area + 64;
    } else if (kind == 1) {
        area = stack_area;
        len = sizeof stack_area;
        ptr = area + 32;
    } else {
        len = 65536;
        area = mmap(NULL, len, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
        if (area == MAP_FAILED)
            return 5;
        ptr = area + 256;
    }
    memset(area, 0xC3, len);
    S->foreign_ptr = ptr;
    __atomic_thread_fence(__ATOMIC_SEQ_CST);
    cm_free(ptr);
    if (first_not(area, 0xC3, len) != len)
        return 3; /* the allocator wrote into memory it does not own */
    void *p = cm_malloc(100);
    if (!p)
        return 4;
    memset(p, 1, 100);
    cm_free(p);
    return 0;
}

static int contains_hex(const char *text, uintptr_t v)
{
    char lo[40], up[40];
    snprintf(lo, sizeof lo, "%lx", (unsigned long)v);
    snprintf(up, sizeof up, "%lX", (unsigned long)v);
    return strstr(text, lo) != NULL || strstr(text, up) != NULL;
}

static void sec_foreign_free(void)
{
    if (!strict_mode) {
        note("SKIP", "free of foreign pointers (set CONFORMANCE_EXPECT_CHUNKMALLOC=1; glibc "
                     "aborts on them)");
        return;
    }
    static const char *const what[] = {"a static array", "a stack array", "a private mmap"};
    for (int kind = 0; kind < 3; kind++) {
        int fds[2];
        if (pipe(fds) != 0) {
            check(0, "pipe: %s", strerror(errno));
            return;
        }
        S->foreign_ptr = NULL;
        fflush(stdout);
        fflush(stderr);
        pid_t pid = fork();
        if (pid == 0) {
            close(fds[0]);
            dup2(fds[1], 2);
            close(fds[1]);
            alarm(30);
            exit(foreign_child(kind)); /* exit(): let atexit handlers run too */
        }
        close(fds[1]);
        static char buf[65536];
        size_t got = 0;
        for (;;) {
            ssize_t r = read(fds[0], buf + got, sizeof buf - 1 - got);
            if (r <= 0)
                break;
            got += (size_t)r;
            if (got == sizeof buf - 1)
                got = 0; /* keep only the tail of a very chatty child */
        }
        buf[got] = '\0';
        close(fds[0]);
        int st = 0;
        waitpid(pid, &st, 0);
        uintptr_t addr = (uintptr_t)S->foreign_ptr;
        if (WIFSIGNALED(st))
            check(0, "free of a pointer into %s (%p) killed the process with signal %d",
                  what[kind], (void *)addr, WTERMSIG(st));
        else if (WEXITSTATUS(st) == 3)
            check(0, "free of a pointer into %s wrote into that memory", what[kind]);
        else
            check(WEXITSTATUS(st) == 0, "process exited %d after free of a pointer into %s",
                  WEXITSTATUS(st), what[kind]);
        check(addr != 0 && contains_hex(buf, addr),
              "stderr after free of a pointer into %s does not mention %p; stderr was: %.300s",
              what[kind], (void *)addr, buf);
    }
}

/* ------------------------------------------------------------------------ */
/* Deferred cancellation does not act inside the allocator.                 */

/*
 * A thread with cancellation enabled (deferred) and a cancel request pending
 * calls malloc_stats() or, in strict mode, free() of a foreign pointer, each
 * of which writes to stderr.  Neither may act on the request (glibc's bug
 * 22830: malloc_stats must not be a cancellation point): the thread must get
 * as far as an explicit pthread_testcancel() and be cancelled there.
 * pthread_cancel() on itself is not enough to leave a request pending in
 * every implementation, so a second thread sends it while the target waits
 * on a barrier (pthread_barrier_wait is not a cancellation point).
 */
enum { CANCEL_IN_STATS, CANCEL_IN_FOREIGN_FREE };
/* how far the target thread got; CP_AT_TESTCANCEL is recorded just before
 * its pthread_testcancel() */
enum { CP_START, CP_AT_TESTCANCEL, CP_PAST_TESTCANCEL };
static pthread_barrier_t cancel_barrier;
static volatile int cancel_progress;

static void *cancel_target(void *arg)
{
    int what = (int)(intptr_t)arg, old;
    pthread_setcancelstate(PTHREAD_CANCEL_ENABLE, &old);
    pthread_setcanceltype(PTHREAD_CANCEL_DEFERRED, &old);
    pthread_barrier_wait(&cancel_barrier); /* the sender may go ahead */
    pthread_barrier_wait(&cancel_barrier); /* it has called pthread_cancel */
    if (what == CANCEL_IN_STATS)
        cm_malloc_stats();
    else
        cm_free(static_area + 128);
    cancel_progress = CP_AT_TESTCANCEL;
    pthread_testcancel();
    cancel_progress = CP_PAST_TESTCANCEL;
    return NULL;
}

static void *cancel_sender(void *arg)
{
    pthread_t target = *(pthread_t *)arg;
    pthread_barrier_wait(&cancel_barrier);
    int r = pthread_cancel(target);
    pthread_barrier_wait(&cancel_barrier);
    return (void *)(intptr_t)r;
}

/* Runs cancel_target(what) with a cancel pending; its stderr (read back from
 * a temporary file) goes to err[0..len).  Returns 0 if the threads ran. */
static int cancel_round(int what, char *err, size_t len)
{
    FILE *out = tmpfile();
    if (!out) {
        check(0, "tmpfile: %s", strerror(errno));
        return -1;
    }
    fflush(stderr);
    int saved_err = dup(2);
    dup2(fileno(out), 2);
    pthread_t target, sender;
    void *target_ret = NULL, *sender_ret = NULL;
    pthread_barrier_init(&cancel_barrier, NULL, 2);
    cancel_progress = CP_START;
    int r = pthread_create(&target, NULL, cancel_target, (void *)(intptr_t)what);
    if (r == 0) {
        /* if this fails, the target stays on the barrier until _exit */
        r = pthread_create(&sender, NULL, cancel_sender, &target);
        if (r == 0) {
            pthread_join(sender, &sender_ret);
            pthread_join(target, &target_ret);
            pthread_barrier_destroy(&cancel_barrier);
        }
    }
    dup2(saved_err, 2);
    close(saved_err);
    rewind(out);
    size_t got = fread(err, 1, len - 1, out);
    err[got] = '\0';
    fclose(out);
    if (r != 0) {
        check(0, "pthread_create: %s", strerror(r));
        return -1;
    }
    const char *call = what == CANCEL_IN_STATS ? "malloc_stats()" : "free() of a foreign pointer";
    check(sender_ret == NULL, "pthread_cancel returned %d", (int)(intptr_t)sender_ret);
    check(cancel_progress >= CP_AT_TESTCANCEL,
          "a thread with a deferred cancel pending was cancelled inside %s", call);
    check(cancel_progress != CP_PAST_TESTCANCEL && target_ret == PTHREAD_CANCELED,
          "the thread that called %s was not cancelled at pthread_testcancel()", call);
    return 0;
}

static void sec_cancel(void)
{
    static char err[16384];
    if (usable_symbol("malloc_stats", (void *)malloc_stats, L_OPTIONAL) &&
        cancel_round(CANCEL_IN_STATS, err, sizeof err) == 0 && strict_mode)
        check(strstr(err, "chunkmalloc statistics") != NULL,
              "malloc_stats() with a cancel pending wrote no statistics; stderr was: %.300s",
              err);
    if (!strict_mode) {
        note("SKIP", "free of a foreign pointer with a cancel pending (set "
                     "CONFORMANCE_EXPECT_CHUNKMALLOC=1; glibc aborts on it)");
        return;
    }
    uintptr_t addr = (uintptr_t)(static_area + 128);
    if (cancel_round(CANCEL_IN_FOREIGN_FREE, err, sizeof err) == 0)
        check(contains_hex(err, addr),
              "free() of a foreign pointer with a cancel pending did not report %p; stderr "
              "was: %.300s",
              (void *)addr, err);
}

/* ------------------------------------------------------------------------ */

static int nofork;

static void run_section(const char *name, void (*fn)(void))
{
    section_name = name;
    fflush(stdout);
    fflush(stderr);
    if (nofork) {
        fn();
        return;
    }
    pid_t pid = fork();
    if (pid < 0) {
        perror("fork");
        fn();
        return;
    }
    if (pid == 0) {
        alarm(120);
        fn();
        fflush(stdout);
        _exit(0);
    }
    int st = 0;
    while (waitpid(pid, &st, 0) < 0 && errno == EINTR)
        ;
    if (WIFSIGNALED(st))
        check(0, "section crashed with signal %d (%s)", WTERMSIG(st), strsignal(WTERMSIG(st)));
    else if (WEXITSTATUS(st) != 0)
        check(0, "section exited with status %d", WEXITSTATUS(st));
}

static int glibc_older_than_2_38(void)
{
#ifdef __GLIBC__
    int major = 0, minor = 0;
    if (sscanf(gnu_get_libc_version(), "%d.%d", &major, &minor) == 2)
        return major < 2 || (major == 2 && minor < 38);
#endif
    return 0;
}

int main(int argc, char **argv)
{
    if (argc > 1 && strcmp(argv[1], "--provider") == 0) {
        const char *p = malloc_provider();
        printf("%s\n", p ? p : "");
        return p ? 0 : 1;
    }
    setvbuf(stdout, NULL, _IOLBF, 0);
    const char *e = getenv("CONFORMANCE_EXPECT_CHUNKMALLOC");
    strict_mode = e && strcmp(e, "1") == 0;
    e = getenv("CONFORMANCE_NOFORK");
    nofork = e && strcmp(e, "1") == 0;

    S = mmap(NULL, sizeof *S, PROT_READ | PROT_WRITE, MAP_SHARED | MAP_ANONYMOUS, -1, 0);
    if (S == MAP_FAILED) {
        perror("mmap");
        return 2;
    }
    init_ref();
    const char *mal = malloc_provider();
    own_posix_memalign = same_as_malloc("posix_memalign", (void *)posix_memalign);
    own_aligned_alloc = same_as_malloc("aligned_alloc", (void *)aligned_alloc);
    own_memalign = same_as_malloc("memalign", (void *)memalign);
    own_valloc = same_as_malloc("valloc", (void *)valloc);
    own_usable = same_as_malloc("malloc_usable_size", (void *)malloc_usable_size);
    glibc_pre_2_38_active = own_aligned_alloc && mal && strstr(mal, "/libc.so") &&
                            glibc_older_than_2_38();
    jemalloc_active = mal && strstr(mal, "jemalloc") != NULL;
    printf("INFO: mode %s\n", strict_mode ? "strict (chunkmalloc)" : "generic");

    run_section("provider", sec_provider);
    run_section("malloc(0)", sec_malloc0);
    run_section("free/errno", sec_free_null_errno);
    run_section("calloc zeroing", sec_calloc_zero);
    run_section("calloc overflow", sec_calloc_overflow);
    run_section("huge malloc", sec_malloc_huge);
    run_section("realloc(NULL)", sec_realloc_null);
    run_section("realloc contents", sec_realloc_contents);
    run_section("realloc failure", sec_realloc_fail);
    run_section("reallocarray", sec_reallocarray);
    run_section("posix_memalign errors", sec_posix_memalign_errors);
    run_section("aligned allocation", sec_aligned);
    run_section("aligned_alloc bad alignment", sec_aligned_alloc_bad);
    run_section("memalign errors", sec_memalign_errors);
    run_section("valloc/pvalloc", sec_valloc_pvalloc);
    run_section("malloc_usable_size", sec_usable_size);
    run_section("free_sized", sec_free_sized);
    run_section("cfree", sec_cfree);
    run_section("__libc_* aliases", sec_libc_aliases);
    run_section("malloc_trim/mallinfo2/mallopt", sec_trim_mallinfo_mallopt);
    run_section("foreign free", sec_foreign_free);
    run_section("cancellation", sec_cancel);

    if (S->skip || S->xfail)
        printf("INFO: %ld skipped, %ld expected failures (not counted)\n", S->skip, S->xfail);
    printf("conformance: %ld passed, %ld failed\n", S->pass, S->fail);
    return S->fail ? 1 : 0;
}
