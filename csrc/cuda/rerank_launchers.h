#pragma once
// Plain-pointer launchers of the k-reciprocal re-ranking CUDA kernels (torch-free, so nvcc stays fast). Each
// kernel runs one body of common/rerank_math.h per thread: one thread per row for the sparse row steps, one per
// matrix entry for the tile and output passes, one per (query, gallery) pair for the Jaccard step.
#include <cstdint>
#include <cuda_runtime.h>

#include "common/rerank_math.h"

namespace ssml_fast::cuda {

// sq (n,): squared norms of the rows of x (n, d), summed as rerank_dot does.
template <typename T>
void rerank_row_sqnorms(const T* x, int64_t n, int64_t d, T* sq, cudaStream_t stream);

// tile (nb, n) Gram rows b0.. of the joint set -> squared distances in place, clamped at 0, 0 between exact
// copies (rep (n,): each row's lowest-index copy) and on the diagonal.
template <typename T>
void rerank_tile_sqdist(T* tile, const T* sq, const int64_t* rep, int64_t b0, int64_t nb, int64_t n,
                        cudaStream_t stream);

// out (q, g) = 0 where query i and gallery row j are exact copies.
void rerank_zero_copies(const int64_t* rep, int64_t q, int64_t g, float* out, cudaStream_t stream);

// Query rows b0 .. b0 + nbq of out (q, n - q) = lambda * dn from the distance tile and the row maxima.
template <typename T>
void rerank_tile_out(const T* tile, const T* row_max, int64_t b0, int64_t nbq, int64_t n, int64_t q, float lam,
                     float* out, cudaStream_t stream);

// keys (nb, n) = rerank_order_key of each float32 tile entry.
void rerank_tile_keys(const float* tile, int64_t nb, int64_t n, int64_t* keys, cudaStream_t stream);

// out (n, len), cnt (n,): mutual-neighbour sets of size parameter len from nn (n, L); sorted: (n, len) or null.
void rerank_reciprocal(const int32_t* nn, const int32_t* sorted, int64_t n, int64_t L, int64_t len, int32_t* out,
                       int32_t* cnt, cudaStream_t stream);

// Rows of V (rerank_expand_weights_row). Instantiated for RerankFeatureDist<float|double> and
// RerankTopkSortedDist<float|double>.
template <typename Dist>
void rerank_expand(const RerankExpandArgs& a, const Dist& dist, cudaStream_t stream);

void rerank_query_expand(const RerankQueryExpandArgs& a, cudaStream_t stream);

// out (q, g) += (1 - lambda) * jaccard, one thread per pair.
void rerank_jaccard(const RerankJaccardArgs& a, float* out, cudaStream_t stream);

// out (q, g) = lambda * dn from top-K lists D, I (n, K): unlisted pairs first, then the listed ones.
template <typename T>
void rerank_topk_out(const T* D, const int64_t* I, int64_t K, int64_t q, int64_t g, float lam, float* out,
                     cudaStream_t stream);

}  // namespace ssml_fast::cuda
