#pragma once
// Argument checks of the STML loss-term ops, shared by every backend.
#include <ATen/core/Tensor.h>
#include <c10/util/Exception.h>

namespace ssml_fast {

inline void check_rows_matrix(const char* name, const at::Tensor& t) {
  TORCH_CHECK_VALUE(t.dim() == 2 && t.size(0) <= t.size(1), name,
                    " must be an (n, c) matrix with c >= n (column i of row i the self pair), got shape ", t.sizes());
  TORCH_CHECK_TYPE(t.scalar_type() == at::kFloat || t.scalar_type() == at::kDouble, name,
                   " must be float32 or float64, got ", t.scalar_type());
}

inline void check_like(const char* name, const at::Tensor& t, const at::Tensor& ref, const char* ref_name) {
  TORCH_CHECK_VALUE(t.sizes() == ref.sizes(), name, " must have ", ref_name, "'s shape ", ref.sizes(), ", got ",
                    t.sizes());
  TORCH_CHECK_TYPE(t.scalar_type() == ref.scalar_type(), name, " must have ", ref_name, "'s dtype ",
                   ref.scalar_type(), ", got ", t.scalar_type());
  TORCH_CHECK_VALUE(t.device() == ref.device(), name, " is on ", t.device(), " but ", ref_name, " is on ",
                    ref.device());
}

// push_cols of relaxed_contrastive_rows: -1 (every column pushes) or a column index in [0, c]; returns the
// first column without a push part.
inline int64_t checked_push_cols(int64_t push_cols, int64_t c) {
  TORCH_CHECK_VALUE(push_cols >= -1 && push_cols <= c, "push_cols must be -1 or in [0, ", c, "], got ", push_cols);
  return push_cols < 0 ? c : push_cols;
}

inline void check_row_vector(const char* name, const at::Tensor& t, const at::Tensor& ref) {
  TORCH_CHECK_VALUE(t.dim() == 1 && t.size(0) == ref.size(0), name, " must have shape (", ref.size(0), "), got ",
                    t.sizes());
  TORCH_CHECK_TYPE(t.scalar_type() == ref.scalar_type(), name, " must have dtype ", ref.scalar_type());
  TORCH_CHECK_VALUE(t.device() == ref.device(), name, " must be on ", ref.device());
}

}  // namespace ssml_fast
