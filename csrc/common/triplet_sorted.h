#pragma once
// Per-entry bodies of the "sorted rows" triplet algorithm that the CUDA backend runs, one (i, j) entry
// per thread. The same bodies run on the CPU through cpu/triplet_sorted_cpu.cpp, so the tests execute
// this exact code (and the host orchestration in triplet_sorted_host.h) on machines without a GPU.
// Every (B, R) buffer is row-major, entry k = i * R + j.
#include <cstdint>
#include "common/hd.h"
#include "common/triplet_math.h"

namespace ssml_fast {

struct TripletRows {
  const int64_t* labels;      // (B,)
  const int64_t* ref_labels;  // (R,)
  int64_t B, R;
  bool exclude_diagonal;
  double margin;
};

SSML_HD bool triplet_is_positive(const TripletRows& r, int64_t i, int64_t j) {
  return r.ref_labels[j] == r.labels[i] && !(r.exclude_diagonal && i == j);
}

// Batch-all. negs (B, R): each row's negative distances ascending, padded with +inf; prefix (B, R + 1):
// their running sums from 0; qs (B, R): each row's (d_ap + margin) ascending, padded with +inf.
// Writes, for a positive entry, its summed loss (contrib) and active count, and for every entry the
// unscaled dloss/ddist (grad).
template <typename T>
SSML_HD void batch_all_entry(int64_t k, const T* dist, const TripletRows& r, const double* negs,
                             const double* prefix, const int64_t* n_neg, const double* qs, const int64_t* n_pos,
                             double* contrib, int64_t* active, T* grad) {
  const int64_t i = k / r.R, j = k - i * r.R;
  const double d = static_cast<double>(dist[k]);
  if (r.ref_labels[j] != r.labels[i]) {
    grad[k] = static_cast<T>(-batch_all_negative(qs + i * r.R, n_pos[i], d));
  } else if (triplet_is_positive(r, i, j)) {
    int64_t c = 0;
    contrib[k] = batch_all_positive(negs + i * r.R, prefix + i * (r.R + 1), n_neg[i], d + r.margin, &c);
    active[k] = c;
    grad[k] = static_cast<T>(c);
  }
}

// Semi-hard. negs / neg_idx (B, R): each row's negatives sorted by (distance, column), padded with +inf.
// For a positive entry, picks the nearest negative strictly farther and, if inside the margin, writes
// contrib / active / valid and dloss/ddist. `add(ptr, v)` accumulates into the negative's gradient,
// which several positives of a row may share (an atomic add on the GPU).
template <typename T, typename Add>
SSML_HD void semihard_entry(int64_t k, const T* dist, const TripletRows& r, bool soft, const double* negs,
                            const int64_t* neg_idx, const int64_t* n_neg, double* contrib, int64_t* active,
                            int64_t* valid, T* grad, Add add) {
  const int64_t i = k / r.R, j = k - i * r.R;
  if (!triplet_is_positive(r, i, j)) return;
  const double p = static_cast<double>(dist[k]);
  const double* row = negs + i * r.R;
  const int64_t first_farther = count_less_equal(row, n_neg[i], p);
  if (first_farther == n_neg[i] || !(row[first_farther] < p + r.margin)) return;
  double dv = 0;
  const double loss = triplet_term<double>(p - row[first_farther] + r.margin, soft, &dv);
  contrib[k] = loss;
  active[k] = loss > 0;
  valid[k] = 1;
  grad[k] = static_cast<T>(dv);
  add(grad + i * r.R + neg_idx[i * r.R + first_farther], static_cast<T>(-dv));
}

// Batch-hard: the running best (value, column) of a row; -1 means none yet.
template <typename T>
struct Best {
  T v;
  int64_t j;
};

template <typename T, bool kMax>
SSML_HD void keep_better(Best<T>& a, const Best<T>& b) {
  if (b.j < 0) return;
  const bool better = kMax ? better_max(b.v, b.j, a.v, a.j) : better_min(b.v, b.j, a.v, a.j);
  if (a.j < 0 || better) a = b;
}

// Folds entry j of row i into the row's hardest positive (max) and hardest negative (min).
template <typename T>
SSML_HD void batch_hard_visit(const T* dist, const TripletRows& r, int64_t i, int64_t j, Best<T>& pos, Best<T>& neg) {
  const T d = dist[i * r.R + j];
  if (r.ref_labels[j] != r.labels[i]) keep_better<T, false>(neg, Best<T>{d, j});
  else if (triplet_is_positive(r, i, j)) keep_better<T, true>(pos, Best<T>{d, j});
}

// Writes row i's loss, active and valid flags and its two dloss/ddist entries (grad is zero on entry).
template <typename T>
SSML_HD void batch_hard_finish(const TripletRows& r, bool soft, int64_t i, const Best<T>& pos, const Best<T>& neg,
                               double* row_loss, int64_t* row_active, int64_t* row_valid, T* grad) {
  if (pos.j < 0 || neg.j < 0) {
    row_loss[i] = 0;
    row_active[i] = 0;
    row_valid[i] = 0;
    return;
  }
  double dv = 0;
  const double loss = triplet_term<double>(static_cast<double>(pos.v) - static_cast<double>(neg.v) + r.margin, soft, &dv);
  row_loss[i] = loss;
  row_active[i] = loss > 0;
  row_valid[i] = 1;
  grad[i * r.R + pos.j] = static_cast<T>(dv);
  grad[i * r.R + neg.j] = static_cast<T>(-dv);
}

}  // namespace ssml_fast
