// CUDA backend of pairwise_distance: the shared GEMM body with the CUDA epilogues.
#include <ATen/Dispatch.h>
#include <ATen/ops/empty_like.h>
#include <ATen/ops/mm.h>
#include <ATen/ops/sum.h>
#include <ATen/TensorOperators.h>
#include <c10/cuda/CUDAException.h>
#include <c10/cuda/CUDAGuard.h>
#include <c10/cuda/CUDAStream.h>
#include <torch/library.h>

#include "common/options.h"
#include "common/pairwise_distance_host.h"
#include "cuda/launchers.h"

namespace ssml_fast {
namespace {

void to_distance_cuda(at::Tensor& gram, const at::Tensor& sq_x, const at::Tensor& sq_y, const at::Tensor& x,
                      const at::Tensor& y, Metric metric) {
  const bool cosine = metric == Metric::Cosine;
  AT_DISPATCH_FLOATING_TYPES(gram.scalar_type(), "pairwise_distance_cuda", [&] {
    cuda::distance_epilogue<scalar_t>(gram.data_ptr<scalar_t>(), cosine ? nullptr : sq_x.const_data_ptr<scalar_t>(),
                                      cosine ? nullptr : sq_y.const_data_ptr<scalar_t>(), x.const_data_ptr<scalar_t>(),
                                      y.const_data_ptr<scalar_t>(), gram.size(0), gram.size(1), x.size(1), metric,
                                      c10::cuda::getCurrentCUDAStream());
  });
  C10_CUDA_KERNEL_LAUNCH_CHECK();
}

at::Tensor grad_coef_cuda(const at::Tensor& grad, const at::Tensor& dist, Metric metric) {
  at::Tensor h = at::empty_like(dist);
  AT_DISPATCH_FLOATING_TYPES(dist.scalar_type(), "pairwise_distance_backward_cuda", [&] {
    cuda::distance_grad_coef<scalar_t>(grad.const_data_ptr<scalar_t>(), dist.const_data_ptr<scalar_t>(),
                                       h.data_ptr<scalar_t>(), dist.numel(), metric,
                                       c10::cuda::getCurrentCUDAStream());
  });
  C10_CUDA_KERNEL_LAUNCH_CHECK();
  return h;
}

at::Tensor self_coef_cuda(const at::Tensor& grad, const at::Tensor& dist, Metric metric) {
  return self_coef_composite(grad_coef_cuda(grad, dist, metric), metric);
}

// cuBLAS has SYRK, but at n of a few hundred a full GEMM is as fast on a GPU: the plain product.
at::Tensor gram_cuda(const at::Tensor& x) { return at::mm(x, x.t()); }

at::Tensor sq_norms_cuda(const at::Tensor& x) { return (x * x).sum(1); }

constexpr DistanceEpilogues kCudaEpilogues{to_distance_cuda, grad_coef_cuda, self_coef_cuda, gram_cuda, sq_norms_cuda};

at::Tensor pairwise_distance_cuda(const at::Tensor& x, const at::Tensor& y, c10::string_view metric) {
  check_pairwise_args(x, y);  // before the guard: a CPU tensor here must raise a clear error
  c10::cuda::CUDAGuard guard(x.device());
  return pairwise_distance_impl(x, y, parse_metric(metric), kCudaEpilogues);
}

std::tuple<at::Tensor, at::Tensor> pairwise_distance_backward_cuda(const at::Tensor& grad, const at::Tensor& x,
                                                                   const at::Tensor& y, const at::Tensor& dist,
                                                                   c10::string_view metric, bool y_grad) {
  check_pairwise_args(x, y);
  c10::cuda::CUDAGuard guard(x.device());
  return pairwise_distance_backward_impl(grad, x, y, dist, parse_metric(metric), kCudaEpilogues, y_grad);
}

}  // namespace

TORCH_LIBRARY_IMPL(ssml_fast, CUDA, m) {
  m.impl("pairwise_distance", &pairwise_distance_cuda);
  m.impl("pairwise_distance_backward", &pairwise_distance_backward_cuda);
}

}  // namespace ssml_fast
