#pragma once
#include <cmath>
#include <cstdint>
#include "common/hd.h"

namespace ssml_fast {

enum class Mining : int { All = 0, Hard = 1, SemiHard = 2 };
enum class Reduction : int { MeanNonzero = 0, Mean = 1, Sum = 2 };

// Loss of one triplet from its violation v = d_ap - d_an + margin, and dloss/dv.
// Hinge: relu(v) with gradient 0 at v = 0 (torch's convention). Soft: softplus(v) with torch's
// threshold of 20, so values agree with torch.nn.functional.softplus.
template <typename T>
SSML_HD T triplet_term(T v, bool soft, T* dloss_dv) {
  if (soft) {
    if (v > T(20)) { *dloss_dv = T(1); return v; }
    T e = exp(v);
    *dloss_dv = e / (T(1) + e);
    return log1p(e);
  }
  *dloss_dv = v > T(0) ? T(1) : T(0);
  return v > T(0) ? v : T(0);
}

// Number of entries of the ascending array a[0, n) that are < x (lower bound).
template <typename T>
SSML_HD int64_t count_less(const T* a, int64_t n, T x) {
  int64_t lo = 0, hi = n;
  while (lo < hi) {
    int64_t mid = lo + (hi - lo) / 2;
    if (a[mid] < x) lo = mid + 1; else hi = mid;
  }
  return lo;
}

// Number of entries of the ascending array a[0, n) that are <= x (upper bound).
template <typename T>
SSML_HD int64_t count_less_equal(const T* a, int64_t n, T x) {
  int64_t lo = 0, hi = n;
  while (lo < hi) {
    int64_t mid = lo + (hi - lo) / 2;
    if (a[mid] <= x) lo = mid + 1; else hi = mid;
  }
  return lo;
}

// Batch-all, one positive of one anchor. negs[0, n_neg) are the anchor's negative distances sorted
// ascending, neg_prefix[k] = sum of the first k of them (neg_prefix[0] = 0), q = d_ap + margin.
// A triplet is active iff d_an < q; its loss is q - d_an. Returns the summed loss of this positive's
// triplets and writes how many are active (which is also dloss/dd_ap).
template <typename Acc>
SSML_HD Acc batch_all_positive(const Acc* negs, const Acc* neg_prefix, int64_t n_neg, Acc q,
                               int64_t* active) {
  int64_t c = count_less(negs, n_neg, q);
  *active = c;
  return static_cast<Acc>(c) * q - neg_prefix[c];
}

// Batch-all, one negative of one anchor: how many of the anchor's triplets through this negative are
// active, i.e. #{positives with q > d_an}, given qs[0, n_pos) = sorted (d_ap + margin). That count,
// negated, is dloss/dd_an.
template <typename Acc>
SSML_HD int64_t batch_all_negative(const Acc* qs, int64_t n_pos, Acc d_an) {
  return n_pos - count_less_equal(qs, n_pos, d_an);
}

// "a is a better maximum than b": larger value, ties to the lower index, so every backend picks
// the same hardest positive.
template <typename T>
SSML_HD bool better_max(T va, int64_t ia, T vb, int64_t ib) {
  return va > vb || (va == vb && ia < ib);
}
template <typename T>
SSML_HD bool better_min(T va, int64_t ia, T vb, int64_t ib) {
  return va < vb || (va == vb && ia < ib);
}

}  // namespace ssml_fast
