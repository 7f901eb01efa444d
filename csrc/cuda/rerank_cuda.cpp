// CUDA backend of k-reciprocal re-ranking: the orchestration of common/rerank_host.h (GEMM tiles, stable sort and
// row max through ATen) with the kernels of rerank_cuda.cu as its launch policy. The same orchestration runs
// with CPU loops as the private op _kreciprocal_rerank_gpu_algorithm, which the tests compare with the CPU
// kernel. The host synchronises only in the top-K entry point's index checks.
#include <c10/cuda/CUDAException.h>
#include <c10/cuda/CUDAGuard.h>
#include <c10/cuda/CUDAStream.h>
#include <torch/library.h>

#include "common/rerank_host.h"
#include "cuda/rerank_launchers.h"

namespace ssml_fast {
namespace {

cudaStream_t stream() { return c10::cuda::getCurrentCUDAStream(); }

struct CudaLaunch {
  template <typename T>
  static void row_sqnorms(const T* x, int64_t n, int64_t d, T* sq) {
    cuda::rerank_row_sqnorms<T>(x, n, d, sq, stream());
    C10_CUDA_KERNEL_LAUNCH_CHECK();
  }
  template <typename T>
  static void tile_sqdist(T* tile, const T* sq, const int64_t* rep, int64_t b0, int64_t nb, int64_t n) {
    cuda::rerank_tile_sqdist<T>(tile, sq, rep, b0, nb, n, stream());
    C10_CUDA_KERNEL_LAUNCH_CHECK();
  }
  static void zero_copies(const int64_t* rep, int64_t q, int64_t g, float* out) {
    cuda::rerank_zero_copies(rep, q, g, out, stream());
    C10_CUDA_KERNEL_LAUNCH_CHECK();
  }
  template <typename T>
  static void tile_out(const T* tile, const T* row_max, int64_t b0, int64_t nbq, int64_t n, int64_t q, float lam,
                       float* out) {
    cuda::rerank_tile_out<T>(tile, row_max, b0, nbq, n, q, lam, out, stream());
    C10_CUDA_KERNEL_LAUNCH_CHECK();
  }
  static void tile_keys(const float* tile, int64_t nb, int64_t n, int64_t* keys) {
    cuda::rerank_tile_keys(tile, nb, n, keys, stream());
    C10_CUDA_KERNEL_LAUNCH_CHECK();
  }
  static void reciprocal(const int32_t* nn, const int32_t* sorted, int64_t n, int64_t L, int64_t len, int32_t* out,
                         int32_t* cnt) {
    cuda::rerank_reciprocal(nn, sorted, n, L, len, out, cnt, stream());
    C10_CUDA_KERNEL_LAUNCH_CHECK();
  }
  template <typename Dist>
  static void expand(const RerankExpandArgs& a, const Dist& dist) {
    cuda::rerank_expand<Dist>(a, dist, stream());
    C10_CUDA_KERNEL_LAUNCH_CHECK();
  }
  static void query_expand(const RerankQueryExpandArgs& a) {
    cuda::rerank_query_expand(a, stream());
    C10_CUDA_KERNEL_LAUNCH_CHECK();
  }
  static void jaccard(const RerankJaccardArgs& a, float* out) {
    cuda::rerank_jaccard(a, out, stream());
    C10_CUDA_KERNEL_LAUNCH_CHECK();
  }
  template <typename T>
  static void topk_out(const T* D, const int64_t* I, int64_t K, int64_t q, int64_t g, float lam, float* out) {
    cuda::rerank_topk_out<T>(D, I, K, q, g, lam, out, stream());
    C10_CUDA_KERNEL_LAUNCH_CHECK();
  }
};

at::Tensor kreciprocal_rerank_cuda(const at::Tensor& query, const at::Tensor& gallery, int64_t k1, int64_t k2,
                                   double lambda_value) {
  check_rerank_features(query, gallery);  // before the guard: a CPU tensor must raise, not fault
  c10::cuda::CUDAGuard guard(query.device());
  return kreciprocal_rerank_gpu_algorithm<CudaLaunch>(query, gallery, k1, k2, lambda_value);
}

at::Tensor kreciprocal_rerank_topk_cuda(const at::Tensor& distances, const at::Tensor& indices, int64_t num_query,
                                        int64_t k1, int64_t k2, double lambda_value) {
  TORCH_CHECK_VALUE(indices.device() == distances.device(), "indices is on ", indices.device(),
                    " but distances is on ", distances.device());
  c10::cuda::CUDAGuard guard(distances.device());
  return kreciprocal_rerank_topk_gpu_algorithm<CudaLaunch>(distances, indices, num_query, k1, k2, lambda_value);
}

}  // namespace

TORCH_LIBRARY_IMPL(ssml_fast, CUDA, m) {
  m.impl("kreciprocal_rerank", &kreciprocal_rerank_cuda);
  m.impl("kreciprocal_rerank_topk", &kreciprocal_rerank_topk_cuda);
}

}  // namespace ssml_fast
