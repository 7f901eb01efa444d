#pragma once
// Exact duplicate rows on the CPU (contextual similarity and re-ranking): each row's lowest-index exact copy.
// The CUDA paths use duplicate_representatives_aten (common/contextual_host.h), which gives the same answer.
#include <algorithm>
#include <bit>
#include <cstdint>
#include <numeric>
#include <vector>

#include <ATen/Parallel.h>

namespace ssml_fast {

// rep[j] = the lowest index whose row equals row j exactly (values, so -0 == 0); returns whether any row
// repeats. Found by a hash of each row, checked element-wise.
template <typename T>
bool duplicate_representatives(const T* x, int64_t n, int64_t d, std::vector<int64_t>& rep) {
  // 32-bit lanes so the loop vectorises (a 64-bit multiply does not on AVX2); collisions only cost a compare.
  std::vector<uint32_t> h(n);
  at::parallel_for(0, n, 16, [&](int64_t b, int64_t e) {
    for (int64_t i = b; i < e; ++i) {
      uint32_t acc = 0;
      for (int64_t t = 0; t < d; ++t) {
        const T v = x[i * d + t] + T(0);  // -0 -> +0
        uint32_t word;
        if constexpr (sizeof(T) == 4) {
          word = std::bit_cast<uint32_t>(v);
        } else {
          const uint64_t u = std::bit_cast<uint64_t>(v);
          word = static_cast<uint32_t>(u) ^ static_cast<uint32_t>(u >> 32);
        }
        acc += (word ^ static_cast<uint32_t>(t)) * 0x9E3779B1u;
      }
      h[i] = acc;
    }
  });
  std::vector<int64_t> order(n);
  std::iota(order.begin(), order.end(), 0);
  std::sort(order.begin(), order.end(), [&](int64_t a, int64_t b) { return h[a] != h[b] ? h[a] < h[b] : a < b; });
  rep.resize(n);
  std::iota(rep.begin(), rep.end(), 0);
  bool any = false;
  for (int64_t s = 0; s < n;) {
    int64_t e = s + 1;
    while (e < n && h[order[e]] == h[order[s]]) ++e;
    for (int64_t a = s + 1; a < e; ++a) {  // members ascend by index: compare with the earlier ones
      const int64_t j = order[a];
      for (int64_t c = s; c < a; ++c) {
        const int64_t r = order[c];
        if (rep[r] == r && std::equal(x + j * d, x + (j + 1) * d, x + r * d)) {
          rep[j] = r;
          any = true;
          break;
        }
      }
    }
    s = e;
  }
  return any;
}

// The same rep[] from a Gram matrix G = x x^T (n, n) in which rows equal in value have G_ij == G_ii == G_jj
// exactly (symmetric_gram_entrywise) and whose diagonal is finite: only rows with equal squared norms
// whose Gram entry equals it are compared element-wise (usually none), instead of hashing all n x d values.
template <typename T>
bool duplicate_representatives_by_gram(const T* x, const T* g, int64_t n, int64_t d, std::vector<int64_t>& rep) {
  std::vector<int64_t> order(n);
  std::iota(order.begin(), order.end(), 0);
  auto diag = [&](int64_t i) { return g[i * n + i]; };
  std::sort(order.begin(), order.end(),
            [&](int64_t a, int64_t b) { return diag(a) != diag(b) ? diag(a) < diag(b) : a < b; });
  rep.resize(n);
  std::iota(rep.begin(), rep.end(), 0);
  bool any = false;
  for (int64_t s = 0; s < n;) {
    int64_t e = s + 1;
    while (e < n && diag(order[e]) == diag(order[s])) ++e;
    for (int64_t a = s + 1; a < e; ++a) {  // members ascend by index: compare with the earlier ones
      const int64_t j = order[a];
      for (int64_t c = s; c < a; ++c) {
        const int64_t r = order[c];
        if (rep[r] == r && g[j * n + r] == diag(j) && std::equal(x + j * d, x + (j + 1) * d, x + r * d)) {
          rep[j] = r;
          any = true;
          break;
        }
      }
    }
    s = e;
  }
  return any;
}

}  // namespace ssml_fast
