#pragma once
// Argument checks of the memory-bank ops, shared by every backend. The Python wrappers check user input
// first with friendlier messages; these keep direct torch.ops calls from writing out of bounds.
#include <ATen/core/Tensor.h>
#include <ATen/MemoryOverlap.h>
#include <ATen/TensorOperators.h>
#include <ATen/ops/any.h>
#include <c10/util/Exception.h>

namespace ssml_fast {

inline void check_enqueue_args(const at::Tensor& buffer, const at::Tensor& rows, int64_t ptr) {
  TORCH_CHECK_VALUE(buffer.dim() >= 1 && buffer.size(0) > 0, "buffer must have at least one slot, got shape ",
                    buffer.sizes());
  TORCH_CHECK_VALUE(buffer.is_contiguous(), "buffer must be contiguous");
  TORCH_CHECK_VALUE(rows.dim() == buffer.dim() && rows.sizes().slice(1) == buffer.sizes().slice(1),
                    "rows must have shape (N, ", buffer.sizes().slice(1), "), got ", rows.sizes());
  TORCH_CHECK_TYPE(rows.scalar_type() == buffer.scalar_type(), "rows has dtype ", rows.scalar_type(),
                   " but buffer has ", buffer.scalar_type());
  TORCH_CHECK_VALUE(rows.device() == buffer.device(), "rows is on ", rows.device(), " but buffer is on ",
                    buffer.device());
  TORCH_CHECK_VALUE(ptr >= 0 && ptr < buffer.size(0), "ptr must be in [0, ", buffer.size(0), "), got ", ptr);
}

inline void check_enqueue_many_args(at::TensorList buffers, at::TensorList rows, int64_t ptr) {
  TORCH_CHECK_VALUE(buffers.size() == rows.size(), "got ", buffers.size(), " buffers but ", rows.size(),
                    " rows tensors");
  for (size_t i = 0; i < buffers.size(); ++i) {
    check_enqueue_args(buffers[i], rows[i], ptr);
    TORCH_CHECK_VALUE(buffers[i].size(0) == buffers[0].size(0) && rows[i].size(0) == rows[0].size(0),
                      "every buffer must have the same number of slots and every rows the same length");
    TORCH_CHECK_VALUE(buffers[i].device() == buffers[0].device(), "every buffer must be on one device");
  }
}

inline void check_bank_update_args(const at::Tensor& bank, const at::Tensor& ids, const at::Tensor& feats,
                                   double momentum) {
  TORCH_CHECK_VALUE(bank.dim() == 2 && bank.is_contiguous(), "bank must be a contiguous (N, D) tensor, got shape ",
                    bank.sizes());
  TORCH_CHECK_TYPE(bank.is_floating_point(), "bank must be floating point, got ", bank.scalar_type());
  TORCH_CHECK_TYPE(ids.scalar_type() == at::kLong, "ids must be int64, got ", ids.scalar_type());
  TORCH_CHECK_VALUE(ids.dim() == 1, "ids must be 1-D, got shape ", ids.sizes());
  TORCH_CHECK_VALUE(feats.dim() == 2 && feats.size(0) == ids.size(0) && feats.size(1) == bank.size(1),
                    "feats must have shape (", ids.size(0), ", ", bank.size(1), "), got ", feats.sizes());
  TORCH_CHECK_TYPE(feats.scalar_type() == bank.scalar_type(), "feats has dtype ", feats.scalar_type(),
                   " but bank has ", bank.scalar_type());
  TORCH_CHECK_VALUE(ids.device() == bank.device() && feats.device() == bank.device(),
                    "bank, ids and feats must be on one device");
  TORCH_CHECK_VALUE(momentum >= 0 && momentum < 1, "momentum must be in [0, 1), got ", momentum);
}

// feats as the kernels may read it while they write the bank: a copy when it shares memory with the bank
// (feats = bank[a:b], a view), which would otherwise make the result depend on the order slots are written.
inline at::Tensor bank_update_feats(const at::Tensor& bank, const at::Tensor& feats) {
  return at::get_overlap_status(bank, feats) == at::MemOverlapStatus::No ? feats.contiguous()
                                                                         : feats.clone(at::MemoryFormat::Contiguous);
}

// Out-of-range ids raise on every device. On the GPU this reads one flag back to the host (a kernel cannot
// raise), the price of the same behaviour as the CPU kernel, which checks while it groups the ids.
inline void check_bank_ids_on_device(const at::Tensor& ids, int64_t n_slots) {
  if (ids.numel() == 0) return;
  TORCH_CHECK_VALUE(!((ids < 0) | (ids >= n_slots)).any().item<bool>(), "ids must be in [0, ", n_slots,
                    ") (the bank's slots); got an id outside that range");
}

}  // namespace ssml_fast
