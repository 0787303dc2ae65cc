// The operator schemas of the dhvc_ext library (one TORCH_LIBRARY for all of them) and the module stub
// that lets Python load this shared library with `import dhvc_ext._C`. Kernels register themselves per
// device in csrc/cpu/ and csrc/cuda/ (TORCH_LIBRARY_IMPL); fakes and autograd live in dhvc_ext/ops/.
#include <Python.h>
#include <torch/library.h>

extern "C" {
// A plain extension module with no methods: importing it runs the static registrations below. Going
// through the CPython API directly keeps pybind11 out of the build.
PyObject* PyInit__C(void) {
  static struct PyModuleDef module_def = {PyModuleDef_HEAD_INIT, "_C", nullptr, -1, nullptr};
  return PyModule_Create(&module_def);
}
}

TORCH_LIBRARY(dhvc_ext, m) {
  // nu, x: broadcastable tensors of one floating dtype (float32 or float64) on one device.
  // Returns log I_nu(x), broadcast shape, same dtype.
  m.def("log_bessel_iv(Tensor nu, Tensor x) -> Tensor");
  // Returns log H_nu(x) = log[Gamma(nu + 1) (2 / x)^nu I_nu(x)] = log 0F1(; nu + 1; x^2 / 4) >= 0.
  m.def("log_bessel_iv_normalized(Tensor nu, Tensor x) -> Tensor");
  // Returns I_{nu+1}(x) / I_nu(x).
  m.def("bessel_iv_ratio(Tensor nu, Tensor x) -> Tensor");
  // order in {1, 2}: d^order/dx^order of bessel_iv_ratio. The backward of the ratio (and its backward).
  m.def("_bessel_iv_ratio_derivative(Tensor nu, Tensor x, int order) -> Tensor");
  // kappa: float32 or float64 tensor; d >= 2 the ambient dimension. Returns log C_d(kappa).
  m.def("vmf_log_normalizer(Tensor kappa, int d) -> Tensor");
  // rbar: mean resultant lengths in [0, 1), float32/float64; returns kappa = A_d^{-1}(rbar).
  m.def("vmf_kappa_mle(Tensor rbar, int d) -> Tensor");
  // The vMF-mixture E-step: z (N, d), weighted_mu (K, d) = kappa_k mu_k, bias (K,) = log pi_k + log C_d(kappa_k),
  // one floating dtype. Returns (log_resp (N, K), loglik (N,)): the row log-softmax of the scores
  // s = bias + z weighted_mu^T and its normaliser (dhvc_ext/ops/vmfmm.py builds the arguments).
  m.def("_vmfmm_scores_log_softmax(Tensor z, Tensor weighted_mu, Tensor bias) -> (Tensor, Tensor)");
  // The vMF-mixture EM statistics in one pass over z, same z, weighted_mu, bias as above; hard: one-hot argmax
  // responsibilities (ties to the lowest index) instead of r = softmax(s). Returns (N_k (K,), S_k (K, d)) in z's
  // dtype and the total log-likelihood sum_n logsumexp_k s_nk (0-dim float64): N_k = sum_n r_nk,
  // S_k = sum_n r_nk z_n, accumulated in float64. No gradient.
  m.def("_vmfmm_em_statistics(Tensor z, Tensor weighted_mu, Tensor bias, bool hard) -> (Tensor, Tensor, Tensor)");
  // loc (..., d) unit vectors, concentration (...) of loc's dtype, seed: 2 int64 (Philox key, counter offset).
  // Returns (samples (..., d) of loc's dtype, one_minus_w (...) float64 = 1 - loc^T sample), deterministic
  // in seed. The second output is what the backward needs, exact where 1 - loc^T sample would cancel.
  m.def("vmf_sample(Tensor loc, Tensor concentration, Tensor seed) -> (Tensor, Tensor)");
  // Gradients of a loss with respect to loc (rotation) and concentration (implicit reparameterisation);
  // zeros for the ones not asked for.
  m.def(
      "_vmf_sample_backward(Tensor grad, Tensor samples, Tensor one_minus_w, Tensor loc, Tensor concentration, "
      "bool need_loc, bool need_kappa) -> (Tensor, Tensor)");
}
