// CUDA kernels of the triplet op: thin grids over the shared per-entry bodies in common/triplet_sorted.h,
// launched once per chunk of rows by the host orchestration (common/triplet_sorted_host.h).
#include "common/triplet_sorted.h"
#include "cuda/launchers.h"

namespace ssml_fast::cuda {
namespace {

constexpr int kThreads = 256;
constexpr int64_t kMaxBlocks = 65535;

inline unsigned blocks_for(int64_t n) {
  const int64_t b = (n + kThreads - 1) / kThreads;
  return static_cast<unsigned>(b < 1 ? 1 : (b < kMaxBlocks ? b : kMaxBlocks));
}

__device__ inline int64_t first_index() { return static_cast<int64_t>(blockIdx.x) * blockDim.x + threadIdx.x; }
__device__ inline int64_t grid_stride() { return static_cast<int64_t>(gridDim.x) * blockDim.x; }

template <typename T>
__global__ void batch_all_kernel(const T* dist, TripletRows r, const T* negs, const double* prefix,
                                 const int64_t* n_neg, const T* pos, const int64_t* n_pos, double* contrib,
                                 int64_t* active, T* grad) {
  for (int64_t k = first_index(); k < r.B * r.R; k += grid_stride())
    batch_all_entry<T>(k, dist, r, negs, prefix, n_neg, pos, n_pos, contrib, active, grad);
}

// One block per anchor row (grid-stride over rows): strided scan, then a shared-memory tree reduction of
// (value, column).
template <typename T>
__global__ void batch_hard_kernel(const T* dist, TripletRows r, bool soft, double* row_loss, int64_t* row_active,
                                  int64_t* row_valid, T* grad) {
  __shared__ Best<T> pos[kThreads];
  __shared__ Best<T> neg[kThreads];
  for (int64_t i = blockIdx.x; i < r.B; i += gridDim.x) {
    Best<T> bp{T(0), -1}, bn{T(0), -1};
    for (int64_t j = threadIdx.x; j < r.R; j += blockDim.x) batch_hard_visit<T>(dist, r, i, j, bp, bn);
    pos[threadIdx.x] = bp;
    neg[threadIdx.x] = bn;
    __syncthreads();
    for (int stride = blockDim.x / 2; stride > 0; stride /= 2) {
      if (threadIdx.x < stride) {
        keep_better<T, true>(pos[threadIdx.x], pos[threadIdx.x + stride]);
        keep_better<T, false>(neg[threadIdx.x], neg[threadIdx.x + stride]);
      }
      __syncthreads();
    }
    if (threadIdx.x == 0) batch_hard_finish<T>(r, soft, i, pos[0], neg[0], row_loss, row_active, row_valid, grad);
    __syncthreads();  // pos / neg are reused by the block's next row
  }
}

template <typename T>
__global__ void semihard_kernel(const T* dist, TripletRows r, bool soft, const T* negs, const int64_t* neg_idx,
                                const int64_t* n_neg, double* contrib, int64_t* active, int64_t* valid,
                                int64_t* choice, T* grad) {
  for (int64_t k = first_index(); k < r.B * r.R; k += grid_stride())
    semihard_entry<T>(k, dist, r, soft, negs, neg_idx, n_neg, contrib, active, valid, choice, grad);
}

template <typename T>
__global__ void semihard_scatter_kernel(TripletRows r, const int64_t* choice, T* grad) {
  for (int64_t i = first_index(); i < r.B; i += grid_stride()) semihard_scatter_row<T>(i, r.R, choice, grad);
}

}  // namespace

template <typename T>
void batch_all(const T* dist, const TripletRows& rows, const T* negs, const double* prefix, const int64_t* n_neg,
               const T* pos, const int64_t* n_pos, double* contrib, int64_t* active, T* grad, cudaStream_t s) {
  if (rows.B * rows.R == 0) return;
  batch_all_kernel<T><<<blocks_for(rows.B * rows.R), kThreads, 0, s>>>(dist, rows, negs, prefix, n_neg, pos, n_pos,
                                                                       contrib, active, grad);
}

template <typename T>
void batch_hard(const T* dist, const TripletRows& rows, bool soft, double* row_loss, int64_t* row_active,
                int64_t* row_valid, T* grad, cudaStream_t s) {
  if (rows.B == 0) return;
  const unsigned blocks = static_cast<unsigned>(rows.B < kMaxBlocks ? rows.B : kMaxBlocks);
  batch_hard_kernel<T><<<blocks, kThreads, 0, s>>>(dist, rows, soft, row_loss, row_active, row_valid, grad);
}

template <typename T>
void semihard(const T* dist, const TripletRows& rows, bool soft, const T* negs, const int64_t* neg_idx,
              const int64_t* n_neg, double* contrib, int64_t* active, int64_t* valid, int64_t* choice, T* grad,
              cudaStream_t s) {
  if (rows.B * rows.R == 0) return;
  semihard_kernel<T><<<blocks_for(rows.B * rows.R), kThreads, 0, s>>>(dist, rows, soft, negs, neg_idx, n_neg,
                                                                      contrib, active, valid, choice, grad);
  semihard_scatter_kernel<T><<<blocks_for(rows.B), kThreads, 0, s>>>(rows, choice, grad);
}

#define SSML_INSTANTIATE(T)                                                                                      \
  template void batch_all<T>(const T*, const TripletRows&, const T*, const double*, const int64_t*, const T*,    \
                             const int64_t*, double*, int64_t*, T*, cudaStream_t);                              \
  template void batch_hard<T>(const T*, const TripletRows&, bool, double*, int64_t*, int64_t*, T*, cudaStream_t); \
  template void semihard<T>(const T*, const TripletRows&, bool, const T*, const int64_t*, const int64_t*, double*, \
                            int64_t*, int64_t*, int64_t*, T*, cudaStream_t);
SSML_INSTANTIATE(float)
SSML_INSTANTIATE(double)
#undef SSML_INSTANTIATE

}  // namespace ssml_fast::cuda
