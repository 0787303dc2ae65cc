// Rows of the vMF-mixture E-step, shared by the CPU and CUDA kernels of _vmfmm_em_statistics.
//
// A row holds the K scores s_k = log pi_k + log C_d(kappa_k) + kappa_k mu_k^T z_n; the point's log-likelihood
// is lse = log sum_k exp(s_k) and its responsibilities are r_k = exp(s_k - lse) (shared/KERNELS.md section 3).
// Stable form, one exponential per score:
//   m = max_k s_k,  e_k = exp(s_k - m) in [0, 1],  t = sum_k e_k in [1, K] (summed in double),
//   lse = m + log t,  r_k = e_k / t.
// Non-finite rows give what torch.logsumexp and exp(s - logsumexp(s)) give: a NaN score makes lse and every
// r_k NaN; a row of -inf scores (every component impossible) has lse = -inf and NaN responsibilities; a +inf
// score gives lse = +inf, r = NaN there and 0 elsewhere. The hard assignment is torch.argmax's: the first
// maximum, or the first NaN.
#pragma once

#include <math.h>
#include <stdint.h>
#include <string.h>

#include "dhvc/macros.h"

// Forced inlining, so that the CPU kernel's vectorised loops (compiled for several instruction sets) get
// their own copy of the element-wise functions below.
#if defined(__CUDACC__) || defined(__HIPCC__)
#define DHVC_ROW_INLINE __forceinline__
#elif defined(__GNUC__)
#define DHVC_ROW_INLINE inline __attribute__((always_inline))
#else
#define DHVC_ROW_INLINE inline
#endif

namespace dhvc {
namespace kernels {

// exp(x) for x <= 0, branch-free so that a loop over it vectorises (libm's exp does not, without fast-math).
// Cody-Waite reduction x = n ln 2 + r, n = round(x / ln 2), |r| <= ln(2) / 2, with ln 2 split in a high part
// of few bits (n ln2_hi exact) and a low part (fdlibm's constants); exp(r) by its Taylor polynomial of degree
// 13 (truncation below 5e-19 relative on |r| <= ln(2) / 2) by Horner; 2^n assembled in the exponent bits from
// the integer that adding 1.5 * 2^52 leaves in the low mantissa bits. Accuracy about 1 ulp. x < -708
// returns 0 (exp(x) < 3.4e-308: those terms are negligible next to the maximum's e = 1, and 2^n would leave
// the normal range); NaN returns NaN. Not for x > 0.
DHVC_HOST_DEVICE DHVC_ROW_INLINE double vmfmm_exp_nonpositive(double x) {
  const double xc = x < -708.0 ? -708.0 : x;  // NaN stays NaN
  const double shift = 6755399441055744.0;     // 1.5 * 2^52
  const double kd_shifted = xc * 1.4426950408889634074 + shift;
  uint64_t ki;
  memcpy(&ki, &kd_shifted, sizeof ki);
  const double kd = kd_shifted - shift;
  const double r = (xc - kd * 6.93147180369123816490e-01) - kd * 1.90821492927058770002e-10;
  double p = 1.0 / 6227020800.0;  // 1/13!
  p = p * r + 1.0 / 479001600.0;
  p = p * r + 1.0 / 39916800.0;
  p = p * r + 1.0 / 3628800.0;
  p = p * r + 1.0 / 362880.0;
  p = p * r + 1.0 / 40320.0;
  p = p * r + 1.0 / 5040.0;
  p = p * r + 1.0 / 720.0;
  p = p * r + 1.0 / 120.0;
  p = p * r + 1.0 / 24.0;
  p = p * r + 1.0 / 6.0;
  p = p * r + 0.5;
  p = p * r + 1.0;
  p = p * r + 1.0;
  // The low bits of ki are n (two's complement), n >= -1022; below -708 the scale is 0. An integer select, not
  // a floating one around the product: GCC then vectorises the loops around this function without
  // -fno-trapping-math.
  const uint64_t scale_bits = x < -708.0 ? 0 : (ki + 1023) << 52;
  double scale;
  memcpy(&scale, &scale_bits, sizeof scale);
  return p * scale;
}

// The float version: the same reduction with float constants, degree 7 (truncation below 6e-9 relative),
// 2^n from 1.5 * 2^23; x < -87 returns 0 (exp(x) < 1.7e-38). About 1 ulp.
DHVC_HOST_DEVICE DHVC_ROW_INLINE float vmfmm_exp_nonpositive(float x) {
  const float xc = x < -87.0f ? -87.0f : x;
  const float shift = 12582912.0f;  // 1.5 * 2^23
  const float kd_shifted = xc * 1.44269504088896341f + shift;
  uint32_t ki;
  memcpy(&ki, &kd_shifted, sizeof ki);
  const float kd = kd_shifted - shift;
  const float r = (xc - kd * 0.693145751953125f) - kd * 1.428606765330187045e-06f;
  float p = 1.0f / 5040.0f;
  p = p * r + 1.0f / 720.0f;
  p = p * r + 1.0f / 120.0f;
  p = p * r + 1.0f / 24.0f;
  p = p * r + 1.0f / 6.0f;
  p = p * r + 0.5f;
  p = p * r + 1.0f;
  p = p * r + 1.0f;
  const uint32_t scale_bits = x < -87.0f ? 0u : (ki + 127u) << 23;
  float scale;
  memcpy(&scale, &scale_bits, sizeof scale);
  return p * scale;
}

// log(x) for finite x >= 1 (the sums t = sum_k exp(s_k - m) in [1, K]), branch-free so that a loop over it
// vectorises, as vmfmm_exp_nonpositive. x = 2^n z with z in [0.7056, 1.4112) (the exponent taken from the bits
// after subtracting those of 0.7056, as musl's log does), then log z = 2 atanh(f) with f = (z - 1) / (z + 1),
// |f| <= 0.1726, by its odd series 2 (f + f^3/3 + ... + f^23/23) (truncation below 1e-18 relative), and n ln 2
// with ln 2 in fdlibm's two parts. At most 2 ulp (measured against libm: the rounding of f near x = 1). Not for
// x < 1, infinities or NaN.
DHVC_HOST_DEVICE DHVC_ROW_INLINE double vmfmm_log_at_least_one(double x) {
  const uint64_t off = 0x3fe6955500000000ULL;
  uint64_t bits;
  memcpy(&bits, &x, sizeof bits);
  const uint64_t shifted = bits - off;
  const int64_t n = static_cast<int64_t>(shifted) >> 52;
  const uint64_t z_bits = bits - (shifted & (UINT64_C(0xfff) << 52));
  double z;
  memcpy(&z, &z_bits, sizeof z);
  const double f = (z - 1.0) / (z + 1.0);
  const double f2 = f * f;
  double p = 1.0 / 23.0;
  p = p * f2 + 1.0 / 21.0;
  p = p * f2 + 1.0 / 19.0;
  p = p * f2 + 1.0 / 17.0;
  p = p * f2 + 1.0 / 15.0;
  p = p * f2 + 1.0 / 13.0;
  p = p * f2 + 1.0 / 11.0;
  p = p * f2 + 1.0 / 9.0;
  p = p * f2 + 1.0 / 7.0;
  p = p * f2 + 1.0 / 5.0;
  p = p * f2 + 1.0 / 3.0;
  const double nd = static_cast<double>(n);
  return nd * 6.93147180369123816490e-01 + (2.0 * f + (2.0 * f * f2 * p + nd * 1.90821492927058770002e-10));
}

DHVC_HOST_DEVICE DHVC_ROW_INLINE float vmfmm_libm_exp(float x) { return expf(x); }
DHVC_HOST_DEVICE DHVC_ROW_INLINE double vmfmm_libm_exp(double x) { return exp(x); }

// One row, element by element: the scores s[0], s[stride], ..., s[(k - 1) stride] (bias included) in, lse
// out; *argmax receives the hard assignment; when write_resp the responsibilities replace the scores. Every
// edge case of the header comment, with libm's exp. The CUDA kernel runs it on every row, the CPU kernel on
// blocks whose vectorised pass met a NaN or an infinite maximum.
template <typename T>
DHVC_HOST_DEVICE double vmfmm_row(T* s, int64_t k, int64_t stride, bool write_resp, int64_t* argmax) {
  T m = s[0];
  int64_t at = 0;
  for (int64_t j = 1; j < k; ++j) {
    const T v = s[j * stride];
    if (m == m && (v > m || v != v)) {  // a NaN maximum stays; the first NaN becomes the maximum
      m = v;
      at = j;
    }
  }
  *argmax = at;
  if (!(m > -INFINITY && m < INFINITY)) {
    // lse = m; exp(s - m) reproduces the composite's zeros and NaNs.
    if (write_resp) {
      for (int64_t j = 0; j < k; ++j) s[j * stride] = vmfmm_libm_exp(s[j * stride] - m);
    }
    return static_cast<double>(m);
  }
  double t = 0.0;
  for (int64_t j = 0; j < k; ++j) {
    const T e = vmfmm_libm_exp(s[j * stride] - m);
    if (write_resp) s[j * stride] = e;
    t += static_cast<double>(e);
  }
  if (write_resp) {
    const double inv = 1.0 / t;
    for (int64_t j = 0; j < k; ++j) s[j * stride] = static_cast<T>(static_cast<double>(s[j * stride]) * inv);
  }
  return static_cast<double>(m) + log(t);
}

}  // namespace kernels
}  // namespace dhvc
