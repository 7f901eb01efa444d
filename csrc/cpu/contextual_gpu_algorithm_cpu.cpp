// The CUDA backend's contextual_similarity run on the CPU: the same host orchestration
// (common/contextual_gpu_host.h) and per-element bodies (common/contextual_kernels.h), with loops in place of grids.
// Registered as the private op _contextual_similarity_gpu_algorithm so the tests check the GPU code path against the
// CPU kernel on machines without a GPU. Not a fast path: the ranking is O(n) per entry, O(n^3) in all.
#include <ATen/Parallel.h>
#include <torch/library.h>

#include "common/contextual_gpu_host.h"
#include "common/contextual_kernels.h"

namespace ssml_fast {
namespace {

struct CpuLoopLaunch {
  template <typename T>
  void sqdist(const T* gram, T* inv, T* s, const int64_t* rep, int64_t n, double eps, T* d2) const {
    for (int64_t i = 0; i < n; ++i) contextual_row_norm_entry<T>(gram, inv, s, i, n, static_cast<T>(eps));
    for (int64_t t = 0; t < n * n; ++t) d2[t] = contextual_sqdist_entry<T>(gram, inv, s, rep, n, t);
  }
  template <typename T>
  void rank(const T* d2, const int64_t* ids, int64_t n, int64_t k, int64_t* nn, uint8_t* in_knn) const {
    at::parallel_for(0, n, 4, [&](int64_t b, int64_t e) {
      for (int64_t i = b; i < e; ++i)
        for (int64_t j = 0; j < n; ++j) contextual_rank_entry<T>(d2 + i * n, ids, i, j, n, k, nn, in_knn);
    });
  }
  void mutual(const uint8_t* in_knn, int64_t n, uint64_t* rb, int32_t* rsize) const {
    const int64_t W = (n + 63) / 64;
    for (int64_t t = 0; t < n * W; ++t) {
      rb[t] = contextual_mutual_word(in_knn, n, W, t);
      rsize[t / W] += popcount64(rb[t]);  // the CUDA kernel's atomicAdd
    }
  }
  template <typename T>
  void wtilde(const uint64_t* rb, const int32_t* rsize, int64_t n, T* wt) const {
    const int64_t W = (n + 63) / 64;
    for (int64_t t = 0; t < n * n; ++t) wt[t] = contextual_wtilde_entry<T>(rb, rsize, n, W, t);
  }
  template <typename T>
  void combine(const T* d2, const T* wt, const T* what, const int64_t* nn, int64_t n, int64_t k, int64_t m,
               double sigma, float* w, float* w_p, float* w_c) const {
    const T neg_inv_sigma = static_cast<T>(-1.0 / sigma);
    for (int64_t t = 0; t < n * n; ++t)
      contextual_combine_entry<T>(d2, wt, what, nn, n, k, m, neg_inv_sigma, t, w, w_p, w_c);
  }
};

std::tuple<at::Tensor, at::Tensor, at::Tensor> contextual_gpu_algorithm_cpu(const at::Tensor& teacher_emb, int64_t k,
                                                                            double sigma,
                                                                            const std::optional<at::Tensor>& ids) {
  check_contextual_args(teacher_emb, k, sigma, ids);
  return contextual_similarity_gpu_algorithm(teacher_emb, k, sigma, ids, CpuLoopLaunch{});
}

}  // namespace

TORCH_LIBRARY_IMPL(ssml_fast, CPU, m) {
  m.impl("_contextual_similarity_gpu_algorithm", &contextual_gpu_algorithm_cpu);
}

}  // namespace ssml_fast
