// Tests of csrc/include/dhvc/math/bessel.h against closed forms and identities that hold exactly, so
// that they need no reference table: the half-integer orders (DLMF 10.49.8), the three-term recurrence
// (DLMF 10.29.1), the consistency of the ratio with the log, the derivatives against finite differences,
// the continuity at every region boundary, and the edge cases of shared/KERNELS.md section 1.
#include <cmath>
#include <initializer_list>
#include <limits>

#include "check.h"
#include "dhvc/math/bessel.h"

using namespace dhvc::math;

namespace {

const double kInf = std::numeric_limits<double>::infinity();
const double kNaN = std::numeric_limits<double>::quiet_NaN();

// log sinh(x), accurate for every x > 0: sinh directly below 1, x + log1p(-exp(-2x)) - log 2 above (no
// overflow).
double log_sinh(double x) {
  return x < 1.0 ? std::log(std::sinh(x)) : x + std::log1p(-std::exp(-2.0 * x)) - std::log(2.0);
}

// Central difference of f at x with the relative step h = 1e-5 x, and a bound on its error: rounding
// (|f| 1e-16 / h, with a margin) plus truncation (h^2 |f^(3)| / 6, below 1e-7 relative here).
template <typename F>
double central_difference(F f, double x, double* tol) {
  const double h = 1e-5 * x;
  const double fd = (f(x + h) - f(x - h)) / (2.0 * h);
  *tol = 1e-15 * std::fmax(1.0, std::fabs(f(x))) / h + 1e-7 * std::fabs(fd);
  return fd;
}

// Log-spaced x from 1e-10 to 1e6.
template <typename F>
void for_each_x(F f) {
  for (int i = 0; i <= 64; ++i) f(std::pow(10.0, -10.0 + 16.0 * i / 64.0));
}

void test_half_integer_closed_forms() {
  // I_{1/2}(x) = sqrt(2 / (pi x)) sinh x;  R_{1/2}(x) = coth x - 1/x.
  for_each_x([](double x) {
    const double expected = 0.5 * std::log(2.0 / (M_PI * x)) + log_sinh(x);
    CHECK_CLOSE(log_bessel_iv(0.5, x), expected, 2e-15);
  });
  for (double x : {0.5, 1.0, 2.0, 5.0, 10.0, 30.0, 100.0}) {
    CHECK_REL(bessel_iv_ratio(0.5, x), 1.0 / std::tanh(x) - 1.0 / x, 1e-14);
  }
  // I_{3/2}(x) = sqrt(2 / (pi x)) (cosh x - sinh x / x), where the difference does not cancel (x >= 1).
  for (double x : {1.0, 3.0, 10.0, 50.0, 300.0}) {
    const double expected = 0.5 * std::log(2.0 / (M_PI * x)) + log_sinh(x) + std::log(1.0 / std::tanh(x) - 1.0 / x);
    CHECK_CLOSE(log_bessel_iv(1.5, x), expected, 2e-15);
  }
}

void test_recurrence_across_regions() {
  // I_{nu-1}(x) - I_{nu+1}(x) = (2 nu / x) I_nu(x), divided by I_nu. The orders straddle the boundary
  // between the shifted region (nu < 20) and Olver's expansion, and x covers the series region too.
  // lo and hi come from differences of logs of size L = |log I|, each good to about L * 1e-16, and their
  // difference cancels by a factor (lo + hi) / (2 nu / x).
  for (double nu : {1.0, 2.5, 10.0, 19.5, 20.0, 20.5, 21.0, 50.0, 400.0, 3000.0}) {
    for (double x : {0.3, 2.0, 7.0, 25.0, 100.0, 1000.0, 5e4}) {
      const double lo = std::exp(log_bessel_iv(nu - 1.0, x) - log_bessel_iv(nu, x));
      const double hi = std::exp(log_bessel_iv(nu + 1.0, x) - log_bessel_iv(nu, x));
      const double size = std::fmax(1.0, std::fabs(log_bessel_iv(nu, x)));
      CHECK_REL(lo - hi, 2.0 * nu / x, 1e-14 + 1e-15 * size * (lo + hi) / (2.0 * nu / x));
    }
  }
}

void test_ratio_matches_log_difference() {
  // R_nu = exp(log I_{nu+1} - log I_nu): an independent path (Olver/series/shift vs continued fraction).
  for (double nu : {0.0, 0.5, 3.0, 18.7, 19.5, 40.0, 255.5, 5000.0}) {
    for_each_x([nu](double x) {
      const double diff = log_bessel_iv(nu + 1.0, x) - log_bessel_iv(nu, x);
      // The difference of two logs of size L has an absolute error ~ L * 1e-16.
      const double scale = std::fmax(1.0, std::fabs(log_bessel_iv(nu, x)));
      CHECK_REL(bessel_iv_ratio(nu, x), std::exp(diff), 4e-15 * scale);
    });
  }
}

void test_small_x_series() {
  // R_nu(x) = x / (2(nu+1)) (1 - x^2 / (4 (nu+1)(nu+2)) + ...); log I_nu(x) -> nu log(x/2) - lgamma(nu+1).
  for (double nu : {0.0, 1.0, 7.5, 100.0, 10000.0}) {
    const double x = 1e-9;
    CHECK_REL(bessel_iv_ratio(nu, x), x / (2.0 * (nu + 1.0)), 1e-15);
    CHECK_CLOSE(log_bessel_iv(nu, x), nu * std::log(x / 2.0) - std::lgamma(nu + 1.0), 1e-15);
    CHECK_REL(bessel_iv_ratio_dx(nu, x), 0.5 / (nu + 1.0), 1e-14);
    CHECK_CLOSE(log_bessel_h(nu, x), x * x / (4.0 * (nu + 1.0)), 1e-15);
  }
}

void test_derivatives_against_finite_differences() {
  for (double nu : {0.0, 0.5, 4.0, 19.5, 20.0, 60.0, 700.0}) {
    for (double x : {0.01, 0.5, 3.0, 15.0, 80.0, 900.0, 2e4}) {
      double tol;
      const double fd1 = central_difference([nu](double t) { return bessel_iv_ratio(nu, t); }, x, &tol);
      CHECK_ABS(bessel_iv_ratio_dx(nu, x), fd1, tol);
      const double fd2 = central_difference([nu](double t) { return bessel_iv_ratio_dx(nu, t); }, x, &tol);
      CHECK_ABS(bessel_iv_ratio_dx2(nu, x), fd2, tol);
      // d/dx log I_nu = R_nu + nu / x.
      const double fdl = central_difference([nu](double t) { return log_bessel_iv(nu, t); }, x, &tol);
      CHECK_ABS(bessel_iv_ratio(nu, x) + nu / x, fdl, tol);
    }
  }
}

void test_continuity_at_region_boundaries() {
  // Series / shift boundary: x^2 / 4 = nu + 1. Shift / Olver boundary: nu = 20.
  for (double nu : {0.0, 3.3, 12.0, 19.9}) {
    const double xb = 2.0 * std::sqrt(nu + 1.0);
    const double below = log_bessel_iv(nu, std::nextafter(xb, 0.0));
    const double above = log_bessel_iv(nu, std::nextafter(xb, kInf));
    CHECK_CLOSE(below, above, 1e-14);
  }
  for (double x : {1e-6, 0.1, 10.0, 1e3, 1e6}) {
    const double below = log_bessel_iv(std::nextafter(20.0, 0.0), x);
    const double at = log_bessel_iv(20.0, x);
    CHECK_CLOSE(below, at, 1e-14);
    const double hb = log_bessel_h(std::nextafter(20.0, 0.0), x);
    CHECK_CLOSE(hb, log_bessel_h(20.0, x), 1e-14);
  }
}

void test_log_h_against_series() {
  // log H_nu(x) = log sum_k (x^2/4)^k / (k! (nu+1)_k), summed here term by term (fine where it converges
  // fast, x^2 / 4 <= 4 (nu + 1)); the kernel uses Olver's form for nu >= 20, whose error is absolute (about
  // 1e-17 when log H is tiny), hence the max(1, |log H|) scale.
  for (double nu : {0.0, 2.0, 19.5, 20.5, 300.0, 5000.0}) {
    for (double x : {1e-3, 0.7, 5.0, 60.0}) {
      const double q = x * x / 4.0;
      if (q > 4.0 * (nu + 1.0)) continue;
      double t = 1.0, s = 0.0;
      for (int k = 1; k < 200; ++k) {
        t *= q / (k * (nu + k));
        s += t;
      }
      // For nu < 20 and x^2/4 > nu + 1, log H = log I - nu log(x/2) + lgamma(nu+1) cancels terms of ~50.
      CHECK_CLOSE(log_bessel_h(nu, x), std::log1p(s), 1e-14);
    }
  }
  // Where log I - nu log(x/2) + lgamma(nu+1) does not cancel much, it must agree too.
  for (double nu : {0.0, 2.0, 19.5, 20.5, 300.0}) {
    for (double x : {1e3, 1e5}) {
      const double expected = log_bessel_iv(nu, x) - nu * std::log(x / 2.0) + std::lgamma(nu + 1.0);
      CHECK_REL(log_bessel_h(nu, x), expected, 1e-14);
    }
  }
}

void test_edge_cases() {
  CHECK_TRUE(std::isnan(log_bessel_iv(kNaN, 1.0)));
  CHECK_TRUE(std::isnan(log_bessel_iv(1.0, kNaN)));
  CHECK_TRUE(std::isnan(log_bessel_iv(-0.5, 1.0)));
  CHECK_TRUE(std::isnan(log_bessel_iv(1.0, -1.0)));
  CHECK_TRUE(log_bessel_iv(0.0, 0.0) == 0.0);
  CHECK_TRUE(log_bessel_iv(0.5, 0.0) == -kInf);
  CHECK_TRUE(log_bessel_iv(3000.0, kInf) == kInf);
  CHECK_TRUE(log_bessel_iv(kInf, 5.0) == -kInf);
  CHECK_TRUE(std::isnan(log_bessel_iv(kInf, kInf)));
  CHECK_TRUE(bessel_iv_ratio(2.0, 0.0) == 0.0);
  CHECK_TRUE(bessel_iv_ratio(2.0, kInf) == 1.0);
  CHECK_TRUE(std::isnan(bessel_iv_ratio(kNaN, 1.0)));
  CHECK_TRUE(std::isnan(bessel_iv_ratio(-1.0, 1.0)));
  CHECK_TRUE(bessel_iv_ratio_dx(3.0, 0.0) == 0.125);
  CHECK_TRUE(bessel_iv_ratio_dx(3.0, kInf) == 0.0);
  CHECK_TRUE(bessel_iv_ratio_dx2(3.0, 0.0) == 0.0);
  CHECK_TRUE(log_bessel_h(7.0, 0.0) == 0.0);
  // Finite for every finite input, at the extremes of the range and beyond it.
  for (double nu : {0.0, 1e-300, 0.5, 19.999999, 1e4, 1e8}) {
    for (double x : {1e-300, 1e-10, 1.0, 1e6, 1e200, 1e300}) {
      CHECK_TRUE(std::isfinite(log_bessel_iv(nu, x)));
      CHECK_TRUE(std::isfinite(bessel_iv_ratio(nu, x)));
      CHECK_TRUE(bessel_iv_ratio(nu, x) >= 0.0 && bessel_iv_ratio(nu, x) <= 1.0);
      CHECK_TRUE(std::isfinite(bessel_iv_ratio_dx(nu, x)));
      CHECK_TRUE(std::isfinite(log_bessel_h(nu, x)));
    }
  }
}

}  // namespace

int main() {
  test_half_integer_closed_forms();
  test_recurrence_across_regions();
  test_ratio_matches_log_difference();
  test_small_x_series();
  test_derivatives_against_finite_differences();
  test_continuity_at_region_boundaries();
  test_log_h_against_series();
  test_edge_cases();
  DHVC_TEST_MAIN_RETURN();
}
