#pragma once
// Plain-pointer launchers of the memory-bank CUDA kernels (memory_cuda.cu). Torch-free, like
// launchers.h: memory_cuda.cpp owns the tensors, the stream and the op registration.
#include <cstdint>
#include <cuda_runtime.h>

namespace ssml_fast::cuda {

// FIFO ring copy. dst: `size` contiguous slots of `row_bytes` bytes; src: n contiguous rows of the same
// width. Row k goes to slot (ptr + k) % size; with n > size only the last `size` rows are copied.
void ring_copy(void* dst, const void* src, int64_t n, int64_t size, int64_t ptr, int64_t row_bytes,
               cudaStream_t s);

// Fused momentum update of `b` rows into bank (n_slots, d), one block per group of equal ids.
// sorted_ids (b,): the ids ascending; perm (b,): row of feats (b, d) behind each sorted id, ascending
// within equal ids (a stable sort). T is float, double, __half or __nv_bfloat16 (float accumulation).
template <typename T>
void bank_momentum_update(T* bank, int64_t n_slots, int64_t d, const int64_t* sorted_ids, const int64_t* perm,
                          const T* feats, int64_t b, double momentum, cudaStream_t s);

}  // namespace ssml_fast::cuda
