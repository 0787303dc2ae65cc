// Closed forms of the von Mises-Fisher distribution on S^{d-1} (shared/KERNELS.md section 2):
//   f(z) = C_d(kappa) exp(kappa mu^T z),  C_d(kappa) = kappa^nu / ((2 pi)^{d/2} I_nu(kappa)),  nu = d/2 - 1.
// Computed as log C_d(kappa) = -log |S^{d-1}| - log H_nu(kappa), |S^{d-1}| = 2 pi^{d/2} / Gamma(d/2),
// which avoids the cancellation between nu log kappa and log I_nu(kappa) when kappa << nu and gives the
// uniform density at kappa = 0 exactly. The mean resultant length A_d(kappa) = R_nu(kappa) and its
// derivative are bessel_iv_ratio and bessel_iv_ratio_dx of bessel.h.
#pragma once

#include <math.h>

#include "dhvc/macros.h"
#include "dhvc/math/bessel.h"

namespace dhvc {
namespace math {

// log |S^{d-1}| = log 2 + (d/2) log pi - lgamma(d/2), d >= 1.
DHVC_HOST_DEVICE DHVC_INLINE double log_sphere_area(double d) {
  return detail::kLog2 + 0.5 * d * detail::kLogPi - lgamma(0.5 * d);
}

// log C_d(kappa). d >= 2 (NaN otherwise); kappa < 0 or NaN -> NaN; kappa = +inf -> +inf.
DHVC_HOST_DEVICE DHVC_INLINE double vmf_log_normalizer(double d, double kappa) {
  if (detail::is_nan(kappa) || detail::is_nan(d) || kappa < 0.0 || d < 2.0) return detail::nan_value();
  if (detail::is_inf(kappa)) return detail::inf_value();
  return -log_sphere_area(d) - log_bessel_h(0.5 * d - 1.0, kappa);
}

// kappa = A_d^{-1}(rbar), the maximum-likelihood concentration for a mean resultant length rbar in [0, 1).
// Banerjee et al. (2005)'s start kappa0 = rbar (d - rbar^2) / (1 - rbar^2) (within 4% everywhere), then
// Halley steps on f(kappa) = A_d(kappa) - rbar, written as (1 - rbar) - (1 - A_d(kappa)) for rbar >= 1/2 so
// that it keeps its digits as rbar -> 1 (kappa ~ (d - 1) / (2 (1 - rbar))), f' = A_d', f'' = A_d'' (bessel.h).
// Converges to ~1e-15 relative in 2-3 steps; at most 8. rbar = 0 -> 0, rbar >= 1 -> +inf, else NaN.
DHVC_HOST_DEVICE DHVC_INLINE double vmf_kappa_mle(double d, double rbar) {
  if (detail::is_nan(rbar) || detail::is_nan(d) || rbar < 0.0 || d < 2.0) return detail::nan_value();
  if (rbar == 0.0) return 0.0;
  if (rbar >= 1.0) return detail::inf_value();
  const double nu = 0.5 * d - 1.0;
  const double one_minus_rbar = 1.0 - rbar;  // exact for rbar >= 1/2 (Sterbenz)
  double kappa = rbar * (d - rbar * rbar) / (one_minus_rbar * (1.0 + rbar));
  for (int i = 0; i < 8; ++i) {
    // f = A - rbar where rbar is small (relative accuracy of A), via the complements where it is near 1.
    const double f = rbar < 0.5 ? bessel_iv_ratio(nu, kappa) - rbar
                                : one_minus_rbar - bessel_iv_ratio_complement(nu, kappa);
    const double f1 = bessel_iv_ratio_dx(nu, kappa);
    const double f2 = bessel_iv_ratio_dx2(nu, kappa);
    double step = 2.0 * f * f1 / (2.0 * f1 * f1 - f * f2);
    if (!(fabs(step) < kappa)) step = f / f1;  // fall back to Newton if Halley's denominator misbehaves
    double next = kappa - step;
    if (!(next > 0.0)) next = 0.5 * kappa;  // stay in the domain
    const bool done = fabs(next - kappa) <= 1e-15 * next;
    kappa = next;
    if (done) break;
  }
  return kappa;
}

}  // namespace math
}  // namespace dhvc
