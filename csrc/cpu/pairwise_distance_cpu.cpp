// CPU backend of pairwise_distance: the element-wise epilogues around the shared GEMM body.
#include <ATen/Dispatch.h>
#include <ATen/Parallel.h>
#include <ATen/ops/empty_like.h>
#include <torch/library.h>

#include "common/options.h"
#include "common/pairwise_distance_host.h"

namespace ssml_fast {
namespace {

void to_distance_cpu(at::Tensor& gram, const at::Tensor& sq_x, const at::Tensor& sq_y, Metric metric) {
  const int64_t B = gram.size(0), R = gram.size(1);
  AT_DISPATCH_FLOATING_TYPES(gram.scalar_type(), "pairwise_distance_cpu", [&] {
    scalar_t* g = gram.data_ptr<scalar_t>();
    const scalar_t* sx = metric == Metric::Cosine ? nullptr : sq_x.const_data_ptr<scalar_t>();
    const scalar_t* sy = metric == Metric::Cosine ? nullptr : sq_y.const_data_ptr<scalar_t>();
    at::parallel_for(0, B, 16, [&](int64_t begin, int64_t end) {
      for (int64_t i = begin; i < end; ++i) {
        scalar_t* row = g + i * R;
        const scalar_t si = sx ? sx[i] : scalar_t(0);
        for (int64_t j = 0; j < R; ++j)
          row[j] = distance_from_gram<scalar_t>(si, sy ? sy[j] : scalar_t(0), row[j], metric);
      }
    });
  });
}

at::Tensor grad_coef_cpu(const at::Tensor& grad, const at::Tensor& dist, Metric metric) {
  at::Tensor h = at::empty_like(dist);
  const int64_t n = dist.numel();
  AT_DISPATCH_FLOATING_TYPES(dist.scalar_type(), "pairwise_distance_backward_cpu", [&] {
    const scalar_t* g = grad.const_data_ptr<scalar_t>();
    const scalar_t* d = dist.const_data_ptr<scalar_t>();
    scalar_t* out = h.data_ptr<scalar_t>();
    at::parallel_for(0, n, 4096, [&](int64_t begin, int64_t end) {
      for (int64_t k = begin; k < end; ++k) out[k] = distance_grad_coef<scalar_t>(g[k], d[k], metric);
    });
  });
  return h;
}

constexpr DistanceEpilogues kCpuEpilogues{to_distance_cpu, grad_coef_cpu};

at::Tensor pairwise_distance_cpu(const at::Tensor& x, const at::Tensor& y, c10::string_view metric) {
  return pairwise_distance_impl(x, y, parse_metric(metric), kCpuEpilogues);
}

std::tuple<at::Tensor, at::Tensor> pairwise_distance_backward_cpu(const at::Tensor& grad, const at::Tensor& x,
                                                                  const at::Tensor& y, const at::Tensor& dist,
                                                                  c10::string_view metric) {
  return pairwise_distance_backward_impl(grad, x, y, dist, parse_metric(metric), kCpuEpilogues);
}

}  // namespace

TORCH_LIBRARY_IMPL(ssml_fast, CPU, m) {
  m.impl("pairwise_distance", &pairwise_distance_cpu);
  m.impl("pairwise_distance_backward", &pairwise_distance_backward_cpu);
}

}  // namespace ssml_fast
