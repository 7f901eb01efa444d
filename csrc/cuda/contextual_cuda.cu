// CUDA kernels of contextual_similarity: one thread per matrix entry (or per bit-set word) running the bodies of
// common/contextual_kernels.h (which the CPU twin, cpu/contextual_gpu_algorithm_cpu.cpp, runs in loops), the same
// math and tie rule as the CPU kernel (common/contextual_math.h). Ranking counts, for each (i, j), the
// columns that precede j in row i: O(n) per entry with an early exit at k, no sort and no atomics on lists.
#include "common/contextual_kernels.h"
#include "cuda/contextual_launchers.h"

namespace ssml_fast::cuda {
namespace {

constexpr int kThreads = 256;
// Grid sizes stay within the 2^31 - 1 limit of grid.x (n * n entries pass it at n = 741k).
constexpr int64_t kMaxBlocks = int64_t(1) << 30;

inline unsigned blocks_for(int64_t n) {
  const int64_t b = (n + kThreads - 1) / kThreads;
  return static_cast<unsigned>(b < kMaxBlocks ? b : kMaxBlocks);
}

template <typename T>
__global__ void row_norms_kernel(const T* gram, T* inv, T* s, int64_t n, T eps) {
  const int64_t i = static_cast<int64_t>(blockIdx.x) * blockDim.x + threadIdx.x;
  if (i < n) contextual_row_norm_entry<T>(gram, inv, s, i, n, eps);
}

template <typename T>
__global__ void sqdist_kernel(const T* gram, const T* inv, const T* s, const int64_t* rep, int64_t n, T* d2) {
  const int64_t t = static_cast<int64_t>(blockIdx.x) * blockDim.x + threadIdx.x;
  if (t < n * n) d2[t] = contextual_sqdist_entry<T>(gram, inv, s, rep, n, t);
}

// Blocks of kThreads consecutive columns of one row (a block's threads share the row it scans), grid-stride
// over the n * ceil(n / kThreads) blocks: a 1-D grid, so n is not bound by the 65535 limit of grid.y.
template <typename T>
__global__ void rank_kernel(const T* d2, const int64_t* ids, int64_t n, int64_t k, int64_t* nn, uint8_t* in_knn) {
  const int64_t per_row = (n + kThreads - 1) / kThreads;
  for (int64_t blk = blockIdx.x; blk < n * per_row; blk += gridDim.x) {
    const int64_t i = blk / per_row;
    const int64_t j = (blk - i * per_row) * kThreads + threadIdx.x;
    if (j < n) contextual_rank_entry<T>(d2 + i * n, ids, i, j, n, k, nn, in_knn);
  }
}

__global__ void mutual_kernel(const uint8_t* in_knn, int64_t n, int64_t W, uint64_t* rb, int32_t* rsize) {
  const int64_t t = static_cast<int64_t>(blockIdx.x) * blockDim.x + threadIdx.x;
  if (t >= n * W) return;
  const uint64_t bits = contextual_mutual_word(in_knn, n, W, t);
  rb[t] = bits;
  if (bits) atomicAdd(rsize + t / W, popcount64(bits));
}

template <typename T>
__global__ void wtilde_kernel(const uint64_t* rb, const int32_t* rsize, int64_t n, int64_t W, T* wt) {
  const int64_t t = static_cast<int64_t>(blockIdx.x) * blockDim.x + threadIdx.x;
  if (t < n * n) wt[t] = contextual_wtilde_entry<T>(rb, rsize, n, W, t);
}

template <typename T>
__global__ void combine_kernel(const T* d2, const T* wt, const T* what, const int64_t* nn, int64_t n, int64_t k,
                               int64_t m, T neg_inv_sigma, float* w, float* w_p, float* w_c) {
  const int64_t t = static_cast<int64_t>(blockIdx.x) * blockDim.x + threadIdx.x;
  if (t < n * n) contextual_combine_entry<T>(d2, wt, what, nn, n, k, m, neg_inv_sigma, t, w, w_p, w_c);
}

}  // namespace

template <typename T>
void contextual_sqdist(const T* gram, T* inv, T* s, const int64_t* rep, int64_t n, double eps, T* d2,
                       cudaStream_t stream) {
  row_norms_kernel<T><<<blocks_for(n), kThreads, 0, stream>>>(gram, inv, s, n, static_cast<T>(eps));
  sqdist_kernel<T><<<blocks_for(n * n), kThreads, 0, stream>>>(gram, inv, s, rep, n, d2);
}

template <typename T>
void contextual_rank(const T* d2, const int64_t* ids, int64_t n, int64_t k, int64_t* nn, uint8_t* in_knn,
                     cudaStream_t stream) {
  const int64_t blocks = n * ((n + kThreads - 1) / kThreads);
  rank_kernel<T><<<static_cast<unsigned>(blocks < kMaxBlocks ? blocks : kMaxBlocks), kThreads, 0, stream>>>(
      d2, ids, n, k, nn, in_knn);
}

void contextual_mutual(const uint8_t* in_knn, int64_t n, uint64_t* rb, int32_t* rsize, cudaStream_t stream) {
  const int64_t W = (n + 63) / 64;
  mutual_kernel<<<blocks_for(n * W), kThreads, 0, stream>>>(in_knn, n, W, rb, rsize);
}

template <typename T>
void contextual_wtilde(const uint64_t* rb, const int32_t* rsize, int64_t n, T* wt, cudaStream_t stream) {
  const int64_t W = (n + 63) / 64;
  wtilde_kernel<T><<<blocks_for(n * n), kThreads, 0, stream>>>(rb, rsize, n, W, wt);
}

template <typename T>
void contextual_combine(const T* d2, const T* wt, const T* what, const int64_t* nn, int64_t n, int64_t k,
                        int64_t m, double sigma, float* w, float* w_p, float* w_c, cudaStream_t stream) {
  combine_kernel<T><<<blocks_for(n * n), kThreads, 0, stream>>>(d2, wt, what, nn, n, k, m,
                                                                static_cast<T>(-1.0 / sigma), w, w_p, w_c);
}

#define SSML_INSTANTIATE(T)                                                                                  \
  template void contextual_sqdist<T>(const T*, T*, T*, const int64_t*, int64_t, double, T*, cudaStream_t);   \
  template void contextual_rank<T>(const T*, const int64_t*, int64_t, int64_t, int64_t*, uint8_t*,            \
                                   cudaStream_t);                                                            \
  template void contextual_wtilde<T>(const uint64_t*, const int32_t*, int64_t, T*, cudaStream_t);             \
  template void contextual_combine<T>(const T*, const T*, const T*, const int64_t*, int64_t, int64_t, int64_t, \
                                      double, float*, float*, float*, cudaStream_t);
SSML_INSTANTIATE(float)
SSML_INSTANTIATE(double)
#undef SSML_INSTANTIATE

}  // namespace ssml_fast::cuda
