// Modified Bessel functions of the first kind for large real orders, in double precision:
//   log_bessel_iv(nu, x)        = log I_nu(x)
//   bessel_iv_ratio(nu, x)      = R_nu(x) = I_{nu+1}(x) / I_nu(x)
//   bessel_iv_ratio_complement(nu, x) = 1 - R_nu(x), accurate as R -> 1
//   bessel_iv_ratio_dx(nu, x)   = d/dx R_nu(x)
//   bessel_iv_ratio_dx2(nu, x)  = d^2/dx^2 R_nu(x)
//   log_bessel_h(nu, x)         = log H_nu(x) = log 0F1(; nu + 1; x^2 / 4)
//                               = log I_nu(x) - nu log(x / 2) + lgamma(nu + 1)
// Domain nu >= 0, x >= 0. Edge cases, checked first and in this order (shared/KERNELS.md section 1):
//   NaN in -> NaN; nu < 0 or x < 0 -> NaN; nu = +inf -> log I = -inf, R = 0 (NaN if x = +inf too);
//   x = 0 -> log I_0(0) = 0, log I_nu(0) = -inf (nu > 0), R = 0, dR/dx = 1 / (2 nu + 2), log H = 0;
//   x = +inf -> log I = +inf, R = 1, dR/dx = 0, log H = +inf.
//
// Regions for log I_nu(x) (each about 1e-15 relative where it is used):
//   1. nu >= kOlverMinOrder: Olver's uniform expansion (DLMF 10.41.3) with K(nu) Debye terms,
//      uniform in x / nu, so it serves every x > 0.
//   2. nu < kOlverMinOrder and x^2 / 4 <= nu + 1: the power series of I_nu (DLMF 10.25.2), at most
//      ~25 terms since the term ratio (x^2/4) / (k (nu + k)) is <= 1 at k = 1 and falls like 1/k^2.
//   3. nu < kOlverMinOrder otherwise: shift the order up to mu = nu + n >= kOlverMinOrder and use
//      log I_nu = log I_mu - sum_{k=0}^{n-1} log R_{nu+k}, one continued fraction for R_{mu-1} and
//      the downward recurrence R_{m-1} = 1 / (2m / x + R_m) (stable in this direction) for the rest.
// The ratio comes from Perron's continued fraction (Gautschi & Slavik 1978) summed as a forward series of
// positive terms, which converges for every x > 0 (<= ~50 terms over nu <= 1e4, x <= 1e6).
#pragma once

#include <math.h>

#include "dhvc/macros.h"
#include "dhvc/math/debye_coefficients.h"
#include "dhvc/math/eta_taylor.h"

namespace dhvc {
namespace math {

// Olver's expansion is used from this order up; below it the Debye series loses accuracy (2.9 nats of
// error at nu <= 1, shared/KERNELS.md) and the order is shifted up instead.
constexpr double kOlverMinOrder = 20.0;
// Safety cap on continued-fraction and series terms; the measured maximum is about 50.
constexpr int kMaxTerms = 1000;

namespace detail {

constexpr double kLog2Pi = 1.8378770664093454836;  // log(2 pi)
constexpr double kLog2 = 0.69314718055994530942;
constexpr double kLogPi = 1.1447298858494001741;
constexpr double kSeriesTol = 1e-17;

DHVC_HOST_DEVICE DHVC_INLINE double nan_value() { return NAN; }
DHVC_HOST_DEVICE DHVC_INLINE double inf_value() { return INFINITY; }
DHVC_HOST_DEVICE DHVC_INLINE bool is_nan(double v) { return v != v; }
DHVC_HOST_DEVICE DHVC_INLINE bool is_inf(double v) { return fabs(v) == INFINITY; }

// Perron's continued fraction for R_nu(x), x > 0 finite, with v = nu + 1:
//   R = x / (b_0 + F),  b_0 = x + 2v,  F = a_1 / (b_1 + a_2 / (b_2 + ...)),
//   a_k = -(2v + 2k - 1) x,  b_k = 2(v + x) + k  (k >= 1).
// F = (a_1 / b_1) G with G = 1 / (1 + e_2 / (1 + e_3 / (1 + ...))), e_k = a_k / (b_{k-1} b_k) in
// (-1/4, 0). G is summed as the series sum_m t_m of Gautschi (1967): t_0 = 1, rho_0 = 0,
// rho_m = -e (1 + rho_{m-1}) / (1 + e (1 + rho_{m-1})), t_m = rho_m t_{m-1}; every t_m >= 0, so the
// sum has no cancellation. Returns the pieces that the ratio, 1 - R and dR/dx are built from.
struct PerronParts {
  double g_minus_1;  // G - 1 >= 0, summed on its own so that it keeps full relative accuracy
  double f;          // F = (a_1 / b_1) G < 0
  double den;        // b_0 + F = x + 2v + F > 0
  double b1;         // b_1
};

DHVC_HOST_DEVICE DHVC_INLINE PerronParts perron_parts(double nu, double x) {
  const double v = nu + 1.0;
  // a_k = -c_k x with c_k = 2v + 2k - 1; products are split as (c / b) (x / b') so that nothing
  // overflows for x up to the largest double.
  double b_prev = 2.0 * (v + x) + 1.0;  // b_1
  double c = 2.0 * v + 1.0;             // c_1
  const double f1 = -c * (x / b_prev);
  double t = 1.0, rho = 0.0, tail = 0.0;
  for (int k = 2; k < kMaxTerms; ++k) {
    c += 2.0;
    const double b = b_prev + 1.0;
    const double e = -(c / b_prev) * (x / b);
    const double q = e * (1.0 + rho);
    rho = -q / (1.0 + q);
    t *= rho;
    tail += t;
    b_prev = b;
    if (t <= kSeriesTol * (1.0 + tail)) break;
  }
  PerronParts out;
  out.g_minus_1 = tail;
  out.f = f1 * (1.0 + tail);
  out.den = x + 2.0 * v + out.f;
  out.b1 = 2.0 * (v + x) + 1.0;
  return out;
}

// sum_{k>=1} t_k of the power series S = sum_{k>=0} t_k, t_0 = 1, t_k = t_{k-1} q / (k (nu + k)),
// q = x^2 / 4, so that log S = log1p(result) keeps full relative accuracy when S is close to 1.
DHVC_HOST_DEVICE DHVC_INLINE double series_tail(double nu, double q) {
  double t = 1.0, sum = 0.0;
  for (int k = 1; k < kMaxTerms; ++k) {
    t *= q / (k * (nu + k));
    sum += t;
    if (t <= kSeriesTol * sum) break;
  }
  return sum;
}

// Number of Debye terms for order nu: the smallest K with max_p |u_{K+1}(p)| / nu^{K+1} < 2e-17
// (max_p |u_k| measured on [0, 1] with tools/gen_debye_coefficients.py's exact polynomials; at nu = 20
// K = 12 leaves 6e-16).
DHVC_HOST_DEVICE DHVC_INLINE int debye_terms(double nu) {
  if (nu < 40.0) return 12;
  if (nu < 50.0) return 10;
  if (nu < 70.0) return 9;
  if (nu < 100.0) return 8;
  if (nu < 200.0) return 7;
  if (nu < 500.0) return 6;
  if (nu < 2000.0) return 5;
  if (nu < 1e4) return 4;
  if (nu < 1e5) return 3;
  if (nu < 4e7) return 2;
  return 1;
}

// sum_{k=1}^{K} u_k(p) / nu^k with u_k(p) = p^k P_k(p^2) (DLMF 10.41.10); |result| < 0.005 for nu >= 20.
DHVC_HOST_DEVICE DHVC_INLINE double debye_tail(double nu, double p) {
  const int K = debye_terms(nu);
  const double t = p * p;
  const double r = p / nu;
  double rk = r;
  double sum = rk * debye_pk<1>(t);
#define DHVC_DEBYE_TERM(k)        \
  if (K >= k) {                   \
    rk *= r;                      \
    sum += rk * debye_pk<k>(t);   \
  }
  DHVC_DEBYE_TERM(2)
  DHVC_DEBYE_TERM(3)
  DHVC_DEBYE_TERM(4)
  DHVC_DEBYE_TERM(5)
  DHVC_DEBYE_TERM(6)
  DHVC_DEBYE_TERM(7)
  DHVC_DEBYE_TERM(8)
  DHVC_DEBYE_TERM(9)
  DHVC_DEBYE_TERM(10)
  DHVC_DEBYE_TERM(11)
  DHVC_DEBYE_TERM(12)
#undef DHVC_DEBYE_TERM
  return sum;
}

// sqrt(1 + z^2), z >= 0, without overflow (cheaper than hypot; z^2 is exact enough to 1e150).
DHVC_HOST_DEVICE DHVC_INLINE double sqrt1pz2(double z) { return z < 1e150 ? sqrt(1.0 + z * z) : z; }

// Olver's uniform expansion, nu >= kOlverMinOrder, 0 < x < inf. With z = x / nu, s = sqrt(1 + z^2),
// p = 1 / s, eta = s + log(z / (1 + s)) (DLMF 10.41.3):
//   log I_nu(nu z) = nu eta - log(2 pi nu) / 2 - log(s) / 2 + log sum_k u_k(p) / nu^k,
// with the last three terms taken as one log, log((1 + sum_{k>=1}) / sqrt(nu s)) - log(2 pi) / 2: two logs
// per element instead of four (the logs are most of the cost).
// Near the root z0 of eta (|z - z0| < 0.01, where |log I| is small against nu), eta is a Taylor polynomial in
// dz = (x - z0 nu) / nu, formed with one fma so that nu eta keeps its relative accuracy (eta_taylor.h).
DHVC_HOST_DEVICE DHVC_INLINE double log_iv_olver(double nu, double x) {
  const double z = x / nu;
  const double s = sqrt1pz2(z);
  const double tail = debye_tail(nu, 1.0 / s);
  double eta;
  if (fabs(z - kEtaRootHi) < kEtaRootWindow) {
    eta = eta_near_root((fma(-kEtaRootHi, nu, x) - kEtaRootLo * nu) / nu);
  } else {
    eta = s + log(z / (1.0 + s));
  }
  return nu * eta + log((1.0 + tail) / sqrt(nu * s)) - 0.5 * kLog2Pi;
}

// Stirling's remainder lgamma(nu + 1) - (nu + 1/2) log(nu) + nu - log(2 pi) / 2
// = sum_j B_2j / (2j (2j - 1) nu^(2j - 1)) (DLMF 5.11.1), 7 terms: < 1e-17 for nu >= 20.
DHVC_HOST_DEVICE DHVC_INLINE double stirling_remainder(double nu) {
  const double r = 1.0 / nu;
  const double r2 = r * r;
  return r * (1.0 / 12.0 +
              r2 * (-1.0 / 360.0 +
                    r2 * (1.0 / 1260.0 +
                          r2 * (-1.0 / 1680.0 +
                                r2 * (1.0 / 1188.0 + r2 * (-691.0 / 360360.0 + r2 * (1.0 / 156.0)))))));
}

// log H_nu(x) from Olver's expansion with the large terms cancelled analytically: subtracting
// nu log(x/2) - lgamma(nu + 1) from the expansion above and using Stirling's series leaves
//   log H_nu = nu (w - log1p(w / 2)) - log(s) / 2 + log sum_k u_k(p) / nu^k + stirling_remainder(nu),
// w = s - 1 = z^2 / (1 + s) >= 0, and w - log1p(w / 2) >= w / 2 has no cancellation. This is the form
// that keeps the vMF normaliser exact when x << nu (shared/KERNELS.md section 2).
DHVC_HOST_DEVICE DHVC_INLINE double log_h_olver(double nu, double x) {
  const double z = x / nu;
  const double s = sqrt1pz2(z);
  const double w = z * (z / (1.0 + s));
  const double tail = debye_tail(nu, 1.0 / s);
  // log(s) = log1p(z^2) / 2: s itself is 1 + z^2/2 rounded, which would cost log H its relative accuracy
  // where it is tiny (x << nu). log1p(tail) and stirling_remainder(nu) cancel to O(z^2) as they should.
  const double log_s = z < 1e150 ? 0.5 * log1p(z * z) : log(z);
  return nu * (w - log1p(0.5 * w)) - 0.5 * log_s + log1p(tail) + stirling_remainder(nu);
}

// Region 3: nu < kOlverMinOrder and x^2 / 4 > nu + 1 (so x > 2 and every ratio below is > 0.04: the
// product of at most 20 of them cannot underflow).
DHVC_HOST_DEVICE DHVC_INLINE double log_iv_shifted(double nu, double x) {
  const int n = static_cast<int>(ceil(kOlverMinOrder - nu));
  const double mu = nu + n;
  const PerronParts cf = perron_parts(mu - 1.0, x);
  double r = x / cf.den;  // R_{mu-1}
  double prod = r;
  for (int k = n - 1; k >= 1; --k) {
    r = 1.0 / (2.0 * (nu + k) / x + r);  // R_{nu+k-1} from R_{nu+k}
    prod *= r;
  }
  return log_iv_olver(mu, x) - log(prod);
}

}  // namespace detail

// I_{nu+1}(x) / I_nu(x).
DHVC_HOST_DEVICE DHVC_INLINE double bessel_iv_ratio(double nu, double x) {
  if (detail::is_nan(nu) || detail::is_nan(x) || nu < 0.0 || x < 0.0) return detail::nan_value();
  if (detail::is_inf(nu)) return detail::is_inf(x) ? detail::nan_value() : 0.0;
  if (x == 0.0) return 0.0;
  if (detail::is_inf(x)) return 1.0;
  return x / detail::perron_parts(nu, x).den;
}

// 1 - R_nu(x), computed without forming R: (2v + F) / (x + 2v + F) from the continued fraction, where
// 2v + F >= v - 1/2 has no cancellation, so it stays accurate when R -> 1 (x >> nu: 1 - R ~ (2nu+1)/(2x)),
// e.g. for 1 - A_d(kappa) of a concentrated vMF.
DHVC_HOST_DEVICE DHVC_INLINE double bessel_iv_ratio_complement(double nu, double x) {
  if (detail::is_nan(nu) || detail::is_nan(x) || nu < 0.0 || x < 0.0) return detail::nan_value();
  if (detail::is_inf(nu)) return detail::is_inf(x) ? detail::nan_value() : 1.0;
  if (x == 0.0) return 1.0;
  if (detail::is_inf(x)) return 0.0;
  const detail::PerronParts cf = detail::perron_parts(nu, x);
  return (2.0 * (nu + 1.0) + cf.f) / cf.den;
}

namespace detail {

// d/dx R_nu(x) = 1 - R^2 - (2 nu + 1) R / x, from the parts of perron_parts, rearranged per region so that
// the leading terms cancel analytically (den = x + 2v + F, v = nu + 1):
//   x <  v:  R' = (1 + x + F) / den - R^2,  x + F = x (2x - (2v + 1)(G - 1)) / b_1
//            (the textbook form has 1 - (2nu+1)/(2nu+2) cancelling; this one has no O(1) cancellation);
//   x >= v:  R' = [(2v + 1)(2v + 1 - 2x (G - 1)) / b_1 - (2v + F)(1 - R)] / den,  1 - R = (2v + F) / den
//            (where 1 - R^2 and (2nu+1) R / x both tend to (2nu+1)/x).
// x + F is returned too: the second derivative needs it. The relative error left is about nu * 1e-16 near
// x ~ nu, where R' ~ 1 / nu is a difference of O(1) quantities in every form.
DHVC_HOST_DEVICE DHVC_INLINE double ratio_dx_from_parts(double nu, double x, const PerronParts& cf,
                                                        double* x_plus_f) {
  const double v = nu + 1.0;
  const double r = x / cf.den;
  *x_plus_f = x * ((2.0 * x - (2.0 * v + 1.0) * cf.g_minus_1) / cf.b1);
  if (x < v) return (1.0 + *x_plus_f) / cf.den - r * r;
  const double one_minus_r = (2.0 * v + cf.f) / cf.den;
  const double lead = (2.0 * v + 1.0) * ((2.0 * v + 1.0 - 2.0 * x * cf.g_minus_1) / cf.b1);
  return (lead - (2.0 * v + cf.f) * one_minus_r) / cf.den;
}

}  // namespace detail

// d/dx R_nu(x); 1 / (2 nu + 2) at x = 0.
DHVC_HOST_DEVICE DHVC_INLINE double bessel_iv_ratio_dx(double nu, double x) {
  if (detail::is_nan(nu) || detail::is_nan(x) || nu < 0.0 || x < 0.0) return detail::nan_value();
  if (detail::is_inf(nu)) return detail::is_inf(x) ? detail::nan_value() : 0.0;
  if (x == 0.0) return 0.5 / (nu + 1.0);
  if (detail::is_inf(x)) return 0.0;
  double x_plus_f;
  return detail::ratio_dx_from_parts(nu, x, detail::perron_parts(nu, x), &x_plus_f);
}

// d^2/dx^2 R_nu(x), by differentiating the Riccati equation R' = 1 - R^2 - c R / x (c = 2 nu + 1):
//   R'' = -2 R R' - (c / x) (R' - R / x);  0 at x = 0 (R is odd in x).
// R' - R / x = (x + F) / den - R^2 for x < v: the textbook form loses all digits as x -> 0 (its two
// terms agree to O(x^2)); this one keeps a relative error of about nu * 1e-16.
DHVC_HOST_DEVICE DHVC_INLINE double bessel_iv_ratio_dx2(double nu, double x) {
  if (detail::is_nan(nu) || detail::is_nan(x) || nu < 0.0 || x < 0.0) return detail::nan_value();
  if (detail::is_inf(nu)) return detail::is_inf(x) ? detail::nan_value() : 0.0;
  if (x == 0.0 || detail::is_inf(x)) return 0.0;
  const detail::PerronParts cf = detail::perron_parts(nu, x);
  double x_plus_f;
  const double r = x / cf.den;
  const double rp = detail::ratio_dx_from_parts(nu, x, cf, &x_plus_f);
  const double d = (x < nu + 1.0) ? x_plus_f / cf.den - r * r : rp - r / x;
  return -2.0 * r * rp - ((2.0 * nu + 1.0) / x) * d;
}

// log I_nu(x).
DHVC_HOST_DEVICE DHVC_INLINE double log_bessel_iv(double nu, double x) {
  if (detail::is_nan(nu) || detail::is_nan(x) || nu < 0.0 || x < 0.0) return detail::nan_value();
  if (detail::is_inf(nu)) return detail::is_inf(x) ? detail::nan_value() : -detail::inf_value();
  if (x == 0.0) return nu == 0.0 ? 0.0 : -detail::inf_value();
  if (detail::is_inf(x)) return detail::inf_value();
  if (nu >= kOlverMinOrder) return detail::log_iv_olver(nu, x);
  const double q = 0.25 * x * x;
  if (q <= nu + 1.0) {
    // nu log(x/2) is 0 at nu = 0 (x > 0 here), never 0 * inf.
    return nu * log(0.5 * x) - lgamma(nu + 1.0) + log1p(detail::series_tail(nu, q));
  }
  return detail::log_iv_shifted(nu, x);
}

// log H_nu(x) = log 0F1(; nu + 1; x^2 / 4) >= 0, computed without forming log I_nu when x << nu.
DHVC_HOST_DEVICE DHVC_INLINE double log_bessel_h(double nu, double x) {
  if (detail::is_nan(nu) || detail::is_nan(x) || nu < 0.0 || x < 0.0) return detail::nan_value();
  if (x == 0.0) return 0.0;
  if (detail::is_inf(x)) return detail::inf_value();
  if (detail::is_inf(nu)) return 0.0;
  const double q = 0.25 * x * x;
  // Olver's form leaves an absolute error of ~1e-16 / (12 nu) (its Debye and Stirling sums cancel); where
  // log H ~ q / (nu + 1) is below 1e-3 the power series (a few terms there) keeps the relative accuracy.
  if (nu >= kOlverMinOrder && q > 1e-3 * (nu + 1.0)) return detail::log_h_olver(nu, x);
  if (q <= nu + 1.0) return log1p(detail::series_tail(nu, q));
  return detail::log_iv_shifted(nu, x) - nu * log(0.5 * x) + lgamma(nu + 1.0);
}

}  // namespace math
}  // namespace dhvc
