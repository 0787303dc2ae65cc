// Host-only fast normals: the ziggurat method of Marsaglia & Tsang (2000, J. Stat. Softw. 5(8)), 128 layers,
// fed by a Philox stream. About 5x cheaper than Box-Muller on a CPU (one 32-bit draw and a table look-up in
// 98.8% of cases, no transcendental call), which matters because a vMF sample in d dimensions needs d - 1
// normals. The layer index comes from bits separate from the value (Doornik 2005: sharing them correlates
// the two). GPUs keep Box-Muller (PhiloxStream::normal), whose transcendentals are cheap there, so CPU and
// CUDA draw different (equally distributed) numbers from the same seed. The scalar CPU sampler uses it
// (float64, and float32 without AVX-512); the AVX-512 float32 path vectorises Box-Muller instead
// (random/avx512.h), which has no rejection step to break the lanes apart.
#pragma once

#include <math.h>
#include <stdint.h>

#include "dhvc/random/philox.h"

namespace dhvc {
namespace random {

struct ZigguratTables {
  double k[128];  // acceptance thresholds on |hz|
  double w[128];  // layer widths / 2^31
  double f[128];  // exp(-x^2 / 2) at the layer edges

  static const ZigguratTables& get() {
    static const ZigguratTables tables = build();
    return tables;
  }

 private:
  // The set-up of Marsaglia & Tsang's zigset for RNOR: r = 3.442619855899, area v = 9.91256303526217e-3.
  static ZigguratTables build() {
    ZigguratTables z;
    const double m1 = 2147483648.0;
    double dn = 3.442619855899, tn = dn;
    const double vn = 9.91256303526217e-3;
    const double q = vn / exp(-0.5 * dn * dn);
    z.k[0] = (dn / q) * m1;
    z.k[1] = 0.0;
    z.w[0] = q / m1;
    z.w[127] = dn / m1;
    z.f[0] = 1.0;
    z.f[127] = exp(-0.5 * dn * dn);
    for (int i = 126; i >= 1; --i) {
      dn = sqrt(-2.0 * log(vn / dn + exp(-0.5 * dn * dn)));
      z.k[i + 1] = (dn / tn) * m1;
      tn = dn;
      z.f[i] = exp(-0.5 * dn * dn);
      z.w[i] = dn / m1;
    }
    return z;
  }
};

// A Philox stream whose normal() is the ziggurat; uniform() is PhiloxStream's.
class PhiloxZigguratStream {
 public:
  PhiloxZigguratStream(uint64_t seed, uint64_t offset, uint64_t subsequence)
      : base_(seed, offset, subsequence), tables_(ZigguratTables::get()), index_bits_(0), index_left_(0) {}

  double uniform() { return base_.uniform(); }

  double normal() {
    for (;;) {
      const int64_t hz = static_cast<int32_t>(base_.next_u32());
      const int iz = next_index();
      const double x = static_cast<double>(hz) * tables_.w[iz];
      if (static_cast<double>(hz < 0 ? -hz : hz) < tables_.k[iz]) return x;  // the 98.8% fast path
      if (iz == 0) {
        // The tail beyond r: Marsaglia's exponential method.
        const double r = 3.442619855899;
        double xt, y;
        do {
          xt = -log(base_.uniform()) / r;
          y = -log(base_.uniform());
        } while (y + y < xt * xt);
        return hz > 0 ? r + xt : -r - xt;
      }
      // The wedge between layers: accept x with probability proportional to the density there.
      if (tables_.f[iz] + base_.uniform() * (tables_.f[iz - 1] - tables_.f[iz]) < exp(-0.5 * x * x)) return x;
    }
  }

 private:
  int next_index() {
    if (index_left_ == 0) {
      index_bits_ = base_.next_u32();
      index_left_ = 4;
    }
    const int iz = static_cast<int>(index_bits_ & 127u);
    index_bits_ >>= 8;
    --index_left_;
    return iz;
  }

  PhiloxStream base_;
  const ZigguratTables& tables_;
  uint32_t index_bits_;
  int index_left_;
};

}  // namespace random
}  // namespace dhvc
