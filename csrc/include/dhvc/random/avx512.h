// AVX-512 building blocks of the CPU vMF sampler (csrc/cpu/vmf_sample_cpu.cpp): Philox4x32-10 for 8 or 16
// counters at once, uniforms and Box-Muller normals made from its words, the elementary functions they need
// as polynomials (libm's calls do not vectorise), and a 16 x 16 transpose.
//
// Host-only, GCC or Clang on x86-64. Every function here is compiled for AVX-512 (F, DQ, BW, VL) and BMI2
// through a target attribute, whatever flags the including file is built with (setup.py builds for the
// x86-64 baseline), so it may be called only where cpu_has_avx512() is true: the caller picks a path once.
//
// Accuracy (tests_cpp/test_random_avx512.cpp measures it against libm): the double functions within a few
// ulp on the ranges stated; the float ones within a few float ulp. Each function states the inputs it is
// for; none handles NaN, infinities or subnormal inputs unless it says so.
#pragma once

#if defined(__x86_64__) && (defined(__GNUC__) || defined(__clang__)) && !defined(__CUDACC__)
#define DHVC_HAVE_AVX512_CODE 1

#include <stdint.h>

#include "dhvc/random/philox.h"

// GCC 12.1-12.2 warn that the _mm512_undefined_* placeholders inside many AVX-512 intrinsics are used
// uninitialised once those are inlined (GCC bug 105593, fixed in 12.3); the warning is spurious. Code that
// calls these functions wraps itself in DHVC_AVX512_DIAGNOSTICS_PUSH / _POP as this header does.
#if defined(__GNUC__) && !defined(__clang__)
#define DHVC_AVX512_DIAGNOSTICS_PUSH                                 \
  _Pragma("GCC diagnostic push") _Pragma("GCC diagnostic ignored \"-Wuninitialized\"") \
      _Pragma("GCC diagnostic ignored \"-Wmaybe-uninitialized\"")
#define DHVC_AVX512_DIAGNOSTICS_POP _Pragma("GCC diagnostic pop")
#else
#define DHVC_AVX512_DIAGNOSTICS_PUSH
#define DHVC_AVX512_DIAGNOSTICS_POP
#endif
DHVC_AVX512_DIAGNOSTICS_PUSH
#include <immintrin.h>

#define DHVC_AVX512_TARGET __attribute__((target("avx512f,avx512dq,avx512bw,avx512vl,bmi2,popcnt")))
#define DHVC_AVX512_INLINE DHVC_AVX512_TARGET __attribute__((always_inline)) inline

namespace dhvc {
namespace random {
namespace avx512 {

// The CPU has everything the functions below use. Checked once by the caller (cheap, but not free).
inline bool cpu_has_avx512() {
  __builtin_cpu_init();
  return __builtin_cpu_supports("avx512f") && __builtin_cpu_supports("avx512dq") &&
         __builtin_cpu_supports("avx512bw") && __builtin_cpu_supports("avx512vl") && __builtin_cpu_supports("bmi2");
}

// ---- Philox4x32-10 ---------------------------------------------------------------------------------------

// Four words of 16 lanes: word k of lane l is the k-th output of philox4x32_10 for lane l's counter.
struct Words16 {
  __m512i w0, w1, w2, w3;
};

// philox4x32_10 (random/philox.h) for 16 counters, lane l's counter (c0[l], c1[l], c2[l], c3[l]), one key.
// The 32 x 32 -> 64-bit products are taken on the even and odd lanes separately (vpmuludq).
DHVC_AVX512_INLINE Words16 philox16(__m512i c0, __m512i c1, __m512i c2, __m512i c3, uint32_t k0, uint32_t k1) {
  const __m512i m0 = _mm512_set1_epi32(static_cast<int>(kPhiloxM0));
  const __m512i m1 = _mm512_set1_epi32(static_cast<int>(kPhiloxM1));
  for (int round = 0; round < 10; ++round) {
    const __m512i p0e = _mm512_mul_epu32(c0, m0), p0o = _mm512_mul_epu32(_mm512_srli_epi64(c0, 32), m0);
    const __m512i p1e = _mm512_mul_epu32(c2, m1), p1o = _mm512_mul_epu32(_mm512_srli_epi64(c2, 32), m1);
    const __m512i hi0 = _mm512_mask_blend_epi32(0xAAAA, _mm512_srli_epi64(p0e, 32), p0o);
    const __m512i lo0 = _mm512_mask_blend_epi32(0xAAAA, p0e, _mm512_slli_epi64(p0o, 32));
    const __m512i hi1 = _mm512_mask_blend_epi32(0xAAAA, _mm512_srli_epi64(p1e, 32), p1o);
    const __m512i lo1 = _mm512_mask_blend_epi32(0xAAAA, p1e, _mm512_slli_epi64(p1o, 32));
    c0 = _mm512_ternarylogic_epi32(hi1, c1, _mm512_set1_epi32(static_cast<int>(k0)), 0x96);  // a ^ b ^ c
    c1 = lo1;
    c2 = _mm512_ternarylogic_epi32(hi0, c3, _mm512_set1_epi32(static_cast<int>(k1)), 0x96);
    c3 = lo0;
    k0 += kPhiloxW0;
    k1 += kPhiloxW1;
  }
  return {c0, c1, c2, c3};
}

// philox4x32_10 for 8 counters held as 64-bit lanes: ctr01 = c0 | c1 << 32, ctr23 = c2 | c3 << 32, replaced
// by the output words in the same layout. With the counter words paired in 64-bit lanes a round is two
// vpmuludq and two rotations: (c0, c1) <- (hi(M1 c2) ^ c1 ^ k0, lo(M1 c2)) is rotr64(M1 c2, 32) ^ (c1, 0) ^ (k0, 0).
DHVC_AVX512_INLINE void philox8(__m512i& ctr01, __m512i& ctr23, uint32_t k0, uint32_t k1) {
  const __m512i m0 = _mm512_set1_epi64(kPhiloxM0);
  const __m512i m1 = _mm512_set1_epi64(kPhiloxM1);
  for (int round = 0; round < 10; ++round) {
    const __m512i p0 = _mm512_mul_epu32(ctr01, m0);  // M0 c0: hi0 << 32 | lo0
    const __m512i p1 = _mm512_mul_epu32(ctr23, m1);  // M1 c2
    ctr01 = _mm512_ternarylogic_epi64(_mm512_ror_epi64(p1, 32), _mm512_srli_epi64(ctr01, 32),
                                      _mm512_set1_epi64(k0), 0x96);
    ctr23 = _mm512_ternarylogic_epi64(_mm512_ror_epi64(p0, 32), _mm512_srli_epi64(ctr23, 32),
                                      _mm512_set1_epi64(k1), 0x96);
    k0 += kPhiloxW0;
    k1 += kPhiloxW1;
  }
}

// ---- uniforms ----------------------------------------------------------------------------------------------

// (k + 1/2) 2^-52 from the top 52 bits k of each 64-bit lane: uniform on (0, 1), never 0 or 1, and 1 - u is
// exact (a multiple of 2^-53 below 1).
DHVC_AVX512_INLINE __m512d uniform52(__m512i bits) {
  const __m512d k = _mm512_cvtepu64_pd(_mm512_srli_epi64(bits, 12));
  return _mm512_mul_pd(_mm512_add_pd(k, _mm512_set1_pd(0.5)), _mm512_set1_pd(0x1p-52));
}

// (w + 1/2) 2^-32 from the low 32 bits w of each 64-bit lane (exact in double): uniform on (0, 1).
DHVC_AVX512_INLINE __m512d uniform32_lo(__m512i bits) {
  const __m512d w = _mm512_cvtepu32_pd(_mm512_cvtepi64_epi32(bits));
  return _mm512_mul_pd(_mm512_add_pd(w, _mm512_set1_pd(0.5)), _mm512_set1_pd(0x1p-32));
}

// ---- double-precision elementary functions, 8 lanes ------------------------------------------------------

// Horner's rule for c[0] + c[1] x + ... + c[n-1] x^(n-1).
template <int N>
DHVC_AVX512_INLINE __m512d horner(__m512d x, const double (&c)[N]) {
  __m512d p = _mm512_set1_pd(c[N - 1]);
  for (int i = N - 2; i >= 0; --i) p = _mm512_fmadd_pd(p, x, _mm512_set1_pd(c[i]));
  return p;
}

template <int N>
DHVC_AVX512_INLINE __m512 horner(__m512 x, const float (&c)[N]) {
  __m512 p = _mm512_set1_ps(c[N - 1]);
  for (int i = N - 2; i >= 0; --i) p = _mm512_fmadd_ps(p, x, _mm512_set1_ps(c[i]));
  return p;
}

// ln 2 split so that k ln2_hi is exact for |k| < 2^20 (fdlibm's split).
constexpr double kLn2Hi = 6.93147180369123816490e-01;
constexpr double kLn2Lo = 1.90821492927058770002e-10;

// log(x) for finite normal x > 0. x = 2^k m with m in [sqrt(1/2), sqrt(2)), f = m - 1 (exact),
// log(m) = 2 atanh(s) = 2 (s + s^3/3 + s^5/5 + ...), s = f / (2 + f), |s| <= 0.1716: 12 terms reach 2^-60.
DHVC_AVX512_INLINE __m512d log_pd(__m512d x) {
  static constexpr double c[11] = {1.0 / 3,  1.0 / 5,  1.0 / 7,  1.0 / 9,  1.0 / 11, 1.0 / 13,
                                   1.0 / 15, 1.0 / 17, 1.0 / 19, 1.0 / 21, 1.0 / 23};
  __m512d m = _mm512_getmant_pd(x, _MM_MANT_NORM_1_2, _MM_MANT_SIGN_src);
  __m512d k = _mm512_getexp_pd(x);
  const __mmask8 big = _mm512_cmp_pd_mask(m, _mm512_set1_pd(1.4142135623730951), _CMP_GT_OQ);
  m = _mm512_mask_mul_pd(m, big, m, _mm512_set1_pd(0.5));
  k = _mm512_mask_add_pd(k, big, k, _mm512_set1_pd(1.0));
  const __m512d f = _mm512_sub_pd(m, _mm512_set1_pd(1.0));
  const __m512d s = _mm512_div_pd(f, _mm512_add_pd(f, _mm512_set1_pd(2.0)));
  const __m512d z = _mm512_mul_pd(s, s);
  const __m512d two_s = _mm512_add_pd(s, s);
  const __m512d log_m = _mm512_fmadd_pd(_mm512_mul_pd(two_s, z), horner(z, c), two_s);  // 2s + 2s z (1/3 + ...)
  return _mm512_fmadd_pd(k, _mm512_set1_pd(kLn2Hi), _mm512_fmadd_pd(k, _mm512_set1_pd(kLn2Lo), log_m));
}

// log(1 + x) for x > -1 (x finite): u = 1 + x rounded, log(u) corrected by the rounding error (u - 1 - x) / u
// (Goldberg's form; exact to first order). u = 1 gives x itself.
DHVC_AVX512_INLINE __m512d log1p_pd(__m512d x) {
  const __m512d one = _mm512_set1_pd(1.0);
  const __m512d u = _mm512_add_pd(one, x);
  const __m512d err = _mm512_sub_pd(_mm512_sub_pd(u, one), x);
  return _mm512_sub_pd(log_pd(u), _mm512_div_pd(err, u));
}

// exp(x): 0 below -745, +inf above 709.8, NaN for NaN. x = k ln2 + r, |r| <= ln2 / 2, exp(r) by its Taylor
// series to r^13 (remainder below 2^-57), scaled by 2^k with vscalefpd (which handles over- and underflow).
DHVC_AVX512_INLINE __m512d exp_pd(__m512d x) {
  static constexpr double c[14] = {1.0,
                                   1.0,
                                   1.0 / 2,
                                   1.0 / 6,
                                   1.0 / 24,
                                   1.0 / 120,
                                   1.0 / 720,
                                   1.0 / 5040,
                                   1.0 / 40320,
                                   1.0 / 362880,
                                   1.0 / 3628800,
                                   1.0 / 39916800,
                                   1.0 / 479001600,
                                   1.0 / 6227020800};
  // Clamped (NaN kept: vmaxpd/vminpd return their second operand when either is NaN) so that r stays finite.
  x = _mm512_max_pd(_mm512_set1_pd(-1100.0), x);
  x = _mm512_min_pd(_mm512_set1_pd(1100.0), x);
  const __m512d k = _mm512_roundscale_pd(_mm512_mul_pd(x, _mm512_set1_pd(1.4426950408889634)),
                                         _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC);
  __m512d r = _mm512_fnmadd_pd(k, _mm512_set1_pd(kLn2Hi), x);
  r = _mm512_fnmadd_pd(k, _mm512_set1_pd(kLn2Lo), r);
  return _mm512_scalef_pd(horner(r, c), k);
}

// exp(x) - 1 for x <= 709 (and -inf): the Taylor series x + x^2/2! + ... + x^14/14! where |x| < 0.34 (no
// cancellation), exp(x) - 1 elsewhere (where |exp(x) - 1| > 0.28, so the subtraction loses at most 2 bits).
// Returns exp(x) too, which callers of both need.
DHVC_AVX512_INLINE __m512d expm1_pd(__m512d x, __m512d* exp_x) {
  static constexpr double c[14] = {1.0,
                                   1.0 / 2,
                                   1.0 / 6,
                                   1.0 / 24,
                                   1.0 / 120,
                                   1.0 / 720,
                                   1.0 / 5040,
                                   1.0 / 40320,
                                   1.0 / 362880,
                                   1.0 / 3628800,
                                   1.0 / 39916800,
                                   1.0 / 479001600,
                                   1.0 / 6227020800,
                                   1.0 / 87178291200};
  const __m512d e = exp_pd(x);
  *exp_x = e;
  const __m512d small = _mm512_mul_pd(x, horner(x, c));
  const __mmask8 is_small = _mm512_cmp_pd_mask(_mm512_abs_pd(x), _mm512_set1_pd(0.34), _CMP_LT_OQ);
  return _mm512_mask_blend_pd(is_small, _mm512_sub_pd(e, _mm512_set1_pd(1.0)), small);
}

// sin(x)^2 for 0 <= x <= pi/4: the Taylor series of sin to x^17 (remainder below 2^-62 relative).
DHVC_AVX512_INLINE __m512d sin_squared_pd(__m512d x) {
  static constexpr double c[9] = {1.0,
                                  -1.0 / 6,
                                  1.0 / 120,
                                  -1.0 / 5040,
                                  1.0 / 362880,
                                  -1.0 / 39916800,
                                  1.0 / 6227020800,
                                  -1.0 / 1307674368000,
                                  1.0 / 355687428096000};
  const __m512d s = _mm512_mul_pd(x, horner(_mm512_mul_pd(x, x), c));
  return _mm512_mul_pd(s, s);
}

// ---- single-precision functions and normals, 16 lanes ----------------------------------------------------

// log(x) for finite normal x > 0, as log_pd with fewer terms (to s^9 / 9: remainder below 2^-28 relative).
DHVC_AVX512_INLINE __m512 log_ps(__m512 x) {
  static constexpr float c[4] = {1.0f / 3, 1.0f / 5, 1.0f / 7, 1.0f / 9};
  __m512 m = _mm512_getmant_ps(x, _MM_MANT_NORM_1_2, _MM_MANT_SIGN_src);
  __m512 k = _mm512_getexp_ps(x);
  const __mmask16 big = _mm512_cmp_ps_mask(m, _mm512_set1_ps(1.41421356f), _CMP_GT_OQ);
  m = _mm512_mask_mul_ps(m, big, m, _mm512_set1_ps(0.5f));
  k = _mm512_mask_add_ps(k, big, k, _mm512_set1_ps(1.0f));
  const __m512 f = _mm512_sub_ps(m, _mm512_set1_ps(1.0f));
  const __m512 s = _mm512_div_ps(f, _mm512_add_ps(f, _mm512_set1_ps(2.0f)));
  const __m512 z = _mm512_mul_ps(s, s);
  const __m512 two_s = _mm512_add_ps(s, s);
  const __m512 log_m = _mm512_fmadd_ps(_mm512_mul_ps(two_s, z), horner(z, c), two_s);
  return _mm512_fmadd_ps(k, _mm512_set1_ps(0.693147180559945f), log_m);
}

// sin(x) and cos(x) for 0 <= x <= pi/4: Taylor series to x^9 and x^10 (remainders below 2^-28).
DHVC_AVX512_INLINE void sincos_octant_ps(__m512 x, __m512* sin_x, __m512* cos_x) {
  static constexpr float cs[5] = {1.0f, -1.0f / 6, 1.0f / 120, -1.0f / 5040, 1.0f / 362880};
  static constexpr float cc[6] = {1.0f, -1.0f / 2, 1.0f / 24, -1.0f / 720, 1.0f / 40320, -1.0f / 3628800};
  const __m512 z = _mm512_mul_ps(x, x);
  *sin_x = _mm512_mul_ps(x, horner(z, cs));
  *cos_x = horner(z, cc);
}

// Two vectors of independent standard normals from two vectors of random words (Box-Muller):
// radius sqrt(-2 log u), u = (w_r + 1/2) 2^-32 rounded to float and kept below 1 (so never 0: the radius is
// at most 6.8, the mass beyond is 2^-32 per pair); angle from w_a: its low 29 bits give x uniform on
// (0, pi/4), and its top three bits pick one of the 8 symmetries (+-cos x, +-sin x) / (+-sin x, +-cos x) of
// the square, which together cover the circle once: the angle is uniform on (0, 2 pi) without a range
// reduction.
DHVC_AVX512_INLINE void box_muller_ps(__m512i w_r, __m512i w_a, __m512* n0, __m512* n1) {
  __m512 u = _mm512_fmadd_ps(_mm512_cvtepu32_ps(w_r), _mm512_set1_ps(0x1p-32f), _mm512_set1_ps(0x1p-33f));
  u = _mm512_min_ps(u, _mm512_set1_ps(0x1.fffffep-1f));
  const __m512 r = _mm512_sqrt_ps(_mm512_mul_ps(log_ps(u), _mm512_set1_ps(-2.0f)));
  const __m512i frac = _mm512_and_si512(w_a, _mm512_set1_epi32(0x1fffffff));
  const __m512 x = _mm512_mul_ps(_mm512_add_ps(_mm512_cvtepi32_ps(frac), _mm512_set1_ps(0.5f)),
                                 _mm512_set1_ps(0.78539816339744831f * 0x1p-29f));
  __m512 s, c;
  sincos_octant_ps(x, &s, &c);
  const __mmask16 swap = _mm512_test_epi32_mask(w_a, _mm512_set1_epi32(1 << 29));
  const __m512i sign = _mm512_set1_epi32(static_cast<int>(0x80000000u));
  const __m512 a = _mm512_castsi512_ps(_mm512_xor_si512(_mm512_castps_si512(_mm512_mask_blend_ps(swap, c, s)),
                                                        _mm512_and_si512(_mm512_slli_epi32(w_a, 1), sign)));
  const __m512 b = _mm512_castsi512_ps(
      _mm512_xor_si512(_mm512_castps_si512(_mm512_mask_blend_ps(swap, s, c)), _mm512_and_si512(w_a, sign)));
  *n0 = _mm512_mul_ps(r, a);
  *n1 = _mm512_mul_ps(r, b);
}

// Four vectors of normals from the four words of a philox16 call.
DHVC_AVX512_INLINE void normals16(const Words16& w, __m512 n[4]) {
  box_muller_ps(w.w0, w.w1, &n[0], &n[1]);
  box_muller_ps(w.w2, w.w3, &n[2], &n[3]);
}

// ---- layout --------------------------------------------------------------------------------------------------

// In-place transpose of the 16 x 16 matrix whose row i is r[i].
DHVC_AVX512_INLINE void transpose16(__m512 r[16]) {
  __m512 t[16], u[16];
  for (int i = 0; i < 16; i += 2) {
    t[i] = _mm512_unpacklo_ps(r[i], r[i + 1]);      // per 128-bit lane: a0 b0 a1 b1
    t[i + 1] = _mm512_unpackhi_ps(r[i], r[i + 1]);  // a2 b2 a3 b3
  }
  for (int i = 0; i < 16; i += 4) {
    for (int j = 0; j < 2; ++j) {
      const __m512d a = _mm512_castps_pd(t[i + j]), b = _mm512_castps_pd(t[i + j + 2]);
      u[i + 2 * j] = _mm512_castpd_ps(_mm512_unpacklo_pd(a, b));      // rows i..i+3 of column 2j (+4, +8, +12)
      u[i + 2 * j + 1] = _mm512_castpd_ps(_mm512_unpackhi_pd(a, b));  // column 2j + 1
    }
  }
  // u[4 g + j] holds rows 4g..4g+3 of columns j, j + 4, j + 8, j + 12 in its four 128-bit lanes.
  for (int j = 0; j < 4; ++j) {
    const __m512 v0 = _mm512_shuffle_f32x4(u[j], u[4 + j], 0x88);       // rows 0-3, 4-7 of columns j, j + 8
    const __m512 v1 = _mm512_shuffle_f32x4(u[j], u[4 + j], 0xDD);       // columns j + 4, j + 12
    const __m512 w0 = _mm512_shuffle_f32x4(u[8 + j], u[12 + j], 0x88);  // rows 8-11, 12-15
    const __m512 w1 = _mm512_shuffle_f32x4(u[8 + j], u[12 + j], 0xDD);
    r[j] = _mm512_shuffle_f32x4(v0, w0, 0x88);
    r[j + 8] = _mm512_shuffle_f32x4(v0, w0, 0xDD);
    r[j + 4] = _mm512_shuffle_f32x4(v1, w1, 0x88);
    r[j + 12] = _mm512_shuffle_f32x4(v1, w1, 0xDD);
  }
}

}  // namespace avx512
}  // namespace random
}  // namespace dhvc

DHVC_AVX512_DIAGNOSTICS_POP

#endif  // x86-64 with GCC or Clang
