#pragma once
// Host side of the "sorted rows" triplet algorithm (the CUDA backend's): masks, per-row segmented sorts
// and reductions through ATen, per-entry work through `Launch` (CUDA kernels, or CPU loops over the same
// bodies for tests). No host synchronisation: the reduction scale is computed on the device.
#include <limits>
#include <tuple>

#include <ATen/Dispatch.h>
#include <ATen/TensorOperators.h>
#include <ATen/core/Tensor.h>
#include <ATen/ops/arange.h>
#include <ATen/ops/cat.h>
#include <ATen/ops/full.h>
#include <ATen/ops/ones.h>
#include <ATen/ops/sort.h>
#include <ATen/ops/where.h>
#include <ATen/ops/zeros.h>
#include <ATen/ops/zeros_like.h>

#include "common/triplet_inputs.h"
#include "common/triplet_sorted.h"

namespace ssml_fast {

// Rows of `values` (B, R) where `mask` holds, ascending by (value, column), padded with +inf.
inline std::tuple<at::Tensor, at::Tensor> sorted_masked_rows(const at::Tensor& values, const at::Tensor& mask) {
  const at::Tensor inf = at::full({}, std::numeric_limits<double>::infinity(), values.options());
  auto [sorted, idx] = at::sort(at::where(mask, values, inf), /*stable=*/true, /*dim=*/1, /*descending=*/false);
  return {sorted, idx};
}

template <typename Launch>
std::tuple<at::Tensor, at::Tensor, at::Tensor, at::Tensor> triplet_sorted_impl(
    const at::Tensor& dist_in, const at::Tensor& labels_in, const at::Tensor& ref_labels_in, bool exclude_diagonal,
    double margin, c10::string_view mining_s, c10::string_view reduction_s, bool soft) {
  const auto [dist, labels, ref_labels, B, R, mining, reduction] =
      prepare_triplet_inputs(dist_in, labels_in, ref_labels_in, mining_s, reduction_s);
  const TripletRows rows{labels.const_data_ptr<int64_t>(), ref_labels.const_data_ptr<int64_t>(), B, R,
                         exclude_diagonal, margin};

  const at::Tensor same = labels.unsqueeze(1) == ref_labels.unsqueeze(0);
  at::Tensor pos_mask = same;
  if (exclude_diagonal) {
    const auto opts = labels.options();
    pos_mask = same & (at::arange(B, opts).unsqueeze(1) != at::arange(R, opts).unsqueeze(0));
  }
  const at::Tensor neg_mask = ~same;
  const at::Tensor n_pos = pos_mask.sum(1), n_neg = neg_mask.sum(1);
  const at::Tensor dd = dist.to(at::kDouble);
  const auto dbl = dist.options().dtype(at::kDouble);
  const auto lng = labels.options();

  at::Tensor grad = at::zeros_like(dist);
  at::Tensor loss_sum, active, triplets;
  AT_DISPATCH_FLOATING_TYPES(dist.scalar_type(), "triplet_sorted", [&] {
    const scalar_t* d = dist.const_data_ptr<scalar_t>();
    scalar_t* g = grad.data_ptr<scalar_t>();
    switch (mining) {
      case Mining::All: {
        auto [negs, neg_idx] = sorted_masked_rows(dd, neg_mask);
        auto [qs, q_idx] = sorted_masked_rows(dd + margin, pos_mask);
        const at::Tensor finite = at::where(neg_mask.gather(1, neg_idx), negs, 0.0);
        const at::Tensor prefix = at::cat({at::zeros({B, 1}, dbl), finite.cumsum(1)}, 1);
        at::Tensor contrib = at::zeros({B, R}, dbl), act = at::zeros({B, R}, lng);
        Launch::template batch_all<scalar_t>(d, rows, negs.const_data_ptr<double>(), prefix.const_data_ptr<double>(),
                                             n_neg.const_data_ptr<int64_t>(), qs.const_data_ptr<double>(),
                                             n_pos.const_data_ptr<int64_t>(), contrib.data_ptr<double>(),
                                             act.data_ptr<int64_t>(), g);
        loss_sum = contrib.sum();
        active = act.sum();
        triplets = (n_pos * n_neg).sum();
        break;
      }
      case Mining::Hard: {
        at::Tensor row_loss = at::zeros({B}, dbl), row_active = at::zeros({B}, lng), row_valid = at::zeros({B}, lng);
        Launch::template batch_hard<scalar_t>(d, rows, soft, row_loss.data_ptr<double>(),
                                              row_active.data_ptr<int64_t>(), row_valid.data_ptr<int64_t>(), g);
        loss_sum = row_loss.sum();
        active = row_active.sum();
        triplets = row_valid.sum();
        break;
      }
      case Mining::SemiHard: {
        auto [negs, neg_idx] = sorted_masked_rows(dd, neg_mask);
        at::Tensor contrib = at::zeros({B, R}, dbl), act = at::zeros({B, R}, lng), valid = at::zeros({B, R}, lng);
        Launch::template semihard<scalar_t>(d, rows, soft, negs.const_data_ptr<double>(),
                                            neg_idx.const_data_ptr<int64_t>(), n_neg.const_data_ptr<int64_t>(),
                                            contrib.data_ptr<double>(), act.data_ptr<int64_t>(),
                                            valid.data_ptr<int64_t>(), g);
        loss_sum = contrib.sum();
        active = act.sum();
        triplets = valid.sum();
        break;
      }
    }
  });

  // reduction_scale() evaluated on the device: an empty denominator gives loss 0 and zero gradient.
  const at::Tensor denom = reduction == Reduction::MeanNonzero ? active.to(at::kDouble)
                           : reduction == Reduction::Mean      ? triplets.to(at::kDouble)
                                                               : at::ones({}, dbl);
  const at::Tensor scale = at::where(denom > 0, 1.0 / denom.clamp_min(1.0), at::zeros({}, dbl));
  grad.mul_(scale.to(dist.scalar_type()));
  return {(loss_sum * scale).to(dist.scalar_type()), active, triplets, grad};
}

}  // namespace ssml_fast
