// Tests of csrc/include/dhvc/random/philox.h and csrc/include/dhvc/sampling/vmf_wood.h: Philox against the
// Random123 known-answer vectors, the sampler's moments against A_d(kappa), the geometry of the samples,
// the implicit gradient against the exact inverse CDF (d = 3) and against A_d'(kappa) on average, and the
// rotation gradient against finite differences.
#include <algorithm>
#include <cmath>
#include <cstdint>
#include <initializer_list>
#include <limits>
#include <vector>

#include "check.h"
#include "dhvc/math/bessel.h"
#include "dhvc/random/philox.h"
#include "dhvc/random/ziggurat.h"
#include "dhvc/sampling/vmf_wood.h"

using namespace dhvc;

namespace {

void test_philox_known_answers() {
  // Random123 kat_vectors, philox4x32 10 rounds: counter 0, key 0 -> these four words.
  random::PhiloxStream zero(0, 0, 0);
  const uint32_t expect0[4] = {0x6627e8d5u, 0xe169c58du, 0xbc57ac4cu, 0x9b00dbd8u};
  for (uint32_t e : expect0) CHECK_TRUE(zero.next_u32() == e);
}

// Kolmogorov-Smirnov distance of n normals against the standard normal CDF, with the moments up to 4.
template <typename Stream>
void check_normals(Stream& s, int n) {
  std::vector<double> x(n);
  double m1 = 0, m2 = 0, m4 = 0;
  for (int i = 0; i < n; ++i) {
    x[i] = s.normal();
    m1 += x[i];
    m2 += x[i] * x[i];
    m4 += x[i] * x[i] * x[i] * x[i];
  }
  std::sort(x.begin(), x.end());
  double ks = 0.0;
  for (int i = 0; i < n; ++i) {
    const double cdf = 0.5 * std::erfc(-x[i] / std::sqrt(2.0));
    ks = std::fmax(ks, std::fmax(std::fabs(cdf - double(i) / n), std::fabs(cdf - double(i + 1) / n)));
  }
  // sqrt(n) KS > 1.95 has probability 1e-3; the moments within 5 standard errors (var of x^2 is 2, of x^4 96).
  CHECK_TRUE(std::sqrt(double(n)) * ks < 1.95);
  CHECK_ABS(m1 / n, 0.0, 5.0 / std::sqrt(double(n)));
  CHECK_ABS(m2 / n, 1.0, 5.0 * std::sqrt(2.0 / n));
  CHECK_ABS(m4 / n, 3.0, 5.0 * std::sqrt(96.0 / n));
}

void test_normal_sources() {
  random::PhiloxStream box_muller(11, 0, 0);
  check_normals(box_muller, 1000000);
  random::PhiloxZigguratStream ziggurat(11, 0, 0);
  check_normals(ziggurat, 1000000);
  // The tails: the share beyond 3.5 (ziggurat's base strip starts at 3.44) matches 2 (1 - Phi(3.5)).
  random::PhiloxZigguratStream z2(12, 0, 0);
  int beyond = 0;
  const int n = 4000000;
  for (int i = 0; i < n; ++i) beyond += std::fabs(z2.normal()) > 3.5;
  const double p = std::erfc(3.5 / std::sqrt(2.0));
  CHECK_ABS(double(beyond) / n, p, 5.0 * std::sqrt(p / n));
}

double mean_resultant_length(int64_t d, double kappa) { return math::bessel_iv_ratio(0.5 * d - 1.0, kappa); }

void test_moments_and_geometry() {
  for (int64_t d : {2, 3, 4, 10, 100}) {
    for (double kappa : {0.0, 0.3, 5.0, 300.0, 1e7}) {
      std::vector<double> mu(d, 0.0), z(d);
      mu[0] = -0.6;
      mu[d - 1] = 0.8;  // mu_0 < 0: the other branch of the sign trick
      const int n = 20000;
      double sum_t = 0.0, sum_t2 = 0.0;
      for (int i = 0; i < n; ++i) {
        random::PhiloxStream rng(1234, 0, i);
        const double t = sampling::sample_vmf(rng, mu.data(), 1, d, kappa, z.data());
        double norm2 = 0.0, w = 0.0;
        for (int64_t j = 0; j < d; ++j) {
          norm2 += z[j] * z[j];
          w += mu[j] * z[j];
        }
        CHECK_ABS(norm2, 1.0, 1e-14);
        CHECK_ABS(1.0 - w, t, 1e-14);  // the returned t is 1 - mu^T z
        sum_t += t;
        sum_t2 += t * t;
      }
      // E[1 - w] = 1 - A_d(kappa), relative to itself: keeps its accuracy where w rounds to 1.
      const double mean_t = sum_t / n;
      const double se_t = std::sqrt(std::fmax(sum_t2 / n - mean_t * mean_t, 0.0) / n);
      const double one_minus_a = math::bessel_iv_ratio_complement(0.5 * d - 1.0, kappa);
      CHECK_TRUE(std::fabs(mean_t - one_minus_a) <= 5.0 * se_t + 1e-12 * one_minus_a);
    }
  }
}

void test_edges() {
  const double inf = std::numeric_limits<double>::infinity();
  double mu[3] = {0.0, 0.0, 1.0}, z[3];
  random::PhiloxStream rng(7, 0, 0);
  CHECK_TRUE(sampling::sample_vmf(rng, mu, 1, 3, inf, z) == 0.0);
  CHECK_TRUE(z[0] == 0.0 && z[1] == 0.0 && z[2] == 1.0);
  CHECK_TRUE(std::isnan(sampling::sample_vmf(rng, mu, 1, 3, -1.0, z)) && std::isnan(z[0]));
  CHECK_TRUE(std::isnan(sampling::sample_vmf(rng, mu, 1, 3, std::nan(""), z)) && std::isnan(z[2]));
  // mu = +e1 and -e1: the rotation is defined (no 0/0).
  for (double sign : {1.0, -1.0}) {
    double e[4] = {sign, 0.0, 0.0, 0.0}, out[4];
    sampling::sample_vmf(rng, e, 1, 4, 2.0, out);
    double norm2 = 0.0;
    for (double v : out) norm2 += v * v;
    CHECK_ABS(norm2, 1.0, 1e-14);
  }
}

void test_d3_gradient_against_inverse_cdf() {
  // d = 3: t(u, kappa) = -log(u + (1 - u) e^{-2 kappa}) / kappa exactly, so dw/dkappa = -dt/dkappa at fixed u.
  for (double kappa : {0.5, 2.0, 20.0, 200.0}) {
    for (double u : {0.1, 0.5, 0.9}) {
      auto t_of = [u](double k) { return -std::log(u + (1.0 - u) * std::exp(-2.0 * k)) / k; };
      const double h = 1e-5 * kappa;
      const double fd = -(t_of(kappa + h) - t_of(kappa - h)) / (2.0 * h);
      const double one_minus_a = math::bessel_iv_ratio_complement(0.5, kappa);
      CHECK_REL(sampling::vmf_w_grad_kappa(3, kappa, t_of(kappa), one_minus_a), fd, 1e-7);
    }
  }
}

void test_gradient_is_unbiased_on_average() {
  // E[dw/dkappa] = d/dkappa E[w] = A_d'(kappa) = 1 - A^2 - (d-1) A / kappa.
  for (int64_t d : {2, 5, 10, 1000}) {
    for (double kappa : {0.5, 2.0, 20.0, 2000.0}) {
      const int n = 20000;
      std::vector<double> mu(d, 0.0), z(d);
      mu[0] = 1.0;
      const double a = mean_resultant_length(d, kappa);
      const double one_minus_a = math::bessel_iv_ratio_complement(0.5 * d - 1.0, kappa);
      double s = 0.0, s2 = 0.0;
      for (int i = 0; i < n; ++i) {
        random::PhiloxStream rng(99, 0, i);
        const double t = sampling::sample_vmf(rng, mu.data(), 1, d, kappa, z.data());
        const double g = sampling::vmf_w_grad_kappa(d, kappa, t, one_minus_a);
        s += g;
        s2 += g * g;
      }
      const double mean = s / n, se = std::sqrt((s2 / n - mean * mean) / n);
      const double exact = 1.0 - a * a - (d - 1.0) * a / kappa;
      CHECK_TRUE(std::fabs(mean - exact) <= 4.0 * se);
    }
  }
}

void test_loc_gradient_against_finite_differences() {
  // With the random stream fixed, z is a smooth function of mu (away from mu_0 = 0); compare the
  // backward's loc gradient of f(z) = c^T z with central differences along each coordinate (of the formula
  // as implemented, which is defined off the sphere too), and the kappa gradient with the same at d = 3,
  // where t(kappa) at a fixed uniform is exact.
  const int64_t d = 5;
  const double kappa = 7.0;
  const double c[5] = {0.3, -1.0, 0.5, 2.0, -0.7};
  for (double first : {0.8, -0.5}) {
    double mu[5] = {first, 0.2, -0.3, 0.1, 0.0};
    double norm = 0.0;
    for (double v : mu) norm += v * v;
    for (double& v : mu) v /= std::sqrt(norm);
    double z[5], grad_mu[5];
    random::PhiloxStream rng(5, 0, 3);
    const double t = sampling::sample_vmf(rng, mu, 1, d, kappa, z);
    sampling::vmf_sample_backward(c, z, mu, d, kappa, t, 0.0, grad_mu);
    {
      double z3[3], mu3[3] = {mu[0], mu[1], mu[2]};
      double n3 = std::sqrt(mu3[0] * mu3[0] + mu3[1] * mu3[1] + mu3[2] * mu3[2]);
      for (double& v : mu3) v /= n3;
      random::PhiloxStream r0(5, 0, 4);
      const double t3 = sampling::sample_vmf(r0, mu3, 1, 3, kappa, z3);
      const double gk = sampling::vmf_sample_backward(c, z3, mu3, 3, kappa, t3,
                                                      math::bessel_iv_ratio_complement(0.5, kappa), static_cast<double*>(nullptr));
      auto fk = [&](double k) {
        double out[3];
        random::PhiloxStream r(5, 0, 4);
        sampling::sample_vmf(r, mu3, 1, 3, k, out);
        return c[0] * out[0] + c[1] * out[1] + c[2] * out[2];
      };
      CHECK_ABS(gk, (fk(kappa + 1e-5) - fk(kappa - 1e-5)) / 2e-5, 1e-7);
    }
    for (int64_t j = 0; j < d; ++j) {
      auto f = [&](double step) {
        double m[5], out[5];
        for (int64_t k = 0; k < d; ++k) m[k] = mu[k] + (k == j ? step : 0.0);
        random::PhiloxStream r(5, 0, 3);
        sampling::sample_vmf(r, m, 1, d, kappa, out);
        double s = 0.0;
        for (int64_t k = 0; k < d; ++k) s += c[k] * out[k];
        return s;
      };
      const double h = 1e-6;
      CHECK_ABS(grad_mu[j], (f(h) - f(-h)) / (2.0 * h), 1e-7);
    }
  }
}

}  // namespace

int main() {
  test_philox_known_answers();
  test_normal_sources();
  test_moments_and_geometry();
  test_edges();
  test_d3_gradient_against_inverse_cdf();
  test_gradient_is_unbiased_on_average();
  test_loc_gradient_against_finite_differences();
  DHVC_TEST_MAIN_RETURN();
}
