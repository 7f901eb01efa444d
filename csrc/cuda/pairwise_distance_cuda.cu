#include "cuda/launchers.h"

namespace ssml_fast::cuda {
namespace {

constexpr int kThreads = 256;

inline unsigned blocks_for(int64_t n) { return static_cast<unsigned>((n + kThreads - 1) / kThreads); }

template <typename T>
__global__ void distance_epilogue_kernel(T* gram, const T* sq_x, const T* sq_y, const T* x, const T* y, int64_t B,
                                         int64_t R, int64_t D, Metric metric) {
  const int64_t k = static_cast<int64_t>(blockIdx.x) * blockDim.x + threadIdx.x;
  if (k >= B * R) return;
  const int64_t i = k / R, j = k - i * R;
  const T si = sq_x ? sq_x[i] : T(0), sj = sq_y ? sq_y[j] : T(0);
  T v = distance_from_gram<T>(si, sj, gram[k], metric);
  // NaN / inf / overflowing rows (rare): the pair straight from its coordinates, as on the CPU.
  if (metric != Metric::Cosine && !gram_form_ok<T>(si, sj, v)) v = direct_distance<T>(x + i * D, y + j * D, D, metric);
  gram[k] = v;
}

template <typename T>
__global__ void grad_coef_kernel(const T* grad, const T* dist, T* h, int64_t n, Metric metric) {
  const int64_t k = static_cast<int64_t>(blockIdx.x) * blockDim.x + threadIdx.x;
  if (k < n) h[k] = ssml_fast::distance_grad_coef<T>(grad[k], dist[k], metric);
}

}  // namespace

template <typename T>
void distance_epilogue(T* gram, const T* sq_x, const T* sq_y, const T* x, const T* y, int64_t B, int64_t R, int64_t D,
                       Metric metric, cudaStream_t s) {
  if (B * R == 0) return;
  distance_epilogue_kernel<T><<<blocks_for(B * R), kThreads, 0, s>>>(gram, sq_x, sq_y, x, y, B, R, D, metric);
}

template <typename T>
void distance_grad_coef(const T* grad, const T* dist, T* h, int64_t n, Metric metric, cudaStream_t s) {
  if (n == 0) return;
  grad_coef_kernel<T><<<blocks_for(n), kThreads, 0, s>>>(grad, dist, h, n, metric);
}

template void distance_epilogue<float>(float*, const float*, const float*, const float*, const float*, int64_t,
                                       int64_t, int64_t, Metric, cudaStream_t);
template void distance_epilogue<double>(double*, const double*, const double*, const double*, const double*, int64_t,
                                        int64_t, int64_t, Metric, cudaStream_t);
template void distance_grad_coef<float>(const float*, const float*, float*, int64_t, Metric, cudaStream_t);
template void distance_grad_coef<double>(const double*, const double*, double*, int64_t, Metric, cudaStream_t);

}  // namespace ssml_fast::cuda
