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

}  // namespace math
}  // namespace dhvc
