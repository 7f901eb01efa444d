#pragma once
// Per-row steps of k-reciprocal re-ranking shared by the CPU kernel (cpu/rerank_cpu.cpp), the CUDA kernels
// (cuda/rerank_cuda.cu) and the CUDA algorithm run with CPU loops (cpu/rerank_gpu_algorithm_cpu.cpp). Plain
// pointers only; each body handles one row (or one query/gallery pair) so a CPU loop or one GPU thread runs it.
//
// Sparse rows live in fixed-capacity arrays: row i of a (n, cap) array starts at i * cap and holds cnt[i]
// entries, columns ascending. The capacities follow from k1 (see rerank_expanded_capacity), so no pass has to
// count before it fills and the GPU path needs no host synchronisation to size its buffers.
#include <cmath>
#include <cstdint>
#include <cstring>

#include "common/contextual_math.h"  // half_round_even
#include "common/hd.h"

namespace ssml_fast {

// Beyond this many neighbours a membership test binary-searches a sorted copy of the list instead of scanning.
constexpr int64_t kRerankScanMax = 48;

// Bound on |expanded k-reciprocal set| for lists of L = min(k1 + 1, n) and Lh = min(round(k1 / 2) + 1, n)
// neighbours. R(i) has at most L members. A member's set H(c) (at most Lh members) is merged only when more
// than 2/3 of it is already in R(i), i.e. common > 2/3 hn, so it brings at most hn - common < hn / 3 new
// members: at most floor((hn - 1) / 3) <= floor((Lh - 1) / 3). With at most L merges:
//   |E(i)| <= L + L * floor((Lh - 1) / 3)   (k1 = 20: 21 + 21 * 3 = 84), and never more than n.
SSML_HD int64_t rerank_expanded_capacity(int64_t L, int64_t len_half, int64_t n) {
  const int64_t c = L + L * ((len_half - 1) / 3);
  return c < n ? c : n;
}

// The local query expansion's row is the union of k2 rows of V: at most k2 * capV columns, and at most n.
SSML_HD int64_t rerank_expansion_capacity(int64_t k2, int64_t cap_v, int64_t n) {
  const int64_t c = k2 * cap_v;
  return c < n ? c : n;
}

template <typename T>
SSML_HD T rerank_dot(const T* a, const T* b, int64_t d) {
  T s0 = 0, s1 = 0, s2 = 0, s3 = 0;
  int64_t t = 0;
  for (; t + 4 <= d; t += 4) {
    s0 += a[t] * b[t];
    s1 += a[t + 1] * b[t + 1];
    s2 += a[t + 2] * b[t + 2];
    s3 += a[t + 3] * b[t + 3];
  }
  for (; t < d; ++t) s0 += a[t] * b[t];
  return (s0 + s1) + (s2 + s3);
}

// Squared distance from squared norms and the Gram entry, clamped at 0 (the caller zeroes the diagonal).
// 2 * gram is exact, so a fused multiply-add gives the same value.
template <typename T>
SSML_HD T rerank_sqdist(T si, T sj, T gram) {
  const T v = si + sj - T(2) * gram;
  return v > T(0) ? v : T(0);
}

// Entry (i, j) of a distance tile from its Gram entry: 0 on the diagonal and between exact copies (rep: each
// row's lowest-index copy), whose GEMM-form value is only rounding noise.
template <typename T>
SSML_HD T rerank_tile_sqdist_entry(T gram, const T* sq, const int64_t* rep, int64_t i, int64_t j) {
  return i == j || rep[i] == rep[j] ? T(0) : rerank_sqdist(sq[i], sq[j], gram);
}

// Query i and gallery row j (joint row q + j) that are exact copies are at re-ranked distance 0: their distance
// rows are identical, so only the index tie rule separates their neighbourhoods.
SSML_HD void rerank_zero_copy_entry(const int64_t* rep, int64_t q, int64_t g, int64_t i, int64_t j, float* out) {
  if (rep[i] == rep[q + j]) out[i * g + j] = 0.f;
}

// Unique int64 sort key of a float32 distance v >= 0 at column j: ordering the keys orders by (v, j), so a
// top-k selection on them needs no tie rule of its own (the CPU kernel's order: equal distances to the lower
// column). A non-negative float's bit pattern is monotone in its value.
SSML_HD int64_t rerank_order_key(float v, int64_t j) {
  uint32_t bits;
  memcpy(&bits, &v, sizeof bits);
  return (static_cast<int64_t>(bits) << 32) | j;
}

// lambda * dn(i, j) as the output's original-distance part: d / row max, 0 for a row whose max is 0.
template <typename T>
SSML_HD float rerank_scaled_dist(T d, T row_max, float lam) {
  const T scale = row_max > T(0) ? T(1) / row_max : T(0);
  return lam * static_cast<float>(d * scale);
}

// Is i among the first len entries of row j of nn (n, L)? sorted: (n, len) rows of nn sorted ascending,
// or null to scan.
SSML_HD bool rerank_lists(const int32_t* nn, const int32_t* sorted, int64_t L, int64_t len, int64_t j, int64_t i) {
  if (sorted != nullptr) {
    const int32_t* s = sorted + j * len;
    int64_t lo = 0, hi = len;
    while (lo < hi) {
      const int64_t mid = (lo + hi) / 2;
      if (s[mid] < i) lo = mid + 1;
      else hi = mid;
    }
    return lo < len && s[lo] == i;
  }
  const int32_t* list = nn + j * L;
  for (int64_t r = 0; r < len; ++r)
    if (list[r] == i) return true;
  return false;
}

// Row i of the mutual-neighbour set of size parameter len: {j in nn[i, :len] : i in nn[j, :len]}, in nn[i]'s
// order, written to out_row (capacity len). Returns its size.
SSML_HD int32_t rerank_reciprocal_row(int64_t i, const int32_t* nn, const int32_t* sorted, int64_t L, int64_t len,
                                      int32_t* out_row) {
  int32_t c = 0;
  for (int64_t r = 0; r < len; ++r) {
    const int32_t j = nn[i * L + r];
    if (rerank_lists(nn, sorted, L, len, j, i)) out_row[c++] = j;
  }
  return c;
}

// Membership of the current row's R(i) and expanded set by scanning them (bounded, no O(n) scratch): the GPU
// path's choice. The CPU kernel passes stamp arrays with the same interface.
struct RerankScanMarks {
  const int32_t* R;
  int32_t rn;
  SSML_HD void add_r(int32_t) {}
  SSML_HD bool in_r(int32_t j) const {
    for (int32_t t = 0; t < rn; ++t)
      if (R[t] == j) return true;
    return false;
  }
  SSML_HD bool in_e(int32_t j, const int32_t* members, int32_t m) const {
    for (int32_t t = 0; t < m; ++t)
      if (members[t] == j) return true;
    return false;
  }
  SSML_HD void add_e(int32_t) {}
};

// Expanded k-reciprocal set of row i (unsorted) into members (capacity cap): R(i) = R[0, rn), then for each
// c in R(i) its half-size set H(c) (hset (n, len_half), hcnt) when |H(c) ∩ R(i)| > 2/3 |H(c)|, computed in
// the numpy code's double expression. Returns its size.
template <typename Marks>
SSML_HD int32_t rerank_expand_row(const int32_t* R, int32_t rn, const int32_t* hset, const int32_t* hcnt,
                                  int64_t len_half, Marks& marks, int32_t* members, int64_t cap) {
  int32_t m = 0;
  for (int32_t c = 0; c < rn; ++c) {
    marks.add_r(R[c]);
    members[m++] = R[c];
  }
  for (int32_t c = 0; c < rn; ++c) {
    const int32_t* H = hset + static_cast<int64_t>(R[c]) * len_half;
    const int32_t hn = hcnt[R[c]];
    int32_t common = 0;
    for (int32_t t = 0; t < hn; ++t) common += marks.in_r(H[t]);
    if (static_cast<double>(common) > 2. / 3 * static_cast<double>(hn)) {
      for (int32_t t = 0; t < hn; ++t) {
        // m < cap always holds by rerank_expanded_capacity; the test only keeps a wrong bound from writing out of range.
        if (m < cap && !marks.in_e(H[t], members, m)) {
          marks.add_e(H[t]);
          members[m++] = H[t];
        }
      }
    }
  }
  return m;
}

SSML_HD void rerank_insertion_sort(int32_t* a, int32_t m) {
  for (int32_t t = 1; t < m; ++t) {
    const int32_t v = a[t];
    int32_t p = t;
    while (p > 0 && a[p - 1] > v) {
      a[p] = a[p - 1];
      --p;
    }
    a[p] = v;
  }
}

// Row i of V from its sorted expanded set: exp(-dn(i, j)) normalised to sum 1 (sum in double, in column order).
// dist(i, j) -> dn(i, j) as double; w: scratch of m doubles.
template <typename Dist>
SSML_HD void rerank_weights_row(int64_t i, const int32_t* members, int32_t m, const Dist& dist, double* w,
                                int32_t* cols, float* vals) {
  double total = 0;
  for (int32_t t = 0; t < m; ++t) {
    w[t] = exp(-dist(i, members[t]));
    total += w[t];
  }
  for (int32_t t = 0; t < m; ++t) {
    cols[t] = members[t];
    vals[t] = static_cast<float>(w[t] / total);
  }
}

// dn(i, j) from the features: squared distance through rerank_dot, divided by row i's max.
template <typename T>
struct RerankFeatureDist {
  const T* X;
  const T* sq;
  const T* row_max;
  int64_t d;
  SSML_HD double operator()(int64_t i, int64_t j) const {
    const T mx = row_max[i];
    if (!(mx > T(0))) return 0.0;
    const T s = i == j ? T(0) : rerank_sqdist(sq[i], sq[j], rerank_dot(X + i * d, X + j * d, d));
    return static_cast<double>(s / mx);
  }
};

// Row normaliser of the top-K entry point: the largest listed distance (clamped at 0).
template <typename T>
SSML_HD T rerank_topk_row_max(const T* D, int64_t K, int64_t i) {
  const T v = D[i * K + K - 1];
  return v > T(0) ? v : T(0);
}

// dn(i, j) from top-K lists D, I (n, K) given j's position r in row i's list (-1: not listed): the listed
// distance / row max; a pair missing from row i's list is at the row max (dn = 1).
template <typename T>
SSML_HD double rerank_topk_dist(const T* D, int64_t K, int64_t i, int64_t r) {
  const T mx = rerank_topk_row_max(D, K, i);
  if (!(mx > T(0))) return 0.0;
  if (r < 0) return 1.0;
  const T v = D[i * K + r];
  return static_cast<double>((v > T(0) ? v : T(0)) / mx);
}

// rerank_topk_dist with j's position found by binary search in row i's list sorted by index (the GPU path; the
// CPU uses a stamp array). sorted_idx, sorted_pos (n, K): each row of I sorted ascending, and where each came from.
template <typename T>
struct RerankTopkSortedDist {
  const T* D;
  const int64_t* sorted_idx;
  const int64_t* sorted_pos;
  int64_t K;
  SSML_HD double operator()(int64_t i, int64_t j) const {
    const int64_t* s = sorted_idx + i * K;
    int64_t lo = 0, hi = K;
    while (lo < hi) {
      const int64_t mid = (lo + hi) / 2;
      if (s[mid] < j) lo = mid + 1;
      else hi = mid;
    }
    return rerank_topk_dist(D, K, i, lo < K && s[lo] == j ? sorted_pos[i * K + lo] : int64_t(-1));
  }
};

// Local query expansion of row i: the mean of the V rows of i's first k2 neighbours (nn (n, L)), as a k2-way
// merge of those sorted rows. Each column's sum is taken in neighbour order in double, as a dense accumulator
// visited row by row would. heads: scratch of k2 ints. V: (n, cap_in) with cnt; out: capacity cap_out.
SSML_HD int32_t rerank_query_expand_row(int64_t i, const int32_t* nn, int64_t L, int64_t k2, const int32_t* cols,
                                        const float* vals, const int32_t* cnt, int64_t cap_in, int32_t* heads,
                                        int32_t* out_cols, float* out_vals, int64_t cap_out) {
  for (int64_t r = 0; r < k2; ++r) heads[r] = 0;
  int32_t m = 0;
  while (m < cap_out) {
    int32_t cmin = -1;
    for (int64_t r = 0; r < k2; ++r) {
      const int64_t h = nn[i * L + r];
      if (heads[r] < cnt[h]) {
        const int32_t c = cols[h * cap_in + heads[r]];
        if (cmin < 0 || c < cmin) cmin = c;
      }
    }
    if (cmin < 0) break;
    double acc = 0;
    for (int64_t r = 0; r < k2; ++r) {
      const int64_t h = nn[i * L + r];
      if (heads[r] < cnt[h] && cols[h * cap_in + heads[r]] == cmin) {
        acc += vals[h * cap_in + heads[r]];
        ++heads[r];
      }
    }
    out_cols[m] = cmin;
    out_vals[m] = static_cast<float>(acc / static_cast<double>(k2));
    ++m;
  }
  return m;
}

// m = sum over common columns of min(a_l, b_l), in ascending column order (the order in which the CPU kernel's
// inverted index adds them, so the float sums agree bit for bit).
SSML_HD float rerank_min_overlap(const int32_t* ac, const float* av, int32_t an, const int32_t* bc, const float* bv,
                                 int32_t bn) {
  float acc = 0.f;
  int32_t s = 0, t = 0;
  while (s < an && t < bn) {
    if (ac[s] < bc[t]) {
      ++s;
    } else if (bc[t] < ac[s]) {
      ++t;
    } else {
      acc += bv[t] < av[s] ? bv[t] : av[s];
      ++s;
      ++t;
    }
  }
  return acc;
}

// out = lambda * dn on entry; adds (1 - lambda) * jaccard, jaccard = 1 - m / (2 - m).
SSML_HD float rerank_combine(float o, float m, float w_jac) { return o + w_jac * (1.f - m / (2.f - m)); }

// ---- Argument bundles of the per-row steps, shared by the CUDA launchers and the CPU-loop launch policy. ----

struct RerankExpandArgs {
  int64_t n, L, len_half, cap;        // cap: rerank_expanded_capacity
  const int32_t* rset;                // (n, L) k-reciprocal sets, rcnt sizes
  const int32_t* rcnt;
  const int32_t* hset;                // (n, len_half) half-size sets, hcnt sizes
  const int32_t* hcnt;
  int32_t* members;                   // (n, cap) scratch
  double* w;                          // (n, cap) scratch
  int32_t* cols;                      // (n, cap) V, cnt sizes
  float* vals;
  int32_t* cnt;
};

// Row i of V with scanned membership and an insertion sort: the GPU path's body.
template <typename Dist>
SSML_HD void rerank_expand_weights_row(int64_t i, const RerankExpandArgs& a, const Dist& dist) {
  RerankScanMarks marks{a.rset + i * a.L, a.rcnt[i]};
  int32_t* members = a.members + i * a.cap;
  const int32_t m = rerank_expand_row(marks.R, marks.rn, a.hset, a.hcnt, a.len_half, marks, members, a.cap);
  rerank_insertion_sort(members, m);
  rerank_weights_row(i, members, m, dist, a.w + i * a.cap, a.cols + i * a.cap, a.vals + i * a.cap);
  a.cnt[i] = m;
}

struct RerankQueryExpandArgs {
  int64_t n, L, k2, cap_in, cap_out;
  const int32_t* nn;                  // (n, L)
  const int32_t* cols;                // (n, cap_in) V
  const float* vals;
  const int32_t* cnt;
  int32_t* heads;                     // (n, k2) scratch
  int32_t* out_cols;                  // (n, cap_out)
  float* out_vals;
  int32_t* out_cnt;
};

SSML_HD void rerank_query_expand_row_args(int64_t i, const RerankQueryExpandArgs& a) {
  a.out_cnt[i] = rerank_query_expand_row(i, a.nn, a.L, a.k2, a.cols, a.vals, a.cnt, a.cap_in, a.heads + i * a.k2,
                                         a.out_cols + i * a.cap_out, a.out_vals + i * a.cap_out, a.cap_out);
}

struct RerankJaccardArgs {
  int64_t q, g, cap;                  // rows [0, q) are queries, [q, q + g) gallery
  const int32_t* cols;                // (q + g, cap) final V
  const float* vals;
  const int32_t* cnt;
  float w_jac;                        // 1 - lambda
};

// out[i, j] (holding lambda * dn) += (1 - lambda) * jaccard(query i, gallery j).
SSML_HD void rerank_jaccard_entry(int64_t i, int64_t j, const RerankJaccardArgs& a, float* out) {
  const int64_t gj = a.q + j;
  const float m = rerank_min_overlap(a.cols + i * a.cap, a.vals + i * a.cap, a.cnt[i], a.cols + gj * a.cap,
                                     a.vals + gj * a.cap, a.cnt[gj]);
  out[i * a.g + j] = rerank_combine(out[i * a.g + j], m, a.w_jac);
}

// lambda * dn of a query row's pair missing from its list (dn = 1 unless the row max is 0).
template <typename T>
SSML_HD float rerank_topk_fill_value(const T* D, int64_t K, int64_t i, float lam) {
  return rerank_topk_row_max(D, K, i) > T(0) ? lam : 0.f;
}

// lambda * dn of the r-th listed pair of query row i, written when it is a gallery column.
template <typename T>
SSML_HD void rerank_topk_listed_entry(const T* D, const int64_t* I, int64_t K, int64_t q, int64_t g, int64_t i,
                                      int64_t r, float lam, float* out) {
  const int64_t j = I[i * K + r];
  if (j < q) return;
  const T v = D[i * K + r];
  out[i * g + (j - q)] = rerank_scaled_dist(v > T(0) ? v : T(0), rerank_topk_row_max(D, K, i), lam);
}

}  // namespace ssml_fast
