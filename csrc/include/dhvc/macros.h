// Portability macros for the header-only math core in csrc/include/dhvc.
//
// The core is plain C++ (no torch) so that it compiles three ways: into the CPU kernels, into the CUDA
// kernels under nvcc, and into the torch-free C++ tests (tests_cpp/). Every function it defines is
// marked DHVC_HOST_DEVICE and uses only functions that exist in both <cmath> and CUDA's device math.
#pragma once

#if defined(__CUDACC__) || defined(__HIPCC__)
#define DHVC_HOST_DEVICE __host__ __device__
#define DHVC_INLINE __forceinline__
#else
#define DHVC_HOST_DEVICE
#define DHVC_INLINE inline
#endif
