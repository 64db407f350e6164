/*
 * stress.c - multi-threaded allocator stress test with cross-thread frees.
 *
 * Build:  cc -O2 -pthread -o stress stress.c
 * Run:    ./stress [threads (default 8)] [operations per thread (default 150000)]
 *
 * Every thread allocates objects of log-uniformly distributed sizes between
 * 1 B and 1 MiB (so small sizes dominate), with malloc, calloc or
 * posix_memalign, and fills them with a pattern derived from (thread id,
 * sequence number, size).  About half of the objects it retires are handed to
 * another thread through that thread's mutex-protected inbox; the receiver
 * checks the pattern and frees the object.  The rest are checked and freed by
 * their owner.  Some live objects are resized with realloc, which must keep
 * the common prefix.
 *
 * What is checked of an object: all of it up to 1 KiB; above that the first
 * and last 64 bytes plus 16-byte windows at pseudo-random offsets, one per
 * 4 KiB page for objects up to 128 KiB and 32 spread evenly over bigger ones.
 * The first 8 bytes hold the 64-bit pattern key itself.
 *
 * Output: "FAIL: ..." lines for the first corruptions found, then
 *         stress: N passed, M failed
 * where N counts objects verified.  Exit status is non-zero when M > 0.
 * The PRNG (xorshift64) is seeded per thread, so a run is repeatable up to
 * thread interleaving.
 */
#define _GNU_SOURCE
#include <errno.h>
#include <pthread.h>
#include <sched.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "testutil.h"

#define MAX_THREADS 256
#define LOCAL_CAP 64
#define INBOX_CAP 1024
#define MAX_LOG2 20 /* sizes up to 1 MiB */
#define MAX_REPORTS 20
#define WINDOWS 32 /* sampled 16-byte windows in the middle of big objects */

/* Called through volatile pointers so the compiler cannot reason about them. */
static void *(*volatile x_malloc)(size_t) = malloc;
static void *(*volatile x_calloc)(size_t, size_t) = calloc;
static void *(*volatile x_realloc)(void *, size_t) = realloc;
static void (*volatile x_free)(void *) = free;
static int (*volatile x_posix_memalign)(void **, size_t, size_t) = posix_memalign;

struct obj {
    unsigned char *p;
    size_t size;
    uint64_t seq;
    unsigned tid;
};

struct inbox {
    pthread_mutex_t lock;
    size_t head, count;
    struct obj items[INBOX_CAP];
};

struct worker {
    unsigned id;
    uint64_t rng;
    uint64_t seq;
    long verified, failed;
    pthread_t thread;
};

static unsigned nthreads = 8;
static long nops = 150000;
static struct inbox *inboxes;
static struct worker *workers;
static pthread_barrier_t start_barrier;
static int finished; /* threads done sending, atomic */
static int reports;  /* failure lines printed, atomic */

static uint64_t key_of(unsigned tid, uint64_t seq, size_t size)
{
    uint64_t z = ((uint64_t)tid << 48) ^ (seq * 0x9E3779B97F4A7C15ull) ^ ((uint64_t)size << 20);
    z = (z ^ (z >> 30)) * 0xBF58476D1CE4E5B9ull;
    z = (z ^ (z >> 27)) * 0x94D049BB133111EBull;
    return z ^ (z >> 31);
}

static inline unsigned char pat(uint64_t key, size_t i)
{
    return (unsigned char)((unsigned char)(key >> ((i & 7) * 8)) + (unsigned char)((i >> 3) * 0x3B));
}

/*
 * Visit the checked regions of an object of `size` bytes that lie below
 * `limit`.  mode 0 writes the pattern, mode 1 verifies it, mode 2 verifies
 * zeroes.  Returns the first bad offset, or SIZE_MAX when all is well.
 */
static size_t span(unsigned char *p, size_t size, uint64_t key, size_t limit, int mode)
{
    size_t ranges[2 * (WINDOWS + 4)];
    int nr = 0;
    if (size <= 1024) {
        ranges[nr++] = 0;
        ranges[nr++] = size;
    } else {
        ranges[nr++] = 0;
        ranges[nr++] = 64;
        /* up to WINDOWS 16-byte windows spread over the middle, one per
         * 4 KiB page for objects of up to WINDOWS pages */
        size_t step = (size + WINDOWS - 1) / WINDOWS;
        if (step < 4096)
            step = 4096;
        for (size_t j = 0;; j++) {
            size_t w = j * step + (size_t)((key >> 16) + j * 977) % (step - 96);
            if (w < 64)
                w = 64;
            if (w + 16 > size - 64)
                break;
            ranges[nr++] = w;
            ranges[nr++] = w + 16;
        }
        ranges[nr++] = size - 64;
        ranges[nr++] = size;
    }
    for (int r = 0; r < nr; r += 2) {
        size_t a = ranges[r], b = ranges[r + 1];
        if (b > limit)
            b = limit;
        for (size_t i = a; i < b; i++) {
            if (mode == 0)
                p[i] = pat(key, i);
            else if (p[i] != (mode == 1 ? pat(key, i) : 0))
                return i;
        }
    }
    return SIZE_MAX;
}

static void report(struct worker *w, const char *what, const struct obj *o, size_t off)
{
    w->failed++;
    if (__atomic_fetch_add(&reports, 1, __ATOMIC_RELAXED) >= MAX_REPORTS)
        return;
    if (off == SIZE_MAX)
        printf("FAIL: thread %u: %s (object seq %llu of thread %u, size %zu)\n", w->id, what,
               (unsigned long long)o->seq, o->tid, o->size);
    else
        printf("FAIL: thread %u: %s: object seq %llu of thread %u, size %zu, at %p, offset %zu: "
               "got 0x%02x want 0x%02x\n",
               w->id, what, (unsigned long long)o->seq, o->tid, o->size, (void *)o->p, off,
               o->p[off], pat(key_of(o->tid, o->seq, o->size), off));
    fflush(stdout);
}

static void verify_and_free(struct worker *w, struct obj *o)
{
    size_t bad = span(o->p, o->size, key_of(o->tid, o->seq, o->size), o->size, 1);
    if (bad != SIZE_MAX)
        report(w, "pattern corrupted", o, bad);
    else
        w->verified++;
    x_free(o->p);
}

static size_t random_size(struct worker *w)
{
    unsigned b = (unsigned)(xorshift(&w->rng) % (MAX_LOG2 + 1)); /* 0 ..= 20 */
    size_t base = (size_t)1 << b;
    size_t s = base + (size_t)(xorshift(&w->rng) % base);
    return s > ((size_t)1 << MAX_LOG2) ? ((size_t)1 << MAX_LOG2) : s;
}

static int new_object(struct worker *w, struct obj *o)
{
    size_t size = random_size(w);
    unsigned kind = (unsigned)(xorshift(&w->rng) % 20);
    unsigned char *p = NULL;
    o->size = size;
    o->tid = w->id;
    o->seq = w->seq++;
    if (kind == 0) {
        p = x_calloc(1, size);
        o->p = p;
        if (p) {
            size_t bad = span(p, size, 0, size, 2);
            if (bad != SIZE_MAX)
                report(w, "calloc memory not zeroed", o, SIZE_MAX);
        }
    } else if (kind == 1) {
        size_t align = (size_t)1 << (4 + xorshift(&w->rng) % 9); /* 16 .. 4096 */
        void *q = NULL;
        if (x_posix_memalign(&q, align, size) != 0)
            q = NULL;
        p = q;
        o->p = p;
        if (p && ((uintptr_t)p & (align - 1)) != 0)
            report(w, "posix_memalign result misaligned", o, SIZE_MAX);
    } else {
        p = x_malloc(size);
        o->p = p;
    }
    if (!p) {
        report(w, "allocation returned NULL", o, SIZE_MAX);
        return 0;
    }
    span(p, size, key_of(o->tid, o->seq, size), size, 0);
    return 1;
}

static void resize_object(struct worker *w, struct obj *o)
{
    size_t ns = random_size(w);
    unsigned char *q = x_realloc(o->p, ns);
    if (!q) {
        report(w, "realloc returned NULL", o, SIZE_MAX);
        return; /* the old block is still owned by o */
    }
    struct obj old = *o;
    old.p = q;
    size_t keep = old.size < ns ? old.size : ns;
    size_t bad = span(q, old.size, key_of(old.tid, old.seq, old.size), keep, 1);
    if (bad != SIZE_MAX)
        report(w, "realloc lost contents", &old, bad);
    else
        w->verified++;
    o->p = q;
    o->size = ns;
    o->tid = w->id;
    o->seq = w->seq++;
    span(q, ns, key_of(o->tid, o->seq, ns), ns, 0);
}

static int send_object(unsigned to, const struct obj *o)
{
    struct inbox *ib = &inboxes[to];
    int ok = 0;
    pthread_mutex_lock(&ib->lock);
    if (ib->count < INBOX_CAP) {
        ib->items[(ib->head + ib->count) % INBOX_CAP] = *o;
        ib->count++;
        ok = 1;
    }
    pthread_mutex_unlock(&ib->lock);
    return ok;
}

static void drain_inbox(struct worker *w)
{
    struct inbox *ib = &inboxes[w->id];
    struct obj batch[64];
    for (;;) {
        size_t n = 0;
        pthread_mutex_lock(&ib->lock);
        while (ib->count > 0 && n < 64) {
            batch[n++] = ib->items[ib->head];
            ib->head = (ib->head + 1) % INBOX_CAP;
            ib->count--;
        }
        pthread_mutex_unlock(&ib->lock);
        if (n == 0)
            return;
        for (size_t i = 0; i < n; i++)
            verify_and_free(w, &batch[i]);
    }
}

static void *worker_main(void *arg)
{
    struct worker *w = arg;
    struct obj local[LOCAL_CAP];
    int nlocal = 0;
    pthread_barrier_wait(&start_barrier);
    for (long op = 0; op < nops; op++) {
        if ((op & 15) == 0)
            drain_inbox(w);
        unsigned r = (unsigned)(xorshift(&w->rng) % 100);
        if (r < 10 && nlocal > 0) {
            resize_object(w, &local[xorshift(&w->rng) % (unsigned)nlocal]);
        } else if (nlocal == LOCAL_CAP || (r < 55 && nlocal > 0)) {
            unsigned i = (unsigned)(xorshift(&w->rng) % (unsigned)nlocal);
            struct obj o = local[i];
            local[i] = local[--nlocal];
            if (nthreads > 1 && (xorshift(&w->rng) & 1)) {
                unsigned to = (unsigned)((w->id + 1 + xorshift(&w->rng) % (nthreads - 1)) % nthreads);
                if (send_object(to, &o))
                    continue;
            }
            verify_and_free(w, &o);
        } else {
            if (new_object(w, &local[nlocal]))
                nlocal++;
        }
    }
    while (nlocal > 0)
        verify_and_free(w, &local[--nlocal]);
    __atomic_fetch_add(&finished, 1, __ATOMIC_SEQ_CST);
    while (__atomic_load_n(&finished, __ATOMIC_SEQ_CST) < (int)nthreads) {
        drain_inbox(w);
        sched_yield();
    }
    drain_inbox(w);
    return NULL;
}

int main(int argc, char **argv)
{
    if (argc > 1)
        nthreads = (unsigned)strtoul(argv[1], NULL, 10);
    if (argc > 2)
        nops = strtol(argv[2], NULL, 10);
    if (nthreads < 1 || nthreads > MAX_THREADS || nops < 0) {
        fprintf(stderr, "usage: %s [threads 1..%d] [ops per thread]\n", argv[0], MAX_THREADS);
        return 2;
    }
    /* bookkeeping lives outside the heap under test as far as possible */
    static struct inbox inbox_storage[MAX_THREADS];
    static struct worker worker_storage[MAX_THREADS];
    inboxes = inbox_storage;
    workers = worker_storage;
    pthread_barrier_init(&start_barrier, NULL, nthreads);
    for (unsigned i = 0; i < nthreads; i++) {
        pthread_mutex_init(&inboxes[i].lock, NULL);
        workers[i].id = i;
        workers[i].rng = 0x9E3779B97F4A7C15ull * (i + 1) ^ 0xD1B54A32D192ED03ull;
    }
    for (unsigned i = 0; i < nthreads; i++) {
        int e = pthread_create(&workers[i].thread, NULL, worker_main, &workers[i]);
        if (e != 0) {
            fprintf(stderr, "pthread_create: %s\n", strerror(e));
            return 2;
        }
    }
    long verified = 0, failed = 0;
    for (unsigned i = 0; i < nthreads; i++) {
        pthread_join(workers[i].thread, NULL);
        verified += workers[i].verified;
        failed += workers[i].failed;
    }
    printf("stress: %ld passed, %ld failed\n", verified, failed);
    return failed ? 1 : 0;
}
