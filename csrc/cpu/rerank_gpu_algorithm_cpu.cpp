// The CUDA backend's k-reciprocal re-ranking run on the CPU: the same host orchestration
// (common/rerank_host.h) and per-row bodies (common/rerank_math.h), with loops in place of grids. Registered as
// the private ops _kreciprocal_rerank_gpu_algorithm[_topk] so the tests check the GPU code path against the CPU
// kernel on machines without a GPU. Not a fast path (the Jaccard step merges every query/gallery pair).
#include <ATen/Parallel.h>
#include <torch/library.h>

#include "common/rerank_host.h"

namespace ssml_fast {
namespace {

struct CpuLoopLaunch {
  template <typename T>
  static void row_sqnorms(const T* x, int64_t n, int64_t d, T* sq) {
    for (int64_t i = 0; i < n; ++i) sq[i] = rerank_dot(x + i * d, x + i * d, d);
  }
  template <typename T>
  static void tile_sqdist(T* tile, const T* sq, const int64_t* rep, int64_t b0, int64_t nb, int64_t n) {
    for (int64_t r = 0; r < nb; ++r)
      for (int64_t j = 0; j < n; ++j) tile[r * n + j] = rerank_tile_sqdist_entry(tile[r * n + j], sq, rep, b0 + r, j);
  }
  static void zero_copies(const int64_t* rep, int64_t q, int64_t g, float* out) {
    for (int64_t i = 0; i < q; ++i)
      for (int64_t j = 0; j < g; ++j) rerank_zero_copy_entry(rep, q, g, i, j, out);
  }
  template <typename T>
  static void tile_out(const T* tile, const T* row_max, int64_t b0, int64_t nbq, int64_t n, int64_t q, float lam,
                       float* out) {
    const int64_t g = n - q;
    for (int64_t r = 0; r < nbq; ++r)
      for (int64_t j = 0; j < g; ++j) out[(b0 + r) * g + j] = rerank_scaled_dist(tile[r * n + q + j], row_max[b0 + r], lam);
  }
  static void tile_keys(const float* tile, int64_t nb, int64_t n, int64_t* keys) {
    for (int64_t r = 0; r < nb; ++r)
      for (int64_t j = 0; j < n; ++j) keys[r * n + j] = rerank_order_key(tile[r * n + j], j);
  }
  static void reciprocal(const int32_t* nn, const int32_t* sorted, int64_t n, int64_t L, int64_t len, int32_t* out,
                         int32_t* cnt) {
    for (int64_t i = 0; i < n; ++i) cnt[i] = rerank_reciprocal_row(i, nn, sorted, L, len, out + i * len);
  }
  template <typename Dist>
  static void expand(const RerankExpandArgs& a, const Dist& dist) {
    at::parallel_for(0, a.n, 16, [&](int64_t b, int64_t e) {
      for (int64_t i = b; i < e; ++i) rerank_expand_weights_row(i, a, dist);
    });
  }
  static void query_expand(const RerankQueryExpandArgs& a) {
    for (int64_t i = 0; i < a.n; ++i) rerank_query_expand_row_args(i, a);
  }
  static void jaccard(const RerankJaccardArgs& a, float* out) {
    at::parallel_for(0, a.q, 4, [&](int64_t b, int64_t e) {
      for (int64_t i = b; i < e; ++i)
        for (int64_t j = 0; j < a.g; ++j) rerank_jaccard_entry(i, j, a, out);
    });
  }
  template <typename T>
  static void topk_out(const T* D, const int64_t* I, int64_t K, int64_t q, int64_t g, float lam, float* out) {
    for (int64_t i = 0; i < q; ++i)
      for (int64_t j = 0; j < g; ++j) out[i * g + j] = rerank_topk_fill_value(D, K, i, lam);
    for (int64_t i = 0; i < q; ++i)
      for (int64_t r = 0; r < K; ++r) rerank_topk_listed_entry(D, I, K, q, g, i, r, lam, out);
  }
};

at::Tensor rerank_gpu_algorithm_cpu(const at::Tensor& query, const at::Tensor& gallery, int64_t k1, int64_t k2,
                                    double lambda_value) {
  return kreciprocal_rerank_gpu_algorithm<CpuLoopLaunch>(query, gallery, k1, k2, lambda_value);
}

at::Tensor rerank_topk_gpu_algorithm_cpu(const at::Tensor& distances, const at::Tensor& indices, int64_t num_query,
                                         int64_t k1, int64_t k2, double lambda_value) {
  return kreciprocal_rerank_topk_gpu_algorithm<CpuLoopLaunch>(distances, indices, num_query, k1, k2, lambda_value);
}

}  // namespace

TORCH_LIBRARY_IMPL(ssml_fast, CPU, m) {
  m.impl("_kreciprocal_rerank_gpu_algorithm", &rerank_gpu_algorithm_cpu);
  m.impl("_kreciprocal_rerank_gpu_algorithm_topk", &rerank_topk_gpu_algorithm_cpu);
}

}  // namespace ssml_fast
