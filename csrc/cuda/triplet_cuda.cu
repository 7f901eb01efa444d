#include "common/triplet_math.h"
#include "cuda/launchers.h"

namespace ssml_fast::cuda {
namespace {

constexpr int kThreads = 256;

inline unsigned blocks_for(int64_t n) { return static_cast<unsigned>((n + kThreads - 1) / kThreads); }

__device__ __forceinline__ bool is_positive(const TripletRows& r, int64_t i, int64_t j) {
  return r.ref_labels[j] == r.labels[i] && !(r.exclude_diagonal && i == j);
}

template <typename T>
__global__ void batch_all_kernel(const T* dist, TripletRows r, const double* negs, const double* prefix,
                                 const int64_t* n_neg, const double* qs, const int64_t* n_pos, double* contrib,
                                 int64_t* active, T* grad) {
  const int64_t k = static_cast<int64_t>(blockIdx.x) * blockDim.x + threadIdx.x;
  if (k >= r.B * r.R) return;
  const int64_t i = k / r.R, j = k - i * r.R;
  const double d = static_cast<double>(dist[k]);
  if (r.ref_labels[j] != r.labels[i]) {
    grad[k] = static_cast<T>(-batch_all_negative(qs + i * r.R, n_pos[i], d));
  } else if (is_positive(r, i, j)) {
    int64_t c = 0;
    contrib[k] = batch_all_positive(negs + i * r.R, prefix + i * (r.R + 1), n_neg[i], d + r.margin, &c);
    active[k] = c;
    grad[k] = static_cast<T>(c);
  }
}

template <typename T>
struct Best {
  T v;
  int64_t j;  // -1: none yet
};

template <typename T, bool kMax>
__device__ __forceinline__ void keep_better(Best<T>& a, const Best<T>& b) {
  if (b.j < 0) return;
  const bool better = kMax ? better_max(b.v, b.j, a.v, a.j) : better_min(b.v, b.j, a.v, a.j);
  if (a.j < 0 || better) a = b;
}

template <typename T>
__global__ void batch_hard_kernel(const T* dist, TripletRows r, bool soft, double* row_loss, int64_t* row_active,
                                  int64_t* row_valid, T* grad) {
  __shared__ Best<T> pos[kThreads];
  __shared__ Best<T> neg[kThreads];
  const int64_t i = blockIdx.x;
  const T* d = dist + i * r.R;
  Best<T> bp{T(0), -1}, bn{T(0), -1};
  for (int64_t j = threadIdx.x; j < r.R; j += blockDim.x) {
    if (r.ref_labels[j] != r.labels[i]) keep_better<T, false>(bn, Best<T>{d[j], j});
    else if (is_positive(r, i, j)) keep_better<T, true>(bp, Best<T>{d[j], j});
  }
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
  if (threadIdx.x != 0) return;
  bp = pos[0];
  bn = neg[0];
  if (bp.j < 0 || bn.j < 0) {
    row_loss[i] = 0;
    row_active[i] = 0;
    row_valid[i] = 0;
    return;
  }
  double dv = 0;
  const double loss = triplet_term<double>(static_cast<double>(bp.v) - static_cast<double>(bn.v) + r.margin, soft, &dv);
  row_loss[i] = loss;
  row_active[i] = loss > 0;
  row_valid[i] = 1;
  grad[i * r.R + bp.j] = static_cast<T>(dv);
  grad[i * r.R + bn.j] = static_cast<T>(-dv);
}

template <typename T>
__global__ void semihard_kernel(const T* dist, TripletRows r, bool soft, const double* negs, const int64_t* neg_idx,
                                const int64_t* n_neg, double* contrib, int64_t* active, int64_t* valid, T* grad) {
  const int64_t k = static_cast<int64_t>(blockIdx.x) * blockDim.x + threadIdx.x;
  if (k >= r.B * r.R) return;
  const int64_t i = k / r.R, j = k - i * r.R;
  if (!is_positive(r, i, j)) return;
  const double p = static_cast<double>(dist[k]);
  const double* row = negs + i * r.R;
  const int64_t first_farther = count_less_equal(row, n_neg[i], p);
  if (first_farther == n_neg[i] || !(row[first_farther] < p + r.margin)) return;
  double dv = 0;
  const double loss = triplet_term<double>(p - row[first_farther] + r.margin, soft, &dv);
  contrib[k] = loss;
  active[k] = loss > 0;
  valid[k] = 1;
  grad[k] = static_cast<T>(dv);
  // Several positives may pick the same negative.
  atomicAdd(grad + i * r.R + neg_idx[i * r.R + first_farther], static_cast<T>(-dv));
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

#define SSML_INSTANTIATE(T)                                                                                    \
  template void batch_all<T>(const T*, const TripletRows&, const double*, const double*, const int64_t*,      \
                             const double*, const int64_t*, double*, int64_t*, T*, cudaStream_t);             \
  template void batch_hard<T>(const T*, const TripletRows&, bool, double*, int64_t*, int64_t*, T*, cudaStream_t); \
  template void semihard<T>(const T*, const TripletRows&, bool, const double*, const int64_t*, const int64_t*,  \
                            double*, int64_t*, int64_t*, T*, cudaStream_t);
SSML_INSTANTIATE(float)
SSML_INSTANTIATE(double)
#undef SSML_INSTANTIATE

}  // namespace ssml_fast::cuda
