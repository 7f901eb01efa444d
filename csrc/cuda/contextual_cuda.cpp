// CUDA backend of contextual_similarity: the host orchestration of common/contextual_gpu_host.h with the kernels of
// contextual_cuda.cu (whose per-element bodies the CPU twin, cpu/contextual_gpu_algorithm_cpu.cpp, runs in loops).
#include <c10/cuda/CUDAException.h>
#include <c10/cuda/CUDAGuard.h>
#include <c10/cuda/CUDAStream.h>
#include <torch/library.h>

#include "common/contextual_gpu_host.h"
#include "cuda/contextual_launchers.h"

namespace ssml_fast {
namespace {

// Launch policy of contextual_similarity_gpu_algorithm: the CUDA kernels on the current stream, each checked.
struct CudaLaunch {
  cudaStream_t stream;
  template <typename T>
  void sqdist(const T* gram, T* inv, T* s, const int64_t* rep, int64_t n, double eps, T* d2) const {
    cuda::contextual_sqdist<T>(gram, inv, s, rep, n, eps, d2, stream);
    C10_CUDA_KERNEL_LAUNCH_CHECK();
  }
  template <typename T>
  void rank(const T* d2, const int64_t* ids, int64_t n, int64_t k, int64_t* nn, uint8_t* in_knn) const {
    cuda::contextual_rank<T>(d2, ids, n, k, nn, in_knn, stream);
    C10_CUDA_KERNEL_LAUNCH_CHECK();
  }
  void mutual(const uint8_t* in_knn, int64_t n, uint64_t* rb, int32_t* rsize) const {
    cuda::contextual_mutual(in_knn, n, rb, rsize, stream);
    C10_CUDA_KERNEL_LAUNCH_CHECK();
  }
  template <typename T>
  void wtilde(const uint64_t* rb, const int32_t* rsize, int64_t n, T* wt) const {
    cuda::contextual_wtilde<T>(rb, rsize, n, wt, stream);
    C10_CUDA_KERNEL_LAUNCH_CHECK();
  }
  template <typename T>
  void combine(const T* d2, const T* wt, const T* what, const int64_t* nn, int64_t n, int64_t k, int64_t m,
               double sigma, float* w, float* w_p, float* w_c) const {
    cuda::contextual_combine<T>(d2, wt, what, nn, n, k, m, sigma, w, w_p, w_c, stream);
    C10_CUDA_KERNEL_LAUNCH_CHECK();
  }
};

std::tuple<at::Tensor, at::Tensor, at::Tensor> contextual_similarity_cuda(const at::Tensor& teacher_emb, int64_t k,
                                                                          double sigma,
                                                                          const std::optional<at::Tensor>& ids) {
  check_contextual_args(teacher_emb, k, sigma, ids);  // before the guard: device mismatches raise here
  c10::cuda::CUDAGuard guard(teacher_emb.device());
  return contextual_similarity_gpu_algorithm(teacher_emb, k, sigma, ids, CudaLaunch{c10::cuda::getCurrentCUDAStream()});
}

}  // namespace

TORCH_LIBRARY_IMPL(ssml_fast, CUDA, m) {
  m.impl("contextual_similarity", &contextual_similarity_cuda);
}

}  // namespace ssml_fast
