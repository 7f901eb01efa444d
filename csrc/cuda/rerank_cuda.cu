// CUDA kernels of k-reciprocal re-ranking: thin grids over the per-row bodies of common/rerank_math.h, which
// the CPU kernel and its CPU-loop twin (cpu/rerank_gpu_algorithm_cpu.cpp) run too. One thread per row for the
// sparse steps (rows hold about k1..k2 * capV entries, so a thread's work is small and bounded); grid-stride
// loops everywhere, so no grid dimension limits n.
#include "cuda/rerank_launchers.h"

namespace ssml_fast::cuda {
namespace {

constexpr int kThreads = 256;
constexpr int64_t kMaxBlocks = 65535;

inline unsigned blocks_for(int64_t work) {
  const int64_t b = (work + kThreads - 1) / kThreads;
  return static_cast<unsigned>(b < 1 ? 1 : (b < kMaxBlocks ? b : kMaxBlocks));
}

__device__ inline int64_t first_index() { return static_cast<int64_t>(blockIdx.x) * blockDim.x + threadIdx.x; }
__device__ inline int64_t grid_stride() { return static_cast<int64_t>(gridDim.x) * blockDim.x; }

template <typename T>
__global__ void sqnorms_kernel(const T* x, int64_t n, int64_t d, T* sq) {
  for (int64_t i = first_index(); i < n; i += grid_stride()) sq[i] = rerank_dot(x + i * d, x + i * d, d);
}

template <typename T>
__global__ void tile_sqdist_kernel(T* tile, const T* sq, const int64_t* rep, int64_t b0, int64_t nb, int64_t n) {
  for (int64_t t = first_index(); t < nb * n; t += grid_stride()) {
    const int64_t r = t / n, j = t - r * n;
    tile[t] = rerank_tile_sqdist_entry(tile[t], sq, rep, b0 + r, j);
  }
}

__global__ void zero_copies_kernel(const int64_t* rep, int64_t q, int64_t g, float* out) {
  for (int64_t t = first_index(); t < q * g; t += grid_stride()) rerank_zero_copy_entry(rep, q, g, t / g, t % g, out);
}

template <typename T>
__global__ void tile_out_kernel(const T* tile, const T* row_max, int64_t b0, int64_t nbq, int64_t n, int64_t q,
                                float lam, float* out) {
  const int64_t g = n - q;
  for (int64_t t = first_index(); t < nbq * g; t += grid_stride()) {
    const int64_t r = t / g, j = t - r * g;
    out[(b0 + r) * g + j] = rerank_scaled_dist(tile[r * n + q + j], row_max[b0 + r], lam);
  }
}

__global__ void tile_keys_kernel(const float* tile, int64_t nb, int64_t n, int64_t* keys) {
  for (int64_t t = first_index(); t < nb * n; t += grid_stride()) keys[t] = rerank_order_key(tile[t], t % n);
}

__global__ void reciprocal_kernel(const int32_t* nn, const int32_t* sorted, int64_t n, int64_t L, int64_t len,
                                  int32_t* out, int32_t* cnt) {
  for (int64_t i = first_index(); i < n; i += grid_stride())
    cnt[i] = rerank_reciprocal_row(i, nn, sorted, L, len, out + i * len);
}

template <typename Dist>
__global__ void expand_kernel(RerankExpandArgs a, Dist dist) {
  for (int64_t i = first_index(); i < a.n; i += grid_stride()) rerank_expand_weights_row(i, a, dist);
}

__global__ void query_expand_kernel(RerankQueryExpandArgs a) {
  for (int64_t i = first_index(); i < a.n; i += grid_stride()) rerank_query_expand_row_args(i, a);
}

// Consecutive threads take consecutive gallery columns of one query row: the query's row is shared, the
// output writes coalesce.
__global__ void jaccard_kernel(RerankJaccardArgs a, float* out) {
  for (int64_t t = first_index(); t < a.q * a.g; t += grid_stride()) {
    const int64_t i = t / a.g, j = t - i * a.g;
    rerank_jaccard_entry(i, j, a, out);
  }
}

template <typename T>
__global__ void topk_fill_kernel(const T* D, int64_t K, int64_t q, int64_t g, float lam, float* out) {
  for (int64_t t = first_index(); t < q * g; t += grid_stride()) out[t] = rerank_topk_fill_value(D, K, t / g, lam);
}

// Indices are unique per row (checked on the host), so no two threads write one entry.
template <typename T>
__global__ void topk_listed_kernel(const T* D, const int64_t* I, int64_t K, int64_t q, int64_t g, float lam,
                                   float* out) {
  for (int64_t t = first_index(); t < q * K; t += grid_stride()) {
    const int64_t i = t / K, r = t - i * K;
    rerank_topk_listed_entry(D, I, K, q, g, i, r, lam, out);
  }
}

}  // namespace

template <typename T>
void rerank_row_sqnorms(const T* x, int64_t n, int64_t d, T* sq, cudaStream_t stream) {
  sqnorms_kernel<T><<<blocks_for(n), kThreads, 0, stream>>>(x, n, d, sq);
}

template <typename T>
void rerank_tile_sqdist(T* tile, const T* sq, const int64_t* rep, int64_t b0, int64_t nb, int64_t n,
                        cudaStream_t stream) {
  tile_sqdist_kernel<T><<<blocks_for(nb * n), kThreads, 0, stream>>>(tile, sq, rep, b0, nb, n);
}

void rerank_zero_copies(const int64_t* rep, int64_t q, int64_t g, float* out, cudaStream_t stream) {
  if (q * g == 0) return;
  zero_copies_kernel<<<blocks_for(q * g), kThreads, 0, stream>>>(rep, q, g, out);
}

template <typename T>
void rerank_tile_out(const T* tile, const T* row_max, int64_t b0, int64_t nbq, int64_t n, int64_t q, float lam,
                     float* out, cudaStream_t stream) {
  tile_out_kernel<T><<<blocks_for(nbq * (n - q)), kThreads, 0, stream>>>(tile, row_max, b0, nbq, n, q, lam, out);
}

void rerank_tile_keys(const float* tile, int64_t nb, int64_t n, int64_t* keys, cudaStream_t stream) {
  tile_keys_kernel<<<blocks_for(nb * n), kThreads, 0, stream>>>(tile, nb, n, keys);
}

void rerank_reciprocal(const int32_t* nn, const int32_t* sorted, int64_t n, int64_t L, int64_t len, int32_t* out,
                       int32_t* cnt, cudaStream_t stream) {
  reciprocal_kernel<<<blocks_for(n), kThreads, 0, stream>>>(nn, sorted, n, L, len, out, cnt);
}

template <typename Dist>
void rerank_expand(const RerankExpandArgs& a, const Dist& dist, cudaStream_t stream) {
  expand_kernel<Dist><<<blocks_for(a.n), kThreads, 0, stream>>>(a, dist);
}

void rerank_query_expand(const RerankQueryExpandArgs& a, cudaStream_t stream) {
  query_expand_kernel<<<blocks_for(a.n), kThreads, 0, stream>>>(a);
}

void rerank_jaccard(const RerankJaccardArgs& a, float* out, cudaStream_t stream) {
  jaccard_kernel<<<blocks_for(a.q * a.g), kThreads, 0, stream>>>(a, out);
}

template <typename T>
void rerank_topk_out(const T* D, const int64_t* I, int64_t K, int64_t q, int64_t g, float lam, float* out,
                     cudaStream_t stream) {
  topk_fill_kernel<T><<<blocks_for(q * g), kThreads, 0, stream>>>(D, K, q, g, lam, out);
  topk_listed_kernel<T><<<blocks_for(q * K), kThreads, 0, stream>>>(D, I, K, q, g, lam, out);
}

#define SSML_INSTANTIATE(T)                                                                                    \
  template void rerank_row_sqnorms<T>(const T*, int64_t, int64_t, T*, cudaStream_t);                          \
  template void rerank_tile_sqdist<T>(T*, const T*, const int64_t*, int64_t, int64_t, int64_t, cudaStream_t);  \
  template void rerank_tile_out<T>(const T*, const T*, int64_t, int64_t, int64_t, int64_t, float, float*,      \
                                   cudaStream_t);                                                              \
  template void rerank_expand<RerankFeatureDist<T>>(const RerankExpandArgs&, const RerankFeatureDist<T>&,      \
                                                    cudaStream_t);                                             \
  template void rerank_expand<RerankTopkSortedDist<T>>(const RerankExpandArgs&, const RerankTopkSortedDist<T>&,    \
                                                     cudaStream_t);                                            \
  template void rerank_topk_out<T>(const T*, const int64_t*, int64_t, int64_t, int64_t, float, float*, cudaStream_t);
SSML_INSTANTIATE(float)
SSML_INSTANTIATE(double)
#undef SSML_INSTANTIATE

}  // namespace ssml_fast::cuda
