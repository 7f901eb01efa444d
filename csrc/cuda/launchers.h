#pragma once
// Plain-pointer launchers for the CUDA kernels. Kept free of torch headers so nvcc compiles the .cu
// files quickly; the host .cpp files beside them own tensors, streams and the op registration.
// Every buffer is contiguous row-major; (B, R) matrices are indexed i * R + j.
#include <cstdint>
#include <cuda_runtime.h>
#include "common/distance_math.h"
#include "common/triplet_sorted.h"

namespace ssml_fast::cuda {

// gram (B, R) in place -> distances; sq_x (B,), sq_y (R,) are null for cosine. x (B, D), y (R, D): the rows,
// for the entries the GEMM form cannot give (common/distance_math.h, gram_form_ok).
template <typename T>
void distance_epilogue(T* gram, const T* sq_x, const T* sq_y, const T* x, const T* y, int64_t B, int64_t R, int64_t D,
                       Metric metric, cudaStream_t s);

// h[k] = distance_grad_coef(grad[k], dist[k]) for k < n.
template <typename T>
void distance_grad_coef(const T* grad, const T* dist, T* h, int64_t n, Metric metric, cudaStream_t s);

// Triplet kernels over the per-entry bodies of common/triplet_sorted.h (buffer layouts documented there),
// on one chunk of rows. Batch-all and semi-hard: one thread per (i, j), then for semi-hard one thread per
// row gathering the negatives' gradients in column order (deterministic); batch-hard: one block per row.
template <typename T>
void batch_all(const T* dist, const TripletRows& rows, const T* negs, const double* prefix, const int64_t* n_neg,
               const T* pos, const int64_t* n_pos, double* contrib, int64_t* active, T* grad, cudaStream_t s);

template <typename T>
void batch_hard(const T* dist, const TripletRows& rows, bool soft, double* row_loss, int64_t* row_active,
                int64_t* row_valid, T* grad, cudaStream_t s);

template <typename T>
void semihard(const T* dist, const TripletRows& rows, bool soft, const T* negs, const int64_t* neg_idx,
              const int64_t* n_neg, double* contrib, int64_t* active, int64_t* valid, int64_t* choice, T* grad,
              cudaStream_t s);

}  // namespace ssml_fast::cuda
