// Tests of csrc/include/dhvc/math/vmf.h against closed forms: the sphere areas, d = 3 where
// C_3(kappa) = kappa / (4 pi sinh kappa), d = 2 where C_2 = 1 / (2 pi I_0(kappa)), and the derivative
// d/dkappa log C_d = -A_d(kappa).
#include <cmath>
#include <initializer_list>
#include <limits>

#include "check.h"
#include "dhvc/math/vmf.h"

using namespace dhvc::math;

namespace {

// log sinh(x), accurate for every x > 0.
double log_sinh(double x) {
  return x < 1.0 ? std::log(std::sinh(x)) : x + std::log1p(-std::exp(-2.0 * x)) - std::log(2.0);
}

void test_sphere_area() {
  CHECK_CLOSE(log_sphere_area(2.0), std::log(2.0 * M_PI), 1e-15);        // circle
  CHECK_CLOSE(log_sphere_area(3.0), std::log(4.0 * M_PI), 1e-15);        // S^2
  CHECK_CLOSE(log_sphere_area(4.0), std::log(2.0 * M_PI * M_PI), 1e-15); // S^3
}

void test_closed_forms() {
  for (double kappa : {1e-8, 1e-3, 0.5, 1.0, 10.0, 700.0, 1e5}) {
    const double expected3 = std::log(kappa) - std::log(4.0 * M_PI) - log_sinh(kappa);
    CHECK_CLOSE(vmf_log_normalizer(3.0, kappa), expected3, 2e-15);
    CHECK_CLOSE(vmf_log_normalizer(2.0, kappa), -std::log(2.0 * M_PI) - log_bessel_iv(0.0, kappa), 2e-15);
  }
  // kappa = 0: the uniform density on the sphere.
  for (double d : {2.0, 3.0, 10.0, 1000.0, 20002.0}) {
    CHECK_CLOSE(vmf_log_normalizer(d, 0.0), -log_sphere_area(d), 1e-15);
  }
}

void test_no_cancellation_when_kappa_small_against_d() {
  // d = 10000, kappa = 100: log H = log 0F1(; nu + 1; kappa^2 / 4) is about 0.5 and must keep its digits
  // although nu log kappa and log I_nu(kappa) are each about 2e4.
  const double d = 10000.0, kappa = 100.0, nu = d / 2.0 - 1.0;
  const double q = kappa * kappa / 4.0;
  double t = 1.0, s = 1.0;
  for (int k = 1; k < 60; ++k) {
    t *= q / (k * (nu + k));
    s += t;
  }
  CHECK_REL(log_bessel_h(nu, kappa), std::log(s), 1e-15);  // mpmath: 0.499975008329710330
  CHECK_CLOSE(vmf_log_normalizer(d, kappa), -log_sphere_area(d) - std::log(s), 1e-15);
}

void test_derivative() {
  // Central differences, step h = 1e-5 max(1, kappa): error about |log C| 1e-16 / h + 1e-8 relative.
  for (double d : {2.0, 3.0, 5.0, 64.0, 1000.0}) {
    for (double kappa : {0.5, 1.0, 30.0, 500.0, 1e4}) {
      const double h = 1e-5 * std::fmax(1.0, kappa);
      const double fd = (vmf_log_normalizer(d, kappa + h) - vmf_log_normalizer(d, kappa - h)) / (2.0 * h);
      const double tol = 1e-15 * std::fmax(1.0, std::fabs(vmf_log_normalizer(d, kappa))) / h + 1e-7 * std::fabs(fd);
      CHECK_ABS(-bessel_iv_ratio(d / 2.0 - 1.0, kappa), fd, tol);
    }
  }
}

void test_edge_cases() {
  const double inf = std::numeric_limits<double>::infinity();
  CHECK_TRUE(std::isnan(vmf_log_normalizer(3.0, -1.0)));
  CHECK_TRUE(std::isnan(vmf_log_normalizer(1.0, 1.0)));
  CHECK_TRUE(std::isnan(vmf_log_normalizer(3.0, std::nan(""))));
  CHECK_TRUE(vmf_log_normalizer(3.0, inf) == inf);
}

}  // namespace

int main() {
  test_sphere_area();
  test_closed_forms();
  test_no_cancellation_when_kappa_small_against_d();
  test_derivative();
  test_edge_cases();
  DHVC_TEST_MAIN_RETURN();
}
