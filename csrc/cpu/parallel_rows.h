// Row-parallel loops for the CPU kernels on libtorch's intra-op thread pool.
//
// at::parallel_for is header-only: in an OpenMP build of torch its pragmas are compiled into this extension,
// so without -fopenmp it runs serially, and with -fopenmp the extension would pull a second OpenMP runtime
// next to the one bundled with torch. TensorIterator::for_each runs its split inside libtorch instead, on the
// threads torch.set_num_threads controls; iterating over a one-byte-per-row scratch tensor, each chunk's row
// range is its pointer offset.
#pragma once

#include <ATen/ATen.h>
#include <ATen/TensorIterator.h>

#include <cstdint>

namespace dhvc_ext {

// Calls fn(begin, end) on disjoint ranges covering [0, n), in parallel for n >= grain.
template <typename F>
void parallel_rows(int64_t n, int64_t grain, const F& fn) {
  if (n <= 0) return;
  at::Tensor rows = at::empty({n}, at::TensorOptions().dtype(at::kByte));
  auto iter = at::TensorIteratorConfig()
                  .add_output(rows)
                  .check_all_same_dtype(false)
                  .declare_static_dtype_and_device(at::kByte, at::kCPU)
                  .resize_outputs(false)
                  .declare_static_shape(rows.sizes())
                  .build();
  const char* base = static_cast<const char*>(rows.data_ptr());
  iter.for_each(
      [&](char** data, const int64_t* strides, int64_t size0, int64_t size1) {
        // One dimension of unit stride: a chunk is a contiguous range of rows.
        TORCH_INTERNAL_ASSERT(size1 == 1 && (size0 <= 1 || strides[0] == 1));
        const int64_t begin = data[0] - base;
        fn(begin, begin + size0);
      },
      grain);
}

}  // namespace dhvc_ext
