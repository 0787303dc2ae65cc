// CPU kernels of vmf_sample and its backward.
//
// float32 on a CPU with AVX-512 (the common case, and the one the speed goals are for) takes a vectorised
// path; float64, and float32 elsewhere, take the scalar sampler of dhvc/sampling/vmf_wood.h, which the CUDA
// kernel shares. Both draw each sample from its own Philox streams (counters that hold the row index), so
// the result does not depend on the number of threads; the two paths draw different (equally distributed)
// numbers. ATEN_CPU_CAPABILITY set below avx512 (torch's switch for its own kernels) selects the scalar path.
//
// DESIGN (AVX-512, float32). The rows are cut into chunks of 1024, and each chunk is done in two phases:
//  1. t = 1 - w of every row, in double precision (Wood's rejection loop, or d = 3's inverse CDF), by 4
//     groups of 8 lanes, each group on a quarter of the chunk: a lane whose proposal is accepted writes its t
//     and takes its group's next row, so the lanes stay busy however many rounds each row needs (the rows'
//     own Philox counters carry the round number, so no row's draws depend on its neighbours'), and the
//     groups' independent chains hide each other's latency. Wood's Beta((d-1)/2, (d-1)/2) proposal is
//     drawn by Ulrich's (1984) method, one pow and one sin^2 instead of two Gamma rejection samplers.
//  2. the tangent normals and the rotation. d <= 16: 16 rows at a time, one row per lane: the block of loc
//     is transposed in registers, each lane draws its row's normals, the Householder sums are vertical, and
//     the result is transposed back. d > 16: one row at a time, its normals 64 at a time (16 Philox counters
//     of the row in the 16 lanes), the sums and the rotation along the row.
// Phase 2 needs every t of its block, hence the two phases; a chunk's t and rows stay in L2 between them.
#include <ATen/ATen.h>
#include <ATen/Dispatch.h>
#include <torch/library.h>

#include <algorithm>
#include <cmath>
#include <cstdlib>
#include <cstring>
#include <limits>
#include <tuple>

#include "../checks.h"
#include "parallel_rows.h"
#include "dhvc/math/bessel.h"
#include "dhvc/random/avx512.h"
#include "dhvc/random/philox.h"
#include "dhvc/random/ziggurat.h"
#include "dhvc/sampling/vmf_wood.h"

namespace dhvc_ext {
namespace {

// Samples per task: enough normals per task (about 4096) that scheduling is negligible.
int64_t grain_for(int64_t d) { return std::max<int64_t>(1, 4096 / std::max<int64_t>(d, 1)); }

#if defined(DHVC_HAVE_AVX512_CODE)
namespace avx = dhvc::random::avx512;
DHVC_AVX512_DIAGNOSTICS_PUSH

// Philox counters of the vectorised path: (c0, c1, c2, c3) = (draw, offset, row low, row high). Wood's rounds
// use draws 0, 1, 2, ... (one block of 4 words per round); the normals use draws from 2^31 on.
constexpr uint32_t kNormalDraws = 0x80000000u;
constexpr int64_t kChunkRows = 1024;

struct StreamKey {
  uint32_t k0, k1, offset;
};

// One round of Wood's proposal for 8 rows, d != 3 (shared/KERNELS.md 2.1 in the 1 - w form of vmf_wood.h):
// returns t = 1 - w and sets *accept. The symmetric Beta eps = (1 + s) / 2 comes from Ulrich's polar form:
// s = R cos(2 phi), 1 - R^2 = U1^{2/(d-2)}, phi uniform on (0, pi) (d = 2: R = 1, eps ~ Beta(1/2, 1/2)).
// 1 - s and 1 + s are sums of positive terms, (1 - R) + 2 R sin^2(phi) and (1 - R) + 2 R cos^2(phi) with
// 1 - R = U1^p / (1 + R), so neither eps nor 1 - eps is formed by a subtraction. Words: c0 c1 -> U1 (52
// bits), c2 -> phi (one bit picks sin^2 or cos^2 of an angle on (0, pi/4) from the other 31), c3 -> the
// acceptance uniform.
DHVC_AVX512_INLINE __m512d wood_proposal(__m512d kappa, __m512i ctr01, __m512i ctr23, __m512d dm1, __m512d p,
                                         __mmask8* accept) {
  const __m512d one = _mm512_set1_pd(1.0);
  const __m512d two_kappa = _mm512_add_pd(kappa, kappa);
  const __m512d b = _mm512_div_pd(
      dm1, _mm512_add_pd(_mm512_sqrt_pd(_mm512_fmadd_pd(two_kappa, two_kappa, _mm512_mul_pd(dm1, dm1))), two_kappa));
  __m512d pow_u1;  // U1^p = 1 - R^2
  const __m512d log_pow_u1 = _mm512_mul_pd(p, avx::log_pd(avx::uniform52(ctr01)));
  const __m512d r2 = _mm512_sub_pd(_mm512_setzero_pd(), avx::expm1_pd(log_pow_u1, &pow_u1));
  const __m512d r = _mm512_sqrt_pd(r2);
  const __mmask8 swap = _mm512_test_epi64_mask(ctr23, _mm512_set1_epi64(0x80000000u));
  const __m512d x = _mm512_mul_pd(
      _mm512_add_pd(_mm512_cvtepi64_pd(_mm512_and_si512(ctr23, _mm512_set1_epi64(0x7fffffff))), _mm512_set1_pd(0.5)),
      _mm512_set1_pd(0.78539816339744831 * 0x1p-31));
  const __m512d sn2 = avx::sin_squared_pd(x), cs2 = _mm512_sub_pd(one, sn2);  // cos^2 >= 1/2: no cancellation
  const __m512d sin2 = _mm512_mask_blend_pd(swap, sn2, cs2), cos2 = _mm512_mask_blend_pd(swap, cs2, sn2);
  const __m512d q = _mm512_div_pd(pow_u1, _mm512_add_pd(one, r));  // 1 - R
  const __m512d two_r = _mm512_add_pd(r, r);
  const __m512d f2 = _mm512_fmadd_pd(two_r, sin2, q);  // 2 (1 - eps)
  const __m512d e2 = _mm512_fmadd_pd(two_r, cos2, q);  // 2 eps
  const __m512d den = _mm512_fmadd_pd(b, e2, f2);      // 2 (1 - (1 - b) eps)
  const __m512d two_b = _mm512_add_pd(b, b);
  const __m512d t = _mm512_div_pd(_mm512_mul_pd(two_b, e2), den);
  // w - x0 = 2 b (f2 - e2) / ((1 + b) den), f2 - e2 = 2 R (sin^2 - cos^2).
  const __m512d w_minus_x0 = _mm512_div_pd(_mm512_mul_pd(_mm512_mul_pd(two_b, two_r), _mm512_sub_pd(sin2, cos2)),
                                           _mm512_mul_pd(_mm512_add_pd(one, b), den));
  const __m512d log_accept = _mm512_fmadd_pd(
      kappa, w_minus_x0, _mm512_mul_pd(dm1, _mm512_sub_pd(avx::log1p_pd(b), avx::log_pd(den))));
  const __m512d u = avx::uniform32_lo(_mm512_srli_epi64(ctr23, 32));
  *accept = _mm512_cmp_pd_mask(u, avx::exp_pd(log_accept), _CMP_LE_OQ);
  return t;
}

// t = 1 - w at d = 3 for 8 rows by the exact inverse CDF, as in vmf_wood.h: t = -log(u + (1 - u) e^{-2 kappa})
// / kappa in the logaddexp form for kappa >= 1, the log1p form below, 2 (1 - u) at kappa = 0. U from c0 c1.
DHVC_AVX512_INLINE __m512d d3_inverse_cdf(__m512d kappa, __m512i ctr01) {
  const __m512d u = avx::uniform52(ctr01);
  const __m512d one_minus_u = _mm512_sub_pd(_mm512_set1_pd(1.0), u);  // exact
  const __m512d a = avx::log_pd(u);
  const __m512d b = _mm512_sub_pd(avx::log_pd(one_minus_u), _mm512_add_pd(kappa, kappa));
  const __m512d hi = _mm512_max_pd(a, b), lo = _mm512_min_pd(a, b);
  const __m512d neg_kappa_t = _mm512_add_pd(hi, avx::log1p_pd(avx::exp_pd(_mm512_sub_pd(lo, hi))));
  __m512d t = _mm512_div_pd(neg_kappa_t, _mm512_sub_pd(_mm512_setzero_pd(), kappa));
  const __mmask8 small = _mm512_cmp_pd_mask(kappa, _mm512_set1_pd(1.0), _CMP_LT_OQ);
  if (small) {
    __m512d unused;
    const __m512d em1 = avx::expm1_pd(_mm512_mul_pd(kappa, _mm512_set1_pd(-2.0)), &unused);
    const __m512d t_small = _mm512_div_pd(avx::log1p_pd(_mm512_mul_pd(one_minus_u, em1)),
                                          _mm512_sub_pd(_mm512_setzero_pd(), kappa));
    t = _mm512_mask_blend_pd(small, t, t_small);
    const __mmask8 zero = _mm512_cmp_pd_mask(kappa, _mm512_setzero_pd(), _CMP_EQ_OQ);
    t = _mm512_mask_blend_pd(zero, t, _mm512_add_pd(one_minus_u, one_minus_u));
  }
  return t;
}

// Phase 1 state: 8 lanes working through the rows [next, end) of a range.
struct WoodLanes {
  __m512i rows, round;  // each lane's row and its round of the rejection loop
  __m512d kappa;
  __mmask8 active;
  int64_t next, end;
};

struct WoodConstants {
  __m512d dm1, p;
  __m512i c1;
  int64_t d;
};

DHVC_AVX512_INLINE void wood_start(WoodLanes* s, const float* kappa, int64_t begin, int64_t end) {
  const int first = static_cast<int>(std::min<int64_t>(8, std::max<int64_t>(0, end - begin)));
  s->active = static_cast<__mmask8>((1u << first) - 1);
  s->rows = _mm512_add_epi64(_mm512_set1_epi64(begin), _mm512_set_epi64(7, 6, 5, 4, 3, 2, 1, 0));
  s->round = _mm512_setzero_si512();
  s->kappa = _mm512_cvtps_pd(_mm512_mask_i64gather_ps(_mm256_setzero_ps(), s->active, s->rows, kappa, 4));
  s->next = begin + first;
  s->end = end;
}

// One round for the active lanes: propose, write t of the lanes that are done, refill them with the next
// rows, in lane order.
DHVC_AVX512_INLINE void wood_round(WoodLanes* s, const float* kappa, double* t_out, const WoodConstants& c,
                                   const StreamKey& key) {
  __m512i ctr01 = _mm512_or_si512(s->round, c.c1), ctr23 = s->rows;
  avx::philox8(ctr01, ctr23, key.k0, key.k1);
  __mmask8 accept = 0xff;
  const __m512d k = s->kappa;
  __m512d t = c.d == 3 ? d3_inverse_cdf(k, ctr01) : wood_proposal(k, ctr01, ctr23, c.dm1, c.p, &accept);
  // kappa = +inf gives t = 0 (the sample is loc), a negative or NaN kappa gives NaN.
  const __mmask8 valid = _mm512_cmp_pd_mask(k, _mm512_setzero_pd(), _CMP_GE_OQ);
  const __mmask8 infinite = _mm512_cmp_pd_mask(k, _mm512_set1_pd(std::numeric_limits<double>::infinity()), _CMP_EQ_OQ);
  t = _mm512_mask_blend_pd(static_cast<__mmask8>(~valid), t, _mm512_set1_pd(std::numeric_limits<double>::quiet_NaN()));
  t = _mm512_mask_blend_pd(infinite, t, _mm512_setzero_pd());
  const __mmask8 done = s->active & (accept | static_cast<__mmask8>(~valid) | infinite);
  _mm512_mask_i64scatter_pd(t_out, done, s->rows, t, 8);
  s->round = _mm512_add_epi64(s->round, _mm512_set1_epi64(1));
  const int64_t left = s->end - s->next;
  const int n_done = _mm_popcnt_u32(done);
  __mmask8 fill = done;
  if (n_done > left) fill = static_cast<__mmask8>(_pdep_u32((1u << left) - 1, done));
  const __m512i next_rows = _mm512_add_epi64(_mm512_set1_epi64(s->next), _mm512_set_epi64(7, 6, 5, 4, 3, 2, 1, 0));
  s->rows = _mm512_mask_expand_epi64(s->rows, fill, next_rows);
  s->round = _mm512_mask_mov_epi64(s->round, fill, _mm512_setzero_si512());
  const __m256 new_kappa = _mm512_mask_i64gather_ps(_mm256_setzero_ps(), fill, s->rows, kappa, 4);
  s->kappa = _mm512_mask_mov_pd(s->kappa, fill, _mm512_cvtps_pd(new_kappa));
  s->active = static_cast<__mmask8>((s->active & ~done) | fill);
  s->next += std::min<int64_t>(n_done, left);
}

// Phase 1: t[i] = 1 - w_i for the rows i in [begin, end). A round is a long chain of dependent operations
// and the next round's counters depend on its outcome, so kGroups independent sets of 8 lanes, each on its
// own part of the rows, take their rounds in turn: the CPU overlaps their chains.
constexpr int kGroups = 4;

DHVC_AVX512_TARGET void one_minus_w_avx512(const float* kappa, double* t_out, int64_t begin, int64_t end, int64_t d,
                                           const StreamKey& key) {
  const double p = d == 2 ? std::numeric_limits<double>::infinity() : 2.0 / static_cast<double>(d - 2);
  const WoodConstants c{_mm512_set1_pd(static_cast<double>(d - 1)), _mm512_set1_pd(p),
                        _mm512_set1_epi64(static_cast<uint64_t>(key.offset) << 32), d};
  WoodLanes s[kGroups];
  const int64_t part = (end - begin + kGroups - 1) / kGroups;
  for (int g = 0; g < kGroups; ++g)
    wood_start(&s[g], kappa, std::min(end, begin + g * part), std::min(end, begin + (g + 1) * part));
  for (;;) {
    __mmask8 any = 0;
    for (int g = 0; g < kGroups; ++g) {
      if (s[g].active) wood_round(&s[g], kappa, t_out, c, key);
      any |= s[g].active;
    }
    if (!any) break;
  }
}

// The Householder rotation of vmf_wood.h's sample_vmf for 8 rows, from t, loc_0 and the sums
// gg = |g|^2, gm = g^T loc_{1:}, mm = |loc_{1:}|^2 over the tangent coordinates: the row is
// z_j = loc_j + coef loc_j + scale g_j (j >= 1) and z_0 = loc_0 + sigma (t + coef a0).
DHVC_AVX512_INLINE void householder_coefficients(__m512d t, __m512d mu0, __m512d gg, __m512d gm, __m512d mm,
                                                 __m512d* coef, __m512d* scale, __m512d* z0) {
  const __m512d one = _mm512_set1_pd(1.0);
  const __mmask8 negative = _mm512_cmp_pd_mask(mu0, _mm512_setzero_pd(), _CMP_LT_OQ);
  const __m512d sigma = _mm512_mask_blend_pd(negative, one, _mm512_set1_pd(-1.0));
  const __m512d a0 = _mm512_add_pd(one, _mm512_mul_pd(sigma, mu0));
  // The tangent direction is g / |g|; |g| = 0 has probability 0 but must not give NaN.
  const __mmask8 positive = _mm512_cmp_pd_mask(gg, _mm512_setzero_pd(), _CMP_GT_OQ);
  const __m512d inv_norm = _mm512_maskz_div_pd(positive, one, _mm512_sqrt_pd(gg));
  const __m512d r = _mm512_sqrt_pd(_mm512_mul_pd(t, _mm512_sub_pd(_mm512_set1_pd(2.0), t)));
  const __m512d c = _mm512_fmadd_pd(a0, a0, mm);
  const __m512d sr = _mm512_mul_pd(_mm512_mul_pd(sigma, r), inv_norm);
  const __m512d a_dot_y = _mm512_fmsub_pd(sr, gm, _mm512_mul_pd(a0, t));
  *coef = _mm512_div_pd(_mm512_add_pd(a_dot_y, a_dot_y), c);
  *scale = _mm512_sub_pd(_mm512_setzero_pd(), sr);
  *z0 = _mm512_fmadd_pd(sigma, _mm512_fmadd_pd(*coef, a0, t), mu0);
}

DHVC_AVX512_INLINE __m512d low_half_pd(__m512 x) { return _mm512_cvtps_pd(_mm512_castps512_ps256(x)); }
DHVC_AVX512_INLINE __m512d high_half_pd(__m512 x) { return _mm512_cvtps_pd(_mm512_extractf32x8_ps(x, 1)); }
DHVC_AVX512_INLINE __m512 join_ps(__m512d lo, __m512d hi) {
  return _mm512_insertf32x8(_mm512_castps256_ps512(_mm512_cvtpd_ps(lo)), _mm512_cvtpd_ps(hi), 1);
}

// Phase 2 for d <= 16: rows row0 .. row0 + nb - 1 (nb <= 16), one per lane. Row i's normals for its
// coordinates 4j + 1 .. 4j + 4 are the words of Philox counter (2^31 + j, offset, i).
// D is d as a template argument, so that the loops over the coordinates unroll and the 16 x D block stays in
// registers.
template <int D>
DHVC_AVX512_TARGET void rotate_block16(const float* mu, const double* t, float* out, int64_t row0, int nb,
                                       const StreamKey& key) {
  constexpr int64_t d = D;
  const __mmask16 cols = static_cast<__mmask16>((1u << d) - 1);
  __m512 m[16];
#pragma GCC unroll 16
  for (int j = 0; j < 16; ++j) m[j] = j < nb ? _mm512_maskz_loadu_ps(cols, mu + (row0 + j) * d) : _mm512_setzero_ps();
  avx::transpose16(m);  // m[c] = coordinate c of the 16 rows
  const __m512i rows_lo = _mm512_add_epi64(_mm512_set1_epi64(row0), _mm512_set_epi64(7, 6, 5, 4, 3, 2, 1, 0));
  const __m512i rows_hi = _mm512_add_epi64(rows_lo, _mm512_set1_epi64(8));
  const __m512i sub0 = _mm512_inserti64x4(_mm512_castsi256_si512(_mm512_cvtepi64_epi32(rows_lo)),
                                          _mm512_cvtepi64_epi32(rows_hi), 1);
  const __m512i sub1 = _mm512_inserti64x4(_mm512_castsi256_si512(_mm512_cvtepi64_epi32(_mm512_srli_epi64(rows_lo, 32))),
                                          _mm512_cvtepi64_epi32(_mm512_srli_epi64(rows_hi, 32)), 1);
  __m512 g[20];  // g[c], c = 1 .. d - 1: the tangent normals
#pragma GCC unroll 16
  for (int64_t j = 0; 4 * j + 1 < d; ++j) {
    const avx::Words16 w = avx::philox16(_mm512_set1_epi32(static_cast<int>(kNormalDraws + j)),
                                         _mm512_set1_epi32(static_cast<int>(key.offset)), sub0, sub1, key.k0, key.k1);
    avx::box_muller_ps(w.w0, w.w1, &g[4 * j + 1], &g[4 * j + 2]);
    if (4 * j + 3 < d) avx::box_muller_ps(w.w2, w.w3, &g[4 * j + 3], &g[4 * j + 4]);
  }
  __m512d gg[2], gm[2], mm[2];
  for (int h = 0; h < 2; ++h) gg[h] = gm[h] = mm[h] = _mm512_setzero_pd();
#pragma GCC unroll 16
  for (int64_t c = 1; c < d; ++c) {
    const __m512d gh[2] = {low_half_pd(g[c]), high_half_pd(g[c])};
    const __m512d mh[2] = {low_half_pd(m[c]), high_half_pd(m[c])};
    for (int h = 0; h < 2; ++h) {
      gg[h] = _mm512_fmadd_pd(gh[h], gh[h], gg[h]);
      gm[h] = _mm512_fmadd_pd(gh[h], mh[h], gm[h]);
      mm[h] = _mm512_fmadd_pd(mh[h], mh[h], mm[h]);
    }
  }
  __m512d coef[2], scale[2], z0[2];
  const __m512d mu0[2] = {low_half_pd(m[0]), high_half_pd(m[0])};
#pragma GCC unroll 16
  for (int h = 0; h < 2; ++h) {
    const int lanes = std::max(0, std::min(8, nb - 8 * h));
    const __m512d th = _mm512_maskz_loadu_pd(static_cast<__mmask8>((1u << lanes) - 1), t + row0 + 8 * h);
    householder_coefficients(th, mu0[h], gg[h], gm[h], mm[h], &coef[h], &scale[h], &z0[h]);
  }
  const __m512 coef16 = join_ps(coef[0], coef[1]), scale16 = join_ps(scale[0], scale[1]);
  m[0] = join_ps(z0[0], z0[1]);
#pragma GCC unroll 16
  for (int64_t c = d; c < 16; ++c) m[c] = _mm512_setzero_ps();  // not stored: need not stay live until here
  // z - loc is formed from small terms first (coef and scale are O(sqrt(t))), then added to loc once.
#pragma GCC unroll 16
  for (int64_t c = 1; c < d; ++c) {
    m[c] = _mm512_add_ps(m[c], _mm512_fmadd_ps(coef16, m[c], _mm512_mul_ps(scale16, g[c])));
  }
  avx::transpose16(m);
  for (int j = 0; j < nb; ++j) _mm512_mask_storeu_ps(out + (row0 + j) * d, cols, m[j]);
}

using RotateBlock = void (*)(const float*, const double*, float*, int64_t, int, const StreamKey&);

RotateBlock rotate_block16_for(int64_t d) {
  static constexpr RotateBlock table[17] = {
      nullptr,           nullptr,           rotate_block16<2>,  rotate_block16<3>,  rotate_block16<4>,
      rotate_block16<5>, rotate_block16<6>, rotate_block16<7>,  rotate_block16<8>,  rotate_block16<9>,
      rotate_block16<10>, rotate_block16<11>, rotate_block16<12>, rotate_block16<13>, rotate_block16<14>,
      rotate_block16<15>, rotate_block16<16>};
  TORCH_INTERNAL_ASSERT(d >= 2 && d <= 16);
  return table[d];
}

// The first min(count, 16) of 16 lanes.
inline __mmask16 first_lanes(int64_t count) {
  return count >= 16 ? static_cast<__mmask16>(0xffff) : static_cast<__mmask16>((1u << count) - 1);
}

// Phase 2 for d > 16: one row. Its normals for coordinates 1 + q0 + 16 k + l (k < 4, l < 16) are word k of
// Philox counter (2^31 + q0 / 4 + l, offset, row), q0 = 0, 64, 128, ... The normals are staged in out, then
// overwritten by the sample.
DHVC_AVX512_TARGET void rotate_row(const float* mu, double t, float* out, int64_t row, int64_t d,
                                   const StreamKey& key) {
  const __m512i sub0 = _mm512_set1_epi32(static_cast<int>(static_cast<uint32_t>(row)));
  const __m512i sub1 = _mm512_set1_epi32(static_cast<int>(static_cast<uint32_t>(static_cast<uint64_t>(row) >> 32)));
  const __m512i lane = _mm512_set_epi32(15, 14, 13, 12, 11, 10, 9, 8, 7, 6, 5, 4, 3, 2, 1, 0);
  __m512d gg = _mm512_setzero_pd(), gm = gg, mm = gg;
  for (int64_t q0 = 0; q0 + 1 < d; q0 += 64) {
    const __m512i draw = _mm512_add_epi32(_mm512_set1_epi32(static_cast<int>(kNormalDraws + q0 / 4)), lane);
    const avx::Words16 w =
        avx::philox16(draw, _mm512_set1_epi32(static_cast<int>(key.offset)), sub0, sub1, key.k0, key.k1);
    __m512 g[4];
    avx::box_muller_ps(w.w0, w.w1, &g[0], &g[1]);
    if (q0 + 33 < d) avx::box_muller_ps(w.w2, w.w3, &g[2], &g[3]);
    for (int k = 0; k < 4 && 1 + q0 + 16 * k < d; ++k) {
      const int64_t c = 1 + q0 + 16 * k;
      const __mmask16 valid = first_lanes(d - c);
      const __m512 mv = _mm512_maskz_loadu_ps(valid, mu + c);
      const __m512 gv = _mm512_maskz_mov_ps(valid, g[k]);
      const __m512d gl = low_half_pd(gv), gh = high_half_pd(gv), ml = low_half_pd(mv), mh = high_half_pd(mv);
      gg = _mm512_fmadd_pd(gl, gl, _mm512_fmadd_pd(gh, gh, gg));
      gm = _mm512_fmadd_pd(gl, ml, _mm512_fmadd_pd(gh, mh, gm));
      mm = _mm512_fmadd_pd(ml, ml, _mm512_fmadd_pd(mh, mh, mm));
      _mm512_mask_storeu_ps(out + c, valid, gv);
    }
  }
  __m512d coef, scale, z0;
  householder_coefficients(_mm512_set1_pd(t), _mm512_set1_pd(static_cast<double>(mu[0])),
                           _mm512_set1_pd(_mm512_reduce_add_pd(gg)), _mm512_set1_pd(_mm512_reduce_add_pd(gm)),
                           _mm512_set1_pd(_mm512_reduce_add_pd(mm)), &coef, &scale, &z0);
  const __m512 coef16 = _mm512_set1_ps(static_cast<float>(_mm512_cvtsd_f64(coef)));
  const __m512 scale16 = _mm512_set1_ps(static_cast<float>(_mm512_cvtsd_f64(scale)));
  for (int64_t c = 1; c < d; c += 16) {
    const __mmask16 valid = first_lanes(d - c);
    const __m512 mv = _mm512_maskz_loadu_ps(valid, mu + c);
    const __m512 gv = _mm512_maskz_loadu_ps(valid, out + c);
    _mm512_mask_storeu_ps(out + c, valid, _mm512_add_ps(mv, _mm512_fmadd_ps(coef16, mv, _mm512_mul_ps(scale16, gv))));
  }
  out[0] = static_cast<float>(_mm512_cvtsd_f64(z0));
}

// torch's own switch for its CPU kernels, ATEN_CPU_CAPABILITY (default, avx2, avx512, ...), also sends float32
// here to the scalar sampler when it names anything below avx512 (to compare the paths, or to test the other).
bool use_avx512() {
  const char* capability = std::getenv("ATEN_CPU_CAPABILITY");
  if (capability != nullptr && *capability != '\0' && std::strcmp(capability, "avx512") != 0) return false;
  return avx::cpu_has_avx512();
}

const bool kUseAvx512 = use_avx512();

void vmf_sample_float_avx512(const float* mu, const float* kappa, float* out, double* t, int64_t n, int64_t d,
                             const StreamKey& key) {
  const int64_t blocks = (n + 15) / 16;
  const int64_t grain = std::max<int64_t>(1, 4096 / (16 * d));
  parallel_rows(blocks, grain, [&](int64_t block_begin, int64_t block_end) {
    for (int64_t r0 = block_begin * 16; r0 < std::min(n, block_end * 16); r0 += kChunkRows) {
      const int64_t r1 = std::min({n, block_end * 16, r0 + kChunkRows});
      one_minus_w_avx512(kappa, t, r0, r1, d, key);
      if (d <= 16) {
        const auto rotate = rotate_block16_for(d);
        for (int64_t row = r0; row < r1; row += 16)
          rotate(mu, t, out, row, static_cast<int>(std::min<int64_t>(16, r1 - row)), key);
      } else {
        for (int64_t row = r0; row < r1; ++row) rotate_row(mu + row * d, t[row], out + row * d, row, d, key);
      }
    }
  });
}
DHVC_AVX512_DIAGNOSTICS_POP
#endif  // DHVC_HAVE_AVX512_CODE

std::tuple<at::Tensor, at::Tensor> vmf_sample_cpu(const at::Tensor& loc, const at::Tensor& concentration,
                                                  const at::Tensor& seed) {
  check_vmf_sample_inputs(loc, concentration, seed);
  const at::Tensor mu = loc.contiguous();
  const at::Tensor kappa = concentration.contiguous();
  const int64_t d = mu.size(-1);
  const int64_t n = kappa.numel();
  at::Tensor out = at::empty_like(mu, at::MemoryFormat::Contiguous);
  at::Tensor one_minus_w = at::empty(kappa.sizes(), mu.options().dtype(at::kDouble));
  const at::Tensor seed_cpu = seed.to(at::kCPU);
  const uint64_t key = static_cast<uint64_t>(seed_cpu.data_ptr<int64_t>()[0]);
  const uint64_t offset = static_cast<uint64_t>(seed_cpu.data_ptr<int64_t>()[1]);
  double* t_ptr = one_minus_w.data_ptr<double>();
#if defined(DHVC_HAVE_AVX512_CODE)
  if (mu.scalar_type() == at::kFloat && kUseAvx512) {
    const StreamKey stream{static_cast<uint32_t>(key), static_cast<uint32_t>(key >> 32), static_cast<uint32_t>(offset)};
    vmf_sample_float_avx512(mu.data_ptr<float>(), kappa.data_ptr<float>(), out.data_ptr<float>(), t_ptr, n, d, stream);
    return {out, one_minus_w};
  }
#endif
  AT_DISPATCH_FLOATING_TYPES(mu.scalar_type(), "vmf_sample_cpu", [&] {
    const scalar_t* mu_ptr = mu.data_ptr<scalar_t>();
    const scalar_t* kappa_ptr = kappa.data_ptr<scalar_t>();
    scalar_t* out_ptr = out.data_ptr<scalar_t>();
    parallel_rows(n, grain_for(d), [&](int64_t begin, int64_t end) {
      for (int64_t i = begin; i < end; ++i) {
        dhvc::random::PhiloxZigguratStream rng(key, offset, static_cast<uint64_t>(i));
        t_ptr[i] = dhvc::sampling::sample_vmf(rng, mu_ptr + i * d, 1, d, static_cast<double>(kappa_ptr[i]),
                                              out_ptr + i * d);
      }
    });
  });
  return {out, one_minus_w};
}

std::tuple<at::Tensor, at::Tensor> vmf_sample_backward_cpu(const at::Tensor& grad, const at::Tensor& samples,
                                                           const at::Tensor& one_minus_w, const at::Tensor& loc,
                                                           const at::Tensor& concentration, bool need_loc,
                                                           bool need_kappa) {
  check_vmf_sample_backward_inputs(grad, samples, one_minus_w, loc, concentration);
  const at::Tensor g = grad.contiguous(), z = samples.contiguous(), mu = loc.contiguous();
  const at::Tensor kappa = concentration.contiguous(), t = one_minus_w.contiguous();
  const int64_t d = mu.size(-1);
  const int64_t n = kappa.numel();
  at::Tensor grad_loc = at::zeros_like(mu, at::MemoryFormat::Contiguous);
  at::Tensor grad_kappa = at::zeros_like(kappa, at::MemoryFormat::Contiguous);
  if (!need_loc && !need_kappa) return {grad_loc, grad_kappa};
  const double nu = 0.5 * static_cast<double>(d) - 1.0;
  AT_DISPATCH_FLOATING_TYPES(mu.scalar_type(), "vmf_sample_backward_cpu", [&] {
    const scalar_t *g_ptr = g.data_ptr<scalar_t>(), *z_ptr = z.data_ptr<scalar_t>(), *mu_ptr = mu.data_ptr<scalar_t>();
    const scalar_t* kappa_ptr = kappa.data_ptr<scalar_t>();
    const double* t_ptr = t.data_ptr<double>();
    scalar_t* gl_ptr = grad_loc.data_ptr<scalar_t>();
    scalar_t* gk_ptr = grad_kappa.data_ptr<scalar_t>();
    // The kappa gradient costs a quadrature (~100 transcendental calls) per sample: small grains.
    parallel_rows(n, 16, [&](int64_t begin, int64_t end) {
      for (int64_t i = begin; i < end; ++i) {
        const double k = static_cast<double>(kappa_ptr[i]);
        const double one_minus_a = need_kappa ? dhvc::math::bessel_iv_ratio_complement(nu, k) : 0.0;
        const double gk = dhvc::sampling::vmf_sample_backward(g_ptr + i * d, z_ptr + i * d, mu_ptr + i * d, d, k,
                                                              need_kappa ? t_ptr[i] : 0.0, one_minus_a,
                                                              need_loc ? gl_ptr + i * d : nullptr);
        gk_ptr[i] = static_cast<scalar_t>(gk);
      }
    });
  });
  return {grad_loc, grad_kappa};
}

}  // namespace

TORCH_LIBRARY_IMPL(dhvc_ext, CPU, m) {
  m.impl("vmf_sample", &vmf_sample_cpu);
  m.impl("_vmf_sample_backward", &vmf_sample_backward_cpu);
}

}  // namespace dhvc_ext
