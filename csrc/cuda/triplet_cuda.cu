// CUDA kernels of the triplet op: thin grids over the shared per-entry bodies in common/triplet_sorted.h.
#include "common/triplet_sorted.h"
#include "cuda/launchers.h"

namespace ssml_fast::cuda {
namespace {

constexpr int kThreads = 256;

inline unsigned blocks_for(int64_t n) { return static_cast<unsigned>((n + kThreads - 1) / kThreads); }

template <typename T>
__global__ void batch_all_kernel(const T* dist, TripletRows r, const double* negs, const double* prefix,
                                 const int64_t* n_neg, const double* qs, const int64_t* n_pos, double* contrib,
                                 int64_t* active, T* grad) {
  const int64_t k = static_cast<int64_t>(blockIdx.x) * blockDim.x + threadIdx.x;
  if (k < r.B * r.R) batch_all_entry<T>(k, dist, r, negs, prefix, n_neg, qs, n_pos, contrib, active, grad);
}

// One block per anchor row: strided scan, then a shared-memory tree reduction of (value, column).
template <typename T>
__global__ void batch_hard_kernel(const T* dist, TripletRows r, bool soft, double* row_loss, int64_t* row_active,
                                  int64_t* row_valid, T* grad) {
  __shared__ Best<T> pos[kThreads];
  __shared__ Best<T> neg[kThreads];
  const int64_t i = blockIdx.x;
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
}

struct AtomicAdd {
  template <typename T>
  __device__ void operator()(T* ptr, T v) const { atomicAdd(ptr, v); }
};

template <typename T>
__global__ void semihard_kernel(const T* dist, TripletRows r, bool soft, const double* negs, const int64_t* neg_idx,
                                const int64_t* n_neg, double* contrib, int64_t* active, int64_t* valid, T* grad) {
  const int64_t k = static_cast<int64_t>(blockIdx.x) * blockDim.x + threadIdx.x;
  if (k < r.B * r.R)
    semihard_entry<T>(k, dist, r, soft, negs, neg_idx, n_neg, contrib, active, valid, grad, AtomicAdd{});
}

}  // namespace

template <typename T>
void batch_all(const T* dist, const TripletRows& rows, const double* negs, const double* prefix,
               const int64_t* n_neg, const double* qs, const int64_t* n_pos, double* contrib, int64_t* active,
               T* grad, cudaStream_t s) {
  if (rows.B * rows.R == 0) return;
  batch_all_kernel<T><<<blocks_for(rows.B * rows.R), kThreads, 0, s>>>(dist, rows, negs, prefix, n_neg, qs, n_pos,
                                                                       contrib, active, grad);
}

template <typename T>
void batch_hard(const T* dist, const TripletRows& rows, bool soft, double* row_loss, int64_t* row_active,
                int64_t* row_valid, T* grad, cudaStream_t s) {
  if (rows.B == 0) return;
  batch_hard_kernel<T><<<static_cast<unsigned>(rows.B), kThreads, 0, s>>>(dist, rows, soft, row_loss, row_active,
                                                                          row_valid, grad);
}

template <typename T>
void semihard(const T* dist, const TripletRows& rows, bool soft, const double* negs, const int64_t* neg_idx,
              const int64_t* n_neg, double* contrib, int64_t* active, int64_t* valid, T* grad, cudaStream_t s) {
  if (rows.B * rows.R == 0) return;
  semihard_kernel<T><<<blocks_for(rows.B * rows.R), kThreads, 0, s>>>(dist, rows, soft, negs, neg_idx, n_neg,
                                                                      contrib, active, valid, grad);
}

#define SSML_INSTANTIATE(T)                                                                                      \
  template void batch_all<T>(const T*, const TripletRows&, const double*, const double*, const int64_t*,        \
                             const double*, const int64_t*, double*, int64_t*, T*, cudaStream_t);               \
  template void batch_hard<T>(const T*, const TripletRows&, bool, double*, int64_t*, int64_t*, T*, cudaStream_t); \
  template void semihard<T>(const T*, const TripletRows&, bool, const double*, const int64_t*, const int64_t*,    \
                            double*, int64_t*, int64_t*, T*, cudaStream_t);
SSML_INSTANTIATE(float)
SSML_INSTANTIATE(double)
#undef SSML_INSTANTIATE

}  // namespace ssml_fast::cuda
