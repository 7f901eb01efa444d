#pragma once
// The triplet op's arguments, parsed and laid out once for every backend.
#include <ATen/core/Tensor.h>
#include "common/options.h"

namespace ssml_fast {

struct TripletInputs {
  at::Tensor dist;        // (B, R) contiguous
  at::Tensor labels;      // (B,) int64 contiguous
  at::Tensor ref_labels;  // (R,) int64 contiguous
  int64_t B, R;
  Mining mining;
  Reduction reduction;
};

// Argument checks, once per call: out of line, so their message formatting stays out of the kernels' bodies.
[[gnu::noinline]] inline void check_triplet_devices(const at::Tensor& dist, const at::Tensor& labels,
                                                    const at::Tensor& ref_labels) {
  TORCH_CHECK_VALUE(labels.device() == dist.device() && ref_labels.device() == dist.device(),
                    "labels and ref_labels must be on dist's device ", dist.device(), ", got ", labels.device(),
                    " and ", ref_labels.device());
}

[[gnu::noinline]] inline void check_triplet_args(const at::Tensor& dist, const at::Tensor& labels,
                                                 const at::Tensor& ref_labels) {
  TORCH_CHECK_VALUE(dist.dim() == 2, "dist must be 2-D, got shape ", dist.sizes());
  TORCH_CHECK_TYPE(dist.scalar_type() == at::kFloat || dist.scalar_type() == at::kDouble,
                   "dist must be float32 or float64, got ", dist.scalar_type());
  check_triplet_devices(dist, labels, ref_labels);
  TORCH_CHECK_TYPE(!labels.is_floating_point() && !ref_labels.is_floating_point() && !labels.is_complex() &&
                       !ref_labels.is_complex(),
                   "labels and ref_labels must be integer tensors, got ", labels.scalar_type(), " and ",
                   ref_labels.scalar_type());
  TORCH_CHECK_VALUE(labels.dim() == 1 && ref_labels.dim() == 1 && labels.numel() == dist.size(0) &&
                        ref_labels.numel() == dist.size(1),
                    "labels must have dist.size(0) entries and ref_labels dist.size(1), got ", labels.sizes(),
                    " and ", ref_labels.sizes(), " for dist of shape ", dist.sizes());
}

inline TripletInputs prepare_triplet_inputs(const at::Tensor& dist, const at::Tensor& labels,
                                            const at::Tensor& ref_labels, c10::string_view mining,
                                            c10::string_view reduction) {
  check_triplet_args(dist, labels, ref_labels);
  return TripletInputs{dist.contiguous(), labels.to(at::kLong).contiguous(), ref_labels.to(at::kLong).contiguous(),
                       dist.size(0), dist.size(1), parse_mining(mining), parse_reduction(reduction)};
}

}  // namespace ssml_fast
