#pragma once
// Plain-pointer launchers for the CUDA kernels. Kept free of torch headers so nvcc compiles the .cu
// files quickly; the host .cpp files beside them own tensors, streams and the op registration.
// Every buffer is contiguous row-major; (B, R) matrices are indexed i * R + j.
#include <cstdint>
#include <cuda_runtime.h>
#include "common/distance_math.h"

namespace ssml_fast::cuda {

// gram (B, R) in place -> distances; sq_x (B,), sq_y (R,) are null for cosine.
template <typename T>
void distance_epilogue(T* gram, const T* sq_x, const T* sq_y, int64_t B, int64_t R, Metric metric, cudaStream_t s);

// h[k] = distance_grad_coef(grad[k], dist[k]) for k < n.
template <typename T>
void distance_grad_coef(const T* grad, const T* dist, T* h, int64_t n, Metric metric, cudaStream_t s);

struct TripletRows {
  const int64_t* labels;      // (B,)
  const int64_t* ref_labels;  // (R,)
  int64_t B, R;
  bool exclude_diagonal;
  double margin;
};

// Batch-all, one thread per (i, j). negs (B, R): each row's negative distances ascending, padded with
// +inf; prefix (B, R + 1): their running sums from 0; qs (B, R): each row's (d_ap + margin) ascending,
// padded with +inf; n_neg, n_pos (B,). Writes contrib (B, R) summed loss per positive entry,
// active (B, R) active triplets per positive entry, and the unscaled dloss/ddist into grad (B, R).
template <typename T>
void batch_all(const T* dist, const TripletRows& rows, const double* negs, const double* prefix,
               const int64_t* n_neg, const double* qs, const int64_t* n_pos, double* contrib, int64_t* active,
               T* grad, cudaStream_t s);

// Batch-hard, one block per anchor row. Writes row_loss, row_active, row_valid (B,) and the
// unscaled dloss/ddist into grad (B, R), which must be zero on entry.
template <typename T>
void batch_hard(const T* dist, const TripletRows& rows, bool soft, double* row_loss, int64_t* row_active,
                int64_t* row_valid, T* grad, cudaStream_t s);

// Semi-hard, one thread per (i, j). negs/neg_idx (B, R): each row's negatives sorted by (distance, column),
// padded with +inf. Writes contrib, active, valid (B, R) per positive entry and the unscaled
// dloss/ddist into grad (B, R), which must be zero on entry.
template <typename T>
void semihard(const T* dist, const TripletRows& rows, bool soft, const double* negs, const int64_t* neg_idx,
              const int64_t* n_neg, double* contrib, int64_t* active, int64_t* valid, T* grad, cudaStream_t s);

}  // namespace ssml_fast::cuda
