// von Mises-Fisher sampling on S^{d-1} (Wood 1994) in the stable form of shared/KERNELS.md 2.1, and its
// reparameterisation gradients: with respect to kappa by implicit reparameterisation (Figurnov, Mohamed &
// Mnih 2018), with respect to mu through the rotation.
//
// A sample is z = Q (w, sqrt(1 - w^2) v): w = mu^T z has density q(w) ~ exp(kappa w) (1 - w^2)^{(d-3)/2},
// v is uniform on S^{d-2} (d - 1 normals, normalised), Q is the Householder reflection (with the sign trick)
// that maps e1 to mu. Everything is carried in t = 1 - w, which Wood's transform gives in closed form, so
// a concentrated sample keeps its distance from mu (1 - w ~ (d-1) / (2 kappa)) at every kappa; the output is
// written as z = mu + Delta with Delta formed from small quantities.
//
// The samplers are templated on their random source (any type with uniform() and normal(), e.g.
// random::PhiloxStream) so that the CPU and CUDA kernels run this same code. The one exception is float32
// on a CPU with AVX-512 (csrc/cpu/vmf_sample_cpu.cpp), which vectorises the same formulas (t and the
// acceptance test in the 1 - w form, the d = 3 inverse CDF, the sign-trick rotation written as z = mu + Delta)
// with a cheaper draw of the symmetric Beta (Ulrich's polar form instead of two Gamma variates).
#pragma once

#include <math.h>
#include <stdint.h>

#include "dhvc/macros.h"
#include "dhvc/math/bessel.h"

namespace dhvc {
namespace sampling {

namespace detail {

// Gamma(alpha, 1) by Marsaglia & Tsang (2000); alpha < 1 through Gamma(alpha + 1) U^{1/alpha}.
template <typename Rng>
DHVC_HOST_DEVICE DHVC_INLINE double sample_gamma(Rng& rng, double alpha) {
  double boost = 1.0;
  if (alpha < 1.0) {
    boost = pow(rng.uniform(), 1.0 / alpha);
    alpha += 1.0;
  }
  const double dd = alpha - 1.0 / 3.0;
  const double c = 1.0 / sqrt(9.0 * dd);
  for (;;) {
    double x, v;
    do {
      x = rng.normal();
      v = 1.0 + c * x;
    } while (v <= 0.0);
    v = v * v * v;
    const double u = rng.uniform();
    // Marsaglia & Tsang's squeeze accepts ~98% of draws without the two logs of the exact test.
    const double x2 = x * x;
    if (u < 1.0 - 0.0331 * x2 * x2) return dd * v * boost;
    if (log(u) < 0.5 * x2 + dd - dd * v + dd * log(v)) return dd * v * boost;
  }
}

}  // namespace detail

// t = 1 - w for w = mu^T z, z ~ vMF(mu, kappa) on S^{d-1}; d >= 2, 0 <= kappa < inf.
//
// d = 3: the exact inverse CDF, t = -log(u + (1 - u) e^{-2 kappa}) / kappa, evaluated as
//   -log1p(-(1 - u)(1 - e^{-2 kappa})) / kappa  for kappa < 1 (no 0/0 as kappa -> 0: t -> 2(1 - u)), and
//   -logaddexp(log u, log(1 - u) - 2 kappa) / kappa  otherwise (no cancellation when u is tiny).
// Otherwise Wood's rejection sampler with eps ~ Beta((d-1)/2, (d-1)/2) = G1 / (G1 + G2):
//   b = (d-1) / (sqrt(4 kappa^2 + (d-1)^2) + 2 kappa)       (never the cancelling (-2kappa + sqrt(.))/(d-1))
//   t = 1 - w = 2 b eps / (1 - (1-b) eps) = 2 b G1 / (G2 + b G1)
//   accept if kappa (w - x0) + (d-1) log((1 + b) / (2 (1 - (1-b) eps))) >= log u,  x0 = (1-b)/(1+b),
//   w - x0 = 2 b (1 - 2 eps) / ((1 + b)(1 - (1-b) eps)) = 2 b (G2 - G1) / ((1 + b)(G2 + b G1)),
// with 1 - eps = G2 / (G1 + G2) taken from the Gamma draws, never formed as 1 - eps. The acceptance rate is
// above 0.68 for every d and kappa (shared/KERNELS.md), so the loop ends after 1.5 rounds on average.
template <typename Rng>
DHVC_HOST_DEVICE DHVC_INLINE double sample_one_minus_w(Rng& rng, int64_t d, double kappa) {
  if (d == 3) {
    const double u = rng.uniform();
    if (kappa == 0.0) return 2.0 * (1.0 - u);
    if (kappa < 1.0) return -log1p(-(1.0 - u) * (-expm1(-2.0 * kappa))) / kappa;
    const double a = log(u), b = log1p(-u) - 2.0 * kappa;
    const double hi = a > b ? a : b, lo = a > b ? b : a;
    return -(hi + log1p(exp(lo - hi))) / kappa;
  }
  const double dm1 = static_cast<double>(d - 1);
  const double b = dm1 / (sqrt(4.0 * kappa * kappa + dm1 * dm1) + 2.0 * kappa);
  const double alpha = 0.5 * dm1;
  const double log_half_one_plus_b = log1p(b) - math::detail::kLog2;
  for (;;) {
    const double g1 = detail::sample_gamma(rng, alpha);
    const double g2 = detail::sample_gamma(rng, alpha);
    const double denom = g2 + b * g1;  // (G1 + G2) (1 - (1-b) eps)
    const double sum = g1 + g2;
    const double w_minus_x0 = 2.0 * b * (g2 - g1) / ((1.0 + b) * denom);
    const double log_accept = kappa * w_minus_x0 + dm1 * (log_half_one_plus_b - log(denom / sum));
    // log u <= u - 1, so log_accept >= u - 1 accepts without computing log u.
    const double u = rng.uniform();
    if (log_accept >= u - 1.0 || log_accept >= log(u)) return 2.0 * b * g1 / denom;
  }
}

// One sample z ~ vMF(mu, kappa) on S^{d-1}, written to out[0..d-1]; returns t = 1 - mu^T z.
// mu: d components of a unit vector. kappa = +inf gives mu; kappa < 0 or NaN gives NaN.
//
// Rotation (shared/KERNELS.md 2.1): with sigma = +1 when mu_0 >= 0 and -1 otherwise, a = e1 + sigma mu,
// c = a^T a >= 2 (never the 0/0 of (e1 - mu)/|e1 - mu| at mu = e1), H = I - 2 a a^T / c and
// z = -sigma H x, which maps e1 to mu. With x = e1 + y, y = (-t, r v), r = sqrt(t (2 - t)):
//   z = mu - sigma (y - 2 (a^T y / c) a),
// so z - mu is computed from y, which is small when kappa is large, and keeps its relative accuracy.
// Two passes over out: the first draws the tangent normals into out[1..d-1], the second writes z.
template <typename Rng, typename MuT, typename OutT>
DHVC_HOST_DEVICE DHVC_INLINE double sample_vmf(Rng& rng, const MuT* mu, int64_t mu_stride, int64_t d,
                                               double kappa, OutT* out) {
  if (!(kappa >= 0.0)) {  // negative or NaN
    for (int64_t i = 0; i < d; ++i) out[i] = static_cast<OutT>(math::detail::nan_value());
    return math::detail::nan_value();
  }
  const double t = math::detail::is_inf(kappa) ? 0.0 : sample_one_minus_w(rng, d, kappa);
  const double r = sqrt(t * (2.0 - t));
  const double mu0 = static_cast<double>(mu[0]);
  const double sigma = mu0 >= 0.0 ? 1.0 : -1.0;
  const double a0 = 1.0 + sigma * mu0;
  double gg = 0.0, gm = 0.0, mm = 0.0;
  for (int64_t i = 1; i < d; ++i) {
    const double g = rng.normal();
    const double m = static_cast<double>(mu[i * mu_stride]);
    out[i] = static_cast<OutT>(g);
    gg += g * g;
    gm += g * m;
    mm += m * m;
  }
  // The tangent direction v = g / |g|; |g| = 0 has probability 0 but must not give NaN.
  const double inv_norm = gg > 0.0 ? 1.0 / sqrt(gg) : 0.0;
  const double c = a0 * a0 + mm;
  const double a_dot_y = -a0 * t + sigma * r * gm * inv_norm;
  const double coef = 2.0 * a_dot_y / c;
  out[0] = static_cast<OutT>(mu0 - sigma * (-t - coef * a0));
  for (int64_t i = 1; i < d; ++i) {
    const double m = static_cast<double>(mu[i * mu_stride]);
    const double y = r * static_cast<double>(out[i]) * inv_norm;
    out[i] = static_cast<OutT>(m - sigma * (y - coef * sigma * m));
  }
  return t;
}

namespace detail {

// log of the integrand of dw/dkappa in the angle phi (below), without its (cos phi - A) factor.
DHVC_HOST_DEVICE DHVC_INLINE double grad_log_integrand(double phi, double kappa, double theta, double dm2,
                                                       double log_sin_theta) {
  // cos(phi) - cos(theta) = 2 sin((theta - phi)/2) sin((theta + phi)/2) >= 0 without cancellation.
  const double gap = 2.0 * sin(0.5 * (theta - phi)) * sin(0.5 * (theta + phi));
  return kappa * gap + dm2 * log(sin(phi)) - (dm2 - 1.0) * log_sin_theta;
}

// The point in (lo, hi) where f = target, for f monotone on [lo, hi] with f(lo) - target and
// f(hi) - target of opposite signs, by bisection. The limits only need a few digits: the integrand is
// e^-40 of its peak there, and the split point only has to be near the peak.
template <typename F>
DHVC_HOST_DEVICE DHVC_INLINE double bisect(F f, double lo, double hi, double target, int halvings) {
  const bool rising = f(hi) > f(lo);
  for (int i = 0; i < halvings; ++i) {
    const double mid = 0.5 * (lo + hi);
    if ((f(mid) < target) == rising) lo = mid; else hi = mid;
  }
  return 0.5 * (lo + hi);
}

// 16-point Gauss-Legendre on [lo, hi] of (cos phi - A) exp(L(phi) - shift).
DHVC_HOST_DEVICE DHVC_INLINE double gauss_legendre16(double lo, double hi, double kappa, double theta, double dm2,
                                                     double log_sin_theta, double one_minus_a, double shift) {
  const double x[8] = {0.0950125098376374402, 0.2816035507792589132, 0.4580167776572273863,
                       0.6178762444026437484, 0.7554044083550030339, 0.8656312023878317439,
                       0.9445750230732325761, 0.9894009349916499326};
  const double w[8] = {0.1894506104550684963, 0.1826034150449235889, 0.1691565193950025382,
                       0.1495959888165767321, 0.1246289712555338720, 0.0951585116824927848,
                       0.0622535239386478929, 0.0271524594117540949};
  const double half = 0.5 * (hi - lo), mid = 0.5 * (hi + lo);
  double sum = 0.0;
  for (int j = 0; j < 8; ++j) {
    for (int side = -1; side <= 1; side += 2) {
      const double phi = mid + side * half * x[j];
      const double s = sin(0.5 * phi);
      // cos(phi) - A = (1 - A) - 2 sin^2(phi/2), accurate when both are ~ (d-1) / (2 kappa).
      const double factor = one_minus_a - 2.0 * s * s;
      sum += w[j] * factor * exp(grad_log_integrand(phi, kappa, theta, dm2, log_sin_theta) - shift);
    }
  }
  return sum * half;
}

}  // namespace detail

// dw/dkappa of implicit reparameterisation at a sample w = 1 - t of q(w) ~ exp(kappa w)(1 - w^2)^{(d-3)/2}:
//   dw/dkappa = -(dF(w; kappa)/dkappa) / q(w; kappa)
//             = integral_w^1 (s - A) exp(kappa (s - w)) ((1 - s^2) / (1 - w^2))^{(d-3)/2} ds
// (shared/KERNELS.md 2.2; A = A_d(kappa), one_minus_a = 1 - A). In the angle s = cos(phi), theta = acos(w):
//   = integral_0^theta (cos phi - A) exp(kappa (cos phi - cos theta)) sin(phi)^{d-2} / sin(theta)^{d-3} dphi,
// smooth for every d >= 2 (the (1 - s^2)^{-1/2} endpoint singularity of d = 2 is gone). Its log L(phi) rises
// to the mode phi* (kappa sin(phi) tan(phi) = d - 2) or to theta, whichever is first; the quadrature covers
// where L is within 40 of its maximum, in two 16-point Gauss-Legendre panels on each side of the maximum
// (measured: within 6e-12 of an mpmath-checked reference at every sample, tails included).
DHVC_HOST_DEVICE DHVC_INLINE double vmf_w_grad_kappa(int64_t d, double kappa, double t, double one_minus_a) {
  if (!(t > 0.0) || math::detail::is_inf(kappa)) return 0.0;
  const double theta = 2.0 * asin(sqrt(0.5 * (t < 2.0 ? t : 2.0)));
  const double dm2 = static_cast<double>(d - 2);
  const double log_sin_theta = log(sin(theta));
  auto L = [&](double phi) { return detail::grad_log_integrand(phi, kappa, theta, dm2, log_sin_theta); };
  // The maximum of L on (0, theta]: L'(phi) = -kappa sin(phi) + (d - 2) cot(phi) vanishes at phi*.
  double peak = theta;
  if (d > 2) {
    auto slope = [&](double phi) { return -kappa * sin(phi) * sin(phi) + dm2 * cos(phi); };  // sin(phi) L'
    if (slope(theta) < 0.0) peak = detail::bisect(slope, 0.0, theta, 0.0, 40);
  }
  const double top = L(peak);
  const double floor_level = top - 40.0;
  // Below peak * 1e-12 the integrand (~ phi^{d-2}) holds less than 1e-12 of the mass.
  double lo = 0.0;
  const double tiny = peak * 1e-12;
  if (d > 2 && tiny > 0.0 && L(tiny) < floor_level) lo = detail::bisect(L, tiny, peak, floor_level, 30);
  double hi = theta;
  if (peak < theta && L(theta) < floor_level) hi = detail::bisect(L, peak, theta, floor_level, 30);
  // Two panels on each side of the peak, split where the integrand has fallen by half of its range in
  // phi: the near half holds most of the mass and gets its own 16 points.
  double sum = 0.0;
  if (peak > lo) {
    const double mid = peak - 0.35 * (peak - lo);
    sum += detail::gauss_legendre16(lo, mid, kappa, theta, dm2, log_sin_theta, one_minus_a, top);
    sum += detail::gauss_legendre16(mid, peak, kappa, theta, dm2, log_sin_theta, one_minus_a, top);
  }
  if (hi > peak) {
    const double mid = peak + 0.35 * (hi - peak);
    sum += detail::gauss_legendre16(peak, mid, kappa, theta, dm2, log_sin_theta, one_minus_a, top);
    sum += detail::gauss_legendre16(mid, hi, kappa, theta, dm2, log_sin_theta, one_minus_a, top);
  }
  return sum * exp(top);
}

// Backward of one sample, the exact derivative of sample_vmf's formula z = mu - sigma (y - 2 (a^T y / c) a),
// a = e1 + sigma mu, c = a^T a, y = (-t, r v), with the random draws (t's Beta/uniform, v) held fixed and
// t moving with kappa by implicit reparameterisation. Given g = dLoss/dz, the sample z, t = 1 - w from the
// forward pass, mu and kappa (with one_minus_a = 1 - A_d(kappa)):
//   dLoss/dkappa = g^T (dz/dw) dw/dkappa,  dz/dw = e - (w / r^2) (z - mu + t e),  e = -sigma H e1 (= mu
//                  when |mu| = 1), r^2 = t (2 - t) = 1 - w^2;
//   dLoss/dmu    = g + 2 [y (a^T g) / c + p g / c - 2 p a (a^T g) / c^2],  p = a^T y,
//                  y = -sigma H (z - mu) recovered from the sample (H is an involution).
// grad_mu may be null when the loc gradient is not needed.
template <typename T>
DHVC_HOST_DEVICE DHVC_INLINE double vmf_sample_backward(const T* g, const T* z, const T* mu, int64_t d, double kappa,
                                                        double t, double one_minus_a, T* grad_mu) {
  const double mu0 = static_cast<double>(mu[0]);
  const double sigma = mu0 >= 0.0 ? 1.0 : -1.0;
  const double a0 = 1.0 + sigma * mu0;
  double c = 0.0, a_dot_dz = 0.0, a_dot_g = 0.0;  // dz = z - mu
  for (int64_t i = 0; i < d; ++i) {
    const double m = static_cast<double>(mu[i]);
    const double a = (i == 0 ? 1.0 : 0.0) + sigma * m;
    c += a * a;
    a_dot_dz += a * (static_cast<double>(z[i]) - m);
    a_dot_g += a * static_cast<double>(g[i]);
  }
  double grad_kappa = 0.0;
  if (t > 0.0 && !math::detail::is_inf(kappa)) {
    const double w = 1.0 - t;
    const double scale = w / (t * (2.0 - t));
    double g_dz_dw = 0.0;
    for (int64_t i = 0; i < d; ++i) {
      const double m = static_cast<double>(mu[i]);
      const double a = (i == 0 ? 1.0 : 0.0) + sigma * m;
      const double e = -sigma * ((i == 0 ? 1.0 : 0.0) - 2.0 * a0 * a / c);
      const double tangent = (static_cast<double>(z[i]) - m) + t * e;  // z - w e
      g_dz_dw += static_cast<double>(g[i]) * (e - scale * tangent);
    }
    grad_kappa = g_dz_dw * vmf_w_grad_kappa(d, kappa, t, one_minus_a);
  }
  if (grad_mu != nullptr) {
    // y = -sigma (dz - 2 (a^T dz / c) a), so p = a^T y = -sigma (a^T dz - 2 a^T dz) = sigma a^T dz.
    const double p = sigma * a_dot_dz;
    const double k = 2.0 * a_dot_dz / c;
    for (int64_t i = 0; i < d; ++i) {
      const double m = static_cast<double>(mu[i]);
      const double a = (i == 0 ? 1.0 : 0.0) + sigma * m;
      const double y = -sigma * ((static_cast<double>(z[i]) - m) - k * a);
      const double gi = static_cast<double>(g[i]);
      grad_mu[i] = static_cast<T>(gi + 2.0 * (y * a_dot_g / c + p * gi / c - 2.0 * p * a * a_dot_g / (c * c)));
    }
  }
  return grad_kappa;
}

}  // namespace sampling
}  // namespace dhvc
