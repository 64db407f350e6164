/*
 * lifecycle.c - the allocator early and late in the life of a process and
 * of its threads.
 *
 * Build:  cc -O2 -pthread -o lifecycle lifecycle.c -ldl
 *         cc -O2 -shared -fPIC -o dl_plugin.so dl_plugin.c
 * Run:    ./lifecycle path/to/dl_plugin.so
 *
 * Sections (each block is filled with a seeded byte pattern and checked
 * before it is freed):
 *   early      malloc/calloc/realloc/posix_memalign/free from a
 *              .preinit_array function (which runs before any shared
 *              library's constructor, the preloaded allocator's included)
 *              and from a constructor; each keeps a block that main checks
 *              and frees.
 *   dlopen     blocks allocated by main before dlopen() are freed by the
 *              plugin, blocks the plugin allocates are freed by main (some
 *              after the plugin was dlclose()d); realloc both ways; strdup;
 *              the plugin's constructor/destructor allocate; 20 dlopen/
 *              dlclose cycles; dlsym/dlerror for missing symbols and files
 *              (glibc allocates the error message, older glibc callocs in
 *              dlsym itself); RTLD_DEFAULT and RTLD_NEXT look-ups.
 *   tls        threads with pthread key destructors that check, free and
 *              allocate, re-arm the key for a second round, and leave
 *              blocks that another thread frees later; a thread whose first
 *              allocation is inside dlsym/dlerror, one whose first is inside
 *              __tls_get_addr (the plugin's dynamic TLS), one whose first is
 *              in a key destructor, one that re-arms its key in every round
 *              glibc allows; _Thread_local/__thread data freed from
 *              destructors registered with __cxa_thread_atexit_impl (the
 *              hook C++ thread_local uses; skipped when libc lacks it).
 *   last-round (only with LIFECYCLE_LAST_ROUND_LEAK=1) 500 threads whose key
 *              destructor allocates in every round glibc runs, the last
 *              included; the resident set may grow by at most 8 MiB.
 *   abandoned  a thread allocates blocks and exits; main frees some of them,
 *              then 8 waves of 8 new threads (which may adopt the exited
 *              threads' heaps) free, realloc and allocate, each wave leaving
 *              blocks for the next; then 4 rounds of 16 concurrent short
 *              threads.
 *   exit       a __cxa_thread_atexit_impl destructor of the main thread, an
 *              atexit handler that registers another one while exit() runs,
 *              an atexit handler registered by the constructor, and a
 *              __attribute__((destructor)) all allocate, check and free,
 *              and pass blocks from one to the next.
 *
 * Output: "FAIL: ..." lines, then, from the destructor after every exit
 * handler has run,   lifecycle: N passed, M failed
 * Exit status 1 when M > 0 (2 for a usage error).  Messages are written
 * with write(2), so the order of lines is the order of events.
 */
#define _GNU_SOURCE
#include <dlfcn.h>
#include <errno.h>
#include <limits.h>
#include <pthread.h>
#include <stdarg.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#define TESTUTIL_SAY_BUF 600
#define TESTUTIL_CHECK_BUF 500
#include "testutil.h"

/* Called through volatile pointers so the compiler cannot pair up or drop
 * the calls. */
static void *(*volatile x_malloc)(size_t) = malloc;
static void *(*volatile x_calloc)(size_t, size_t) = calloc;
static void *(*volatile x_realloc)(void *, size_t) = realloc;
static int (*volatile x_posix_memalign)(void **, size_t, size_t) = posix_memalign;
static void (*volatile x_free)(void *) = free;

/* glibc's hook behind C++ thread_local destructors (GLIBC_2.18).  Weak, so
 * that the program still links and runs where it is missing. */
extern int __cxa_thread_atexit_impl(void (*fn)(void *), void *obj, void *dso_symbol)
    __attribute__((weak));
extern void *__dso_handle;

/* The byte pattern; dl_plugin.c has the same formula. */
static unsigned char pattern(unsigned seed, size_t i)
{
    return (unsigned char)(seed * 131u + i * 7u + (i >> 9));
}

/* The checked bytes of an n-byte block: all of the first and last 4 KiB
 * and every 251st byte in between.  Returns the index after i. */
static size_t step(size_t i, size_t n)
{
    if (i < 4096 || i + 4096 >= n)
        return i + 1;
    size_t j = i + 251;
    return j + 4096 > n ? n - 4096 : j;
}

static void fill(void *p, size_t n, unsigned seed)
{
    unsigned char *b = p;
    for (size_t i = 0; i < n; i = step(i, n))
        b[i] = pattern(seed, i);
}

/* Checks the first `keep` bytes of a block that fill() wrote `filled`
 * bytes of (what is left after realloc shrank it). */
static int intact_prefix(const void *p, size_t keep, size_t filled, unsigned seed)
{
    const unsigned char *b = p;
    if (!b)
        return 0;
    for (size_t i = 0; i < keep && i < filled; i = step(i, filled))
        if (b[i] != pattern(seed, i))
            return 0;
    return 1;
}

static int intact(const void *p, size_t n, unsigned seed)
{
    return intact_prefix(p, n, n, seed);
}

static int zeroed(const void *p, size_t n)
{
    const unsigned char *b = p;
    for (size_t i = 0; i < n; i++)
        if (b[i] != 0)
            return 0;
    return 1;
}

/* malloc(n) filled for `seed`, or NULL. */
static unsigned char *make(size_t n, unsigned seed)
{
    unsigned char *p = x_malloc(n);
    if (p)
        fill(p, n, seed);
    return p;
}

/* Checks a block made for (n, seed) and frees it; 1 when it was intact. */
static int check_free(void *p, size_t n, unsigned seed)
{
    int ok = intact(p, n, seed);
    x_free(p);
    return ok;
}

/*
 * One round of everything: malloc of sizes from 1 byte to 300 KB (3 MiB
 * with `big`, which realloc grows to 9 MiB), calloc (must be zeroed),
 * realloc growing and shrinking (contents kept), posix_memalign, all
 * checked and freed.  Safe in any context where malloc is: it prints
 * nothing.  Returns NULL, or what went wrong first.
 */
static const char *exercise_sizes(unsigned seed, int big)
{
    static const size_t sizes[] = {1, 24, 100, 1000, 5000, 40000, 300000, (size_t)3 << 20};
    enum { NS_ALL = sizeof sizes / sizeof sizes[0] };
    const unsigned NS = big ? NS_ALL : NS_ALL - 1;
    unsigned char *b[NS_ALL] = {0};
    size_t len[NS_ALL];
    const char *err = NULL;

    for (unsigned i = 0; i < NS; i++) {
        len[i] = sizes[i];
        b[i] = make(len[i], seed + i);
        if (!b[i]) {
            err = "malloc returned NULL";
            goto out;
        }
    }
    for (unsigned i = 0; i < NS; i++) {
        unsigned char *c = x_calloc(sizes[i], 1);
        if (!c) {
            err = "calloc returned NULL";
            goto out;
        }
        int z = zeroed(c, sizes[i]);
        fill(c, sizes[i], seed ^ 0x55u);
        x_free(c);
        if (!z) {
            err = "calloc memory not zeroed";
            goto out;
        }
    }
    for (unsigned i = 0; i < NS; i++) {
        size_t grow = len[i] * 3 + 5;
        unsigned char *q = x_realloc(b[i], grow);
        if (!q) {
            err = "realloc (grow) returned NULL";
            goto out;
        }
        b[i] = q;
        if (!intact(q, len[i], seed + i)) {
            err = "realloc (grow) lost contents";
            goto out;
        }
        fill(q, grow, seed + i + 1000);
        len[i] = grow;
        size_t shrink = grow / 4 + 1;
        q = x_realloc(b[i], shrink);
        if (!q) {
            err = "realloc (shrink) returned NULL";
            goto out;
        }
        b[i] = q;
        if (!intact_prefix(q, shrink, grow, seed + i + 1000)) {
            err = "realloc (shrink) lost contents";
            goto out;
        }
        fill(q, shrink, seed + i);
        len[i] = shrink;
    }
    void *a = NULL;
    if (x_posix_memalign(&a, 4096, 10000) != 0 || !a) {
        err = "posix_memalign(4096, 10000) failed";
        goto out;
    }
    int aligned = ((uintptr_t)a & 4095) == 0;
    fill(a, 10000, seed);
    int a_ok = intact(a, 10000, seed);
    x_free(a);
    if (!aligned || !a_ok) {
        err = aligned ? "posix_memalign block corrupted" : "posix_memalign block misaligned";
        goto out;
    }
    for (unsigned i = 0; i < NS; i++)
        if (!intact(b[i], len[i], seed + i)) {
            err = "block corrupted before free";
            goto out;
        }
out:
    for (unsigned i = 0; i < NS; i++)
        x_free(b[i]);
    return err;
}

/* The full round, for the process-wide contexts (before main, at exit). */
static const char *exercise(unsigned seed) { return exercise_sizes(seed, 1); }

/* Without the 3 MiB block, for the many per-thread contexts. */
static const char *exercise_light(unsigned seed) { return exercise_sizes(seed, 0); }

#define OK_OR(e) ((e) ? (e) : "ok")

/* ==========================================================================
 * early: before main.
 */
#define EARLY_KEEP 3000
static int preinit_ran, ctor_ran;
static const char *preinit_error, *ctor_error;
static unsigned char *preinit_keep, *ctor_keep;

static void preinit(int argc, char **argv, char **envp)
{
    (void)argc;
    (void)argv;
    (void)envp;
    preinit_ran = 1;
    preinit_error = exercise(7);
    preinit_keep = make(EARLY_KEEP, 8);
}
__attribute__((section(".preinit_array"), used)) static void (*const preinit_entry)(int, char **, char **) =
    preinit;

static void exit_handler_last(void);

__attribute__((constructor)) static void before_main(void)
{
    ctor_ran = 1;
    ctor_error = exercise(11);
    ctor_keep = make(EARLY_KEEP, 12);
    /* registered before main's handlers, so it runs after them */
    atexit(exit_handler_last);
}

static void test_early(void)
{
    check(preinit_ran, "early: the .preinit_array function did not run");
    check(preinit_ran && !preinit_error, "early: in .preinit_array: %s", OK_OR(preinit_error));
    check(!preinit_ran || intact(preinit_keep, EARLY_KEEP, 8),
          "early: block from .preinit_array missing or corrupted in main");
    x_free(preinit_keep);
    check(ctor_ran, "early: the constructor did not run");
    check(ctor_ran && !ctor_error, "early: in a constructor: %s", OK_OR(ctor_error));
    check(ctor_keep != NULL && intact(ctor_keep, EARLY_KEEP, 12),
          "early: block from the constructor missing or corrupted in main");
    x_free(ctor_keep);
}

/* ==========================================================================
 * dlopen
 */
struct plugin {
    void *handle;
    void (*set_reporter)(int *, int *);
    const unsigned char *(*ctor_block)(size_t *, unsigned *);
    void *(*alloc)(size_t, unsigned);
    void *(*p_calloc)(size_t, unsigned);
    int (*check_free)(void *, size_t, unsigned);
    void *(*p_realloc)(void *, size_t, unsigned, size_t, unsigned);
    char *(*p_strdup)(const char *);
    int (*tls)(unsigned);
};

static const char *plugin_path;
static struct plugin plug; /* open from test_dlopen until main's end */
static int plugin_dtor_ok, plugin_dtor_bad;

/* dlopen + dlsym of every function; 0 (with FAILs) on failure. */
static int plugin_open(struct plugin *pl, const char *where)
{
    memset(pl, 0, sizeof *pl);
    pl->handle = dlopen(plugin_path, RTLD_NOW | RTLD_LOCAL);
    if (!pl->handle) {
        const char *e = dlerror();
        check(0, "%s: dlopen(%s): %s", where, plugin_path, e ? e : "(no dlerror)");
        return 0;
    }
    int ok = 1;
#define SYM(field, name)                                                                 \
    do {                                                                                 \
        *(void **)&pl->field = dlsym(pl->handle, name);                                  \
        if (!pl->field) {                                                                \
            check(0, "%s: dlsym(%s) failed", where, name);                               \
            ok = 0;                                                                      \
        }                                                                                \
    } while (0)
    SYM(set_reporter, "dlp_set_reporter");
    SYM(ctor_block, "dlp_ctor_block");
    SYM(alloc, "dlp_alloc");
    SYM(p_calloc, "dlp_calloc");
    SYM(check_free, "dlp_check_free");
    SYM(p_realloc, "dlp_realloc");
    SYM(p_strdup, "dlp_strdup");
    SYM(tls, "dlp_tls");
#undef SYM
    if (!ok) {
        dlclose(pl->handle);
        pl->handle = NULL;
        return 0;
    }
    pl->set_reporter(&plugin_dtor_ok, &plugin_dtor_bad);
    return 1;
}

/* dlsym/dlerror/dlopen failures: the error strings are malloc'ed by libc.
 * Returns NULL or the first problem. */
static const char *dl_error_paths(void *handle)
{
    dlerror(); /* clear */
    if (dlsym(handle ? handle : RTLD_DEFAULT, "lifecycle_no_such_symbol_x") != NULL)
        return "dlsym found a symbol that does not exist";
    const char *e = dlerror();
    if (!e || !strstr(e, "lifecycle_no_such_symbol_x"))
        return "dlerror after a failed dlsym does not name the symbol";
    if (dlerror() != NULL)
        return "a second dlerror() did not return NULL";
    if (dlopen("/nonexistent-dir/libno-such-lifecycle.so", RTLD_NOW) != NULL)
        return "dlopen of a missing file succeeded";
    e = dlerror();
    if (!e || !strstr(e, "libno-such-lifecycle"))
        return "dlerror after a failed dlopen does not name the file";
    /* the same again, so libc frees the previous message */
    if (dlsym(RTLD_DEFAULT, "lifecycle_no_such_symbol_y") != NULL || dlerror() == NULL)
        return "second failed dlsym/dlerror";
    if (dlsym(RTLD_DEFAULT, "malloc") == NULL || dlsym(RTLD_DEFAULT, "free") == NULL)
        return "dlsym(RTLD_DEFAULT, malloc/free) returned NULL";
    if (dlsym(RTLD_NEXT, "pthread_create") == NULL && dlsym(RTLD_NEXT, "malloc") == NULL)
        return "dlsym(RTLD_NEXT, ...) found neither pthread_create nor malloc";
    return NULL;
}

#define DL_BLOCKS 24
static size_t dl_size(unsigned i)
{
    static const size_t s[] = {8, 40, 256, 2000, 16384, 100000, 700000, (size_t)2 << 20};
    return s[i % 8] + i;
}

static void test_dlopen(void)
{
    unsigned char *mine[DL_BLOCKS];
    void *theirs[DL_BLOCKS];

    check(!dl_error_paths(NULL), "dlopen: %s", OK_OR(dl_error_paths(NULL)));

    /* blocks main allocated before the library existed */
    for (unsigned i = 0; i < DL_BLOCKS; i++)
        mine[i] = make(dl_size(i), 300 + i);

    /* load/unload cycles; blocks from each incarnation outlive it */
    for (int cycle = 0; cycle < 20; cycle++) {
        struct plugin pl;
        if (!plugin_open(&pl, "dlopen cycle"))
            return;
        size_t n;
        unsigned seed;
        const unsigned char *cb = pl.ctor_block(&n, &seed);
        check(cb && intact(cb, n, seed), "dlopen: cycle %d: constructor block missing or corrupted", cycle);
        void *a = pl.alloc(dl_size((unsigned)cycle), 900 + (unsigned)cycle);
        char *s = pl.p_strdup("outlives the library");
        int before = plugin_dtor_ok;
        check(dlclose(pl.handle) == 0, "dlopen: cycle %d: dlclose failed", cycle);
        /* the last reference is gone, so the library was unloaded and its
         * destructor (which frees and allocates) has run */
        check(plugin_dtor_bad == 0, "dlopen: cycle %d: plugin destructor saw a corrupted block", cycle);
        check(plugin_dtor_ok == before + 1, "dlopen: cycle %d: the plugin's destructor did not run in dlclose",
              cycle);
        check(a && check_free(a, dl_size((unsigned)cycle), 900 + (unsigned)cycle),
              "dlopen: cycle %d: block from an unloaded library corrupted", cycle);
        check(s && strcmp(s, "outlives the library") == 0, "dlopen: cycle %d: strdup'ed string wrong", cycle);
        x_free(s);
    }

    if (!plugin_open(&plug, "dlopen"))
        return;
    check(!dl_error_paths(plug.handle), "dlopen (handle): %s", OK_OR(dl_error_paths(plug.handle)));

    /* plugin frees main's blocks; main frees the plugin's */
    for (unsigned i = 0; i < DL_BLOCKS; i++) {
        if (i % 3 == 0) {
            check(mine[i] && plug.check_free(mine[i], dl_size(i), 300 + i),
                  "dlopen: main's block %u (%zu bytes) corrupted when the plugin freed it", i, dl_size(i));
            mine[i] = NULL;
        } else if (i % 3 == 1 && mine[i]) {
            /* the plugin reallocs main's block: grow to 3x */
            void *q = plug.p_realloc(mine[i], dl_size(i), 300 + i, dl_size(i) * 3, 600 + i);
            check(q != NULL, "dlopen: plugin realloc of main's block %u failed or lost contents", i);
            mine[i] = q;
        }
        theirs[i] = (i & 1) ? plug.p_calloc(dl_size(i), 400 + i) : plug.alloc(dl_size(i), 400 + i);
        check(theirs[i] != NULL, "dlopen: plugin %s(%zu) failed", (i & 1) ? "calloc" : "malloc", dl_size(i));
    }
    for (unsigned i = 0; i < DL_BLOCKS; i++) {
        if (i % 3 == 1 && mine[i]) {
            check(check_free(mine[i], dl_size(i) * 3, 600 + i), "dlopen: block %u reallocated by the plugin corrupted", i);
        } else if (i % 3 == 2 && mine[i]) {
            check(check_free(mine[i], dl_size(i), 300 + i), "dlopen: main's block %u corrupted", i);
        }
        if (!theirs[i])
            continue;
        if (i % 2 == 0) {
            /* main reallocs the plugin's block (shrink), then frees it */
            unsigned char *q = x_realloc(theirs[i], dl_size(i) / 2 + 1);
            check(q && intact_prefix(q, dl_size(i) / 2 + 1, dl_size(i), 400 + i),
                  "dlopen: realloc of the plugin's block %u lost contents", i);
            x_free(q ? q : theirs[i]);
        } else {
            check(check_free(theirs[i], dl_size(i), 400 + i), "dlopen: the plugin's block %u corrupted", i);
        }
    }
    char *s = plug.p_strdup("strdup inside a dlopen()ed library");
    check(s && strcmp(s, "strdup inside a dlopen()ed library") == 0, "dlopen: strdup result wrong");
    x_free(s);
    check(plug.tls(1), "dlopen: main thread's dynamic TLS not zero at first use");
    check(plug.tls(2), "dlopen: main thread's dynamic TLS lost its contents");
}

/* ==========================================================================
 * tls: thread-exit destructors.
 */
enum {
    T_FULL = 6,                     /* threads that do everything */
    T_DL_FIRST = T_FULL,            /* first allocation inside dlsym/dlerror */
    T_TLS_FIRST,                    /* first allocation inside __tls_get_addr */
    T_KEY_FIRST,                    /* first allocation in a key destructor */
    T_MAX_ROUNDS,                   /* re-arms its key in every round */
    T_NONE,                         /* never allocates */
    T_COUNT
};
#define LEFT_SIZE 5000
#define LEFT_SLOTS 4
#define KV_DATA 200

struct keyval {
    int id, round;
    unsigned char data[KV_DATA];
};

static pthread_key_t key_main, key_lazy, key_rounds;
static unsigned char *left[T_COUNT][LEFT_SLOTS]; /* made by destructors, freed by another thread */
static size_t left_size[T_COUNT][LEFT_SLOTS];
static int key_main_calls[T_COUNT], key_lazy_calls[T_COUNT], key_rounds_calls[T_COUNT];
static int cxa_calls[T_COUNT];
static void *plugin_blocks[T_COUNT];
static int have_cxa;

static _Thread_local struct {
    int id;
    unsigned char *blk;
    size_t n;
} tl_obj;
static __thread unsigned tl_seed;

static unsigned left_seed(int id, int slot) { return 7000u + (unsigned)id * 10u + (unsigned)slot; }

static void leave(int id, int slot, size_t n, int use_calloc)
{
    unsigned char *p = use_calloc ? x_calloc(n, 1) : x_malloc(n);
    check(p != NULL, "tls: thread %d: allocation in a destructor returned NULL", id);
    if (p && use_calloc)
        check(zeroed(p, n), "tls: thread %d: calloc in a destructor not zeroed", id);
    if (p)
        fill(p, n, left_seed(id, slot));
    left[id][slot] = p;
    left_size[id][slot] = n;
}

static struct keyval *new_keyval(int id, int round)
{
    struct keyval *kv = x_malloc(sizeof *kv);
    if (kv) {
        kv->id = id;
        kv->round = round;
        fill(kv->data, KV_DATA, (unsigned)(id * 16 + round));
    }
    return kv;
}

static void key_main_dtor(void *v)
{
    struct keyval *kv = v;
    int id = kv->id;
    check(intact(kv->data, KV_DATA, (unsigned)(id * 16 + kv->round)),
          "tls: thread %d: key value corrupted in its destructor (round %d)", id, kv->round);
    const char *e = exercise_light(100u + (unsigned)id);
    check(!e, "tls: thread %d: in a key destructor: %s", id, OK_OR(e));
    if (kv->round == 0) {
        leave(id, 0, LEFT_SIZE, 0);
        /* a second destructor round */
        struct keyval *next = new_keyval(id, 1);
        check(next && pthread_setspecific(key_main, next) == 0, "tls: thread %d: re-arming the key failed", id);
    } else {
        leave(id, 1, LEFT_SIZE * 3, 1);
    }
    __atomic_add_fetch(&key_main_calls[id], 1, __ATOMIC_RELAXED);
    x_free(kv);
}

static void key_lazy_dtor(void *v)
{
    int id = (int)(intptr_t)v;
    const char *e = exercise_light(200u + (unsigned)id);
    check(!e, "tls: thread %d: first allocation in a key destructor: %s", id, OK_OR(e));
    leave(id, 2, LEFT_SIZE + 17, 0);
    __atomic_add_fetch(&key_lazy_calls[id], 1, __ATOMIC_RELAXED);
}

/* Re-arms itself in every round: the last allocation happens in the last
 * round glibc runs, after which no destructor runs again. */
static void key_rounds_dtor(void *v)
{
    struct keyval *kv = v;
    int id = kv->id;
    check(intact(kv->data, KV_DATA, (unsigned)(id * 16 + kv->round)),
          "tls: thread %d: key value corrupted in round %d", id, kv->round);
    int calls = __atomic_add_fetch(&key_rounds_calls[id], 1, __ATOMIC_RELAXED);
    if (kv->round + 1 < PTHREAD_DESTRUCTOR_ITERATIONS) {
        struct keyval *next = new_keyval(id, kv->round + 1);
        check(next != NULL, "tls: thread %d: malloc in destructor round %d failed", id, kv->round);
        if (next && pthread_setspecific(key_rounds, next) != 0)
            x_free(next);
    }
    x_free(kv);
    /* whatever round is the last, leave a block from it */
    x_free(left[id][3]);
    left[id][3] = NULL;
    leave(id, 3, 100u + (size_t)calls * 1000u, calls & 1);
}

static void cxa_dtor(void *arg)
{
    int id = (int)(intptr_t)arg;
    check(tl_obj.id == id, "tls: thread %d: _Thread_local object wrong in its destructor (%d)", id, tl_obj.id);
    check(tl_seed == 5000u + (unsigned)id, "tls: thread %d: __thread variable wrong in a TLS destructor", id);
    check(tl_obj.blk && intact(tl_obj.blk, tl_obj.n, tl_seed),
          "tls: thread %d: block held by a _Thread_local object corrupted", id);
    x_free(tl_obj.blk);
    tl_obj.blk = NULL;
    const char *e = exercise_light(300u + (unsigned)id);
    check(!e, "tls: thread %d: in a __cxa_thread_atexit_impl destructor: %s", id, OK_OR(e));
    __atomic_add_fetch(&cxa_calls[id], 1, __ATOMIC_RELAXED);
}

static void *tls_thread(void *arg)
{
    int id = (int)(intptr_t)arg;
    if (id == T_NONE) {
        /* no allocation at all (pthread_setspecific of a low key does not
         * allocate) */
        pthread_setspecific(key_lazy, NULL);
        return NULL;
    }
    if (id == T_KEY_FIRST) {
        pthread_setspecific(key_lazy, (void *)(intptr_t)id);
        return NULL;
    }
    if (id == T_TLS_FIRST) {
        if (!plug.handle)
            return NULL;
        check(plug.tls(10u + (unsigned)id), "tls: thread %d: dynamic TLS not zero at first use", id);
        check(plug.tls(11u + (unsigned)id), "tls: thread %d: dynamic TLS lost its contents", id);
        return NULL;
    }
    if (id == T_DL_FIRST) {
        const char *e = dl_error_paths(NULL);
        check(!e, "tls: thread %d: first allocation in dlsym/dlerror: %s", id, OK_OR(e));
        return NULL;
    }
    if (id == T_MAX_ROUNDS) {
        struct keyval *kv = new_keyval(id, 0);
        check(kv && pthread_setspecific(key_rounds, kv) == 0, "tls: thread %d: setting the key failed", id);
        return NULL;
    }

    /* T_FULL threads: the first allocation is the failing dlsym's message */
    const char *e = dl_error_paths(plug.handle);
    check(!e, "tls: thread %d: %s", id, OK_OR(e));
    e = exercise_light(400u + (unsigned)id);
    check(!e, "tls: thread %d: %s", id, OK_OR(e));
    struct keyval *kv = new_keyval(id, 0);
    check(kv && pthread_setspecific(key_main, kv) == 0, "tls: thread %d: setting the key failed", id);
    tl_obj.id = id;
    tl_seed = 5000u + (unsigned)id;
    tl_obj.n = 3000 + (size_t)id * 1000;
    tl_obj.blk = make(tl_obj.n, tl_seed);
    if (have_cxa) {
        int r = __cxa_thread_atexit_impl(cxa_dtor, (void *)(intptr_t)id, &__dso_handle);
        check(r == 0, "tls: thread %d: __cxa_thread_atexit_impl returned %d", id, r);
    } else {
        x_free(tl_obj.blk);
        tl_obj.blk = NULL;
    }
    if (plug.handle) {
        for (unsigned k = 0; k < 3; k++)
            check(plug.tls(20u + (unsigned)id * 4 + k), "tls: thread %d: dynamic TLS check %u", id, k);
        plugin_blocks[id] = plug.alloc(dl_size((unsigned)id), 8000u + (unsigned)id);
        check(plugin_blocks[id] != NULL, "tls: thread %d: plugin allocation failed", id);
    }
    return NULL;
}

static void *free_left_thread(void *arg)
{
    (void)arg;
    for (int id = 0; id < T_COUNT; id++) {
        for (int s = 0; s < LEFT_SLOTS; s++) {
            if (!left[id][s])
                continue;
            check(intact(left[id][s], left_size[id][s], left_seed(id, s)),
                  "tls: block left by thread %d's destructor (slot %d) corrupted", id, s);
            x_free(left[id][s]);
            left[id][s] = NULL;
        }
        if (plugin_blocks[id]) {
            check(check_free(plugin_blocks[id], dl_size((unsigned)id), 8000u + (unsigned)id),
                  "tls: plugin block of thread %d corrupted", id);
            plugin_blocks[id] = NULL;
        }
    }
    return NULL;
}

static void test_tls(void)
{
    have_cxa = __cxa_thread_atexit_impl != NULL;
    if (!have_cxa)
        say("note: __cxa_thread_atexit_impl not available; its checks are skipped\n");
    check(pthread_key_create(&key_main, key_main_dtor) == 0 &&
              pthread_key_create(&key_lazy, key_lazy_dtor) == 0 &&
              pthread_key_create(&key_rounds, key_rounds_dtor) == 0,
          "tls: pthread_key_create failed");

    for (int rep = 0; rep < 3; rep++) {
        pthread_t t[T_COUNT];
        memset(key_main_calls, 0, sizeof key_main_calls);
        memset(key_lazy_calls, 0, sizeof key_lazy_calls);
        memset(key_rounds_calls, 0, sizeof key_rounds_calls);
        memset(cxa_calls, 0, sizeof cxa_calls);
        int started[T_COUNT] = {0};
        for (int id = 0; id < T_COUNT; id++) {
            int r = pthread_create(&t[id], NULL, tls_thread, (void *)(intptr_t)id);
            check(r == 0, "tls: pthread_create: %s", strerror(r));
            started[id] = r == 0;
        }
        for (int id = 0; id < T_COUNT; id++)
            if (started[id])
                pthread_join(t[id], NULL);
        for (int id = 0; id < T_FULL; id++) {
            check(key_main_calls[id] == 2, "tls: rep %d thread %d: key destructor ran %d times, want 2", rep, id,
                  key_main_calls[id]);
            if (have_cxa)
                check(cxa_calls[id] == 1, "tls: rep %d thread %d: TLS destructor ran %d times, want 1", rep, id,
                      cxa_calls[id]);
        }
        check(key_lazy_calls[T_KEY_FIRST] == 1, "tls: rep %d: lazy key destructor ran %d times, want 1", rep,
              key_lazy_calls[T_KEY_FIRST]);
        check(key_lazy_calls[T_NONE] == 0, "tls: rep %d: destructor ran for a NULL key value", rep);
        check(key_rounds_calls[T_MAX_ROUNDS] == PTHREAD_DESTRUCTOR_ITERATIONS,
              "tls: rep %d: re-armed key destructor ran %d times, want %d", rep, key_rounds_calls[T_MAX_ROUNDS],
              PTHREAD_DESTRUCTOR_ITERATIONS);

        /* another thread frees what the destructors left */
        pthread_t f;
        if (pthread_create(&f, NULL, free_left_thread, NULL) == 0)
            pthread_join(f, NULL);
        else
            check(0, "tls: pthread_create of the freeing thread failed");
    }
}

/* ==========================================================================
 * last-round (optional, LIFECYCLE_LAST_ROUND_LEAK=1): a key destructor that
 * allocates in every destructor round glibc runs, the last included, must
 * not make each exiting thread leak memory.  An allocator that hooks thread
 * exit with its own key may be re-armed by that last allocation when no
 * round is left to run its destructor.  500 threads, one at a time, each
 * leave one small block (freed by main) and touch seven size classes in
 * every round; the resident set may not grow by more than 8 MiB.
 */
#define LR_THREADS 500
static pthread_key_t key_last;
static void *lr_keep[LR_THREADS];
static int lr_index; /* the thread running now; threads run one at a time */


static void key_last_dtor(void *v)
{
    static const size_t sizes[] = {16, 48, 128, 512, 2048, 8192, 30000};
    long round = (long)(intptr_t)v; /* 1, 2, ... */
    for (unsigned i = 0; i < sizeof sizes / sizeof sizes[0]; i++)
        x_free(make(sizes[i], (unsigned)round + i));
    if (round < PTHREAD_DESTRUCTOR_ITERATIONS) {
        pthread_setspecific(key_last, (void *)(intptr_t)(round + 1));
    } else {
        x_free(lr_keep[lr_index]);
        lr_keep[lr_index] = make(100, 60000u + (unsigned)lr_index);
    }
}

static void *last_round_thread(void *arg)
{
    (void)arg;
    x_free(make(64, 1));
    pthread_setspecific(key_last, (void *)(intptr_t)1);
    return NULL;
}

static void run_last_round_threads(int from, int to)
{
    for (lr_index = from; lr_index < to; lr_index++) {
        pthread_t t;
        if (pthread_create(&t, NULL, last_round_thread, NULL) != 0) {
            check(0, "last-round: pthread_create failed");
            return;
        }
        pthread_join(t, NULL);
    }
}

static void test_last_round(void)
{
    const char *env = getenv("LIFECYCLE_LAST_ROUND_LEAK");
    if (!env || strcmp(env, "1") != 0) {
        say("note: last-round leak check skipped (set LIFECYCLE_LAST_ROUND_LEAK=1)\n");
        return;
    }
    if (pthread_key_create(&key_last, key_last_dtor) != 0) {
        check(0, "last-round: pthread_key_create failed");
        return;
    }
    run_last_round_threads(0, 20); /* warm-up: stacks, caches */
    long before = rss_kib();
    run_last_round_threads(20, LR_THREADS);
    int intact_all = 1;
    for (int i = 0; i < LR_THREADS; i++) {
        if (lr_keep[i] && !intact(lr_keep[i], 100, 60000u + (unsigned)i))
            intact_all = 0;
        x_free(lr_keep[i]);
        lr_keep[i] = NULL;
    }
    check(intact_all, "last-round: a block allocated in the last destructor round was corrupted");
    long after = rss_kib();
    if (before < 0 || after < 0) {
        say("note: /proc/self/statm unreadable; last-round leak check skipped\n");
        return;
    }
    check(after - before <= 8192,
          "last-round: resident set grew by %ld KiB over %d threads whose key destructor allocates in the "
          "last of %d rounds (a heap leaked per thread?)",
          after - before, LR_THREADS - 20, PTHREAD_DESTRUCTOR_ITERATIONS);
}

/* ==========================================================================
 * abandoned: blocks of exited threads, adoption.
 */
#define AB_BLOCKS 240
#define WAVES 8
#define PER_WAVE 8
#define WAVE_KEEP 12

static unsigned char *ab_blk[AB_BLOCKS];
static size_t ab_len[AB_BLOCKS];
static unsigned ab_seed[AB_BLOCKS];
static unsigned char *wave_blk[2][PER_WAVE][WAVE_KEEP];
static size_t wave_len[2][PER_WAVE][WAVE_KEEP];

static size_t ab_size(unsigned i)
{
    static const size_t s[] = {8, 48, 200, 1500, 9000, 70000, 520000, (size_t)5 << 18};
    if (i == 7)
        return (size_t)9 << 20;
    return s[i % 8] + (i * 13) % 97;
}

static unsigned wave_seed(int w, int t, int k) { return 20000u + (unsigned)(w * 1000 + t * 50 + k); }

static void *abandoning_thread(void *arg)
{
    (void)arg;
    for (unsigned i = 0; i < AB_BLOCKS; i++) {
        size_t n = ab_size(i);
        unsigned char *p = (i & 1) ? x_calloc(1, n) : x_malloc(n);
        check(p != NULL, "abandoned: allocation of %zu bytes failed", n);
        if (!p)
            continue;
        if (i & 1)
            check(zeroed(p, n), "abandoned: calloc(%zu) not zeroed", n);
        fill(p, n, 10000u + i);
        if (i % 10 == 3) {
            unsigned char *q = x_realloc(p, n * 2 + 1);
            check(q && intact(q, n, 10000u + i), "abandoned: realloc in the exiting thread lost contents");
            if (!q) {
                x_free(p);
                continue;
            }
            p = q;
            n = n * 2 + 1;
            fill(p, n, 10000u + i);
        }
        ab_blk[i] = p;
        ab_len[i] = n;
        ab_seed[i] = 10000u + i;
    }
    return NULL;
}

struct wave_arg {
    int wave, t;
};

static void *wave_thread(void *arg)
{
    const struct wave_arg *wa = arg;
    int w = wa->wave, t = wa->t, cur = w & 1, prev = cur ^ 1;

    /* blocks of the exited first thread: free (wave 0) or realloc (wave 0)
     * then free (wave 1) */
    for (unsigned i = 0; i < AB_BLOCKS; i++) {
        if ((int)((i / 4) % PER_WAVE) != t || !ab_blk[i])
            continue;
        if (w == 0 && i % 4 == 1) {
            check(check_free(ab_blk[i], ab_len[i], ab_seed[i]), "abandoned: block %u corrupted (wave 0 free)", i);
            ab_blk[i] = NULL;
        } else if (w == 0 && i % 4 == 2) {
            size_t n = ab_len[i] + ab_len[i] / 2 + 33;
            unsigned char *q = x_realloc(ab_blk[i], n);
            check(q && intact(q, ab_len[i], ab_seed[i]), "abandoned: realloc of block %u lost contents", i);
            if (q) {
                ab_seed[i] += 77;
                fill(q, n, ab_seed[i]);
                ab_blk[i] = q;
                ab_len[i] = n;
            }
        } else if (w == 1 && i % 4 == 2) {
            check(check_free(ab_blk[i], ab_len[i], ab_seed[i]), "abandoned: reallocated block %u corrupted", i);
            ab_blk[i] = NULL;
        }
    }
    /* blocks the previous wave's thread t left behind */
    if (w > 0) {
        for (int k = 0; k < WAVE_KEEP; k++) {
            unsigned char *p = wave_blk[prev][t][k];
            check(check_free(p, wave_len[prev][t][k], wave_seed(w - 1, t, k)),
                  "abandoned: block from wave %d thread %d corrupted", w - 1, t);
            wave_blk[prev][t][k] = NULL;
        }
    }
    /* our own churn; keep a few for the next wave */
    enum { OWN = 60 };
    unsigned char *own[OWN];
    size_t len[OWN];
    for (int k = 0; k < OWN; k++) {
        len[k] = ab_size((unsigned)(k * 7 + w + t));
        if (len[k] > 100000 && k != 0)
            len[k] /= 32;
        own[k] = make(len[k], wave_seed(w, t, k));
        check(own[k] != NULL, "abandoned: wave %d thread %d: malloc(%zu) failed", w, t, len[k]);
    }
    for (int k = OWN - 1; k >= WAVE_KEEP; k--)
        check(own[k] == NULL || check_free(own[k], len[k], wave_seed(w, t, k)),
              "abandoned: wave %d thread %d: own block corrupted", w, t);
    for (int k = 0; k < WAVE_KEEP; k++) {
        wave_blk[cur][t][k] = own[k];
        wave_len[cur][t][k] = len[k];
    }
    if (t == 0) {
        const char *e = exercise_light(30000u + (unsigned)w);
        check(!e, "abandoned: wave %d: %s", w, OK_OR(e));
    }
    return NULL;
}

static void *churn_thread(void *arg)
{
    unsigned seed = (unsigned)(uintptr_t)arg;
    unsigned char *ring[16] = {0};
    size_t len[16] = {0};
    for (unsigned op = 0; op < 400; op++) {
        unsigned i = op % 16;
        if (ring[i])
            check(check_free(ring[i], len[i], seed + op - 16), "abandoned: churn block corrupted");
        len[i] = ab_size(op * 5 + seed) % 20000 + 1;
        ring[i] = make(len[i], seed + op);
    }
    for (unsigned i = 0; i < 16; i++)
        x_free(ring[i]);
    return NULL;
}

static void test_abandoned(void)
{
    pthread_t a;
    if (pthread_create(&a, NULL, abandoning_thread, NULL) != 0) {
        check(0, "abandoned: pthread_create failed");
        return;
    }
    pthread_join(a, NULL);

    /* the owner is gone; main frees a quarter */
    for (unsigned i = 0; i < AB_BLOCKS; i += 4) {
        check(ab_blk[i] && check_free(ab_blk[i], ab_len[i], ab_seed[i]),
              "abandoned: block %u of an exited thread corrupted (freed by main)", i);
        ab_blk[i] = NULL;
    }

    for (int w = 0; w < WAVES; w++) {
        pthread_t t[PER_WAVE];
        struct wave_arg args[PER_WAVE];
        int started[PER_WAVE];
        for (int k = 0; k < PER_WAVE; k++) {
            args[k].wave = w;
            args[k].t = k;
            started[k] = pthread_create(&t[k], NULL, wave_thread, &args[k]) == 0;
            check(started[k], "abandoned: pthread_create in wave %d failed", w);
        }
        for (int k = 0; k < PER_WAVE; k++)
            if (started[k])
                pthread_join(t[k], NULL);
    }
    int last = (WAVES - 1) & 1;
    for (int t = 0; t < PER_WAVE; t++)
        for (int k = 0; k < WAVE_KEEP; k++) {
            if (wave_blk[last][t][k])
                check(check_free(wave_blk[last][t][k], wave_len[last][t][k], wave_seed(WAVES - 1, t, k)),
                      "abandoned: block from the last wave corrupted");
            wave_blk[last][t][k] = NULL;
        }
    for (unsigned i = 0; i < AB_BLOCKS; i++) {
        if (!ab_blk[i])
            continue;
        check(i % 4 == 3, "abandoned: block %u was not freed by the waves", i);
        check(check_free(ab_blk[i], ab_len[i], ab_seed[i]), "abandoned: block %u corrupted after the waves", i);
        ab_blk[i] = NULL;
    }

    /* concurrent short-lived threads */
    for (int round = 0; round < 4; round++) {
        pthread_t t[16];
        int started[16];
        for (int k = 0; k < 16; k++)
            started[k] = pthread_create(&t[k], NULL, churn_thread, (void *)(uintptr_t)(round * 1000 + k * 37)) == 0;
        for (int k = 0; k < 16; k++)
            if (started[k])
                pthread_join(t[k], NULL);
    }
    const char *e = exercise(40000);
    check(!e, "abandoned: main after the waves: %s", OK_OR(e));
}

/* ==========================================================================
 * exit: after main returns.
 */
static int main_tls_dtor_runs, exit_handler_runs, exit_nested_runs, exit_last_runs;
static unsigned char *main_leftover, *from_tls_dtor, *from_exit_handler, *from_exit_last;
#define LATE_SIZE 6000

static void main_tls_dtor(void *arg)
{
    (void)arg;
    main_tls_dtor_runs++;
    const char *e = exercise(50000);
    check(!e, "exit: in the main thread's TLS destructor: %s", OK_OR(e));
    from_tls_dtor = make(LATE_SIZE, 50001);
}

static void exit_handler_nested(void)
{
    exit_nested_runs++;
    const char *e = exercise(51000);
    check(!e, "exit: in an atexit handler registered during exit: %s", OK_OR(e));
}

static void exit_handler(void)
{
    exit_handler_runs++;
    check(!__cxa_thread_atexit_impl || main_tls_dtor_runs == 1,
          "exit: the main thread's TLS destructor had not run before atexit handlers");
    check(main_leftover && check_free(main_leftover, LATE_SIZE, 52000), "exit: block main left corrupted");
    main_leftover = NULL;
    const char *e = exercise(52001);
    check(!e, "exit: in an atexit handler: %s", OK_OR(e));
    from_exit_handler = make(LATE_SIZE * 10, 52002);
    check(atexit(exit_handler_nested) == 0, "exit: atexit() inside an exit handler failed");
}

static void exit_handler_last(void)
{
    exit_last_runs++;
    check(exit_handler_runs == 1 && exit_nested_runs == 1,
          "exit: the constructor's atexit handler ran before main's (%d, %d)", exit_handler_runs,
          exit_nested_runs);
    check(from_exit_handler && intact(from_exit_handler, LATE_SIZE * 10, 52002),
          "exit: block from the atexit handler corrupted");
    unsigned char *q = from_exit_handler ? x_realloc(from_exit_handler, LATE_SIZE * 20) : NULL;
    check(q && intact(q, LATE_SIZE * 10, 52002), "exit: realloc in the last atexit handler lost contents");
    x_free(q ? q : from_exit_handler);
    from_exit_handler = NULL;
    from_exit_last = make(LATE_SIZE, 53000);
}

__attribute__((destructor)) static void after_everything(void)
{
    if (!plugin_path) /* usage error: main did not run the tests */
        return;
    check(!__cxa_thread_atexit_impl || main_tls_dtor_runs == 1, "exit: main thread TLS destructor ran %d times",
          main_tls_dtor_runs);
    check(exit_handler_runs == 1 && exit_nested_runs == 1 && exit_last_runs == 1,
          "exit: atexit handlers ran %d/%d/%d times, want 1/1/1", exit_handler_runs, exit_nested_runs,
          exit_last_runs);
    if (__cxa_thread_atexit_impl)
        check(from_tls_dtor && check_free(from_tls_dtor, LATE_SIZE, 50001),
              "exit: block from the main thread's TLS destructor corrupted");
    check(from_exit_last && check_free(from_exit_last, LATE_SIZE, 53000),
          "exit: block from the last atexit handler corrupted");
    const char *e = exercise(54000);
    check(!e, "exit: in a destructor: %s", OK_OR(e));
    char *s = strdup("late strdup");
    check(s && strcmp(s, "late strdup") == 0, "exit: strdup in a destructor");
    free(s);

    long p = __atomic_load_n(&n_passed, __ATOMIC_RELAXED);
    long f = __atomic_load_n(&n_failed, __ATOMIC_RELAXED);
    say("lifecycle: %ld passed, %ld failed\n", p, f);
    if (f > 0)
        _exit(1);
}

static void prepare_exit(void)
{
    main_leftover = make(LATE_SIZE, 52000);
    if (__cxa_thread_atexit_impl)
        check(__cxa_thread_atexit_impl(main_tls_dtor, NULL, &__dso_handle) == 0,
              "exit: __cxa_thread_atexit_impl in the main thread failed");
    check(atexit(exit_handler) == 0, "exit: atexit failed");
}

int main(int argc, char **argv)
{
    if (argc != 2) {
        fprintf(stderr, "usage: %s path/to/dl_plugin.so\n", argv[0]);
        return 2;
    }
    plugin_path = argv[1];

    test_early();
    test_dlopen();
    test_tls();
    test_last_round();
    test_abandoned();
    if (plug.handle) {
        check(dlclose(plug.handle) == 0, "dlopen: final dlclose failed");
        plug.handle = NULL;
        check(plugin_dtor_bad == 0, "dlopen: the plugin's destructor saw a corrupted block");
    }
    prepare_exit();
    return 0;
}
