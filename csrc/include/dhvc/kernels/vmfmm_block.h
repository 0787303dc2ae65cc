// Blocks of rows of the vMF-mixture E-step on the CPU, shared by the kernels of _vmfmm_em_statistics and
// _vmfmm_scores_log_softmax (csrc/cpu/vmfmm_em_cpu.cpp, vmfmm_estep_cpu.cpp). Host code only, torch-free.
//
// A block holds the products kappa_k mu_k^T z_n of nb rows transposed, (K, nb) row-major: every loop below
// runs over the rows of the block, contiguous, and vectorises (a row of K = 10 scores would not). The
// formulas and the NaN/inf semantics are those of vmfmm_row.h; a block in which a score is NaN or a maximum
// is infinite is left to the caller, which redoes it row by row.
//
// The kernels compile their callers of these functions for AVX-512, AVX2+FMA and the baseline
// (DHVC_CPU_CLONES); everything here is forced inline so that each version gets its own vectorised copy.
#pragma once

#include <math.h>
#include <stdint.h>
#include <string.h>

#include <type_traits>

#include "dhvc/kernels/vmfmm_row.h"

#if defined(__GNUC__) && !defined(__clang__) && defined(__x86_64__) && !defined(__CUDACC__)
// setup.py compiles for the baseline x86-64 (SSE2); the row loops also get AVX2+FMA and AVX-512 versions,
// chosen once by the CPU the library is loaded on (GCC function multiversioning).
#define DHVC_CPU_CLONES __attribute__((target_clones("arch=x86-64-v4", "arch=x86-64-v3", "default")))
#else
#define DHVC_CPU_CLONES
#endif

namespace dhvc {
namespace kernels {

// Argmax indices as wide as T, so that the compare-and-select over rows vectorises (K < 2^31 is checked).
template <typename T>
using BlockIndex = std::conditional_t<sizeof(T) == 8, int64_t, int32_t>;

// One block of nb rows. s: (K, nb) row-major, the products on entry, the scores after block_scores. Scratch
// of nb entries: m (row maxima), t (sums of exponentials), inv, arg.
template <typename T>
struct Block {
  T* s;
  const T* bias;
  int64_t nb, k;
  T* m;
  double* t;
  double* inv;
  BlockIndex<T>* arg;
};

// The scores s += bias, their maxima and (Hard) argmaxima, column by column. Returns false if a score is NaN
// or a maximum is infinite.
template <typename T, bool Hard>
DHVC_ROW_INLINE bool block_scores(const Block<T>& b) {
  const int64_t nb = b.nb;
  int nan = 0;
  for (int64_t i = 0; i < nb; ++i) {
    const T v = b.s[i] + b.bias[0];
    b.s[i] = v;
    b.m[i] = v;
    nan |= v != v;
  }
  if (Hard) {
    for (int64_t i = 0; i < nb; ++i) b.arg[i] = 0;
  }
  for (int64_t j = 1; j < b.k; ++j) {
    T* sj = b.s + j * nb;
    const T bj = b.bias[j];
    for (int64_t i = 0; i < nb; ++i) {
      const T v = sj[i] + bj;
      sj[i] = v;
      nan |= v != v;
      // Selects, not branches: a branch on v > m mispredicts on every other row of unclustered data.
      const bool greater = v > b.m[i];
      if (Hard) b.arg[i] = greater ? static_cast<BlockIndex<T>>(j) : b.arg[i];
      b.m[i] = greater ? v : b.m[i];
    }
  }
  int bad = nan;
  for (int64_t i = 0; i < nb; ++i) bad |= !(b.m[i] > -INFINITY && b.m[i] < INFINITY);
  return bad == 0;
}

// After a successful block_scores: t = sum_k exp(s_k - m) in double, t in [1, K] (the maximum's term is 1),
// with (WriteExp) e = exp(s - m) in place of the scores.
template <typename T, bool WriteExp>
DHVC_ROW_INLINE void block_exp_sums(const Block<T>& b) {
  const int64_t nb = b.nb;
  for (int64_t i = 0; i < nb; ++i) b.t[i] = 0.0;
  for (int64_t j = 0; j < b.k; ++j) {
    T* sj = b.s + j * nb;
    for (int64_t i = 0; i < nb; ++i) {
      const T e = vmfmm_exp_nonpositive(static_cast<T>(sj[i] - b.m[i]));
      if (WriteExp) sj[i] = e;
      b.t[i] += static_cast<double>(e);
    }
  }
}

// Small products for small d and K, where BLAS is slow (measured at d = K = 10, float64: 41 us per 2048 rows
// for the two products of _vmfmm_em_statistics by MKL, 20-28 us here, the transposition included): z_block
// transposed once into zt (d, nb), then both products vectorised over the rows of the block, on vectors of
// 64 bytes (GCC vector extensions: one AVX-512 register, two AVX2 or four SSE2 ones in the other versions).
template <typename T>
struct Vec64 {
  static constexpr int64_t kLanes = 64 / sizeof(T);
  typedef T type __attribute__((vector_size(64)));
};

template <typename T>
DHVC_ROW_INLINE typename Vec64<T>::type vec_load(const T* p) {
  typename Vec64<T>::type v;
  memcpy(&v, p, sizeof v);
  return v;
}

template <typename T>
DHVC_ROW_INLINE void vec_store(T* p, typename Vec64<T>::type v) {
  memcpy(p, &v, sizeof v);
}

// zt (d, nb) row-major = the nb rows of z (row stride zs) transposed.
template <typename T>
DHVC_ROW_INLINE void block_transpose(const T* z, int64_t zs, int64_t nb, int64_t d, T* zt) {
  for (int64_t i = 0; i < nb; ++i) {
    for (int64_t l = 0; l < d; ++l) zt[l * nb + i] = z[i * zs + l];
  }
}

// s (K, nb) = w (K, d) zt: pairs of components times two vectors of rows, the d terms summed in order.
template <typename T>
DHVC_ROW_INLINE void block_product_scores(const T* w, const T* zt, int64_t nb, int64_t d, int64_t k, T* s) {
  using V = typename Vec64<T>::type;
  constexpr int64_t L = Vec64<T>::kLanes;
  const int64_t full = nb - nb % (2 * L);
  for (int64_t j = 0; j < k; j += 2) {
    const int64_t j1 = j + 1 < k ? j + 1 : j;  // an odd K computes its last component twice
    const T* w0 = w + j * d;
    const T* w1 = w + j1 * d;
    for (int64_t i = 0; i < full; i += 2 * L) {
      V a0 = {}, a1 = {}, b0 = {}, b1 = {};
      for (int64_t l = 0; l < d; ++l) {
        const V z0 = vec_load(zt + l * nb + i), z1 = vec_load(zt + l * nb + i + L);
        a0 += w0[l] * z0;
        a1 += w0[l] * z1;
        b0 += w1[l] * z0;
        b1 += w1[l] * z1;
      }
      vec_store(s + j1 * nb + i, b0);
      vec_store(s + j1 * nb + i + L, b1);
      vec_store(s + j * nb + i, a0);
      vec_store(s + j * nb + i + L, a1);
    }
  }
  for (int64_t j = 0; j < k; ++j) {
    for (int64_t i = full; i < nb; ++i) {
      T a = 0;
      for (int64_t l = 0; l < d; ++l) a += w[j * d + l] * zt[l * nb + i];
      s[j * nb + i] = a;
    }
  }
}

// sums (K, d) += r (K, nb) zt^T: 2 x 2 tiles of (component, coordinate), each a dot product over the rows in
// 2 x 64 bytes of lanes of T (in float32 one block is summed in float32, as BLAS would), then in double.
template <typename T>
DHVC_ROW_INLINE void block_product_sums(const T* r, const T* zt, int64_t nb, int64_t d, int64_t k, double* sums) {
  using V = typename Vec64<T>::type;
  constexpr int64_t L = Vec64<T>::kLanes;
  const int64_t full = nb - nb % (2 * L);
  for (int64_t j = 0; j < k; j += 2) {
    const bool two_j = j + 1 < k;
    const T* r0 = r + j * nb;
    const T* r1 = two_j ? r0 + nb : r0;
    for (int64_t l = 0; l < d; l += 2) {
      const bool two_l = l + 1 < d;
      const T* z0 = zt + l * nb;
      const T* z1 = two_l ? z0 + nb : z0;
      V a00 = {}, a01 = {}, a10 = {}, a11 = {}, c00 = {}, c01 = {}, c10 = {}, c11 = {};
      for (int64_t i = 0; i < full; i += 2 * L) {
        const V p0 = vec_load(r0 + i), p1 = vec_load(r1 + i), q0 = vec_load(z0 + i), q1 = vec_load(z1 + i);
        a00 += p0 * q0;
        a01 += p0 * q1;
        a10 += p1 * q0;
        a11 += p1 * q1;
        const V u0 = vec_load(r0 + i + L), u1 = vec_load(r1 + i + L), v0 = vec_load(z0 + i + L),
                v1 = vec_load(z1 + i + L);
        c00 += u0 * v0;
        c01 += u0 * v1;
        c10 += u1 * v0;
        c11 += u1 * v1;
      }
      a00 += c00;
      a01 += c01;
      a10 += c10;
      a11 += c11;
      T t00 = 0, t01 = 0, t10 = 0, t11 = 0;
      for (int64_t c = 0; c < L; ++c) {
        t00 += a00[c];
        t01 += a01[c];
        t10 += a10[c];
        t11 += a11[c];
      }
      for (int64_t i = full; i < nb; ++i) {
        t00 += r0[i] * z0[i];
        t01 += r0[i] * z1[i];
        t10 += r1[i] * z0[i];
        t11 += r1[i] * z1[i];
      }
      sums[j * d + l] += static_cast<double>(t00);
      if (two_l) sums[j * d + l + 1] += static_cast<double>(t01);
      if (two_j) {
        sums[(j + 1) * d + l] += static_cast<double>(t10);
        if (two_l) sums[(j + 1) * d + l + 1] += static_cast<double>(t11);
      }
    }
  }
}

}  // namespace kernels
}  // namespace dhvc
