// CUDA backend of the memory-bank ops: host side. The ids are sorted on the device (stable, so rows
// sharing an id stay in row order) and one kernel does gather + mix + normalise + scatter. No host
// synchronisation, and nothing allocated in proportion to the ring or bank size.
#include <cuda_bf16.h>
#include <cuda_fp16.h>

#include <ATen/Dispatch.h>
#include <ATen/core/Tensor.h>
#include <ATen/ops/sort.h>
#include <c10/cuda/CUDAException.h>
#include <c10/cuda/CUDAGuard.h>
#include <c10/cuda/CUDAStream.h>
#include <torch/library.h>

#include "common/memory_checks.h"
#include "cuda/memory_launchers.h"

namespace ssml_fast {
namespace {

template <typename T>
struct DeviceType { using type = T; };
template <>
struct DeviceType<at::Half> { using type = __half; };
template <>
struct DeviceType<at::BFloat16> { using type = __nv_bfloat16; };

void enqueue_one(const at::Tensor& buffer, const at::Tensor& rows_in, int64_t ptr, cudaStream_t stream) {
  const at::Tensor rows = rows_in.contiguous();
  const int64_t S = buffer.size(0), N = rows.size(0);
  if (N == 0 || buffer.numel() == 0) return;
  cuda::ring_copy(buffer.data_ptr(), rows.const_data_ptr(), N, S, ptr, static_cast<int64_t>(buffer.nbytes()) / S,
                  stream);
  C10_CUDA_KERNEL_LAUNCH_CHECK();
}

void queue_enqueue_cuda(const at::Tensor& buffer, const at::Tensor& rows, int64_t ptr) {
  check_enqueue_args(buffer, rows, ptr);
  c10::cuda::CUDAGuard guard(buffer.device());
  enqueue_one(buffer, rows, ptr, c10::cuda::getCurrentCUDAStream());
}

void queue_enqueue_many_cuda(at::TensorList buffers, at::TensorList rows, int64_t ptr) {
  check_enqueue_many_args(buffers, rows, ptr);
  if (buffers.empty()) return;
  c10::cuda::CUDAGuard guard(buffers[0].device());
  const auto stream = c10::cuda::getCurrentCUDAStream();
  for (size_t i = 0; i < buffers.size(); ++i) enqueue_one(buffers[i], rows[i], ptr, stream);
}

void bank_momentum_update_cuda(const at::Tensor& bank, const at::Tensor& ids, const at::Tensor& feats_in,
                               double momentum) {
  check_bank_update_args(bank, ids, feats_in, momentum);
  if (ids.numel() == 0) return;
  c10::cuda::CUDAGuard guard(bank.device());
  check_bank_ids_on_device(ids, bank.size(0));
  const at::Tensor feats = bank_update_feats(bank, feats_in);
  auto [sorted_ids, perm] = at::sort(ids, /*stable=*/true, /*dim=*/0, /*descending=*/false);
  const auto stream = c10::cuda::getCurrentCUDAStream();
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, bank.scalar_type(), "bank_momentum_update_cuda", [&] {
    using T = typename DeviceType<scalar_t>::type;
    cuda::bank_momentum_update<T>(reinterpret_cast<T*>(bank.data_ptr<scalar_t>()), bank.size(0), bank.size(1),
                                  sorted_ids.const_data_ptr<int64_t>(), perm.const_data_ptr<int64_t>(),
                                  reinterpret_cast<const T*>(feats.const_data_ptr<scalar_t>()), ids.numel(),
                                  momentum, stream);
  });
  C10_CUDA_KERNEL_LAUNCH_CHECK();
}

}  // namespace

TORCH_LIBRARY_IMPL(ssml_fast, CUDA, m) {
  m.impl("queue_enqueue_", &queue_enqueue_cuda);
  m.impl("queue_enqueue_many_", &queue_enqueue_many_cuda);
  m.impl("bank_momentum_update_", &bank_momentum_update_cuda);
}

}  // namespace ssml_fast
