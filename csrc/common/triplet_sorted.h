#pragma once
// Per-entry bodies of the "sorted rows" triplet algorithm that the CUDA backend runs, one (i, j) entry
// per thread. The same bodies run on the CPU through cpu/triplet_sorted_cpu.cpp, so the tests execute
// this exact code (and the host orchestration in triplet_sorted_host.h) on machines without a GPU.
// The host works on chunks of rows: every (nb, R) buffer is row-major, entry k = i * R + j, local row i being
// global anchor row0 + i. dist and grad point at the chunk's first row.
#include <cstdint>
#include "common/hd.h"
#include "common/triplet_math.h"

namespace ssml_fast {

struct TripletRows {
  const int64_t* labels;      // (B,) all anchors' labels (global row index)
  const int64_t* ref_labels;  // (R,)
  int64_t B, R;               // B: rows of this chunk
  int64_t row0;               // global index of the chunk's first row
  bool exclude_diagonal;
  double margin;
};

SSML_HD bool triplet_is_positive(const TripletRows& r, int64_t i, int64_t j) {
  const int64_t gi = r.row0 + i;
  return r.ref_labels[j] == r.labels[gi] && !(r.exclude_diagonal && gi == j);
}

SSML_HD bool triplet_is_negative(const TripletRows& r, int64_t i, int64_t j) {
  return r.ref_labels[j] != r.labels[r.row0 + i];
}

// Number of positives whose q = d_ap + margin (in double, as the CPU kernel computes it) is > d_an, given
// pos[0, n_pos) the row's positive distances ascending: q is monotone in d_ap, so the sorted distances
// stand for sorted q and no (B, R) buffer of q is needed.
template <typename T>
SSML_HD int64_t batch_all_negative_sorted(const T* pos, int64_t n_pos, double margin, double d_an) {
  int64_t lo = 0, hi = n_pos;
  while (lo < hi) {
    const int64_t mid = lo + (hi - lo) / 2;
    if (static_cast<double>(pos[mid]) + margin <= d_an) lo = mid + 1; else hi = mid;
  }
  return n_pos - lo;
}

// count_less over a float array with a double bound: the CPU kernel compares double(d_an) < q.
template <typename T>
SSML_HD int64_t count_less_d(const T* a, int64_t n, double x) {
  int64_t lo = 0, hi = n;
  while (lo < hi) {
    const int64_t mid = lo + (hi - lo) / 2;
    if (static_cast<double>(a[mid]) < x) lo = mid + 1; else hi = mid;
  }
  return lo;
}

template <typename T>
SSML_HD int64_t count_less_equal_d(const T* a, int64_t n, double x) {
  int64_t lo = 0, hi = n;
  while (lo < hi) {
    const int64_t mid = lo + (hi - lo) / 2;
    if (static_cast<double>(a[mid]) <= x) lo = mid + 1; else hi = mid;
  }
  return lo;
}

// Batch-all. negs (nb, R): each row's negative distances ascending (dist's dtype), padded with +inf;
// prefix (nb, R + 1) double: their running sums from 0; pos (nb, R): each row's positive distances
// ascending, padded with +inf. Writes, for a positive entry, its summed loss (contrib) and active count,
// and for every entry the unscaled dloss/ddist (grad).
template <typename T>
SSML_HD void batch_all_entry(int64_t k, const T* dist, const TripletRows& r, const T* negs, const double* prefix,
                             const int64_t* n_neg, const T* pos, const int64_t* n_pos, double* contrib,
                             int64_t* active, T* grad) {
  const int64_t i = k / r.R, j = k - i * r.R;
  const double d = static_cast<double>(dist[k]);
  if (triplet_is_negative(r, i, j)) {
    grad[k] = static_cast<T>(-batch_all_negative_sorted(pos + i * r.R, n_pos[i], r.margin, d));
  } else if (triplet_is_positive(r, i, j)) {
    const double q = d + r.margin;
    const int64_t c = count_less_d(negs + i * r.R, n_neg[i], q);
    contrib[k] = static_cast<double>(c) * q - prefix[i * (r.R + 1) + c];
    active[k] = c;
    grad[k] = static_cast<T>(c);
  }
}

// Semi-hard. negs / neg_idx (nb, R): each row's negatives sorted by (distance, column), padded with +inf.
// For a positive entry, picks the nearest negative strictly farther and, if inside the margin, writes
// contrib / active / valid, the positive's dloss/ddist, and in choice[k] the negative's column (else -1).
// The negatives' gradients are gathered afterwards by semihard_scatter_row, in column order: no atomics,
// so the result is deterministic and equal to the CPU kernel's.
template <typename T>
SSML_HD void semihard_entry(int64_t k, const T* dist, const TripletRows& r, bool soft, const T* negs,
                            const int64_t* neg_idx, const int64_t* n_neg, double* contrib, int64_t* active,
                            int64_t* valid, int64_t* choice, T* grad) {
  const int64_t i = k / r.R, j = k - i * r.R;
  choice[k] = -1;
  if (!triplet_is_positive(r, i, j)) return;
  const double p = static_cast<double>(dist[k]);
  const T* row = negs + i * r.R;
  const int64_t first_farther = count_less_equal_d(row, n_neg[i], p);
  if (first_farther == n_neg[i] || !(static_cast<double>(row[first_farther]) < p + r.margin)) return;
  double dv = 0;
  const double loss = triplet_term<double>(p - static_cast<double>(row[first_farther]) + r.margin, soft, &dv);
  contrib[k] = loss;
  active[k] = loss > 0;
  valid[k] = 1;
  grad[k] = static_cast<T>(dv);
  choice[k] = neg_idx[i * r.R + first_farther];
}

// Row i: each chosen negative's gradient -= the dloss/ddist of the positives that chose it, positives in
// ascending column order (the CPU kernel's order, so the float sums agree bit for bit).
template <typename T>
SSML_HD void semihard_scatter_row(int64_t i, int64_t R, const int64_t* choice, T* grad) {
  T* g = grad + i * R;
  const int64_t* c = choice + i * R;
  for (int64_t j = 0; j < R; ++j)
    if (c[j] >= 0) g[c[j]] -= g[j];
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
  if (triplet_is_negative(r, i, j)) keep_better<T, false>(neg, Best<T>{d, j});
  else if (triplet_is_positive(r, i, j)) keep_better<T, true>(pos, Best<T>{d, j});
}

// Writes row i's loss, active and valid flags and its two dloss/ddist entries (grad is zero on entry).
// row_* point at the chunk's first row.
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
