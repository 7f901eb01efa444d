// CUDA kernels of STML's loss terms: one block per row, block reductions in shared memory. The per-element
// math is common/stml_math.h, as on the CPU.
#include <cstdint>
#include <limits>

#include "common/stml_math.h"
#include "cuda/stml_terms_launchers.h"

namespace ssml_fast::cuda {
namespace {

constexpr int kThreads = 256;

struct Sum {
  template <typename A>
  __device__ A operator()(A a, A b) const { return a + b; }
};
struct MaxKeepNan {
  template <typename A>
  __device__ A operator()(A a, A b) const { return max_keep_nan<A>(a, b); }
};

// Reduction over the block (blockDim.x == kThreads); every thread gets the result.
template <typename A, typename Op>
__device__ A block_reduce(A v, A* shared, Op op) {
  shared[threadIdx.x] = v;
  __syncthreads();
  for (int stride = kThreads / 2; stride > 0; stride /= 2) {
    if (threadIdx.x < stride) shared[threadIdx.x] = op(shared[threadIdx.x], shared[threadIdx.x + stride]);
    __syncthreads();
  }
  const A r = shared[0];
  __syncthreads();  // shared is reused by the next reduction
  return r;
}

template <typename T>
__global__ void row_relative_kernel(const T* dist, T* rel, T* inv, int64_t c, T eps) {
  __shared__ T shared[kThreads];
  const int64_t i = blockIdx.x;
  const T* row = dist + i * c;
  T s = 0;
  for (int64_t j = threadIdx.x; j < c; j += kThreads) s += j == i ? T(0) : row[j];
  const T k = relative_inv<T>(block_reduce(s, shared, Sum{}), static_cast<T>(c), eps);
  T* out = rel + i * c;
  for (int64_t j = threadIdx.x; j < c; j += kThreads) out[j] = j == i ? T(0) : row[j] * k;
  if (threadIdx.x == 0) inv[i] = k;
}

template <typename T>
__global__ void row_relative_backward_kernel(const T* grad, const T* rel, const T* inv, T* out, int64_t c) {
  __shared__ T shared[kThreads];
  const int64_t i = blockIdx.x;
  const T* gi = grad + i * c;
  const T* ri = rel + i * c;
  T s = 0;
  for (int64_t j = threadIdx.x; j < c; j += kThreads) s += gi[j] * ri[j];
  const T mean = block_reduce(s, shared, Sum{}) / static_cast<T>(c), k = inv[i];
  T* oi = out + i * c;
  for (int64_t j = threadIdx.x; j < c; j += kThreads) oi[j] = j == i ? T(0) : (gi[j] - mean) * k;
}

template <typename T>
__global__ void relaxed_contrastive_kernel(const T* dist, const T* w, T* grad, T* rows, int64_t c, T delta,
                                           T scale, int64_t pull_from) {
  __shared__ T shared[kThreads];
  const int64_t i = blockIdx.x;
  const T* di = dist + i * c;
  const T* wi = w + i * c;
  T* gi = grad + i * c;
  T s = 0;
  for (int64_t j = threadIdx.x; j < c; j += kThreads) {
    const bool push = j < pull_from;
    s += j == i ? T(0) : (push ? rc_value<T>(di[j], wi[j], delta) : rc_pull_value<T>(di[j], wi[j]));
    gi[j] = j == i ? T(0) : (push ? rc_grad<T>(di[j], wi[j], delta) : rc_pull_grad<T>(di[j], wi[j])) * scale;
  }
  s = block_reduce(s, shared, Sum{});
  if (threadIdx.x == 0) rows[i] = s * scale;
}

template <typename T>
__global__ void kl_kernel(const T* df, const T* dg, T* grad, T* rows, int64_t c, T neg_inv_t, T inv_t,
                          bool exclude_self, T scale) {
  __shared__ T shared[kThreads];
  const int64_t i = blockIdx.x;
  const int64_t skip = exclude_self ? i : -1;
  const T* fi = df + i * c;
  const T* gi = dg + i * c;
  T* oi = grad + i * c;
  T mf = -std::numeric_limits<T>::infinity(), mg = mf;
  for (int64_t j = threadIdx.x; j < c; j += kThreads) {
    if (j == skip) continue;
    mf = max_keep_nan<T>(mf, fi[j] * neg_inv_t);
    mg = max_keep_nan<T>(mg, gi[j] * neg_inv_t);
  }
  mf = block_reduce(mf, shared, MaxKeepNan{});
  mg = block_reduce(mg, shared, MaxKeepNan{});
  T zf = 0, zg = 0;
  for (int64_t j = threadIdx.x; j < c; j += kThreads) {
    if (j == skip) continue;
    zf += exp(fi[j] * neg_inv_t - mf);
    zg += exp(gi[j] * neg_inv_t - mg);
  }
  zf = block_reduce(zf, shared, Sum{});
  zg = block_reduce(zg, shared, Sum{});
  const T lse_f = mf + log(zf), lse_g = mg + log(zg);
  T s = 0;
  for (int64_t j = threadIdx.x; j < c; j += kThreads) {
    if (j == skip) { oi[j] = 0; continue; }
    const T log_p = fi[j] * neg_inv_t - lse_f, log_q = gi[j] * neg_inv_t - lse_g;
    const T q = exp(log_q), p = exp(log_p);
    s += kl_column<T>(log_p, log_q, q);
    oi[j] = (q - p) * inv_t * scale;
  }
  s = block_reduce(s, shared, Sum{});
  if (threadIdx.x == 0) rows[i] = s * scale;
}

}  // namespace

template <typename T>
void row_relative(const T* dist, T* rel, T* inv, int64_t n, int64_t c, double eps, cudaStream_t s) {
  if (n == 0) return;
  row_relative_kernel<T><<<static_cast<unsigned>(n), kThreads, 0, s>>>(dist, rel, inv, c, static_cast<T>(eps));
}

template <typename T>
void row_relative_backward(const T* grad, const T* rel, const T* inv, T* out, int64_t n, int64_t c,
                           cudaStream_t s) {
  if (n == 0) return;
  row_relative_backward_kernel<T><<<static_cast<unsigned>(n), kThreads, 0, s>>>(grad, rel, inv, out, c);
}

template <typename T>
void relaxed_contrastive_rows(const T* dist, const T* w, T* grad, T* rows, int64_t n, int64_t c, double delta,
                              double scale, int64_t pull_from, cudaStream_t s) {
  if (n == 0) return;
  relaxed_contrastive_kernel<T><<<static_cast<unsigned>(n), kThreads, 0, s>>>(
      dist, w, grad, rows, c, static_cast<T>(delta), static_cast<T>(scale), pull_from);
}

template <typename T>
void self_distillation_kl_rows(const T* df, const T* dg, T* grad, T* rows, int64_t n, int64_t c,
                               double temperature, bool exclude_self, double scale, cudaStream_t s) {
  if (n == 0) return;
  kl_kernel<T><<<static_cast<unsigned>(n), kThreads, 0, s>>>(df, dg, grad, rows, c, static_cast<T>(-1.0 / temperature),
                                                              static_cast<T>(1.0 / temperature), exclude_self,
                                                              static_cast<T>(scale));
}

#define SSML_INSTANTIATE(T)                                                                                   \
  template void row_relative<T>(const T*, T*, T*, int64_t, int64_t, double, cudaStream_t);                   \
  template void row_relative_backward<T>(const T*, const T*, const T*, T*, int64_t, int64_t, cudaStream_t);  \
  template void relaxed_contrastive_rows<T>(const T*, const T*, T*, T*, int64_t, int64_t, double, double,    \
                                            int64_t, cudaStream_t);                                          \
  template void self_distillation_kl_rows<T>(const T*, const T*, T*, T*, int64_t, int64_t, double, bool,     \
                                             double, cudaStream_t);
SSML_INSTANTIATE(float)
SSML_INSTANTIATE(double)
#undef SSML_INSTANTIATE

}  // namespace ssml_fast::cuda
