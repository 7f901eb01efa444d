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

inline TripletInputs prepare_triplet_inputs(const at::Tensor& dist, const at::Tensor& labels,
                                            const at::Tensor& ref_labels, c10::string_view mining,
                                            c10::string_view reduction) {
  TORCH_CHECK(dist.dim() == 2, "dist must be 2-D");
  TripletInputs in{dist.contiguous(), labels.to(at::kLong).contiguous(), ref_labels.to(at::kLong).contiguous(),
                   dist.size(0), dist.size(1), parse_mining(mining), parse_reduction(reduction)};
  TORCH_CHECK(in.labels.numel() == in.B && in.ref_labels.numel() == in.R, "labels must match dist's shape");
  return in;
}

}  // namespace ssml_fast
