// Tests of csrc/include/dhvc/random/avx512.h: the vectorised Philox against the scalar philox4x32_10 word for
// word, the polynomial elementary functions against libm (in ulp of the result, over their stated ranges),
// the Box-Muller normals (moments, Kolmogorov-Smirnov, tails, independence of the two outputs of a pair),
// and the 16 x 16 transpose. On a CPU without AVX-512 it reports that and passes (nothing here can run).
#include <algorithm>
#include <cmath>
#include <cstdint>
#include <cstdio>
#include <vector>

#include "check.h"
#include "dhvc/random/avx512.h"
#include "dhvc/random/philox.h"

#if defined(DHVC_HAVE_AVX512_CODE)
DHVC_AVX512_DIAGNOSTICS_PUSH
using namespace dhvc::random;

namespace {

// Distance in units in the last place of want (double or float).
double ulps(double got, double want) {
  if (got == want) return 0.0;
  return std::fabs(got - want) / (std::nextafter(std::fabs(want), INFINITY) - std::fabs(want));
}
double ulps_f(float got, float want) {
  if (got == want) return 0.0;
  return std::fabs(double(got) - double(want)) / (double(std::nextafter(std::fabs(want), INFINITY)) - std::fabs(want));
}

// A simple deterministic source of test inputs (not the thing under test).
struct SplitMix {
  uint64_t s;
  uint64_t next() {
    uint64_t z = (s += 0x9E3779B97F4A7C15ull);
    z = (z ^ (z >> 30)) * 0xBF58476D1CE4E5B9ull;
    z = (z ^ (z >> 27)) * 0x94D049BB133111EBull;
    return z ^ (z >> 31);
  }
  uint32_t next32() { return static_cast<uint32_t>(next() >> 32); }
};

DHVC_AVX512_TARGET void test_philox() {
  SplitMix rng{1};
  for (int trial = 0; trial < 1000; ++trial) {
    const uint32_t k0 = rng.next32(), k1 = rng.next32();
    alignas(64) uint32_t c[4][16], o16[4][16];
    for (int w = 0; w < 4; ++w)
      for (int l = 0; l < 16; ++l) c[w][l] = trial % 3 == 0 ? static_cast<uint32_t>(l + w) : rng.next32();
    const avx512::Words16 out = avx512::philox16(_mm512_load_si512(c[0]), _mm512_load_si512(c[1]),
                                                 _mm512_load_si512(c[2]), _mm512_load_si512(c[3]), k0, k1);
    _mm512_store_si512(o16[0], out.w0);
    _mm512_store_si512(o16[1], out.w1);
    _mm512_store_si512(o16[2], out.w2);
    _mm512_store_si512(o16[3], out.w3);
    // philox8: the same counters in the paired 64-bit layout (lanes 0..7 of the above).
    alignas(64) uint64_t p01[8], p23[8];
    for (int l = 0; l < 8; ++l) {
      p01[l] = c[0][l] | (uint64_t(c[1][l]) << 32);
      p23[l] = c[2][l] | (uint64_t(c[3][l]) << 32);
    }
    __m512i v01 = _mm512_load_si512(p01), v23 = _mm512_load_si512(p23);
    avx512::philox8(v01, v23, k0, k1);
    _mm512_store_si512(p01, v01);
    _mm512_store_si512(p23, v23);
    for (int l = 0; l < 16; ++l) {
      const uint32_t counter[4] = {c[0][l], c[1][l], c[2][l], c[3][l]};
      uint32_t want[4];
      philox4x32_10(counter, k0, k1, want);
      for (int w = 0; w < 4; ++w) CHECK_TRUE(o16[w][l] == want[w]);
      if (l < 8) {
        CHECK_TRUE(uint32_t(p01[l]) == want[0] && uint32_t(p01[l] >> 32) == want[1]);
        CHECK_TRUE(uint32_t(p23[l]) == want[2] && uint32_t(p23[l] >> 32) == want[3]);
      }
    }
  }
  // The scalar function is the stream's block: Random123's known answer for counter 0, key 0.
  const uint32_t zero[4] = {0, 0, 0, 0};
  uint32_t kat[4];
  philox4x32_10(zero, 0, 0, kat);
  CHECK_TRUE(kat[0] == 0x6627e8d5u && kat[1] == 0xe169c58du && kat[2] == 0xbc57ac4cu && kat[3] == 0x9b00dbd8u);
}

// max ulp error of a vector function of 8 doubles over the inputs xs.
template <typename F, typename Ref>
DHVC_AVX512_TARGET double max_ulps_pd(const std::vector<double>& xs, const F& f, Ref ref) {
  double worst = 0.0;
  for (size_t i = 0; i + 8 <= xs.size(); i += 8) {
    alignas(64) double out[8];
    _mm512_store_pd(out, f(_mm512_loadu_pd(&xs[i])));
    for (int l = 0; l < 8; ++l) worst = std::max(worst, ulps(out[l], ref(xs[i + l])));
  }
  return worst;
}

// Log-uniform inputs in [lo, hi] (lo > 0), both signs if asked, plus the ends.
std::vector<double> inputs(double lo, double hi, bool both_signs, int n = 1 << 16) {
  SplitMix rng{7};
  std::vector<double> xs = {lo, hi, lo, hi, lo, hi, lo, hi};
  while (static_cast<int>(xs.size()) < n) {
    const double u = (rng.next() >> 11) * 0x1p-53;
    double x = lo * std::exp(u * std::log(hi / lo));
    if (both_signs && (rng.next() & 1)) x = -x;
    xs.push_back(x);
  }
  return xs;
}

// The functions under test, as functors (a lambda would not carry the AVX-512 target).
struct Log {
  DHVC_AVX512_TARGET __m512d operator()(__m512d x) const { return avx512::log_pd(x); }
};
struct Log1p {
  DHVC_AVX512_TARGET __m512d operator()(__m512d x) const { return avx512::log1p_pd(x); }
};
struct Log1pNeg {
  DHVC_AVX512_TARGET __m512d operator()(__m512d x) const {
    return avx512::log1p_pd(_mm512_sub_pd(_mm512_setzero_pd(), x));
  }
};
struct Exp {
  DHVC_AVX512_TARGET __m512d operator()(__m512d x) const { return avx512::exp_pd(x); }
};
struct Expm1 {
  DHVC_AVX512_TARGET __m512d operator()(__m512d x) const {
    __m512d e;
    return avx512::expm1_pd(x, &e);
  }
};
struct SinSquared {
  DHVC_AVX512_TARGET __m512d operator()(__m512d x) const { return avx512::sin_squared_pd(x); }
};

DHVC_AVX512_TARGET void test_double_functions() {
  // log on (2^-60, 2^60) and near 1 (where the result is small and must keep its relative accuracy).
  auto log_ref = [](double x) { return std::log(x); };
  const double log_ulps = std::max(max_ulps_pd(inputs(0x1p-60, 0x1p60, false), Log(), log_ref),
                                   max_ulps_pd(inputs(1 - 1e-3, 1 + 1e-3, false), Log(), log_ref));
  std::printf("log_pd: %.2f ulp\n", log_ulps);
  CHECK_TRUE(log_ulps < 4);
  const double log1p_ulps =
      std::max(max_ulps_pd(inputs(1e-300, 1e3, false), Log1p(), [](double x) { return std::log1p(x); }),
               max_ulps_pd(inputs(1e-300, 0.999, false), Log1pNeg(), [](double x) { return std::log1p(-x); }));
  std::printf("log1p_pd: %.2f ulp\n", log1p_ulps);
  CHECK_TRUE(log1p_ulps < 4);
  const double exp_ulps = max_ulps_pd(inputs(1e-20, 700.0, true), Exp(), [](double x) { return std::exp(x); });
  std::printf("exp_pd: %.2f ulp\n", exp_ulps);
  CHECK_TRUE(exp_ulps < 4);
  const double expm1_ulps = max_ulps_pd(inputs(1e-300, 700.0, true), Expm1(), [](double x) { return std::expm1(x); });
  std::printf("expm1_pd: %.2f ulp\n", expm1_ulps);
  CHECK_TRUE(expm1_ulps < 6);
  const double sin2_ulps = max_ulps_pd(inputs(1e-12, 0.7853981633974483, false), SinSquared(), [](double x) {
    const long double s = std::sin(static_cast<long double>(x));
    return static_cast<double>(s * s);
  });
  std::printf("sin_squared_pd: %.2f ulp\n", sin2_ulps);
  CHECK_TRUE(sin2_ulps < 4);
  // The edges the sampler relies on: exp underflows to 0 (also at -inf), overflows to inf, keeps NaN.
  alignas(64) double edge[8] = {-INFINITY, -800.0, 800.0, NAN, 0.0, -745.2, 709.7, 1.0};
  alignas(64) double out[8];
  _mm512_store_pd(out, avx512::exp_pd(_mm512_load_pd(edge)));
  CHECK_TRUE(out[0] == 0.0 && out[1] == 0.0 && std::isinf(out[2]) && std::isnan(out[3]) && out[4] == 1.0);
  CHECK_TRUE(ulps(out[6], std::exp(709.7)) < 4 && ulps(out[7], std::exp(1.0)) < 4);
  __m512d e;
  _mm512_store_pd(out, avx512::expm1_pd(_mm512_load_pd(edge), &e));
  CHECK_TRUE(out[0] == -1.0 && out[4] == 0.0);
  // Uniforms: never 0 or 1, and 1 - u exact, at the extreme bit patterns.
  alignas(64) uint64_t bits[8] = {0, ~0ull, 1ull << 12, ~0ull << 12, 0x8000000000000000ull, 0xFFFFFFFFull, 0, 0};
  _mm512_store_pd(out, avx512::uniform52(_mm512_load_si512(bits)));
  for (int l = 0; l < 8; ++l) CHECK_TRUE(out[l] > 0.0 && out[l] < 1.0 && (1.0 - out[l]) + out[l] == 1.0);
  CHECK_TRUE(out[0] == 0x1p-53 && out[1] == 1.0 - 0x1p-53);
  _mm512_store_pd(out, avx512::uniform32_lo(_mm512_load_si512(bits)));
  for (int l = 0; l < 8; ++l) CHECK_TRUE(out[l] > 0.0 && out[l] < 1.0);
  CHECK_TRUE(out[0] == 0x1p-33 && out[1] == 1.0 - 0x1p-33);
}

DHVC_AVX512_TARGET void test_float_functions() {
  double log_worst = 0.0, sin_worst = 0.0, cos_worst = 0.0;
  SplitMix rng{3};
  for (int i = 0; i < (1 << 16); ++i) {
    alignas(64) float x[16], y[16], out_log[16], out_sin[16], out_cos[16];
    for (int l = 0; l < 16; ++l) {
      x[l] = std::ldexp(1.0f + (rng.next32() >> 9) * 0x1p-23f, -static_cast<int>(rng.next32() % 40));
      y[l] = (rng.next32() >> 8) * 0x1p-24f * 0.78539816f;
    }
    _mm512_store_ps(out_log, avx512::log_ps(_mm512_load_ps(x)));
    __m512 s, c;
    avx512::sincos_octant_ps(_mm512_load_ps(y), &s, &c);
    _mm512_store_ps(out_sin, s);
    _mm512_store_ps(out_cos, c);
    for (int l = 0; l < 16; ++l) {
      if (x[l] != 1.0f) log_worst = std::max(log_worst, ulps_f(out_log[l], static_cast<float>(std::log(double(x[l])))));
      if (y[l] > 0) sin_worst = std::max(sin_worst, ulps_f(out_sin[l], static_cast<float>(std::sin(double(y[l])))));
      cos_worst = std::max(cos_worst, ulps_f(out_cos[l], static_cast<float>(std::cos(double(y[l])))));
    }
  }
  std::printf("log_ps: %.2f ulp, sin: %.2f ulp, cos: %.2f ulp (float)\n", log_worst, sin_worst, cos_worst);
  CHECK_TRUE(log_worst < 4 && sin_worst < 4 && cos_worst < 4);
}

// Normals from consecutive Philox blocks of one stream, as the sampler draws them.
DHVC_AVX512_TARGET void draw_normals(uint32_t key, int calls, std::vector<float>* first, std::vector<float>* second) {
  const __m512i lane = _mm512_set_epi32(15, 14, 13, 12, 11, 10, 9, 8, 7, 6, 5, 4, 3, 2, 1, 0);
  for (int call = 0; call < calls; ++call) {
    const avx512::Words16 w = avx512::philox16(_mm512_add_epi32(_mm512_set1_epi32(16 * call), lane),
                                               _mm512_setzero_si512(), _mm512_setzero_si512(),
                                               _mm512_setzero_si512(), key, 0);
    __m512 n[4];
    avx512::normals16(w, n);
    alignas(64) float buf[4][16];
    for (int k = 0; k < 4; ++k) _mm512_store_ps(buf[k], n[k]);
    for (int k = 0; k < 4; k += 2) {
      first->insert(first->end(), buf[k], buf[k] + 16);
      second->insert(second->end(), buf[k + 1], buf[k + 1] + 16);
    }
  }
}

void test_normals() {
  std::vector<float> a, b;
  draw_normals(99, 1 << 15, &a, &b);  // 2^21 pairs
  std::vector<double> all(a.begin(), a.end());
  all.insert(all.end(), b.begin(), b.end());
  const double n = static_cast<double>(all.size());
  double m1 = 0, m2 = 0, m3 = 0, m4 = 0, cross = 0, cross2 = 0;
  int beyond = 0;
  for (double x : all) {
    m1 += x;
    m2 += x * x;
    m3 += x * x * x;
    m4 += x * x * x * x;
    beyond += std::fabs(x) > 4.0;
  }
  for (size_t i = 0; i < a.size(); ++i) {
    cross += double(a[i]) * b[i];
    cross2 += double(a[i]) * a[i] * b[i] * b[i];
  }
  const double pairs = static_cast<double>(a.size());
  // Moments within 5 standard errors (variances of x, x^2, x^3, x^4: 1, 2, 15, 96); the two outputs of a
  // pair uncorrelated (E[ab] = 0, E[a^2 b^2] = 1: products of independent normals).
  CHECK_ABS(m1 / n, 0.0, 5.0 / std::sqrt(n));
  CHECK_ABS(m2 / n, 1.0, 5.0 * std::sqrt(2.0 / n));
  CHECK_ABS(m3 / n, 0.0, 5.0 * std::sqrt(15.0 / n));
  CHECK_ABS(m4 / n, 3.0, 5.0 * std::sqrt(96.0 / n));
  CHECK_ABS(cross / pairs, 0.0, 5.0 / std::sqrt(pairs));
  CHECK_ABS(cross2 / pairs, 1.0, 5.0 * std::sqrt(8.0 / pairs));
  const double p4 = std::erfc(4.0 / std::sqrt(2.0));
  CHECK_ABS(beyond / n, p4, 5.0 * std::sqrt(p4 / n));
  // Kolmogorov-Smirnov on the first 2^20.
  std::vector<double> x(all.begin(), all.begin() + (1 << 20));
  std::sort(x.begin(), x.end());
  double ks = 0.0;
  const double m = static_cast<double>(x.size());
  for (size_t i = 0; i < x.size(); ++i) {
    const double cdf = 0.5 * std::erfc(-x[i] / std::sqrt(2.0));
    ks = std::max(ks, std::max(std::fabs(cdf - i / m), std::fabs(cdf - (i + 1) / m)));
  }
  std::printf("normals: sqrt(n) KS = %.3f\n", std::sqrt(m) * ks);
  CHECK_TRUE(std::sqrt(m) * ks < 1.95);
  for (double v : all) CHECK_TRUE(std::isfinite(v) && v != 0.0);
}

DHVC_AVX512_TARGET void test_transpose() {
  __m512 r[16];
  alignas(64) float buf[16];
  for (int i = 0; i < 16; ++i) {
    for (int j = 0; j < 16; ++j) buf[j] = static_cast<float>(16 * i + j);
    r[i] = _mm512_load_ps(buf);
  }
  avx512::transpose16(r);
  for (int i = 0; i < 16; ++i) {
    _mm512_store_ps(buf, r[i]);
    for (int j = 0; j < 16; ++j) CHECK_TRUE(buf[j] == static_cast<float>(16 * j + i));
  }
}

}  // namespace

int main() {
  if (!avx512::cpu_has_avx512()) {
    std::printf("test_random_avx512: this CPU lacks AVX-512 (F, DQ, BW, VL) or BMI2; nothing to test\n");
    return 0;
  }
  test_philox();
  test_double_functions();
  test_float_functions();
  test_normals();
  test_transpose();
  return dhvc_test::failures();
}
DHVC_AVX512_DIAGNOSTICS_POP

#else
int main() {
  std::printf("test_random_avx512: not an x86-64 GCC/Clang build; nothing to test\n");
  return 0;
}
#endif
