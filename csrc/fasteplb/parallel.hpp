// Row-parallel loop: a fixed set of workers pulls row indices from an atomic counter.
// Every row is computed independently into its own output slice, so the result does not
// depend on the thread count or on scheduling.
#pragma once

#include <algorithm>
#include <atomic>
#include <condition_variable>
#include <cstdint>
#include <exception>
#include <mutex>
#include <thread>
#include <vector>

namespace fasteplb {

// Threads to use for `rows` rows: `requested` if positive, else the hardware concurrency,
// never more than there are rows (an idle thread only costs its start-up).
inline int resolve_threads(int requested, int64_t rows) {
    int64_t t = requested > 0 ? requested : static_cast<int64_t>(std::thread::hardware_concurrency());
    if (t < 1) t = 1;
    if (t > rows) t = rows;
    return static_cast<int>(std::max<int64_t>(t, 1));
}

// Calls body(state, row) for every row in [0, rows). Each worker builds its scratch state once
// with make_state(). The calling thread works too. The first exception thrown by any worker
// stops the others at their next row and is rethrown after all have joined.
template <class MakeState, class Body>
void parallel_rows(int64_t rows, int num_threads, MakeState make_state, Body body) {
    const int threads = resolve_threads(num_threads, rows);
    if (threads <= 1) {
        auto state = make_state();
        for (int64_t r = 0; r < rows; ++r) body(state, r);
        return;
    }
    std::atomic<int64_t> next{0};
    std::atomic<bool> failed{false};
    std::exception_ptr first_error;
    std::mutex error_mutex;
    auto worker = [&]() {
        try {
            auto state = make_state();
            while (!failed.load(std::memory_order_relaxed)) {
                const int64_t r = next.fetch_add(1, std::memory_order_relaxed);
                if (r >= rows) break;
                body(state, r);
            }
        } catch (...) {
            std::lock_guard<std::mutex> lock(error_mutex);
            if (!first_error) first_error = std::current_exception();
            failed.store(true, std::memory_order_relaxed);
        }
    };
    std::vector<std::thread> pool;
    pool.reserve(static_cast<size_t>(threads - 1));
    try {
        for (int i = 1; i < threads; ++i) pool.emplace_back(worker);
    } catch (...) {
        // Could not start a thread: finish with the ones we have.
    }
    worker();
    for (auto& t : pool) t.join();
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
    if (threads <= 1) {
        auto state = make_state();
        for (int64_t r = 0; r < rows; ++r) body1(state, r);
        between();
        for (int64_t r = 0; r < rows; ++r) body2(state, r);
        return;
    }
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
                pass1_done.wait(lock, [&] { return ready; });
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
    std::vector<std::thread> pool;
    pool.reserve(static_cast<size_t>(threads - 1));
    for (int i = 1; i < threads; ++i) {
        try {
            pool.emplace_back(worker);
        } catch (...) {
            // Could not start a thread: the barrier must not wait for it.
            std::lock_guard<std::mutex> lock(mutex);
            --running;
        }
    }
    worker();
    for (auto& t : pool) t.join();
    if (first_error) std::rethrow_exception(first_error);
}

}  // namespace fasteplb
