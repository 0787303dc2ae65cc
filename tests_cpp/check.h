// A minimal test harness for the torch-free C++ tests: CHECK_* macros count failures and print where they
// happened; each test executable returns the number of failures (0 = pass), which CTest reads.
#pragma once

#include <cmath>
#include <cstdio>

namespace dhvc_test {

inline int& failures() {
  static int n = 0;
  return n;
}

// |a - b| <= tol * max(1, |b|), or both NaN, or equal infinities.
inline bool close(double a, double b, double tol) {
  if (std::isnan(a) || std::isnan(b)) return std::isnan(a) && std::isnan(b);
  if (std::isinf(a) || std::isinf(b)) return a == b;
  return std::fabs(a - b) <= tol * std::fmax(1.0, std::fabs(b));
}

// Relative: |a - b| <= tol * |b|.
inline bool close_rel(double a, double b, double tol) {
  if (std::isnan(a) || std::isnan(b)) return std::isnan(a) && std::isnan(b);
  if (std::isinf(a) || std::isinf(b)) return a == b;
  return std::fabs(a - b) <= tol * std::fabs(b);
}

// Absolute: |a - b| <= tol.
inline bool close_abs(double a, double b, double tol) { return std::fabs(a - b) <= tol; }

}  // namespace dhvc_test

#define DHVC_CHECK_IMPL(cond, a, b, what)                                                            \
  do {                                                                                                \
    if (!(cond)) {                                                                                    \
      ++dhvc_test::failures();                                                                        \
      std::printf("%s:%d: %s: got %.17g, expected %.17g\n", __FILE__, __LINE__, what, (double)(a),     \
                  (double)(b));                                                                       \
    }                                                                                                 \
  } while (0)

// a within tol of b, relative to max(1, |b|).
#define CHECK_CLOSE(a, b, tol) DHVC_CHECK_IMPL(dhvc_test::close((a), (b), (tol)), (a), (b), #a " ~ " #b)
// a within tol of b, relative to |b|.
#define CHECK_REL(a, b, tol) DHVC_CHECK_IMPL(dhvc_test::close_rel((a), (b), (tol)), (a), (b), #a " ~ " #b)
// |a - b| <= tol.
#define CHECK_ABS(a, b, tol) DHVC_CHECK_IMPL(dhvc_test::close_abs((a), (b), (tol)), (a), (b), #a " ~ " #b)
#define CHECK_TRUE(cond) DHVC_CHECK_IMPL((cond), 0, 1, #cond)

#define DHVC_TEST_MAIN_RETURN()                                                      \
  do {                                                                               \
    if (dhvc_test::failures() == 0) std::printf("all checks passed\n");              \
    else std::printf("%d check(s) failed\n", dhvc_test::failures());                 \
    return dhvc_test::failures() == 0 ? 0 : 1;                                       \
  } while (0)
