// CUDA backend of STML's loss-term ops: host side (checks, outputs, stream, registration). The kernels
// are stml_terms_cuda.cu; each op is one launch (plus the sum of the per-row partials), no host sync.
#include <ATen/Dispatch.h>
#include <ATen/core/Tensor.h>
#include <ATen/ops/empty.h>
#include <ATen/ops/empty_like.h>
#include <ATen/ops/sum.h>
#include <c10/cuda/CUDAException.h>
#include <c10/cuda/CUDAGuard.h>
#include <c10/cuda/CUDAStream.h>
#include <torch/library.h>

#include "common/stml_checks.h"
#include "cuda/stml_terms_launchers.h"

namespace ssml_fast {
namespace {

std::tuple<at::Tensor, at::Tensor> row_relative_cuda(const at::Tensor& dist_in, double eps) {
  check_rows_matrix("dist", dist_in);
  c10::cuda::CUDAGuard guard(dist_in.device());
  const at::Tensor dist = dist_in.contiguous();
  const int64_t n = dist.size(0), c = dist.size(1);
  at::Tensor rel = at::empty_like(dist), inv = at::empty({n}, dist.options());
  AT_DISPATCH_FLOATING_TYPES(dist.scalar_type(), "row_relative_cuda", [&] {
    cuda::row_relative<scalar_t>(dist.const_data_ptr<scalar_t>(), rel.data_ptr<scalar_t>(), inv.data_ptr<scalar_t>(),
                                 n, c, eps, c10::cuda::getCurrentCUDAStream());
  });
  C10_CUDA_KERNEL_LAUNCH_CHECK();
  return {rel, inv};
}

at::Tensor row_relative_backward_cuda(const at::Tensor& grad_in, const at::Tensor& rel_in, const at::Tensor& inv_in) {
  check_rows_matrix("rel", rel_in);
  check_like("grad", grad_in, rel_in, "rel");
  check_row_vector("inv", inv_in, rel_in);
  c10::cuda::CUDAGuard guard(rel_in.device());
  const at::Tensor grad = grad_in.contiguous(), rel = rel_in.contiguous(), inv = inv_in.contiguous();
  at::Tensor out = at::empty_like(rel);
  AT_DISPATCH_FLOATING_TYPES(rel.scalar_type(), "row_relative_backward_cuda", [&] {
    cuda::row_relative_backward<scalar_t>(grad.const_data_ptr<scalar_t>(), rel.const_data_ptr<scalar_t>(),
                                          inv.const_data_ptr<scalar_t>(), out.data_ptr<scalar_t>(), rel.size(0),
                                          rel.size(1), c10::cuda::getCurrentCUDAStream());
  });
  C10_CUDA_KERNEL_LAUNCH_CHECK();
  return out;
}

std::tuple<at::Tensor, at::Tensor> relaxed_contrastive_rows_cuda(const at::Tensor& dist_in, const at::Tensor& w_in,
                                                                 double delta, double scale, int64_t push_cols) {
  check_rows_matrix("dist", dist_in);
  check_like("weights", w_in, dist_in, "dist");
  const int64_t pull_from = checked_push_cols(push_cols, dist_in.size(1));
  c10::cuda::CUDAGuard guard(dist_in.device());
  const at::Tensor dist = dist_in.contiguous(), w = w_in.contiguous();
  at::Tensor grad = at::empty_like(dist), rows = at::empty({dist.size(0)}, dist.options());
  AT_DISPATCH_FLOATING_TYPES(dist.scalar_type(), "relaxed_contrastive_rows_cuda", [&] {
    cuda::relaxed_contrastive_rows<scalar_t>(dist.const_data_ptr<scalar_t>(), w.const_data_ptr<scalar_t>(),
                                             grad.data_ptr<scalar_t>(), rows.data_ptr<scalar_t>(), dist.size(0),
                                             dist.size(1), delta, scale, pull_from,
                                             c10::cuda::getCurrentCUDAStream());
  });
  C10_CUDA_KERNEL_LAUNCH_CHECK();
  return {rows.sum(), grad};
}

std::tuple<at::Tensor, at::Tensor> self_distillation_kl_rows_cuda(const at::Tensor& df_in, const at::Tensor& dg_in,
                                                                  double temperature, bool exclude_self,
                                                                  double scale) {
  check_rows_matrix("student_dist", df_in);
  check_like("teacher_dist", dg_in, df_in, "student_dist");
  TORCH_CHECK_VALUE(temperature > 0, "temperature must be positive, got ", temperature);
  c10::cuda::CUDAGuard guard(df_in.device());
  const at::Tensor df = df_in.contiguous(), dg = dg_in.contiguous();
  at::Tensor grad = at::empty_like(df), rows = at::empty({df.size(0)}, df.options());
  AT_DISPATCH_FLOATING_TYPES(df.scalar_type(), "self_distillation_kl_rows_cuda", [&] {
    cuda::self_distillation_kl_rows<scalar_t>(df.const_data_ptr<scalar_t>(), dg.const_data_ptr<scalar_t>(),
                                              grad.data_ptr<scalar_t>(), rows.data_ptr<scalar_t>(), df.size(0),
                                              df.size(1), temperature, exclude_self, scale,
                                              c10::cuda::getCurrentCUDAStream());
  });
  C10_CUDA_KERNEL_LAUNCH_CHECK();
  return {rows.sum(), grad};
}

}  // namespace

TORCH_LIBRARY_IMPL(ssml_fast, CUDA, m) {
  m.impl("row_relative", &row_relative_cuda);
  m.impl("row_relative_backward", &row_relative_backward_cuda);
  m.impl("relaxed_contrastive_rows", &relaxed_contrastive_rows_cuda);
  m.impl("self_distillation_kl_rows", &self_distillation_kl_rows_cuda);
}

}  // namespace ssml_fast
