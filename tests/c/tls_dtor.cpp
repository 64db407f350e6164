// tls_dtor.cpp - C++ thread_local objects whose constructors and destructors
// allocate: the C++ face of lifecycle.c's TLS checks.
//
// Build:  g++ -O2 -pthread -o tls_dtor tls_dtor.cpp
// Run:    ./tls_dtor
//
// thread_local objects are constructed on first use and destroyed through
// __cxa_thread_atexit_impl when their thread exits (glibc callocs a list
// entry for each registration).  Here:
//   - 4 rounds of 12 std::threads; each builds a thread_local Holder (a
//     vector of strings, a map, a 100 KB buffer), fills it, and exits.
//     ~Holder checks the contents, throws and catches an exception (the
//     exception object is malloc'ed), first touches a second thread_local
//     (so a new TLS destructor is registered while TLS destructors run) and
//     hands a new std::string to main, which checks and deletes it after
//     the join.
//   - the main thread's own thread_local Holder is destroyed by exit(),
//     before static destructors; a static object's destructor then checks
//     what it handed over, allocates once more and prints the summary.
//
// Output: "FAIL: ..." lines, then   tls_dtor: N passed, M failed
// (printed from a static destructor, after main returned); exit status 1
// when M > 0.
#include <atomic>
#include <cerrno>
#include <cstdarg>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <map>
#include <memory>
#include <mutex>
#include <stdexcept>
#include <string>
#include <thread>
#include <unistd.h>
#include <vector>

namespace {

std::atomic<long> n_passed{0}, n_failed{0};

void say(const char *fmt, ...) __attribute__((format(printf, 1, 2)));
void say(const char *fmt, ...)
{
    char buf[600];
    va_list ap;
    va_start(ap, fmt);
    int n = vsnprintf(buf, sizeof buf, fmt, ap);
    va_end(ap);
    if (n < 0)
        return;
    size_t len = static_cast<size_t>(n) < sizeof buf ? static_cast<size_t>(n) : sizeof buf - 1;
    const char *p = buf;
    while (len > 0) {
        ssize_t w = write(1, p, len);
        if (w < 0 && errno == EINTR)
            continue;
        if (w <= 0)
            return;
        p += w;
        len -= static_cast<size_t>(w);
    }
}

void check(bool ok, const char *fmt, ...) __attribute__((format(printf, 2, 3)));
void check(bool ok, const char *fmt, ...)
{
    if (ok) {
        n_passed.fetch_add(1, std::memory_order_relaxed);
        return;
    }
    n_failed.fetch_add(1, std::memory_order_relaxed);
    char msg[500];
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(msg, sizeof msg, fmt, ap);
    va_end(ap);
    say("FAIL: %s\n", msg);
}

std::string text_for(int id, int k)
{
    return "thread " + std::to_string(id) + " item " + std::to_string(k) + std::string(static_cast<size_t>(k % 7) * 40, 'a' + static_cast<char>(k % 26));
}

std::mutex handoff_lock;
std::vector<std::pair<int, std::string *>> handoff; // (id, string made in ~Holder)
std::atomic<int> holder_dtors{0}, second_dtors{0};

// Touched for the first time inside ~Holder.
struct Second {
    std::unique_ptr<std::vector<long>> data;
    int id = -2;
    Second() : data(new std::vector<long>(2000, 7)) {}
    ~Second()
    {
        long sum = 0;
        for (long v : *data)
            sum += v;
        check(sum == 7 * 2000 + id, "thread %d: the thread_local created during TLS destruction is corrupted", id);
        std::vector<std::string> tmp(50, std::string(300, 's'));
        check(tmp.back().size() == 300, "thread %d: allocation in a nested TLS destructor", id);
        second_dtors.fetch_add(1, std::memory_order_relaxed);
    }
};

thread_local Second second;

struct Holder {
    int id = -1;
    std::vector<std::string> strings;
    std::map<int, std::string> by_key;
    std::unique_ptr<unsigned char[]> buffer;
    size_t buffer_size = 100000;

    Holder() : buffer(new unsigned char[100000]) {}

    void fill(int who)
    {
        id = who;
        for (int k = 0; k < 40; k++) {
            strings.push_back(text_for(id, k));
            by_key[k * 3] = text_for(id, k + 100);
        }
        for (size_t i = 0; i < buffer_size; i++)
            buffer[i] = static_cast<unsigned char>(i * 13 + static_cast<size_t>(id));
    }

    bool intact() const
    {
        if (strings.size() != 40 || by_key.size() != 40)
            return false;
        for (int k = 0; k < 40; k++) {
            if (strings[static_cast<size_t>(k)] != text_for(id, k))
                return false;
            auto it = by_key.find(k * 3);
            if (it == by_key.end() || it->second != text_for(id, k + 100))
                return false;
        }
        for (size_t i = 0; i < buffer_size; i++)
            if (buffer[i] != static_cast<unsigned char>(i * 13 + static_cast<size_t>(id)))
                return false;
        return true;
    }

    ~Holder()
    {
        if (id < 0) // never filled
            return;
        check(intact(), "thread %d: thread_local object corrupted at thread exit", id);
        try {
            throw std::runtime_error("thrown in a TLS destructor " + std::string(200, 'e'));
        } catch (const std::exception &e) {
            check(std::strlen(e.what()) > 200, "thread %d: exception message lost", id);
        }
        // a new thread_local, registered while TLS destructors run
        second.id = id;
        (*second.data)[0] += id;
        auto *s = new std::string("left by thread " + std::to_string(id) + std::string(500, 'x'));
        {
            std::lock_guard<std::mutex> g(handoff_lock);
            handoff.emplace_back(id, s);
        }
        strings.clear();
        strings.shrink_to_fit();
        holder_dtors.fetch_add(1, std::memory_order_relaxed);
    }
};

thread_local Holder holder;
thread_local std::string tl_name;

void thread_body(int id)
{
    tl_name = "worker-" + std::to_string(id) + std::string(100, 'n');
    holder.fill(id);
    check(holder.intact(), "thread %d: thread_local object corrupted while running", id);
    std::vector<std::unique_ptr<int[]>> churn;
    for (int k = 0; k < 200; k++)
        churn.emplace_back(new int[static_cast<size_t>(k % 50 + 1) * 16]());
}

bool check_handoff(int expected)
{
    std::lock_guard<std::mutex> g(handoff_lock);
    bool ok = static_cast<int>(handoff.size()) == expected;
    for (auto &e : handoff) {
        std::string want = "left by thread " + std::to_string(e.first) + std::string(500, 'x');
        if (!e.second || *e.second != want)
            ok = false;
        delete e.second;
    }
    handoff.clear();
    return ok;
}

bool main_done;

// Destroyed after the main thread's thread_local objects (exit() runs TLS
// destructors before static ones): the end of the test.
struct Finale {
    ~Finale()
    {
        if (!main_done)
            return;
        check(holder_dtors.load() == 4 * 12 + 1, "the main thread's thread_local destructor did not run (%d)",
              holder_dtors.load());
        check(check_handoff(1), "string from the main thread's TLS destructor missing or corrupted");
        std::map<int, std::string> late;
        for (int k = 0; k < 100; k++)
            late[k] = text_for(999, k);
        check(late.size() == 100 && late[50] == text_for(999, 50), "allocation in a static destructor");
        long p = n_passed.load(), f = n_failed.load();
        say("tls_dtor: %ld passed, %ld failed\n", p, f);
        if (f > 0)
            _exit(1);
    }
} finale;

} // namespace

int main()
{
    for (int round = 0; round < 4; round++) {
        holder_dtors.store(0);
        second_dtors.store(0);
        std::vector<std::thread> threads;
        for (int t = 0; t < 12; t++)
            threads.emplace_back(thread_body, round * 100 + t);
        for (auto &t : threads)
            t.join();
        check(holder_dtors.load() == 12, "round %d: %d thread_local destructors ran, want 12", round,
              holder_dtors.load());
        check(second_dtors.load() == 12, "round %d: %d nested thread_local destructors ran, want 12", round,
              second_dtors.load());
        check(check_handoff(12), "round %d: strings made by TLS destructors missing or corrupted", round);
    }
    holder_dtors.store(4 * 12);
    holder.fill(7777);
    tl_name = "main";
    main_done = true;
    return 0;
}
