// _contextual_expansion_rows (CPU): the sparse part of STML's contextual similarity for the first r of n rows,
// from all n neighbour lists: w^C[:r] of eqs 3.16-3.19 (ssml_fast/ops/contextual_rows.py has the formulas and
// the plain PyTorch version, which every other device runs).
//
// Why a kernel: the PyTorch version is ~25 tensor ops over (n, k, k) / (n, m, k) index tensors and two
// (r, n) scatters; at stml_memory's n = 4336 (batch 240 + memory 4096), k = 10 it took ~20 ms of a step.
// Here it is a few passes over the (n, k) lists. Every sum runs in the PyTorch version's order (scatter_add /
// index_put with accumulate add in index order), so the two give bit-identical results.
#include <algorithm>
#include <vector>

#include <ATen/Dispatch.h>
#include <ATen/Parallel.h>
#include <ATen/ops/zeros.h>
#include <torch/library.h>

#include "common/contextual_math.h"

namespace ssml_fast {
namespace {

template <typename T>
void expansion_rows(const int64_t* nn, int64_t n, int64_t k, int64_t r, T* w_c) {
  const int64_t m = expansion_size(k);
  // (3.16) mutual[i * k + a]: i is in the list of its a-th neighbour; R(i) = those neighbours, in list order.
  std::vector<uint8_t> mutual(n * k);
  std::vector<int64_t> rl(n * k), size(n);
  at::parallel_for(0, n, 64, [&](int64_t b, int64_t e) {
    for (int64_t i = b; i < e; ++i) {
      int64_t c = 0;
      for (int64_t a = 0; a < k; ++a) {
        const int64_t j = nn[i * k + a];
        const int64_t* lj = nn + j * k;
        const bool mu = std::find(lj, lj + k, i) != lj + k;
        mutual[i * k + a] = mu;
        if (mu) rl[i * k + c++] = j;
      }
      size[i] = c;
    }
  });
  // (3.17) w~[h, a] = |R(h) ∩ R(j)| / |R(h)| for j = nn[h, a] in R(h), only where the r output rows read it:
  // rows h in their expansions, and entries landing in an output column (the transposed half of 3.19).
  std::vector<uint8_t> in_expansion(n, 0);
  for (int64_t i = 0; i < r; ++i)
    for (int64_t a = 0; a < m; ++a) in_expansion[nn[i * k + a]] = 1;
  std::vector<T> wt(n * k, T(0));
  at::parallel_for(0, n, 64, [&](int64_t b, int64_t e) {
    for (int64_t h = b; h < e; ++h) {
      const int64_t* rh = rl.data() + h * k;
      for (int64_t a = 0; a < k; ++a) {
        const int64_t j = nn[h * k + a];
        if (!mutual[h * k + a] || !(in_expansion[h] || j < r)) continue;
        const int64_t* rj = rl.data() + j * k;
        int64_t common = 0;
        for (int64_t p = 0; p < size[h]; ++p) common += std::find(rj, rj + size[j], rh[p]) != rj + size[j];
        wt[h * k + a] = static_cast<T>(common) / static_cast<T>(size[h]);
      }
    }
  });
  // (3.18) unscaled w^_i = sum over the first m entries h of N_k(i) of w~_h, for the r rows i (row i: its own
  // task), and the transposed part w^_ji landing in the output columns i < r (column j: its own task). Both
  // add in (a, c) order, the PyTorch version's scatter order.
  std::vector<T> cols(r * n, T(0));
  at::parallel_for(0, std::max<int64_t>(r, 1), 16, [&](int64_t b, int64_t e) {
    for (int64_t i = b; i < std::min(e, r); ++i) {
      T* out = w_c + i * n;
      for (int64_t a = 0; a < m; ++a) {
        const int64_t h = nn[i * k + a];
        for (int64_t c = 0; c < k; ++c) out[nn[h * k + c]] += wt[h * k + c];
      }
    }
  });
  at::parallel_for(0, n, 256, [&](int64_t b, int64_t e) {
    for (int64_t j = b; j < e; ++j)
      for (int64_t a = 0; a < m; ++a) {
        const int64_t h = nn[j * k + a];
        for (int64_t c = 0; c < k; ++c) {
          const int64_t col = nn[h * k + c];
          const T v = wt[h * k + c];
          if (col < r && v != T(0)) cols[col * n + j] += v;
        }
      }
  });
  // (3.19) the two halves summed, then scaled, as the fused op (and the PyTorch version: * (1 / m) / 2).
  const T inv_m = static_cast<T>(1.0 / static_cast<double>(m));
  at::parallel_for(0, r * n, 4096, [&](int64_t b, int64_t e) {
    for (int64_t t = b; t < e; ++t) w_c[t] = (w_c[t] + cols[t]) * inv_m / T(2);
  });
}

at::Tensor contextual_expansion_rows_cpu(const at::Tensor& neighbours, int64_t rows, at::ScalarType dtype) {
  TORCH_CHECK_VALUE(neighbours.dim() == 2 && neighbours.scalar_type() == at::kLong,
                    "neighbours must be a 2-D int64 tensor (n, k), got ", neighbours.sizes(), " ",
                    neighbours.scalar_type());
  const int64_t n = neighbours.size(0), k = neighbours.size(1);
  TORCH_CHECK_VALUE(n >= 1 && k >= 1 && k <= n, "neighbours must have shape (n, k) with 1 <= k <= n, got ",
                    neighbours.sizes());
  TORCH_CHECK_VALUE(rows >= 0 && rows <= n, "rows must be in [0, ", n, "], got ", rows);
  TORCH_CHECK_TYPE(dtype == at::kFloat || dtype == at::kDouble, "dtype must be float32 or float64, got ", dtype);
  const at::Tensor nn = neighbours.contiguous();
  const int64_t* p = nn.const_data_ptr<int64_t>();
  for (int64_t t = 0; t < n * k; ++t)
    TORCH_CHECK_VALUE(p[t] >= 0 && p[t] < n, "neighbours entries must be in [0, ", n, "), got ", p[t], " at row ",
                      t / k);
  at::Tensor w_c = at::zeros({rows, n}, nn.options().dtype(dtype));
  AT_DISPATCH_FLOATING_TYPES(dtype, "contextual_expansion_rows_cpu",
                             [&] { expansion_rows<scalar_t>(p, n, k, rows, w_c.data_ptr<scalar_t>()); });
  return w_c;
}

}  // namespace

TORCH_LIBRARY_IMPL(ssml_fast, CPU, m) { m.impl("_contextual_expansion_rows", &contextual_expansion_rows_cpu); }

}  // namespace ssml_fast
