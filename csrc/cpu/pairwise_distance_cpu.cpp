// CPU backend of pairwise_distance: the element-wise epilogues around the shared GEMM body.
#include <algorithm>
#include <cmath>
#include <limits>

#include <ATen/Dispatch.h>
#include <ATen/Parallel.h>
#include <ATen/ops/empty.h>
#include <ATen/ops/empty_like.h>
#include <torch/library.h>

#include "common/options.h"
#include "common/pairwise_distance_host.h"
#include "cpu/blocked_pairs.h"
#include "cpu/symmetric_gram.h"

namespace ssml_fast {
namespace {

// One row of the epilogue, the metric a template argument: with the switch hoisted the loop vectorises.
template <typename T, Metric M>
void distance_row(T* row, T si, const T* sy, int64_t R) {
#pragma omp simd
  for (int64_t j = 0; j < R; ++j) row[j] = distance_from_gram<T>(si, M == Metric::Cosine ? T(0) : sy[j], row[j], M);
}

void to_distance_cpu(at::Tensor& gram, const at::Tensor& sq_x, const at::Tensor& sq_y, const at::Tensor& x,
                     const at::Tensor& y, Metric metric) {
  const int64_t B = gram.size(0), R = gram.size(1), D = x.size(1);
  AT_DISPATCH_FLOATING_TYPES(gram.scalar_type(), "pairwise_distance_cpu", [&] {
    scalar_t* g = gram.data_ptr<scalar_t>();
    const bool cosine = metric == Metric::Cosine;
    const scalar_t* sx = cosine ? nullptr : sq_x.const_data_ptr<scalar_t>();
    const scalar_t* sy = cosine ? nullptr : sq_y.const_data_ptr<scalar_t>();
    const scalar_t* X = x.const_data_ptr<scalar_t>();
    const scalar_t* Y = y.const_data_ptr<scalar_t>();
    // A row can only hit a NaN, an inf or an overflow when its own squared norm, or the largest of y's, is
    // non-finite or close to the type's limit: every other row runs the plain (vectorised) loop.
    double sy_max = 0;
    bool sy_finite = true;
    for (int64_t j = 0; sy && j < R; ++j) {
      sy_finite = sy_finite && std::isfinite(sy[j]);
      sy_max = std::max(sy_max, static_cast<double>(sy[j]));
    }
    const double limit = 0.25 * static_cast<double>(std::numeric_limits<scalar_t>::max());
    at::parallel_for(0, B, 16, [&](int64_t begin, int64_t end) {
      for (int64_t i = begin; i < end; ++i) {
        scalar_t* row = g + i * R;
        const scalar_t si = sx ? sx[i] : scalar_t(0);
        switch (metric) {
          case Metric::Euclidean: distance_row<scalar_t, Metric::Euclidean>(row, si, sy, R); break;
          case Metric::SqEuclidean: distance_row<scalar_t, Metric::SqEuclidean>(row, si, sy, R); break;
          default: distance_row<scalar_t, Metric::Cosine>(row, si, sy, R); break;
        }
        if (cosine || (sy_finite && std::isfinite(si) && std::max(static_cast<double>(si), sy_max) < limit))
          continue;
        for (int64_t j = 0; j < R; ++j)
          if (!gram_form_ok<scalar_t>(si, sy[j], row[j])) row[j] = direct_distance<scalar_t>(X + i * D, Y + j * D, D, metric);
      }
    });
  });
}

template <typename T, Metric M>
void grad_coef_range(const T* g, const T* d, T* out, int64_t begin, int64_t end) {
#pragma omp simd
  for (int64_t k = begin; k < end; ++k) out[k] = distance_grad_coef<T>(g[k], d[k], M);
}

template <typename T>
void grad_coef_range(const T* g, const T* d, T* out, int64_t begin, int64_t end, Metric metric) {
  switch (metric) {
    case Metric::Euclidean: return grad_coef_range<T, Metric::Euclidean>(g, d, out, begin, end);
    case Metric::SqEuclidean: return grad_coef_range<T, Metric::SqEuclidean>(g, d, out, begin, end);
    default: return grad_coef_range<T, Metric::Cosine>(g, d, out, begin, end);
  }
}

at::Tensor grad_coef_cpu(const at::Tensor& grad, const at::Tensor& dist, Metric metric) {
  at::Tensor h = at::empty_like(dist);
  const int64_t n = dist.numel();
  AT_DISPATCH_FLOATING_TYPES(dist.scalar_type(), "pairwise_distance_backward_cpu", [&] {
    const scalar_t* g = grad.const_data_ptr<scalar_t>();
    const scalar_t* d = dist.const_data_ptr<scalar_t>();
    scalar_t* out = h.data_ptr<scalar_t>();
    at::parallel_for(0, n, 4096, [&](int64_t begin, int64_t end) { grad_coef_range(g, d, out, begin, end, metric); });
  });
  return h;
}

// sum_t term(row[t]) over eight fixed lanes: vectorised, and the same order for any thread count.
template <typename T, typename Term>
T lane_sum(const T* row, int64_t len, Term term) {
  T lane[8] = {0, 0, 0, 0, 0, 0, 0, 0};
  int64_t t = 0;
  for (; t + 8 <= len; t += 8)
    for (int q = 0; q < 8; ++q) lane[q] += term(row[t + q]);
  for (int q = 0; t < len; ++t, ++q) lane[q] += term(row[t]);
  return ((lane[0] + lane[1]) + (lane[2] + lane[3])) + ((lane[4] + lane[5]) + (lane[6] + lane[7]));
}

// x against itself (n x n): S = H + H^T, and for the euclidean family diag(rowsum S) - S, the matrix that
// multiplies x in the gradient (see self_coef in pairwise_distance_host.h). The composite took five passes
// over the matrix, one of them a strided transpose (~0.4 ms at n = 240, a third of the GEMM after it);
// here H is computed into its place, then symmetrised in 32 x 32 block pairs (both blocks in L1) and each
// row summed over eight fixed lanes (the same order for any thread count).
at::Tensor self_coef_cpu(const at::Tensor& grad, const at::Tensor& dist, Metric metric) {
  at::Tensor s = grad_coef_cpu(grad, dist, metric);
  const int64_t n = s.size(0);
  AT_DISPATCH_FLOATING_TYPES(s.scalar_type(), "pairwise_distance_backward_cpu", [&] {
    using T = scalar_t;
    T* h = s.data_ptr<T>();
    for_each_upper_pair(n, [&](int64_t i, int64_t j) {
      const T v = h[i * n + j] + h[j * n + i];
      h[i * n + j] = v, h[j * n + i] = v;
    });
    if (metric == Metric::Cosine) return;
    at::parallel_for(0, n, 16, [&](int64_t begin, int64_t end) {
      for (int64_t i = begin; i < end; ++i) {
        T* row = h + i * n;
        const T r = lane_sum(row, n, [](T v) { return v; });
        for (int64_t j = 0; j < n; ++j) row[j] = -row[j];
        row[i] += r;
      }
    });
  });
  return s;
}

// Sum of squares of each row (lane_sum), reading x once: (x * x).sum(1) writes and rereads an n x d
// temporary, ~8 ms for a 4096 x 1024 memory.
at::Tensor sq_norms_cpu(const at::Tensor& x) {
  const int64_t n = x.size(0), d = x.size(1);
  at::Tensor out = at::empty({n}, x.options());
  AT_DISPATCH_FLOATING_TYPES(x.scalar_type(), "sq_norms_cpu", [&] {
    const scalar_t* X = x.const_data_ptr<scalar_t>();
    scalar_t* o = out.data_ptr<scalar_t>();
    at::parallel_for(0, n, 64, [&](int64_t begin, int64_t end) {
      for (int64_t i = begin; i < end; ++i) o[i] = lane_sum(X + i * d, d, [](scalar_t v) { return v * v; });
    });
  });
  return out;
}

constexpr DistanceEpilogues kCpuEpilogues{to_distance_cpu, grad_coef_cpu, self_coef_cpu, symmetric_gram_cpu,
                                          sq_norms_cpu};

at::Tensor pairwise_distance_cpu(const at::Tensor& x, const at::Tensor& y, c10::string_view metric) {
  return pairwise_distance_impl(x, y, parse_metric(metric), kCpuEpilogues);
}

std::tuple<at::Tensor, at::Tensor> pairwise_distance_backward_cpu(const at::Tensor& grad, const at::Tensor& x,
                                                                  const at::Tensor& y, const at::Tensor& dist,
                                                                  c10::string_view metric, bool y_grad) {
  return pairwise_distance_backward_impl(grad, x, y, dist, parse_metric(metric), kCpuEpilogues, y_grad);
}

}  // namespace

TORCH_LIBRARY_IMPL(ssml_fast, CPU, m) {
  m.impl("pairwise_distance", &pairwise_distance_cpu);
  m.impl("pairwise_distance_backward", &pairwise_distance_backward_cpu);
}

}  // namespace ssml_fast
