// CUDA kernels of the memory-bank ops; the per-element math is common/memory_math.h, as on the CPU.
#include <algorithm>
#include <cstdint>

#include <cuda_bf16.h>
#include <cuda_fp16.h>

#include "common/memory_math.h"
#include "cuda/memory_launchers.h"

namespace ssml_fast::cuda {
namespace {

constexpr int kThreads = 256;
constexpr int kBankThreads = 128;  // one block per updated slot; 128-d embeddings are the common case
constexpr int64_t kMaxBlocks = 4096;

template <typename U>
__global__ void ring_copy_kernel(U* dst, const U* src, int64_t first, int64_t count, int64_t units, int64_t size,
                                 int64_t ptr) {
  const int64_t total = count * units;
  for (int64_t t = static_cast<int64_t>(blockIdx.x) * blockDim.x + threadIdx.x; t < total;
       t += static_cast<int64_t>(gridDim.x) * blockDim.x) {
    const int64_t r = t / units, u = t - r * units;
    const int64_t k = first + r;
    dst[ring_slot(ptr, k, size) * units + u] = src[k * units + u];
  }
}

template <typename U>
void launch_ring_copy(void* dst, const void* src, int64_t first, int64_t count, int64_t row_bytes, int64_t size,
                      int64_t ptr, cudaStream_t s) {
  const int64_t units = row_bytes / static_cast<int64_t>(sizeof(U));
  const int64_t total = count * units;
  const int64_t blocks = std::min<int64_t>((total + kThreads - 1) / kThreads, kMaxBlocks);
  ring_copy_kernel<U><<<static_cast<unsigned>(blocks), kThreads, 0, s>>>(
      static_cast<U*>(dst), static_cast<const U*>(src), first, count, units, size, ptr);
}

// Widest unit dividing the row width and both base addresses: 16-byte moves for float rows of 4k.
bool fits(const void* dst, const void* src, int64_t row_bytes, int64_t unit) {
  return row_bytes % unit == 0 && reinterpret_cast<uintptr_t>(dst) % unit == 0 &&
         reinterpret_cast<uintptr_t>(src) % unit == 0;
}

__device__ __forceinline__ float to_acc(__half x) { return __half2float(x); }
__device__ __forceinline__ float to_acc(__nv_bfloat16 x) { return __bfloat162float(x); }
__device__ __forceinline__ float to_acc(float x) { return x; }
__device__ __forceinline__ double to_acc(double x) { return x; }

template <typename T>
struct AccOf { using type = float; };
template <>
struct AccOf<double> { using type = double; };

template <typename T, typename A>
__device__ __forceinline__ T from_acc(A x) { return static_cast<T>(x); }
template <>
__device__ __forceinline__ __half from_acc<__half, float>(float x) { return __float2half(x); }
template <>
__device__ __forceinline__ __nv_bfloat16 from_acc<__nv_bfloat16, float>(float x) { return __float2bfloat16(x); }

template <typename T>
__global__ void bank_update_kernel(T* bank, int64_t n_slots, int64_t d, const int64_t* sorted_ids,
                                   const int64_t* perm, const T* feats, int64_t b, double momentum) {
  using A = typename AccOf<T>::type;
  __shared__ A partial[kBankThreads];
  const int64_t k0 = blockIdx.x;
  const int64_t id = sorted_ids[k0];
  // Only the first block of a run of equal ids writes that slot; the others have nothing to do.
  if (k0 > 0 && sorted_ids[k0 - 1] == id) return;
  // Out-of-range ids are rejected before launch (check_bank_ids_on_device); never write outside the bank.
  if (id < 0 || id >= n_slots) return;
  int64_t k1 = k0 + 1;
  while (k1 < b && sorted_ids[k1] == id) ++k1;
  T* slot = bank + id * d;
  const A m = static_cast<A>(momentum);
  const A w = feat_weight<A>(m, k1 - k0);

  // Pass 1: squared norm of the mixed row; pass 2 recomputes the (cheap) mix and writes it scaled, so
  // nothing of size d is staged.
  A local = 0;
  for (int64_t j = threadIdx.x; j < d; j += blockDim.x) {
    A s = 0;
    for (int64_t k = k0; k < k1; ++k) s += to_acc(feats[perm[k] * d + j]);
    const A v = momentum_mix<A>(m, to_acc(slot[j]), s, w);
    local += v * v;
  }
  partial[threadIdx.x] = local;
  __syncthreads();
  for (int stride = blockDim.x / 2; stride > 0; stride /= 2) {
    if (threadIdx.x < stride) partial[threadIdx.x] += partial[threadIdx.x + stride];
    __syncthreads();
  }
  const A scale = inv_norm<A>(partial[0]);
  for (int64_t j = threadIdx.x; j < d; j += blockDim.x) {
    A s = 0;
    for (int64_t k = k0; k < k1; ++k) s += to_acc(feats[perm[k] * d + j]);
    const A v = momentum_mix<A>(m, to_acc(slot[j]), s, w);
    slot[j] = from_acc<T, A>(v * scale);
  }
}

}  // namespace

void ring_copy(void* dst, const void* src, int64_t n, int64_t size, int64_t ptr, int64_t row_bytes,
               cudaStream_t s) {
  const int64_t first = enqueue_first_row(n, size);
  const int64_t count = n - first;
  if (count <= 0 || row_bytes <= 0) return;
  if (fits(dst, src, row_bytes, 16)) launch_ring_copy<uint4>(dst, src, first, count, row_bytes, size, ptr, s);
  else if (fits(dst, src, row_bytes, 8)) launch_ring_copy<uint2>(dst, src, first, count, row_bytes, size, ptr, s);
  else if (fits(dst, src, row_bytes, 4)) launch_ring_copy<uint32_t>(dst, src, first, count, row_bytes, size, ptr, s);
  else if (fits(dst, src, row_bytes, 2)) launch_ring_copy<uint16_t>(dst, src, first, count, row_bytes, size, ptr, s);
  else launch_ring_copy<uint8_t>(dst, src, first, count, row_bytes, size, ptr, s);
}

template <typename T>
void bank_momentum_update(T* bank, int64_t n_slots, int64_t d, const int64_t* sorted_ids, const int64_t* perm,
                          const T* feats, int64_t b, double momentum, cudaStream_t s) {
  if (b <= 0) return;
  bank_update_kernel<T><<<static_cast<unsigned>(b), kBankThreads, 0, s>>>(bank, n_slots, d, sorted_ids, perm, feats,
                                                                          b, momentum);
}

template void bank_momentum_update<float>(float*, int64_t, int64_t, const int64_t*, const int64_t*, const float*,
                                          int64_t, double, cudaStream_t);
template void bank_momentum_update<double>(double*, int64_t, int64_t, const int64_t*, const int64_t*, const double*,
                                           int64_t, double, cudaStream_t);
template void bank_momentum_update<__half>(__half*, int64_t, int64_t, const int64_t*, const int64_t*, const __half*,
                                           int64_t, double, cudaStream_t);
template void bank_momentum_update<__nv_bfloat16>(__nv_bfloat16*, int64_t, int64_t, const int64_t*, const int64_t*,
                                                  const __nv_bfloat16*, int64_t, double, cudaStream_t);

}  // namespace ssml_fast::cuda
