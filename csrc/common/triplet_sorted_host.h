#pragma once
// Host side of the "sorted rows" triplet algorithm (the CUDA backend's): masks, per-row segmented sorts
// and reductions through ATen, per-entry work through `Launch` (CUDA kernels, or CPU loops over the same
// bodies for tests). No host synchronisation: the reduction scale is computed on the device.
//
// Memory: rows are processed in chunks of about 2^22 entries, so the temporaries (sorted rows in dist's
// dtype, their sort indices, a double prefix sum and per-entry partial results) stay near 150 MB whatever
// B and R are; only grad (B, R) is full size, as the op returns it.
#include <algorithm>
#include <limits>
#include <tuple>

#include <ATen/Dispatch.h>
#include <ATen/TensorOperators.h>
#include <ATen/core/Tensor.h>
#include <ATen/ops/any.h>
#include <ATen/ops/arange.h>
#include <ATen/ops/cat.h>
#include <ATen/ops/full.h>
#include <ATen/ops/isnan.h>
#include <ATen/ops/ones.h>
#include <ATen/ops/sort.h>
#include <ATen/ops/where.h>
#include <ATen/ops/zeros.h>
#include <ATen/ops/zeros_like.h>

#include "common/triplet_inputs.h"
#include "common/triplet_sorted.h"

namespace ssml_fast {

// Rows of `values` (nb, R) where `mask` holds, ascending by (value, column), padded with +inf.
inline std::tuple<at::Tensor, at::Tensor> sorted_masked_rows(const at::Tensor& values, const at::Tensor& mask) {
  auto [sorted, idx] = at::sort(at::where(mask, values, std::numeric_limits<double>::infinity()), /*stable=*/true,
                                /*dim=*/1, /*descending=*/false);
  return {sorted, idx};
}

// Rows per chunk: about 4M entries.
inline int64_t triplet_chunk_rows(int64_t B, int64_t R) {
  return std::clamp<int64_t>((int64_t(1) << 22) / std::max<int64_t>(R, 1), 1, std::max<int64_t>(B, 1));
}

template <typename Launch>
std::tuple<at::Tensor, at::Tensor, at::Tensor, at::Tensor> triplet_sorted_impl(
    const at::Tensor& dist_in, const at::Tensor& labels_in, const at::Tensor& ref_labels_in, bool exclude_diagonal,
    double margin, c10::string_view mining_s, c10::string_view reduction_s, bool soft) {
  const auto [dist, labels, ref_labels, B, R, mining, reduction] =
      prepare_triplet_inputs(dist_in, labels_in, ref_labels_in, mining_s, reduction_s);
  const auto dbl = dist.options().dtype(at::kDouble);
  const auto lng = labels.options();

  at::Tensor grad = at::zeros_like(dist);
  at::Tensor loss_sum = at::zeros({}, dbl), active = at::zeros({}, lng), triplets = at::zeros({}, lng);
  at::Tensor any_nan = at::zeros({}, lng.dtype(at::kBool));
  const int64_t C = triplet_chunk_rows(B, R);
  const at::Tensor cols = at::arange(R, lng).unsqueeze(0);
  AT_DISPATCH_FLOATING_TYPES(dist.scalar_type(), "triplet_sorted", [&] {
    for (int64_t b0 = 0; b0 < B; b0 += C) {
      const int64_t nb = std::min(C, B - b0);
      const TripletRows rows{labels.const_data_ptr<int64_t>(), ref_labels.const_data_ptr<int64_t>(), nb, R, b0,
                             exclude_diagonal, margin};
      const at::Tensor d_c = dist.narrow(0, b0, nb);
      const at::Tensor same = labels.narrow(0, b0, nb).unsqueeze(1) == ref_labels.unsqueeze(0);
      at::Tensor pos_mask = same;
      if (exclude_diagonal) pos_mask = same & (at::arange(b0, b0 + nb, lng).unsqueeze(1) != cols);
      const at::Tensor neg_mask = ~same;
      const at::Tensor n_pos = pos_mask.sum(1), n_neg = neg_mask.sum(1);
      // A NaN among the positives or negatives of an anchor with a valid triplet poisons that anchor (the
      // CPU kernel's rule): its loss and its gradient entries become NaN and it counts as not active.
      const at::Tensor considered = pos_mask | neg_mask;
      const at::Tensor nan_row = (at::isnan(d_c) & considered).any(1) & (n_pos > 0) & (n_neg > 0);
      const scalar_t* d = d_c.const_data_ptr<scalar_t>();
      scalar_t* g = grad.narrow(0, b0, nb).data_ptr<scalar_t>();
      switch (mining) {
        case Mining::All: {
          const at::Tensor negs = std::get<0>(sorted_masked_rows(d_c, neg_mask));
          const at::Tensor pos = std::get<0>(sorted_masked_rows(d_c, pos_mask));
          // Padding (+inf) only follows a row's n_neg real entries, and prefix[c] is read for c <= n_neg.
          const at::Tensor prefix = at::cat({at::zeros({nb, 1}, dbl), negs.to(at::kDouble).cumsum(1)}, 1);
          at::Tensor contrib = at::zeros({nb, R}, dbl), act = at::zeros({nb, R}, lng);
          Launch::template batch_all<scalar_t>(d, rows, negs.const_data_ptr<scalar_t>(), prefix.const_data_ptr<double>(),
                                               n_neg.const_data_ptr<int64_t>(), pos.const_data_ptr<scalar_t>(),
                                               n_pos.const_data_ptr<int64_t>(), contrib.data_ptr<double>(),
                                               act.data_ptr<int64_t>(), g);
          loss_sum += contrib.sum();
          active += act.masked_fill_(nan_row.unsqueeze(1), 0).sum();
          triplets += (n_pos * n_neg).sum();
          break;
        }
        case Mining::Hard: {
          at::Tensor row_loss = at::zeros({nb}, dbl), row_active = at::zeros({nb}, lng),
                     row_valid = at::zeros({nb}, lng);
          Launch::template batch_hard<scalar_t>(d, rows, soft, row_loss.data_ptr<double>(),
                                                row_active.data_ptr<int64_t>(), row_valid.data_ptr<int64_t>(), g);
          loss_sum += row_loss.sum();
          active += row_active.masked_fill_(nan_row, 0).sum();
          triplets += row_valid.sum();
          break;
        }
        case Mining::SemiHard: {
          auto [negs, neg_idx] = sorted_masked_rows(d_c, neg_mask);
          at::Tensor contrib = at::zeros({nb, R}, dbl), act = at::zeros({nb, R}, lng),
                     valid = at::zeros({nb, R}, lng), choice = at::empty({nb, R}, lng);
          Launch::template semihard<scalar_t>(d, rows, soft, negs.const_data_ptr<scalar_t>(),
                                              neg_idx.const_data_ptr<int64_t>(), n_neg.const_data_ptr<int64_t>(),
                                              contrib.data_ptr<double>(), act.data_ptr<int64_t>(),
                                              valid.data_ptr<int64_t>(), choice.data_ptr<int64_t>(), g);
          loss_sum += contrib.sum();
          active += act.masked_fill_(nan_row.unsqueeze(1), 0).sum();
          triplets += valid.masked_fill_(nan_row.unsqueeze(1), 0).sum();
          break;
        }
      }
      grad.narrow(0, b0, nb).masked_fill_(nan_row.unsqueeze(1) & considered, std::numeric_limits<double>::quiet_NaN());
      any_nan |= nan_row.any();
    }
  });

  // reduction_scale() evaluated on the device: an empty denominator gives loss 0 and zero gradient.
  const at::Tensor denom = reduction == Reduction::MeanNonzero ? active.to(at::kDouble)
                           : reduction == Reduction::Mean      ? triplets.to(at::kDouble)
                                                               : at::ones({}, dbl);
  const at::Tensor scale = at::where(denom > 0, 1.0 / denom.clamp_min(1.0), at::zeros({}, dbl));
  grad.mul_(scale.to(dist.scalar_type()));
  loss_sum = at::where(any_nan, std::numeric_limits<double>::quiet_NaN(), loss_sum * scale);
  return {loss_sum.to(dist.scalar_type()), active, triplets, grad};
}

}  // namespace ssml_fast
