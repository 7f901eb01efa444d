#pragma once
// Plain-pointer launchers of the contextual_similarity CUDA kernels (torch-free, so nvcc stays fast).
// Matrices are contiguous row-major (n, n) indexed i * n + j; bit sets are (n, W) 64-bit words, W = ceil(n / 64).
#include <cstdint>
#include <cuda_runtime.h>

namespace ssml_fast::cuda {

// gram (n, n) -> d2 (n, n): squared distances of the L2-normalised rows, exactly symmetric, diagonal 0;
// rep (n,): each row's first exact copy, whose Gram entries stand for it. inv, s: (n,) scratch for
// 1 / max(||x_i||, eps) and ||x_i^||^2.
template <typename T>
void contextual_sqdist(const T* gram, T* inv, T* s, const int64_t* rep, int64_t n, double eps, T* d2,
                       cudaStream_t stream);

// Ranks every column of every row by ranks_before (common/contextual_math.h): nn (n, k) receives N_k(i) in
// rank order, in_knn (n, n) is 1 where j is in N_k(i). ids: (n,) or null.
template <typename T>
void contextual_rank(const T* d2, const int64_t* ids, int64_t n, int64_t k, int64_t* nn, uint8_t* in_knn,
                     cudaStream_t stream);

// rb (n, W): R(i) = {j : in_knn[i, j] and in_knn[j, i]}; rsize (n,) int32, zero on entry, gets |R(i)|.
void contextual_mutual(const uint8_t* in_knn, int64_t n, uint64_t* rb, int32_t* rsize, cudaStream_t stream);

// wt (n, n): w~_ij = |R(i) ∩ R(j)| / |R(i)| for j in R(i), else 0.
template <typename T>
void contextual_wtilde(const uint64_t* rb, const int32_t* rsize, int64_t n, T* wt, cudaStream_t stream);

// w, w_p, w_c (n, n) float32. The unscaled expansion what_ij = sum of w~_hj over the first m entries h of
// N_k(i) is read from `what` when it is not null (dense GEMM path) and summed from wt and nn otherwise.
template <typename T>
void contextual_combine(const T* d2, const T* wt, const T* what, const int64_t* nn, int64_t n, int64_t k,
                        int64_t m, double sigma, float* w, float* w_p, float* w_c, cudaStream_t stream);

}  // namespace ssml_fast::cuda
