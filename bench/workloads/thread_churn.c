/*
 * thread_churn - threads created and destroyed per phase while objects
 * migrate between them (the mstress idea).
 *
 * The program runs in phases.  In every phase a fresh set of worker threads
 * is started; each one
 *   - works on one partition of a global table of objects (the partition
 *     rotates from phase to phase): it frees about half of the objects found
 *     there - left by threads of earlier phases that are gone by now - and
 *     replaces them with new ones; the rest survive into the next phase;
 *   - does some private churn (allocate a burst, free it);
 *   - hands a batch of freshly allocated objects to its neighbour through a
 *     mailbox and, after a barrier, frees the batch it received - objects
 *     freed by a different live thread.
 * Then the threads exit and the next phase starts.
 *
 * usage: thread_churn [scale] [threads]   (threads default 4)
 */
#include "wl.h"

#define SLOTS 2048 /* per partition */
#define HANDOFF 512
#define BODY 24

static int nthreads;
static void ***table;     /* [nthreads][SLOTS] */
static void ***mailbox;   /* [nthreads][HANDOFF] */
static pthread_barrier_t bar;

typedef struct {
    pthread_t th;
    int phase, id;
    uint64_t alloc_sum, free_sum;
} worker;

static size_t rsize(wl_rng *r)
{
    uint64_t k = wl_below(r, 16);
    if (k < 10) return (size_t)wl_range(r, 16, 128);
    if (k < 15) return (size_t)wl_range(r, 129, 1024);
    return (size_t)wl_range(r, 1025, 16384);
}

static void *work(void *arg)
{
    worker *w = (worker *)arg;
    wl_rng r;
    wl_seed(&r, (uint64_t)w->phase, (uint64_t)w->id + 0x7c);
    uint64_t seq = 0;
#define TAG() (((uint64_t)w->phase << 40) | ((uint64_t)w->id << 32) | seq++)

    /* 1. the rotating partition */
    void **part = table[(w->id + w->phase) % nthreads];
    for (size_t i = 0; i < SLOTS; i++) {
        if (part[i] && wl_chance(&r, 1, 2)) continue; /* survives */
        if (part[i]) w->free_sum += wl_hash(wl_block_free(part[i], BODY, "table object"));
        uint64_t t = TAG();
        part[i] = wl_block_new(rsize(&r), t, BODY);
        w->alloc_sum += wl_hash(t);
    }

    /* 2. private churn */
    void *tmp[256];
    for (int round = 0; round < 16; round++) {
        for (int i = 0; i < 256; i++) {
            uint64_t t = TAG();
            tmp[i] = wl_block_new((size_t)wl_range(&r, 16, 256), t, BODY);
            w->alloc_sum += wl_hash(t);
        }
        for (int i = 255; i >= 0; i--) w->free_sum += wl_hash(wl_block_free(tmp[i], BODY, "temp object"));
    }

    /* 3. hand objects to the neighbour, free what we were handed */
    void **out = mailbox[w->id];
    for (int i = 0; i < HANDOFF; i++) {
        uint64_t t = TAG();
        out[i] = wl_block_new(rsize(&r), t, BODY);
        w->alloc_sum += wl_hash(t);
    }
    pthread_barrier_wait(&bar);
    void **in = mailbox[(w->id + nthreads - 1) % nthreads];
    for (int i = 0; i < HANDOFF; i++) {
        w->free_sum += wl_hash(wl_block_free(in[i], BODY, "handed-over object"));
        in[i] = NULL;
    }
#undef TAG
    return NULL;
}

int main(int argc, char **argv)
{
    double scale = wl_scale(argc, argv);
    nthreads = (int)wl_int_arg(argc, argv, 2, "WORKLOAD_THREADS", 4, 1, 256);
    long phases = wl_scaled(450, scale);
    table = wl_calloc((size_t)nthreads, sizeof(void **));
    mailbox = wl_calloc((size_t)nthreads, sizeof(void **));
    for (int i = 0; i < nthreads; i++) {
        table[i] = wl_calloc(SLOTS, sizeof(void *));
        mailbox[i] = wl_calloc(HANDOFF, sizeof(void *));
    }
    pthread_barrier_init(&bar, NULL, (unsigned)nthreads);
    worker *ws = wl_calloc((size_t)nthreads, sizeof(worker));
    uint64_t alloc_sum = 0, free_sum = 0;
    for (long ph = 0; ph < phases; ph++) {
        for (int i = 0; i < nthreads; i++) {
            ws[i] = (worker){.phase = (int)ph, .id = i};
            wl_spawn(&ws[i].th, work, &ws[i]);
        }
        for (int i = 0; i < nthreads; i++) {
            wl_join(ws[i].th);
            alloc_sum += ws[i].alloc_sum;
            free_sum += ws[i].free_sum;
        }
    }
    for (int p = 0; p < nthreads; p++) {
        for (size_t i = 0; i < SLOTS; i++)
            if (table[p][i]) free_sum += wl_hash(wl_block_free(table[p][i], BODY, "table object"));
        free(table[p]);
        free(mailbox[p]);
    }
    free(table);
    free(mailbox);
    free(ws);
    pthread_barrier_destroy(&bar);
    if (alloc_sum != free_sum) wl_die(3, "thread_churn: freed-tag sum differs from allocated-tag sum");
    wl_report("thread_churn", scale, alloc_sum ^ (uint64_t)nthreads);
    return 0;
}
