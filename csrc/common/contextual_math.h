#pragma once
// k-reciprocal math shared by the CPU and CUDA kernels of contextual_similarity (and the re-ranking
// kernel): neighbour ordering with its tie rule, half-to-even rounding, bit-set counting.
#include <cmath>
#include <cstdint>
#include "common/hd.h"

namespace ssml_fast {

// numpy's np.around(x / 2) for a non-negative integer x: round half to even (5/2 -> 2, 3/2 -> 2, 1/2 -> 0).
SSML_HD int64_t half_round_even(int64_t x) {
  const int64_t q = x / 2;
  return (x % 2 == 1 && q % 2 == 1) ? q + 1 : q;
}

// Number of N_k(i) entries the STML query expansion averages over: round(k / 2), at least 1.
// For k = 1 round(1/2) = 0 would average over nothing (the official code then yields NaN); we keep i itself.
SSML_HD int64_t expansion_size(int64_t k) {
  const int64_t m = half_round_even(k);
  return m > 0 ? m : 1;
}

// Priority class of column j in row i's neighbour order: i itself first, then rows sharing i's id
// (other augmented views of the same image), then everything else.
SSML_HD int neighbour_group(int64_t i, int64_t j, const int64_t* ids) {
  if (j == i) return 0;
  if (ids != nullptr && ids[j] == ids[i]) return 1;
  return 2;
}

// Strict order of row i's neighbours: (group, squared distance, column) ascending. Every kernel that
// ranks uses this, so CPU and CUDA agree whenever the computed distances agree (exact ties included):
// among equal distances the lower column comes first.
template <typename T>
SSML_HD bool ranks_before(int ga, T da, int64_t a, int gb, T db, int64_t b) {
  if (ga != gb) return ga < gb;
  if (da != db) return da < db;
  return a < b;
}

// Squared distance between L2-normalised rows from the raw Gram entry g = <x_i, x_j> and the inverse
// norms inv_* = 1 / max(||x||, eps): ||x_i^ - x_j^||^2 = s_i + s_j - 2 g inv_i inv_j with s = ||x^||^2,
// clamped at 0 (the GEMM form can round slightly negative). The diagonal is exactly 0.
template <typename T>
SSML_HD T unit_sqdist(T g, T s_i, T s_j, T inv_i, T inv_j, bool diagonal) {
  if (diagonal) return T(0);
  const T d = s_i + s_j - T(2) * g * inv_i * inv_j;
  return d > T(0) ? d : T(0);
}

// w^C_ij = (w^_ij + w^_ji) / 2 with w^ = what / m: the sum first, so the value is exactly symmetric in (i, j)
// on every compiler (a * inv_m + b * inv_m may be contracted into fma(a, inv_m, b * inv_m), which is not).
template <typename T>
SSML_HD T contextual_symmetric_part(T a, T b, T inv_m) {
  return (a + b) * inv_m / T(2);
}

SSML_HD int popcount64(uint64_t x) {
#ifdef __CUDA_ARCH__
  return __popcll(x);
#else
  return __builtin_popcountll(x);
#endif
}

// |A ∩ B| for two bit sets of `words` 64-bit words.
SSML_HD int64_t intersection_count(const uint64_t* a, const uint64_t* b, int64_t words) {
  int64_t c = 0;
  for (int64_t w = 0; w < words; ++w) c += popcount64(a[w] & b[w]);
  return c;
}

SSML_HD bool test_bit(const uint64_t* bits, int64_t j) { return (bits[j >> 6] >> (j & 63)) & 1ULL; }

}  // namespace ssml_fast
