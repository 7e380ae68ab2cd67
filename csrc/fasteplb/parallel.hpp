// Row-parallel loop: a fixed set of workers pulls row indices from an atomic counter.
// Every row is computed independently into its own output slice, so the result does not
// depend on the thread count or on scheduling.
//
// Every worker computes under IEEE floating-point semantics (fpenv.hpp) and inherits the
// caller's Interrupt (interrupt.hpp); while the calling thread waits for the others it keeps
// polling that Interrupt, so a cancelled call stops within a poll interval or two.
#pragma once

#include <algorithm>
#include <atomic>
#include <condition_variable>
#include <cstdint>
#include <exception>
#include <mutex>
#include <thread>
#include <vector>

#if defined(__linux__)
#include <sched.h>
#endif

#include "fasteplb/fpenv.hpp"
#include "fasteplb/interrupt.hpp"

namespace fasteplb {

// The CPUs this process may run on: its affinity mask where the OS has one (a container or
// `taskset` limits it), else the hardware concurrency, read once (it costs microseconds).
inline int usable_cpus() {
#if defined(__linux__)
    cpu_set_t set;
    CPU_ZERO(&set);
    if (sched_getaffinity(0, sizeof set, &set) == 0) {
        const int n = CPU_COUNT(&set);
        if (n > 0) return n;
    }
#endif
    static const int hardware = std::max(1, static_cast<int>(std::thread::hardware_concurrency()));
    return hardware;
}

// Threads to use for `rows` rows: `requested` if positive, else all usable CPUs; never more
// than the usable CPUs (the planner is compute-bound, an oversubscribed thread only adds
// switches) nor than there are rows (an idle thread only costs its start-up).
inline int resolve_threads(int requested, int64_t rows) {
    int64_t t = usable_cpus();
    if (requested > 0 && requested < t) t = requested;
    if (t > rows) t = rows;
    return static_cast<int>(std::max<int64_t>(t, 1));
}

// For tests: how many threads the last parallel_rows / parallel_two_pass call in this process
// ran on (any caller's; a test reads it right after its own call).
inline std::atomic<int>& last_pool_size() {
    static std::atomic<int> threads{0};
    return threads;
}

namespace detail {

// Waits on `cv` (with `lock` held) until done() holds, polling `interrupt` between waits.
template <class Done>
void wait_polling(std::unique_lock<std::mutex>& lock, std::condition_variable& cv,
                  Interrupt* interrupt, Done done) {
    while (!done()) {
        cv.wait_for(lock, Interrupt::kPollInterval);
        if (interrupt != nullptr && !done()) {
            lock.unlock();
            interrupt->poll_if_due();
            lock.lock();
        }
    }
}

// Runs worker() on `threads` threads, the calling one included, and joins them. worker()
// must not throw. If a thread cannot be started, missing() is called for it (before the
// calling thread starts its own share) and the others do its share.
template <class Worker, class Missing>
void run_pool(int threads, Worker worker, Missing missing) {
    Interrupt* interrupt = Interrupt::current();
    std::mutex mutex;
    std::condition_variable finished;
    int active = 0;  // started workers still running, under `mutex`
    auto run = [&] {
        {
            IeeeFloatGuard ieee;
            InterruptScope scope(interrupt);
            worker();
        }
        std::lock_guard<std::mutex> lock(mutex);
        --active;
        finished.notify_all();
    };
    std::vector<std::thread> pool;
    pool.reserve(static_cast<size_t>(threads - 1));
    for (int i = 1; i < threads; ++i) {
        std::lock_guard<std::mutex> lock(mutex);
        try {
            pool.emplace_back(run);
            ++active;
        } catch (...) {
            missing();
        }
    }
    {
        IeeeFloatGuard ieee;
        worker();
    }
    {
        std::unique_lock<std::mutex> lock(mutex);
        wait_polling(lock, finished, interrupt, [&] { return active == 0; });
    }
    for (auto& t : pool) t.join();
}

}  // namespace detail

// Calls body(state, row) for every row in [0, rows). Each worker builds its scratch state once
// with make_state(). The calling thread works too. The first exception thrown by any worker
// stops the others at their next row and is rethrown after all have joined.
template <class MakeState, class Body>
void parallel_rows(int64_t rows, int num_threads, MakeState make_state, Body body) {
    const int threads = resolve_threads(num_threads, rows);
    last_pool_size().store(std::max(threads, 1), std::memory_order_relaxed);
    if (threads <= 1) {
        IeeeFloatGuard ieee;
        auto state = make_state();
        for (int64_t r = 0; r < rows; ++r) {
            interruption_point();
            body(state, r);
        }
        return;
    }
    std::atomic<int64_t> next{0};
    std::atomic<bool> failed{false};
    std::exception_ptr first_error;
    std::mutex error_mutex;
    detail::run_pool(
        threads,
        [&]() {
            try {
                auto state = make_state();
                while (!failed.load(std::memory_order_relaxed)) {
                    const int64_t r = next.fetch_add(1, std::memory_order_relaxed);
                    if (r >= rows) break;
                    interruption_point();
                    body(state, r);
                }
            } catch (...) {
                std::lock_guard<std::mutex> lock(error_mutex);
                if (!first_error) first_error = std::current_exception();
                failed.store(true, std::memory_order_relaxed);
            }
        },
        [] {});
    if (first_error) std::rethrow_exception(first_error);
}

// Two passes over the rows with one set of threads: body1(state, row) for every row, then
// between() once (on whichever thread finishes pass 1 last), then body2(state, row) for every
// row. Saves a second thread start when pass 2 needs the result of all of pass 1. Errors as
// in parallel_rows: the first one stops the others at their next row and is rethrown.
template <class MakeState, class Body1, class Between, class Body2>
void parallel_two_pass(int64_t rows, int num_threads, MakeState make_state, Body1 body1,
                       Between between, Body2 body2) {
    const int threads = resolve_threads(num_threads, rows);
    last_pool_size().store(std::max(threads, 1), std::memory_order_relaxed);
    if (threads <= 1) {
        IeeeFloatGuard ieee;
        auto state = make_state();
        for (int64_t r = 0; r < rows; ++r) {
            interruption_point();
            body1(state, r);
        }
        between();
        for (int64_t r = 0; r < rows; ++r) body2(state, r);
        return;
    }
    Interrupt* interrupt = Interrupt::current();
    std::atomic<int64_t> next1{0}, next2{0};
    std::atomic<bool> failed{false};
    std::exception_ptr first_error;
    std::mutex mutex;
    std::condition_variable pass1_done;
    int running = threads;  // workers still in pass 1, under `mutex`
    bool ready = false;     // between() has run, under `mutex`
    auto fail = [&]() {
        std::lock_guard<std::mutex> lock(mutex);
        if (!first_error) first_error = std::current_exception();
        failed.store(true, std::memory_order_relaxed);
    };
    auto worker = [&]() {
        bool ok = true;
        decltype(make_state()) state{};
        try {
            state = make_state();
            while (!failed.load(std::memory_order_relaxed)) {
                const int64_t r = next1.fetch_add(1, std::memory_order_relaxed);
                if (r >= rows) break;
                interruption_point();
                body1(state, r);
            }
        } catch (...) {
            ok = false;
            fail();
        }
        {
            std::unique_lock<std::mutex> lock(mutex);
            if (--running == 0) {
                if (!failed.load(std::memory_order_relaxed)) {
                    try {
                        between();
                    } catch (...) {
                        if (!first_error) first_error = std::current_exception();
                        failed.store(true, std::memory_order_relaxed);
                    }
                }
                ready = true;
                pass1_done.notify_all();
            } else {
                detail::wait_polling(lock, pass1_done, interrupt, [&] { return ready; });
            }
        }
        if (!ok) return;
        try {
            while (!failed.load(std::memory_order_relaxed)) {
                const int64_t r = next2.fetch_add(1, std::memory_order_relaxed);
                if (r >= rows) break;
                body2(state, r);
            }
        } catch (...) {
            fail();
        }
    };
    // A thread that could not be started must not hold up the barrier. It is reported before
    // the calling thread works, so `running` cannot reach zero early.
    detail::run_pool(threads, worker, [&] {
        std::lock_guard<std::mutex> lock(mutex);
        --running;
    });
    if (first_error) std::rethrow_exception(first_error);
}

}  // namespace fasteplb
