// Counter-based random numbers: Philox4x32-10 (Salmon, Moraes, Dror & Shaw 2011, "Parallel random numbers:
// as easy as 1, 2, 3"), the generator behind torch's CUDA and cuRAND's default.
//
// A stream is keyed by a 64-bit seed and addressed by a 128-bit counter (draw index, offset, sample index),
// so sample i's numbers depend only on (seed, offset, i): results are identical whatever the thread count,
// launch shape or device, and no state is shared between threads.
#pragma once

#include <math.h>
#include <stdint.h>

#include "dhvc/macros.h"

namespace dhvc {
namespace random {

// The Philox constants: round multipliers and the Weyl key increments.
constexpr uint32_t kPhiloxM0 = 0xD2511F53u;
constexpr uint32_t kPhiloxM1 = 0xCD9E8D57u;
constexpr uint32_t kPhiloxW0 = 0x9E3779B9u;
constexpr uint32_t kPhiloxW1 = 0xBB67AE85u;

// One Philox4x32-10 block: the four words of counter (c0, c1, c2, c3) under key (k0, k1). The vectorised
// versions in random/avx512.h compute the same function, 8 or 16 counters at a time.
DHVC_HOST_DEVICE DHVC_INLINE void philox4x32_10(const uint32_t counter[4], uint32_t k0, uint32_t k1,
                                                 uint32_t out[4]) {
  uint32_t c0 = counter[0], c1 = counter[1], c2 = counter[2], c3 = counter[3];
#if defined(__CUDACC__)
#pragma unroll
#endif
  for (int round = 0; round < 10; ++round) {
    const uint64_t p0 = static_cast<uint64_t>(kPhiloxM0) * c0;
    const uint64_t p1 = static_cast<uint64_t>(kPhiloxM1) * c2;
    c0 = static_cast<uint32_t>(p1 >> 32) ^ c1 ^ k0;
    c1 = static_cast<uint32_t>(p1);
    c2 = static_cast<uint32_t>(p0 >> 32) ^ c3 ^ k1;
    c3 = static_cast<uint32_t>(p0);
    k0 += kPhiloxW0;  // Weyl sequence key schedule
    k1 += kPhiloxW1;
  }
  out[0] = c0;
  out[1] = c1;
  out[2] = c2;
  out[3] = c3;
}

class PhiloxStream {
 public:
  DHVC_HOST_DEVICE PhiloxStream(uint64_t seed, uint64_t offset, uint64_t subsequence)
      : key0_(static_cast<uint32_t>(seed)), key1_(static_cast<uint32_t>(seed >> 32)), draw_(0),
        offset_(static_cast<uint32_t>(offset)), sub0_(static_cast<uint32_t>(subsequence)),
        sub1_(static_cast<uint32_t>(subsequence >> 32)), used_(4), has_spare_normal_(false) {}

  // The next 32 random bits.
  DHVC_HOST_DEVICE DHVC_INLINE uint32_t next_u32() {
    if (used_ == 4) refill();
    return out_[used_++];
  }

  // Uniform on the open interval (0, 1) with 53 random bits: never 0 (log u is finite) and never 1.
  DHVC_HOST_DEVICE DHVC_INLINE double uniform() {
    const uint32_t a = next_u32() >> 5;  // 27 bits
    const uint32_t b = next_u32() >> 6;  // 26 bits
    return (a * 67108864.0 + b + 0.5) * (1.0 / 9007199254740992.0);
  }

  // Standard normal by Box-Muller, the second value of each pair kept for the next call.
  DHVC_HOST_DEVICE DHVC_INLINE double normal() {
    if (has_spare_normal_) {
      has_spare_normal_ = false;
      return spare_normal_;
    }
    const double r = sqrt(-2.0 * log(uniform()));
    const double theta = 6.283185307179586477 * uniform();
    spare_normal_ = r * sin(theta);
    has_spare_normal_ = true;
    return r * cos(theta);
  }

 private:
  DHVC_HOST_DEVICE DHVC_INLINE void refill() {
    const uint32_t counter[4] = {draw_, offset_, sub0_, sub1_};
    philox4x32_10(counter, key0_, key1_, out_);
    ++draw_;
    used_ = 0;
  }

  uint32_t key0_, key1_;
  uint32_t draw_, offset_, sub0_, sub1_;
  uint32_t out_[4];
  int used_;
  bool has_spare_normal_;
  double spare_normal_;
};

}  // namespace random
}  // namespace dhvc
