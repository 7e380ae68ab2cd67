// A minimal test framework for the C++ tests (no dependency): CHECK counts passes and
// failures and prints file:line with the case being tested (g_context); a test's main returns
// non-zero on any failure and ends with "N passed, M failed".
#pragma once

#include <cstdarg>
#include <cstdio>
#include <stdexcept>
#include <string>

namespace {

long g_passed = 0;
long g_failed = 0;
std::string g_context;  // the case under test, printed with each failure
constexpr long kMaxReported = 40;

void record(bool ok, const char* file, int line, const char* expr, const std::string& detail) {
    if (ok) {
        ++g_passed;
        return;
    }
    ++g_failed;
    if (g_failed <= kMaxReported) {
        std::fprintf(stderr, "%s:%d: CHECK failed: %s%s%s\n    case: %s\n", file, line, expr,
                     detail.empty() ? "" : " -- ", detail.c_str(), g_context.c_str());
    } else if (g_failed == kMaxReported + 1) {
        std::fprintf(stderr, "(further failures are counted but not printed)\n");
    }
}

#define CHECK(cond) record(static_cast<bool>(cond), __FILE__, __LINE__, #cond, std::string())
#define CHECK_MSG(cond, msg) record(static_cast<bool>(cond), __FILE__, __LINE__, #cond, (msg))

// Runs `stmt` and checks that it throws std::invalid_argument (optionally with `needle` in
// its message).
#define CHECK_THROWS_INVALID(stmt, needle)                                          \
    do {                                                                            \
        bool thrown_ = false;                                                       \
        std::string what_;                                                          \
        try {                                                                       \
            stmt;                                                                   \
        } catch (const std::invalid_argument& e) {                                  \
            thrown_ = true;                                                         \
            what_ = e.what();                                                       \
        } catch (const std::exception& e) {                                         \
            what_ = std::string("other std::exception: ") + e.what();               \
        } catch (...) {                                                             \
            what_ = "non-std exception";                                            \
        }                                                                           \
        record(thrown_, __FILE__, __LINE__, "throws std::invalid_argument: " #stmt, \
               what_.empty() ? "nothing thrown" : what_);                           \
        const char* needle_ = (needle);                                             \
        if (thrown_ && needle_ != nullptr) {                                        \
            record(what_.find(needle_) != std::string::npos, __FILE__, __LINE__,    \
                   "message mentions the culprit: " #stmt, "message: " + what_);    \
        }                                                                           \
    } while (0)

#define CHECK_NO_THROW(stmt)                                              \
    do {                                                                  \
        std::string what_;                                                \
        bool ok_ = true;                                                  \
        try {                                                             \
            stmt;                                                         \
        } catch (const std::exception& e) {                               \
            ok_ = false;                                                  \
            what_ = e.what();                                             \
        } catch (...) {                                                   \
            ok_ = false;                                                  \
            what_ = "non-std exception";                                  \
        }                                                                 \
        record(ok_, __FILE__, __LINE__, "does not throw: " #stmt, what_); \
    } while (0)

std::string fmt(const char* f, ...) __attribute__((format(printf, 1, 2)));
std::string fmt(const char* f, ...) {
    char buf[512];
    va_list ap;
    va_start(ap, f);
    std::vsnprintf(buf, sizeof buf, f, ap);
    va_end(ap);
    return buf;
}

}  // namespace
