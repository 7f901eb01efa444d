// The CUDA backend's triplet algorithm run on the CPU: the same host orchestration
// (common/triplet_sorted_host.h) and per-entry bodies (common/triplet_sorted.h), with loops in place of
// grids. Registered as the private op _triplet_margin_loss_from_dist_sorted so the tests check the GPU
// code path against the CPU kernel on machines without a GPU. Not a fast path.
#include <torch/library.h>

#include "common/triplet_sorted_host.h"

namespace ssml_fast {
namespace {

struct CpuLoopLaunch {
  template <typename T>
  static void batch_all(const T* dist, const TripletRows& r, const T* negs, const double* prefix, const int64_t* n_neg,
                        const T* pos, const int64_t* n_pos, double* contrib, int64_t* active, T* grad) {
    for (int64_t k = 0; k < r.B * r.R; ++k)
      batch_all_entry<T>(k, dist, r, negs, prefix, n_neg, pos, n_pos, contrib, active, grad);
  }
  // Visits each row's columns in an interleaved order (as a block of threads would) to exercise the
  // tie-breaking of keep_better, then folds the partial results like the GPU tree reduction.
  template <typename T>
  static void batch_hard(const T* dist, const TripletRows& r, bool soft, double* row_loss, int64_t* row_active,
                         int64_t* row_valid, T* grad) {
    constexpr int64_t kLanes = 4;
    for (int64_t i = 0; i < r.B; ++i) {
      Best<T> pos[kLanes], neg[kLanes];
      for (int64_t t = 0; t < kLanes; ++t) {
        pos[t] = neg[t] = Best<T>{T(0), -1};
        for (int64_t j = t; j < r.R; j += kLanes) batch_hard_visit<T>(dist, r, i, j, pos[t], neg[t]);
      }
      for (int64_t stride = kLanes / 2; stride > 0; stride /= 2)
        for (int64_t t = 0; t < stride; ++t) {
          keep_better<T, true>(pos[t], pos[t + stride]);
          keep_better<T, false>(neg[t], neg[t + stride]);
        }
      batch_hard_finish<T>(r, soft, i, pos[0], neg[0], row_loss, row_active, row_valid, grad);
    }
  }
  template <typename T>
  static void semihard(const T* dist, const TripletRows& r, bool soft, const T* negs, const int64_t* neg_idx,
                       const int64_t* n_neg, double* contrib, int64_t* active, int64_t* valid, int64_t* choice,
                       T* grad) {
    for (int64_t k = 0; k < r.B * r.R; ++k)
      semihard_entry<T>(k, dist, r, soft, negs, neg_idx, n_neg, contrib, active, valid, choice, grad);
    for (int64_t i = 0; i < r.B; ++i) semihard_scatter_row<T>(i, r.R, choice, grad);
  }
};

std::tuple<at::Tensor, at::Tensor, at::Tensor, at::Tensor> triplet_sorted_cpu(
    const at::Tensor& dist, const at::Tensor& labels, const at::Tensor& ref_labels, bool exclude_diagonal,
    double margin, c10::string_view mining, c10::string_view reduction, bool soft) {
  return triplet_sorted_impl<CpuLoopLaunch>(dist, labels, ref_labels, exclude_diagonal, margin, mining, reduction,
                                            soft);
}

}  // namespace

TORCH_LIBRARY_IMPL(ssml_fast, CPU, m) {
  m.impl("_triplet_margin_loss_from_dist_sorted", &triplet_sorted_cpu);
}

}  // namespace ssml_fast
