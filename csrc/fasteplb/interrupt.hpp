// Cooperative cancellation of a long call.
//
// The caller (the Python binding) installs an Interrupt for the duration of a call: `poll`
// is run on the calling thread at most every kPollInterval and returns true when the call
// must stop (for Python: a KeyboardInterrupt or another signal handler raised). Long loops of
// the planner call interruption_point(); once stop is set, every thread throws Interrupted at
// its next point, the worker pool joins them all, and the entry point rethrows.
#pragma once

#include <atomic>
#include <chrono>
#include <exception>
#include <functional>
#include <thread>

namespace fasteplb {

struct Interrupted : std::exception {
    const char* what() const noexcept override { return "fasteplb call interrupted"; }
};

class Interrupt {
  public:
    static constexpr std::chrono::milliseconds kPollInterval{20};

    explicit Interrupt(std::function<bool()> poll)
        : poll_(std::move(poll)),
          owner_(std::this_thread::get_id()),
          last_(std::chrono::steady_clock::now()) {}

    bool stopped() const noexcept { return stop_.load(std::memory_order_relaxed); }

    // On the calling thread: runs poll() if kPollInterval has passed since the last one.
    // Returns stopped().
    bool poll_if_due() {
        if (stopped()) return true;
        if (std::this_thread::get_id() != owner_ || !poll_) return false;
        const auto now = std::chrono::steady_clock::now();
        if (now - last_ < kPollInterval) return false;
        last_ = now;
        if (poll_()) stop_.store(true, std::memory_order_relaxed);
        return stopped();
    }

    // The installed interrupt of this thread (nullptr: none, the call cannot be cancelled).
    static Interrupt*& current() noexcept {
        thread_local Interrupt* installed = nullptr;
        return installed;
    }

  private:
    std::function<bool()> poll_;
    std::thread::id owner_;
    std::chrono::steady_clock::time_point last_;
    std::atomic<bool> stop_{false};
};

// Installs `it` as the current thread's interrupt for a scope (worker threads install the
// caller's).
class InterruptScope {
  public:
    explicit InterruptScope(Interrupt* it) noexcept : saved_(Interrupt::current()) {
        Interrupt::current() = it;
    }
    ~InterruptScope() { Interrupt::current() = saved_; }
    InterruptScope(const InterruptScope&) = delete;
    InterruptScope& operator=(const InterruptScope&) = delete;

  private:
    Interrupt* saved_;
};

// Called from the planner's long loops. Cheap: a thread-local countdown; every 32nd call
// looks at the stop flag and, on the calling thread, at the clock.
inline void interruption_point() {
    thread_local unsigned countdown = 0;
    if (countdown-- != 0) return;
    countdown = 31;
    Interrupt* it = Interrupt::current();
    if (it != nullptr && it->poll_if_due()) throw Interrupted{};
}

}  // namespace fasteplb
