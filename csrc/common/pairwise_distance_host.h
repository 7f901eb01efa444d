#pragma once
// Device-agnostic body of pairwise_distance (forward and backward): one GEMM forward, two GEMMs
// backward, all through ATen so they hit cuBLAS / MKL. Only the element-wise epilogues differ by
// device; each backend passes its own.
#include <ATen/core/Tensor.h>
#include <ATen/TensorOperators.h>
#include <ATen/ops/mm.h>
#include <ATen/ops/clamp_min.h>
#include <ATen/ops/linalg_vector_norm.h>
#include <ATen/ops/where.h>
#include "common/distance_math.h"

namespace ssml_fast {

// F.normalize's eps: rows with a smaller norm are scaled by 1/eps instead of 1/|x|.
constexpr double kNormEps = 1e-12;

struct DistanceEpilogues {
  // gram (B, R) in place -> distances, given squared norms sq_x (B,), sq_y (R,) (undefined for cosine).
  void (*to_distance)(at::Tensor& gram, const at::Tensor& sq_x, const at::Tensor& sq_y, Metric metric);
  // H (B, R) from upstream grad and forward distances, see distance_grad_coef.
  at::Tensor (*grad_coef)(const at::Tensor& grad, const at::Tensor& dist, Metric metric);
};

inline at::Tensor unit_rows(const at::Tensor& x, at::Tensor* norms = nullptr) {
  at::Tensor n = at::linalg_vector_norm(x, 2, {1}, /*keepdim=*/true);
  if (norms) *norms = n;
  return x / at::clamp_min(n, kNormEps);
}

inline at::Tensor pairwise_distance_impl(const at::Tensor& x_in, const at::Tensor& y_in, Metric metric,
                                         const DistanceEpilogues& ep) {
  at::Tensor x = x_in.contiguous(), y = y_in.contiguous();
  at::Tensor gram;
  if (metric == Metric::Cosine) {
    gram = at::mm(unit_rows(x), unit_rows(y).t());
    ep.to_distance(gram, at::Tensor(), at::Tensor(), metric);
  } else {
    gram = at::mm(x, y.t());
    ep.to_distance(gram, (x * x).sum(1), (y * y).sum(1), metric);
  }
  // d(x_i, x_i) is exactly 0, but the GEMM form rounds it to ~1e-8: pin it when y is x. The gradient
  // there is 0 for every metric, which distance_grad_coef (and the cosine projection) already give.
  if (x_in.is_same(y_in)) gram.diagonal().zero_();
  return gram;
}

inline std::tuple<at::Tensor, at::Tensor> pairwise_distance_backward_impl(
    const at::Tensor& grad, const at::Tensor& x_in, const at::Tensor& y_in, const at::Tensor& dist,
    Metric metric, const DistanceEpilogues& ep) {
  at::Tensor x = x_in.contiguous(), y = y_in.contiguous();
  at::Tensor h = ep.grad_coef(grad.contiguous(), dist.contiguous(), metric);
  if (metric != Metric::Cosine) {
    at::Tensor gx = h.sum(1, /*keepdim=*/true) * x - at::mm(h, y);
    at::Tensor gy = h.sum(0).unsqueeze(1) * y - at::mm(h.t(), x);
    return {gx, gy};
  }
  at::Tensor nx, ny;
  at::Tensor xh = unit_rows(x, &nx), yh = unit_rows(y, &ny);
  auto through_normalize = [](const at::Tensor& g_unit, const at::Tensor& unit, const at::Tensor& norm) {
    at::Tensor projected = (g_unit - (g_unit * unit).sum(1, true) * unit) / norm;
    return at::where(norm > kNormEps, projected, g_unit / kNormEps);
  };
  return {through_normalize(at::mm(h, yh), xh, nx), through_normalize(at::mm(h.t(), xh), yh, ny)};
}

}  // namespace ssml_fast
