#pragma once
// Device-agnostic body of pairwise_distance (forward and backward): one GEMM forward, two GEMMs
// backward (one when y is x), all through ATen so they hit cuBLAS / MKL. Only the element-wise epilogues differ by
// device; each backend passes its own.
#include <ATen/core/Tensor.h>
#include <ATen/TensorOperators.h>
#include <ATen/ops/abs.h>
#include <ATen/ops/addmm.h>
#include <ATen/ops/empty.h>
#include <ATen/ops/zeros_like.h>
#include <ATen/ops/amax.h>
#include <ATen/ops/clamp_min.h>
#include <ATen/ops/exp2.h>
#include <ATen/ops/floor.h>
#include <ATen/ops/linalg_vector_norm.h>
#include <ATen/ops/log2.h>
#include <ATen/ops/mm.h>
#include <ATen/ops/where.h>
#include <c10/util/Exception.h>
#include "common/distance_math.h"
#include "common/full_precision.h"
#include "common/numerics.h"

namespace ssml_fast {

struct DistanceEpilogues {
  // gram (B, R) in place -> distances, given squared norms sq_x (B,), sq_y (R,) (undefined for cosine)
  // and the rows x (B, D), y (R, D) themselves, from which the entries the GEMM form cannot give
  // (gram_form_ok false) are recomputed directly.
  void (*to_distance)(at::Tensor& gram, const at::Tensor& sq_x, const at::Tensor& sq_y, const at::Tensor& x,
                      const at::Tensor& y, Metric metric);
  // H (B, R) from upstream grad and forward distances, see distance_grad_coef.
  at::Tensor (*grad_coef)(const at::Tensor& grad, const at::Tensor& dist, Metric metric);
  // x against itself (n, n): from H = grad_coef, S = H + H^T (autograd adds the gradients of the two uses of
  // x, both linear in H), and for the euclidean family diag(rowsum S) - S: the matrix whose product with x
  // is the gradient. self_coef_composite below is the plain form; the CPU fuses its passes.
  at::Tensor (*self_coef)(const at::Tensor& grad, const at::Tensor& dist, Metric metric);
  // x x^T (n, n) for x against itself: the CPU computes only the lower triangle (cpu/symmetric_gram.h).
  at::Tensor (*gram)(const at::Tensor& x);
  // (n,) squared row norms of a contiguous (n, d) x (the CPU: one pass, no n x d temporary).
  at::Tensor (*sq_norms)(const at::Tensor& x);
};

// self_coef from H (grad_coef's result, overwritten) in ATen ops.
inline at::Tensor self_coef_composite(at::Tensor h, Metric metric) {
  // (A blocked contiguous transpose plus an in-place add: h + h.t() reads h strided, as slow as the GEMM.)
  h = h.t().contiguous().add_(h);
  if (metric != Metric::Cosine) {
    // rowsum(S) x - S x = (diag(rowsum S) - S) x: the row sums go onto the diagonal (an n-element pass)
    // rather than scaling x (an n x d pass and one more n x d buffer), then one plain GEMM.
    const at::Tensor r = h.sum(1);
    h.neg_().diagonal().add_(r);
  }
  return h;
}

inline void check_pairwise_args(const at::Tensor& x, const at::Tensor& y) {
  TORCH_CHECK_VALUE(x.dim() == 2 && y.dim() == 2 && x.size(1) == y.size(1),
                    "x and y must be 2-D with one number of columns, got shapes ", x.sizes(), " and ", y.sizes());
  TORCH_CHECK_TYPE(x.scalar_type() == y.scalar_type() &&
                       (x.scalar_type() == at::kFloat || x.scalar_type() == at::kDouble),
                   "x and y must both be float32 or both float64 (half precision is cast by the wrapper), got ",
                   x.scalar_type(), " and ", y.scalar_type());
  TORCH_CHECK_VALUE(x.device() == y.device(), "y is on ", y.device(), " but x is on ", x.device());
}

// Rows scaled by a power of two so their largest coordinate is below 2^60 (exact: no rounding), for the
// norm of a row that would overflow when squared (float32 beyond ~1e19); other rows are left untouched, so
// the usual inputs give bit-identical results. NaN / inf rows keep their NaN / inf.
inline at::Tensor tame_huge_rows(const at::Tensor& x) {
  const at::Tensor amax = at::amax(at::abs(x), {1}, /*keepdim=*/true);
  const double big = 1152921504606846976.0;  // 2^60
  const at::Tensor scale = at::where(amax > big, at::exp2(-at::floor(at::log2(amax))), 1.0);
  return x * scale;
}

inline at::Tensor unit_rows(const at::Tensor& x, at::Tensor* norms = nullptr) {
  at::Tensor n = at::linalg_vector_norm(x, 2, {1}, /*keepdim=*/true);
  if (norms) *norms = n;
  return x / at::clamp_min(n, kNormEps);
}

inline at::Tensor pairwise_distance_impl(const at::Tensor& x_in, const at::Tensor& y_in, Metric metric,
                                         const DistanceEpilogues& ep) {
  check_pairwise_args(x_in, y_in);
  const FullFloat32Matmul full_precision;
  at::Tensor x = x_in.contiguous(), y = y_in.contiguous();
  at::Tensor gram;
  const bool same = x_in.is_same(y_in);
  if (metric == Metric::Cosine) {
    const at::Tensor ux = unit_rows(tame_huge_rows(x));
    gram = same ? ep.gram(ux) : at::mm(ux, unit_rows(tame_huge_rows(y)).t());
    ep.to_distance(gram, at::Tensor(), at::Tensor(), x, y, metric);
  } else {
    gram = same ? ep.gram(x) : at::mm(x, y.t());
    // x against itself: the squared norms are the Gram's diagonal, so d_ii comes out 0 from the same
    // roundings as every d_ij (and no n x d pass for x * x).
    const at::Tensor sq_x = same ? gram.diagonal().clone() : ep.sq_norms(x);
    ep.to_distance(gram, sq_x, same ? sq_x : ep.sq_norms(y), x, y, metric);  // x against itself: once
  }
  // d(x_i, x_i) is exactly 0, but the GEMM form rounds it to ~1e-8: pin it when y is x. The gradient
  // there is 0 for every metric, which distance_grad_coef (and the cosine projection) already give.
  // Multiplying by 0 rather than writing 0 keeps a NaN row's NaN (the plain formula's x_i - x_i is NaN).
  if (same) gram.diagonal().mul_(0);
  return gram;
}

inline std::tuple<at::Tensor, at::Tensor> pairwise_distance_backward_impl(
    const at::Tensor& grad, const at::Tensor& x_in, const at::Tensor& y_in, const at::Tensor& dist,
    Metric metric, const DistanceEpilogues& ep, bool y_grad = true) {
  check_pairwise_args(x_in, y_in);
  TORCH_CHECK_VALUE(grad.device() == x_in.device() && dist.device() == x_in.device(),
                    "grad and dist must be on x's device ", x_in.device());
  TORCH_CHECK_VALUE(grad.sizes() == dist.sizes() && dist.dim() == 2 && dist.size(0) == x_in.size(0) &&
                        dist.size(1) == y_in.size(0),
                    "grad and dist must have shape (", x_in.size(0), ", ", y_in.size(0), ")");
  TORCH_CHECK_TYPE(grad.scalar_type() == x_in.scalar_type() && dist.scalar_type() == x_in.scalar_type(),
                   "grad and dist must have x's dtype ", x_in.scalar_type());
  const FullFloat32Matmul full_precision;
  at::Tensor x = x_in.contiguous(), y = y_in.contiguous();
  // y is x (a batch against itself, the common case): the whole gradient from one GEMM (self_coef), as the
  // first output; the second is zero.
  const bool same = x_in.is_same(y_in);
  // y_grad=False with y is x: the caller takes the whole gradient from the first output; no zeros to add.
  auto second = [&] { return y_grad ? at::zeros_like(y) : at::empty({0}, y.options()); };
  at::Tensor h = same ? ep.self_coef(grad.contiguous(), dist.contiguous(), metric)
                      : ep.grad_coef(grad.contiguous(), dist.contiguous(), metric);
  if (metric != Metric::Cosine) {
    if (same) return {at::mm(h, x), second()};
    // rowsum(h) x - h y as one GEMM with beta = 1 (the subtraction inside the GEMM, not one more pass).
    at::Tensor gx = at::addmm(h.sum(1, /*keepdim=*/true) * x, h, y, 1, -1);
    if (!y_grad) return {gx, at::empty({0}, y.options())};
    at::Tensor gy = h.sum(0).unsqueeze(1) * y - at::mm(h.t(), x);
    return {gx, gy};
  }
  at::Tensor nx, ny;
  at::Tensor xh = unit_rows(x, &nx), yh = unit_rows(y, &ny);
  auto through_normalize = [](const at::Tensor& g_unit, const at::Tensor& unit, const at::Tensor& norm) {
    at::Tensor projected = (g_unit - (g_unit * unit).sum(1, true) * unit) / norm;
    return at::where(norm > kNormEps, projected, g_unit / kNormEps);
  };
  if (same) return {through_normalize(at::mm(h, xh), xh, nx), second()};
  if (!y_grad) return {through_normalize(at::mm(h, yh), xh, nx), at::empty({0}, y.options())};
  return {through_normalize(at::mm(h, yh), xh, nx), through_normalize(at::mm(h.t(), xh), yh, ny)};
}

}  // namespace ssml_fast
