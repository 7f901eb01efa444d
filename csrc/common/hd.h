#pragma once
// Lets one definition of per-element math serve the CPU kernels (g++) and the CUDA kernels (nvcc).
#ifdef __CUDACC__
#define SSML_HD __host__ __device__ __forceinline__
#else
#define SSML_HD inline
#endif
