// Matrix products inside the vMF-mixture CUDA kernels, in the inputs' full precision whatever the caller's
// autocast and TF32 settings. Included by vmfmm_estep_cuda.cu and vmfmm_em_cuda.cu only.
//
// Why a guard is needed: our ops have no Autocast kernel, so the dispatcher passes over the Autocast keys
// to reach the CUDA kernel, but autocast stays enabled in thread-local state: an at::mm called from inside
// the kernel would be autocast in its turn (bfloat16 under `torch.autocast("cuda", torch.bfloat16)`).
// ExcludeDispatchKeyGuard takes the autocast keys out of the dispatch for the scope.
//
// TF32: torch.set_float32_matmul_precision("high") makes cuBLAS round float32 operands to 10-bit mantissas,
// an error of about 1e-3 kappa nats in the scores. at::NoTF32Guard (thread-local, torch >= 1.12) sets the
// cuBLAS handle's math mode to CUBLAS_DEFAULT_MATH for the scope; torch's cuBLASLt paths do not consult it,
// so (a) the kernels never call addmm with a 1-D bias (torch sends that to cuBLASLt's gemm_and_bias): the
// bias is added by the row kernels; (b) when cuBLASLt is the preferred BLAS backend
// (torch.backends.cuda.preferred_blas_library("cublaslt"), TORCH_BLAS_PREFER_CUBLASLT=1), float32 products
// are computed in float64 and rounded once. Only torch C++ APIs present in torch 2.11 are used.
#pragma once

#include <ATen/ATen.h>
#include <ATen/BlasBackend.h>
#include <ATen/Context.h>
#include <c10/core/DispatchKeySet.h>
#include <c10/core/impl/LocalDispatchKeySet.h>

namespace dhvc_ext {

class FullPrecisionProducts {
 public:
  explicit FullPrecisionProducts(at::ScalarType dtype)
      : widen_(dtype == at::kFloat && at::globalContext().blasPreferredBackend() == at::BlasBackend::Cublaslt) {}
  FullPrecisionProducts(const FullPrecisionProducts&) = delete;
  FullPrecisionProducts& operator=(const FullPrecisionProducts&) = delete;

  // out = a b (2-D), out of a's dtype.
  void mm_out(at::Tensor& out, const at::Tensor& a, const at::Tensor& b) const {
    if (widen_) {
      out.copy_(at::mm(a.to(at::kDouble), b.to(at::kDouble)));
    } else {
      at::mm_out(out, a, b);
    }
  }

  at::Tensor mm(const at::Tensor& a, const at::Tensor& b) const {
    return widen_ ? at::mm(a.to(at::kDouble), b.to(at::kDouble)) : at::mm(a, b);
  }

  // Batched (B, m, k) x (B, k, n); float64 when widened (the callers sum the result in float64).
  at::Tensor bmm(const at::Tensor& a, const at::Tensor& b) const {
    return widen_ ? at::bmm(a.to(at::kDouble), b.to(at::kDouble)) : at::bmm(a, b);
  }

 private:
  c10::impl::ExcludeDispatchKeyGuard no_autocast_{c10::autocast_dispatch_keyset};
  at::NoTF32Guard no_tf32_;
  bool widen_;
};

}  // namespace dhvc_ext
