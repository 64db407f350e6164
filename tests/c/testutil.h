/*
 * testutil.h - helpers shared by the C test programs in tests/c/.
 *
 * Include it with `#include "testutil.h"` after `#define _GNU_SOURCE`; the
 * programs are built one file at a time (`cc -O2 -pthread -o X X.c`, see
 * scripts/preload-tests.sh), and a quoted include is found next to the
 * source file.  Everything here is `static` (functions `static inline`),
 * so a program that does not use a helper gets no code and no warning.
 *
 * Reporting
 *   n_passed, n_failed   the pass/fail counters (updated atomically, so
 *                        check() may be called from any thread)
 *   say(fmt, ...)        printf-style, one write(2) to fd 1 (no stdio, no
 *                        allocation of its own)
 *   check(ok, fmt, ...)  counts a pass, or counts a failure and prints
 *                        "FAIL: <message>"
 *   Tunables, #define them before the include:
 *     TESTUTIL_SAY_BUF        say()'s buffer (default 512 bytes)
 *     TESTUTIL_CHECK_BUF      check()'s message buffer (default 400 bytes)
 *     TESTUTIL_MAX_SHOWN_FAILURES  when defined (N > 0), only the first N
 *                             failures are printed; failure N+1 prints
 *                             "FAIL: (further failures are counted, not
 *                             shown)" and the rest are only counted
 *   watchdog_exit(name)  for SIGALRM watchdogs: prints the final
 *                        "<name>: P passed, F failed" line counting the
 *                        hang as one more failure, then _exit(1)
 *   kill_child(pid)      SIGKILL to `pid` when it is > 0 (watchdogs kill
 *                        the child they were waiting for)
 *
 * Randomness and time
 *   xorshift(&state)     xorshift64 (13, 7, 17); state must not be 0
 *   sleep_ms(ms)         nanosleep, resumed after EINTR
 *   now()                CLOCK_MONOTONIC in seconds
 *
 * Memory
 *   rss_kib()            resident set from /proc/self/statm, KiB (-1 when
 *                        it cannot be read)
 *   capture_stats(buf, cap)  malloc_stats() output (written to fd 2),
 *                        captured through a pipe into buf, NUL-terminated;
 *                        returns its length (0 on failure)
 *   is_chunkmalloc(table)    1 when the captured table is chunkmalloc's
 *                        ("chunkmalloc statistics")
 *   stat_row(table, name)    the number in row `name` of chunkmalloc's
 *                        statistics table, or -1
 */
#ifndef CHUNKMALLOC_TESTUTIL_H
#define CHUNKMALLOC_TESTUTIL_H

#include <errno.h>
#include <malloc.h>
#include <signal.h>
#include <stdarg.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/types.h>
#include <time.h>
#include <unistd.h>

#ifndef TESTUTIL_SAY_BUF
#define TESTUTIL_SAY_BUF 512
#endif
#ifndef TESTUTIL_CHECK_BUF
#define TESTUTIL_CHECK_BUF 400
#endif

/* ------------------------------------------------------------------------
 * Reporting
 */

/* Checks passed and failed (atomic: relaxed add/load). */
static long n_passed, n_failed;

/* printf to fd 1 with write(2) (repeated after a short write or EINTR),
 * truncated to TESTUTIL_SAY_BUF - 1 bytes; usable in signal handlers and
 * forked children as far as vsnprintf is. */
static inline void say(const char *fmt, ...) __attribute__((format(printf, 1, 2)));
static inline void say(const char *fmt, ...)
{
    char buf[TESTUTIL_SAY_BUF];
    va_list ap;
    va_start(ap, fmt);
    int n = vsnprintf(buf, sizeof buf, fmt, ap);
    va_end(ap);
    if (n <= 0)
        return;
    size_t len = (size_t)n < sizeof buf ? (size_t)n : sizeof buf - 1;
    const char *p = buf;
    while (len > 0) {
        ssize_t w = write(1, p, len);
        if (w < 0 && errno == EINTR)
            continue;
        if (w <= 0)
            return;
        p += w;
        len -= (size_t)w;
    }
}

/* One check: counts a pass, or counts a failure and prints "FAIL: ...". */
static inline void check(int ok, const char *fmt, ...) __attribute__((format(printf, 2, 3)));
static inline void check(int ok, const char *fmt, ...)
{
    if (ok) {
        __atomic_add_fetch(&n_passed, 1, __ATOMIC_RELAXED);
        return;
    }
#ifdef TESTUTIL_MAX_SHOWN_FAILURES
    long nth = __atomic_add_fetch(&n_failed, 1, __ATOMIC_RELAXED);
    if (nth > TESTUTIL_MAX_SHOWN_FAILURES) {
        if (nth == TESTUTIL_MAX_SHOWN_FAILURES + 1)
            say("FAIL: (further failures are counted, not shown)\n");
        return;
    }
#else
    __atomic_add_fetch(&n_failed, 1, __ATOMIC_RELAXED);
#endif
    char msg[TESTUTIL_CHECK_BUF];
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(msg, sizeof msg, fmt, ap);
    va_end(ap);
    say("FAIL: %s\n", msg);
}

/* The end of a SIGALRM watchdog: the summary line with the hang counted as
 * one more failure, then _exit(1).  The watchdog prints its own "FAIL:
 * watchdog: ..." line first. */
static inline void watchdog_exit(const char *name)
{
    say("%s: %ld passed, %ld failed\n", name, __atomic_load_n(&n_passed, __ATOMIC_RELAXED),
        __atomic_load_n(&n_failed, __ATOMIC_RELAXED) + 1);
    _exit(1);
}

/* SIGKILL to a child the caller was waiting for, if there is one (> 0). */
static inline void kill_child(pid_t pid)
{
    if (pid > 0)
        kill(pid, SIGKILL);
}

/* ------------------------------------------------------------------------
 * Randomness and time
 */

/* xorshift64 (shifts 13, 7, 17): advances *s (never 0) and returns it. */
static inline uint64_t xorshift(uint64_t *s)
{
    uint64_t x = *s;
    x ^= x << 13;
    x ^= x >> 7;
    x ^= x << 17;
    return *s = x;
}

/* Sleeps `ms` milliseconds, resuming after a signal. */
static inline void sleep_ms(long ms)
{
    struct timespec ts = {ms / 1000, (ms % 1000) * 1000000L};
    while (nanosleep(&ts, &ts) != 0 && errno == EINTR)
        ;
}

/* The monotonic clock in seconds. */
static inline double now(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (double)ts.tv_sec + (double)ts.tv_nsec / 1e9;
}

/* ------------------------------------------------------------------------
 * Memory
 */

/* The resident set in KiB, from /proc/self/statm; -1 when unreadable. */
static inline long rss_kib(void)
{
    char buf[128];
    FILE *f = fopen("/proc/self/statm", "r");
    if (!f)
        return -1;
    long size = 0, resident = -1;
    if (!fgets(buf, sizeof buf, f) || sscanf(buf, "%ld %ld", &size, &resident) != 2)
        resident = -1;
    fclose(f);
    return resident < 0 ? -1 : resident * (sysconf(_SC_PAGESIZE) / 1024);
}

/* malloc_stats() output, captured from a pipe on fd 2 into buf (at most
 * cap - 1 bytes, NUL-terminated).  Returns the length (0 on failure). */
static inline size_t capture_stats(char *buf, size_t cap)
{
    int fds[2];
    if (pipe(fds) != 0)
        return 0;
    fflush(stderr);
    int saved = dup(2);
    if (saved < 0) {
        close(fds[0]);
        close(fds[1]);
        return 0;
    }
    dup2(fds[1], 2);
    close(fds[1]);
    malloc_stats();
    fflush(stderr);
    dup2(saved, 2);
    close(saved);
    size_t len = 0;
    ssize_t n;
    while (len + 1 < cap && (n = read(fds[0], buf + len, cap - 1 - len)) != 0) {
        if (n < 0) {
            if (errno == EINTR)
                continue;
            break;
        }
        len += (size_t)n;
    }
    close(fds[0]);
    buf[len] = 0;
    return len;
}

/* 1 when a captured malloc_stats() table is chunkmalloc's. */
static inline int is_chunkmalloc(const char *table) { return strstr(table, "chunkmalloc statistics") != NULL; }

/* The value of row `name` of chunkmalloc's statistics table, or -1. */
static inline long stat_row(const char *table, const char *name)
{
    char pat[64];
    snprintf(pat, sizeof pat, "\n  %s ", name);
    const char *p = strstr(table, pat);
    if (!p)
        return -1;
    p += strlen(pat);
    while (*p == ' ')
        p++;
    char *end;
    long v = strtol(p, &end, 10);
    return end == p ? -1 : v;
}

#endif /* CHUNKMALLOC_TESTUTIL_H */
