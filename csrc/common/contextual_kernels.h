#pragma once
// Per-element bodies of the CUDA backend of contextual_similarity, shared by the CUDA kernels (one thread per
// entry, cuda/contextual_cuda.cu) and their CPU twin (loops over the same bodies, cpu/contextual_gpu_algorithm_cpu.cpp),
// so the GPU algorithm's math and host orchestration (common/contextual_gpu_host.h) are tested on machines without a
// GPU. Matrices are contiguous row-major (n, n) indexed t = i * n + j; bit sets are (n, W) 64-bit words.
#include <cmath>
#include <cstdint>
#include "common/contextual_math.h"
#include "common/hd.h"

namespace ssml_fast {

// Row i of the Gram matrix -> inv[i] = 1 / max(||x_i||, eps) and s[i] = ||x_i^||^2.
template <typename T>
SSML_HD void contextual_row_norm_entry(const T* gram, T* inv, T* s, int64_t i, int64_t n, T eps) {
  using std::sqrt;
  const T g = gram[i * n + i];
  const T r = sqrt(g);
  inv[i] = T(1) / (r > eps ? r : eps);
  s[i] = g * inv[i] * inv[i];
}

// d2[t] from the upper triangle of gram at the rows' first copies (rep), like the CPU kernel: d2 is exactly
// symmetric and identical rows tie exactly.
template <typename T>
SSML_HD T contextual_sqdist_entry(const T* gram, const T* inv, const T* s, const int64_t* rep, int64_t n, int64_t t) {
  const int64_t i = t / n, j = t - i * n;
  const int64_t ri = rep[i], rj = rep[j];
  const int64_t a = ri < rj ? ri : rj, b = ri < rj ? rj : ri;
  return unit_sqdist<T>(gram[a * n + b], s[a], s[b], inv[a], inv[b], a == b);
}

// Rank of column j in row i (the number of columns that precede it by ranks_before, counted up to k): in_knn[i, j]
// and, when j is among the k nearest, nn[i, rank] = j. O(n) per entry, no sort and no shared list.
template <typename T>
SSML_HD void contextual_rank_entry(const T* row, const int64_t* ids, int64_t i, int64_t j, int64_t n, int64_t k,
                                   int64_t* nn, uint8_t* in_knn) {
  const int gj = neighbour_group(i, j, ids);
  const T dj = row[j];
  int64_t rank = 0;
  for (int64_t l = 0; l < n && rank < k; ++l) rank += ranks_before<T>(neighbour_group(i, l, ids), row[l], l, gj, dj, j);
  in_knn[i * n + j] = rank < k;
  if (rank < k) nn[i * k + rank] = j;
}

// Word w of row i's mutual-neighbour bit set R(i) = {j : j in N_k(i) and i in N_k(j)}, t = i * W + w.
SSML_HD uint64_t contextual_mutual_word(const uint8_t* in_knn, int64_t n, int64_t W, int64_t t) {
  const int64_t i = t / W, w = t - i * W;
  uint64_t bits = 0;
  for (int b = 0; b < 64; ++b) {
    const int64_t j = w * 64 + b;
    if (j < n && in_knn[i * n + j] && in_knn[j * n + i]) bits |= 1ULL << b;
  }
  return bits;
}

// w~_ij = |R(i) ∩ R(j)| / |R(i)| for j in R(i), else 0.
template <typename T>
SSML_HD T contextual_wtilde_entry(const uint64_t* rb, const int32_t* rsize, int64_t n, int64_t W, int64_t t) {
  const int64_t i = t / n, j = t - i * n;
  const uint64_t* ri = rb + i * W;
  return test_bit(ri, j) ? static_cast<T>(intersection_count(ri, rb + j * W, W)) * (T(1) / static_cast<T>(rsize[i]))
                         : T(0);
}

// w, w_p, w_c at entry t. The unscaled expansion what_ij = sum of w~_hj over the first m entries h of N_k(i) is read
// from `what` when it is not null (dense GEMM path) and summed from wt and nn otherwise.
template <typename T>
SSML_HD void contextual_combine_entry(const T* d2, const T* wt, const T* what, const int64_t* nn, int64_t n, int64_t k,
                                      int64_t m, T neg_inv_sigma, int64_t t, float* w, float* w_p, float* w_c) {
  using std::exp;
  const int64_t i = t / n, j = t - i * n;
  T a = 0, b = 0;
  if (what != nullptr) {
    a = what[i * n + j];
    b = what[j * n + i];
  } else {
    for (int64_t r = 0; r < m; ++r) {
      a += wt[nn[i * k + r] * n + j];
      b += wt[nn[j * k + r] * n + i];
    }
  }
  const T inv_m = T(1) / static_cast<T>(m);
  const T c = contextual_symmetric_part<T>(a, b, inv_m);
  const T p = exp(d2[t] * neg_inv_sigma);  // the CPU kernel's at::exp(d2 * (-1 / sigma))
  w_c[t] = static_cast<float>(c);
  w_p[t] = static_cast<float>(p);
  w[t] = static_cast<float>((p + c) / T(2));
}

}  // namespace ssml_fast
