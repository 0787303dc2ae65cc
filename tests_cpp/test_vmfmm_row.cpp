// Tests of csrc/include/dhvc/kernels/vmfmm_row.h and vmfmm_block.h: the branch-free exp (double and float)
// and log against libm, and the column-wise block pass against the row-by-row reference vmfmm_row.
#include <cmath>
#include <cstdint>
#include <limits>
#include <random>
#include <vector>

#include "check.h"
#include "dhvc/kernels/vmfmm_block.h"
#include "dhvc/kernels/vmfmm_row.h"

using namespace dhvc::kernels;

namespace {

constexpr double kEps64 = 2.220446049250313e-16;
constexpr double kEps32 = 1.1920928955078125e-07;

void test_exp_double() {
  std::mt19937_64 g(1);
  std::uniform_real_distribution<double> u(-708.0, 0.0);
  for (int i = 0; i < 200000; ++i) {
    const double x = i < 1000 ? -i * 1e-3 : u(g);  // near 0 too, where the reduction gives n = 0
    CHECK_REL(vmfmm_exp_nonpositive(x), std::exp(x), 2 * kEps64);
  }
  CHECK_TRUE(vmfmm_exp_nonpositive(0.0) == 1.0);
  CHECK_REL(vmfmm_exp_nonpositive(-708.0), std::exp(-708.0), 2 * kEps64);
  for (double x : {-708.5, -745.0, -1e4, -std::numeric_limits<double>::infinity()}) {
    CHECK_TRUE(vmfmm_exp_nonpositive(x) == 0.0);
  }
  CHECK_TRUE(std::isnan(vmfmm_exp_nonpositive(std::nan(""))));
}

void test_exp_float() {
  std::mt19937_64 g(2);
  std::uniform_real_distribution<float> u(-87.0f, 0.0f);
  for (int i = 0; i < 200000; ++i) {
    const float x = i < 1000 ? -i * 1e-3f : u(g);
    CHECK_REL(vmfmm_exp_nonpositive(x), std::exp(static_cast<double>(x)), 2 * kEps32);
  }
  CHECK_TRUE(vmfmm_exp_nonpositive(0.0f) == 1.0f);
  for (float x : {-87.5f, -104.0f, -1e4f, -std::numeric_limits<float>::infinity()}) {
    CHECK_TRUE(vmfmm_exp_nonpositive(x) == 0.0f);
  }
  CHECK_TRUE(std::isnan(vmfmm_exp_nonpositive(std::nanf(""))));
}

void test_log() {
  std::mt19937_64 g(3);
  std::uniform_real_distribution<double> u(0.0, 1.0);
  CHECK_TRUE(vmfmm_log_at_least_one(1.0) == 0.0);
  for (int i = 0; i < 400000; ++i) {
    // [1, 1.01] (log x small: relative accuracy near 1), and log-uniform on [1, e^12] (the sums t <= K).
    const double x = i % 2 ? 1.0 + 0.01 * u(g) : std::exp(12.0 * u(g));
    CHECK_REL(vmfmm_log_at_least_one(x), std::log(x), 2.5 * kEps64);
  }
  // The ends of the mantissa range [0.7056, 1.4112) times powers of 2.
  for (double x : {1.4111999999999998, 1.4112, 2.0, 2.8224, 4.0, 1e6, 1e300}) {
    CHECK_REL(vmfmm_log_at_least_one(x), std::log(x), 2.5 * kEps64);
  }
}

// The block pass (block_scores, block_exp_sums) against vmfmm_row on each row, for odd sizes.
template <typename T>
void test_block_against_rows() {
  std::mt19937_64 g(4);
  std::normal_distribution<double> normal(0.0, 30.0);
  const int64_t k = 7, nb = 37;
  std::vector<T> s(k * nb), bias(k), m(nb);
  std::vector<double> t(nb), inv(nb);
  std::vector<BlockIndex<T>> arg(nb);
  for (auto& v : s) v = static_cast<T>(normal(g));
  for (auto& v : bias) v = static_cast<T>(normal(g));
  std::vector<T> scores(s);
  for (int64_t j = 0; j < k; ++j) {
    for (int64_t i = 0; i < nb; ++i) scores[j * nb + i] += bias[j];
  }
  const Block<T> b{s.data(), bias.data(), nb, k, m.data(), t.data(), inv.data(), arg.data()};
  CHECK_TRUE((block_scores<T, true>(b)));
  block_exp_sums<T, true>(b);
  const double tol = sizeof(T) == 8 ? 4 * kEps64 : 4 * kEps32;
  for (int64_t i = 0; i < nb; ++i) {
    std::vector<T> row(scores);
    int64_t at = -1;
    const double lse = vmfmm_row(row.data() + i, k, nb, true, &at);
    CHECK_TRUE(arg[i] == at);
    CHECK_CLOSE(static_cast<double>(m[i]) + std::log(t[i]), lse, tol);
    for (int64_t j = 0; j < k; ++j) {
      // e = exp(s - m) = r t
      CHECK_CLOSE(static_cast<double>(s[j * nb + i]), static_cast<double>(row[i + j * nb]) * t[i], tol);
    }
  }
  // A NaN score, or an infinite maximum, makes block_scores report the block for the row-by-row pass.
  for (T bad : {std::numeric_limits<T>::quiet_NaN(), std::numeric_limits<T>::infinity()}) {
    std::vector<T> s2(k * nb, T(0));
    s2[3 * nb + 11] = bad;
    const Block<T> b2{s2.data(), bias.data(), nb, k, m.data(), t.data(), inv.data(), arg.data()};
    CHECK_TRUE(!(block_scores<T, false>(b2)));
  }
  std::vector<T> s3(k * nb, -std::numeric_limits<T>::infinity());
  const Block<T> b3{s3.data(), bias.data(), nb, k, m.data(), t.data(), inv.data(), arg.data()};
  CHECK_TRUE(!(block_scores<T, false>(b3)));
}

}  // namespace

int main() {
  test_exp_double();
  test_exp_float();
  test_log();
  test_block_against_rows<double>();
  test_block_against_rows<float>();
  DHVC_TEST_MAIN_RETURN();
}
