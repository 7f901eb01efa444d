#pragma once
// Plain-pointer launchers of STML's loss-term kernels (stml_terms_cuda.cu). Torch-free, like the other
// launchers: stml_terms_cuda.cpp owns the tensors, the stream and the op registration. Every matrix is
// (n, c) contiguous, c >= n; T is float or double (accumulated in T). `rows` (n,) receives each row's sum
// times scale; the host adds them.
#include <cstdint>
#include <cuda_runtime.h>

namespace ssml_fast::cuda {

template <typename T>
void row_relative(const T* dist, T* rel, T* inv, int64_t n, int64_t c, double eps, cudaStream_t s);

template <typename T>
void row_relative_backward(const T* grad, const T* rel, const T* inv, T* out, int64_t n, int64_t c,
                           cudaStream_t s);

template <typename T>
void relaxed_contrastive_rows(const T* dist, const T* w, T* grad, T* rows, int64_t n, int64_t c, double delta,
                              double scale, int64_t pull_from, cudaStream_t s);

template <typename T>
void self_distillation_kl_rows(const T* df, const T* dg, T* grad, T* rows, int64_t n, int64_t c,
                               double temperature, bool exclude_self, double scale, cudaStream_t s);

}  // namespace ssml_fast::cuda
