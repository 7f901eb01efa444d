// CUDA dispatch of k-reciprocal re-ranking. There is no CUDA kernel: the work is sparse, irregular and
// bounded by the CPU-side inverted index, so the inputs are copied to the host, the CPU kernel runs, and
// the (q, g) result is copied back to the input's device. Results are identical to the CPU op's.
#include <ATen/core/Tensor.h>
#include <ATen/core/dispatch/Dispatcher.h>
#include <c10/cuda/CUDAGuard.h>
#include <torch/library.h>

namespace ssml_fast {
namespace {

at::Tensor kreciprocal_rerank_cuda(const at::Tensor& query, const at::Tensor& gallery, int64_t k1, int64_t k2,
                                   double lambda_value) {
  c10::cuda::CUDAGuard guard(query.device());
  static auto op = c10::Dispatcher::singleton()
                       .findSchemaOrThrow("ssml_fast::kreciprocal_rerank", "")
                       .typed<at::Tensor(const at::Tensor&, const at::Tensor&, int64_t, int64_t, double)>();
  return op.call(query.cpu(), gallery.cpu(), k1, k2, lambda_value).to(query.device());
}

at::Tensor kreciprocal_rerank_topk_cuda(const at::Tensor& distances, const at::Tensor& indices, int64_t num_query,
                                        int64_t k1, int64_t k2, double lambda_value) {
  c10::cuda::CUDAGuard guard(distances.device());
  static auto op =
      c10::Dispatcher::singleton()
          .findSchemaOrThrow("ssml_fast::kreciprocal_rerank_topk", "")
          .typed<at::Tensor(const at::Tensor&, const at::Tensor&, int64_t, int64_t, int64_t, double)>();
  return op.call(distances.cpu(), indices.cpu(), num_query, k1, k2, lambda_value).to(distances.device());
}

}  // namespace

TORCH_LIBRARY_IMPL(ssml_fast, CUDA, m) {
  m.impl("kreciprocal_rerank", &kreciprocal_rerank_cuda);
  m.impl("kreciprocal_rerank_topk", &kreciprocal_rerank_topk_cuda);
}

}  // namespace ssml_fast
