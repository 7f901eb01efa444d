#pragma once
// Host-side pieces of contextual_similarity shared by the CPU and CUDA backends: argument checks at the
// op boundary, the Gram GEMM, and the dense (GEMM) form of the query expansion used when k is large.
#include <ATen/core/Tensor.h>
#include <ATen/TensorOperators.h>
#include <ATen/ops/arange.h>
#include <ATen/ops/full.h>
#include <ATen/ops/mm.h>
#include <ATen/ops/unique_dim.h>
#include <ATen/ops/zeros.h>
#include <c10/util/Exception.h>
#include <ATen/ops/abs.h>
#include <ATen/ops/amax.h>
#include <cmath>

#include "common/contextual_math.h"
#include "common/numerics.h"

namespace ssml_fast {

inline void check_contextual_args(const at::Tensor& emb, int64_t k, double sigma,
                                  const std::optional<at::Tensor>& ids) {
  TORCH_CHECK_VALUE(emb.dim() == 2, "teacher_emb must be 2-D (n, d), got ", emb.dim(), " dims");
  TORCH_CHECK_TYPE(emb.scalar_type() == at::kFloat || emb.scalar_type() == at::kDouble,
                   "teacher_emb must be float32 or float64 at the op (half precision is cast by the wrapper), got ",
                   emb.scalar_type());
  const int64_t n = emb.size(0);
  TORCH_CHECK_VALUE(n >= 1, "teacher_emb must have at least one row");
  TORCH_CHECK_VALUE(k >= 1 && k <= n, "k must be in [1, n] = [1, ", n, "], got ", k);
  TORCH_CHECK_VALUE(sigma > 0 && std::isfinite(sigma), "sigma must be a positive finite number, got ", sigma);
  TORCH_CHECK_VALUE(n <= (int64_t(1) << 31) - 1, "teacher_emb has too many rows");
  if (ids.has_value()) {
    TORCH_CHECK_VALUE(ids->dim() == 1 && ids->size(0) == n, "ids must have shape (", n, ",), got ", ids->sizes());
    TORCH_CHECK_TYPE(ids->scalar_type() == at::kLong, "ids must be int64, got ", ids->scalar_type());
    TORCH_CHECK_VALUE(ids->device() == emb.device(), "ids is on ", ids->device(), " but teacher_emb is on ",
                      emb.device());
  }
}

// Rows are L2-normalised, so w does not depend on the scale of teacher_emb; but the squared norms behind the
// Gram form overflow for float32 rows beyond ~1e19 (and underflow below ~1e-19). Returns x scaled by the power
// of two that brings its largest coordinate into [1, 2) when that coordinate is outside [2^-40, 2^40] (exact,
// so it changes no number), x itself otherwise; raises for NaN / inf. One host read of the largest coordinate.
inline at::Tensor contextual_rescaled(const at::Tensor& x) {
  const double amax = at::abs(x).amax().item<double>();
  TORCH_CHECK_VALUE(std::isfinite(amax), "teacher_emb contains NaN or infinite values");
  if (amax > 0 && (amax > 0x1p40 || amax < 0x1p-40)) return x * std::exp2(-std::floor(std::log2(amax)));
  return x;
}

// (n,) int64 on x's device: the lowest index of each row's exact copies (value comparison), the rule the
// CPU kernel's hash-based search follows.
inline at::Tensor duplicate_representatives_aten(const at::Tensor& x) {
  const int64_t n = x.size(0);
  auto [unique, inverse, counts] = at::unique_dim(x, 0, /*sorted=*/true, /*return_inverse=*/true);
  const at::Tensor first = at::full({unique.size(0)}, n, inverse.options())
                               .scatter_reduce_(0, inverse, at::arange(n, inverse.options()), "amin", true);
  return first.index_select(0, inverse).contiguous();
}

// Dense query expansion, for when the sparse form would do more work than a GEMM:
// out (n, n) = S @ Wt, S_ih = 1 for the first m entries h of N_k(i) (nn: (n, k) int64, rank order),
// Wt (n, n) the dense w~. The caller divides by m.
inline at::Tensor dense_expansion(const at::Tensor& nn, int64_t m, const at::Tensor& wt) {
  const int64_t n = wt.size(0);
  at::Tensor s = at::zeros({n, n}, wt.options());
  s.scatter_(1, nn.narrow(1, 0, m), 1.0);
  return at::mm(s, wt);
}

// Should the query expansion use dense_expansion? `sparse_work` = sum over rows i of sum over the
// first m entries h of N_k(i) of |R(h)| (scattered adds); a GEMM does 2 n^3 flops at a far higher rate.
inline bool prefer_dense_expansion(int64_t sparse_work, int64_t n) {
  return static_cast<double>(sparse_work) > 0.125 * static_cast<double>(n) * n * n;
}

}  // namespace ssml_fast
