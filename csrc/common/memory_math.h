#pragma once
// Per-element math of the memory-bank ops, shared by the CPU kernels (g++) and the CUDA kernels (nvcc).
#include <cmath>
#include <cstdint>
#include "common/hd.h"
#include "common/numerics.h"

namespace ssml_fast {

// FIFO ring of `size` slots. Row k of an n-row batch enqueued at `ptr` lands in slot (ptr + k) % size.
// With n > size the first n - size rows would be overwritten within the same call, so only the last
// `size` rows are copied: the result is what n one-row enqueues in order would leave behind.
SSML_HD int64_t enqueue_first_row(int64_t n, int64_t size) { return n > size ? n - size : 0; }

SSML_HD int64_t ring_slot(int64_t ptr, int64_t k, int64_t size) { return (ptr + k) % size; }

// A NaN norm stays NaN (`norm < eps` is false for NaN, as torch's clamp_min keeps NaN), so a NaN feature
// writes an all-NaN slot instead of hiding its NaN among finite values scaled by 1 / eps.
template <typename A>
SSML_HD A inv_norm(A sum_sq) {
  using std::sqrt;
  const A norm = sqrt(sum_sq);
  return A(1) / (norm < A(kNormEps) ? A(kNormEps) : norm);
}

// Weight of the feature sum in momentum_mix: (1 - m) * mean = ((1 - m) / count) * sum, so the
// per-coordinate work is two multiply-adds and no division.
template <typename A>
SSML_HD A feat_weight(A m, int64_t count) {
  return (A(1) - m) / static_cast<A>(count);
}

// One coordinate of the momentum update before normalisation: m * old + (1 - m) * f, where f is the
// mean of the feature rows sharing the slot's id (`feat_sum` their sum in ascending row order) and
// w = feat_weight(m, count).
template <typename A>
SSML_HD A momentum_mix(A m, A old, A feat_sum, A w) {
  return m * old + w * feat_sum;
}

}  // namespace ssml_fast
