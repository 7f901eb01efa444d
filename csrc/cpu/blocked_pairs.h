#pragma once
// Visiting an n x n matrix as pairs (i, j), j >= i, block by block (CPU).
#include <algorithm>
#include <cstdint>

#include <ATen/Parallel.h>

namespace ssml_fast {

// fn(i, j) for every j >= i (the diagonal included), in 32 x 32 block pairs so that (i, j) and (j, i) are
// both in cache (a row-wise pass reads one of them strided). Each block pair is visited by the one task that
// owns its row block, so fn may read and write both (i, j) and (j, i): used to mirror a triangle, symmetrise
// in place, and write a symmetric value to both places.
template <typename Fn>
void for_each_upper_pair(int64_t n, Fn&& fn) {
  constexpr int64_t kB = 32;
  at::parallel_for(0, (n + kB - 1) / kB, 1, [&](int64_t b0, int64_t b1) {
    for (int64_t bi = b0; bi < b1; ++bi) {
      const int64_t i0 = bi * kB, i1 = std::min(n, i0 + kB);
      for (int64_t j0 = i0; j0 < n; j0 += kB) {
        const int64_t j1 = std::min(n, j0 + kB);
        for (int64_t i = i0; i < i1; ++i)
          for (int64_t j = std::max(j0, i); j < j1; ++j) fn(i, j);
      }
    }
  });
}

}  // namespace ssml_fast
