// CPU backend of triplet_margin_loss_from_dist: one pass over each anchor's row of the (B, R)
// distance matrix, writing the loss and dloss/ddist together. No triplet is ever materialised.
#include <algorithm>
#include <bit>
#include <type_traits>
#include <limits>
#include <vector>

#include <ATen/Dispatch.h>
#include <ATen/Parallel.h>
#include <ATen/ops/empty.h>
#include <ATen/ops/scalar_tensor.h>
#include <ATen/ops/zeros_like.h>
#include <torch/library.h>

#include "common/triplet_inputs.h"
#include "common/triplet_math.h"
#include "common/triplet_reduce.h"

namespace ssml_fast {
namespace {

// Below this many positives per anchor a direct P x N scan beats sorting the negatives.
constexpr int64_t kDirectMaxPositives = 24;

struct RowOut {
  double loss = 0;
  int64_t active = 0;
  int64_t triplets = 0;
};

struct Scratch {
  std::vector<double> pos;       // positive distances
  std::vector<int64_t> pos_idx;  // their columns
  std::vector<double> vals;      // sorted candidate negatives / sorted q
  std::vector<double> prefix;
  std::vector<std::pair<double, int64_t>> pairs;
  std::vector<int64_t> counts;
  std::vector<double> sums;
};

template <typename T>
RowOut batch_all_row(const T* d, const int64_t* ref_labels, int64_t R, int64_t li, int64_t self, double m,
                     T* g, Scratch& s) {
  RowOut out;
  s.pos.clear();
  s.pos_idx.clear();
  int64_t n_neg = 0;
  for (int64_t j = 0; j < R; ++j) {
    if (ref_labels[j] != li) { ++n_neg; continue; }
    if (j == self) continue;
    s.pos.push_back(static_cast<double>(d[j]) + m);  // q = d_ap + margin
    s.pos_idx.push_back(j);
  }
  const int64_t P = static_cast<int64_t>(s.pos.size());
  if (P == 0 || n_neg == 0) return out;
  out.triplets = P * n_neg;

  if (P <= kDirectMaxPositives) {
    s.counts.assign(P, 0);
    s.sums.assign(P, 0.0);
    for (int64_t j = 0; j < R; ++j) {
      if (ref_labels[j] == li) continue;
      const double n = d[j];
      int64_t c = 0;
      for (int64_t k = 0; k < P; ++k) {
        if (n < s.pos[k]) { ++c; ++s.counts[k]; s.sums[k] += n; }
      }
      g[j] = static_cast<T>(-c);
    }
    for (int64_t k = 0; k < P; ++k) {
      out.loss += static_cast<double>(s.counts[k]) * s.pos[k] - s.sums[k];
      out.active += s.counts[k];
      g[s.pos_idx[k]] = static_cast<T>(s.counts[k]);
    }
    return out;
  }

  // Only negatives below the largest q can be inside any margin: sort just those.
  const double q_max = *std::max_element(s.pos.begin(), s.pos.end());
  s.vals.clear();
  for (int64_t j = 0; j < R; ++j)
    if (ref_labels[j] != li && static_cast<double>(d[j]) < q_max) s.vals.push_back(d[j]);
  std::sort(s.vals.begin(), s.vals.end());
  const int64_t nc = static_cast<int64_t>(s.vals.size());
  s.prefix.resize(nc + 1);
  s.prefix[0] = 0;
  for (int64_t k = 0; k < nc; ++k) s.prefix[k + 1] = s.prefix[k] + s.vals[k];
  for (int64_t k = 0; k < P; ++k) {
    int64_t c = 0;
    out.loss += batch_all_positive(s.vals.data(), s.prefix.data(), nc, s.pos[k], &c);
    out.active += c;
    g[s.pos_idx[k]] = static_cast<T>(c);
  }
  std::vector<double>& qs = s.sums;
  qs.assign(s.pos.begin(), s.pos.end());
  std::sort(qs.begin(), qs.end());
  for (int64_t j = 0; j < R; ++j) {
    if (ref_labels[j] == li) continue;
    g[j] = static_cast<T>(-batch_all_negative(qs.data(), P, static_cast<double>(d[j])));
  }
  return out;
}

template <typename T>
RowOut batch_hard_row(const T* d, const int64_t* ref_labels, int64_t R, int64_t li, int64_t self, double m,
                      bool soft, T* g) {
  RowOut out;
  int64_t jp = -1, jn = -1;
  T dp = 0, dn = 0;
  for (int64_t j = 0; j < R; ++j) {
    if (ref_labels[j] == li) {
      if (j != self && (jp < 0 || better_max(d[j], j, dp, jp))) { dp = d[j]; jp = j; }
    } else if (jn < 0 || better_min(d[j], j, dn, jn)) {
      dn = d[j];
      jn = j;
    }
  }
  if (jp < 0 || jn < 0) return out;
  double dv = 0;
  out.loss = triplet_term<double>(static_cast<double>(dp) - static_cast<double>(dn) + m, soft, &dv);
  out.active = out.loss > 0;
  out.triplets = 1;
  g[jp] += static_cast<T>(dv);
  g[jn] -= static_cast<T>(dv);
  return out;
}

template <typename T>
RowOut semihard_row(const T* d, const int64_t* ref_labels, int64_t R, int64_t li, int64_t self, double m,
                    bool soft, T* g, Scratch& s) {
  RowOut out;
  s.pos.clear();
  s.pos_idx.clear();
  double p_min = 0, q_max = 0;
  for (int64_t j = 0; j < R; ++j) {
    if (ref_labels[j] != li || j == self) continue;
    const double p = d[j];
    if (s.pos.empty() || p < p_min) p_min = p;
    if (s.pos.empty() || p + m > q_max) q_max = p + m;
    s.pos.push_back(p);
    s.pos_idx.push_back(j);
  }
  if (s.pos.empty()) return out;
  const int64_t P = static_cast<int64_t>(s.pos.size());
  auto emit = [&](int64_t k, double n, int64_t jn) {
    double dv = 0;
    const double loss = triplet_term<double>(s.pos[k] - n + m, soft, &dv);
    out.loss += loss;
    out.active += loss > 0;
    out.triplets += 1;
    g[s.pos_idx[k]] += static_cast<T>(dv);
    g[jn] -= static_cast<T>(dv);
  };
  if (P <= kDirectMaxPositives) {
    // Per positive, the nearest negative strictly farther; scanning columns upward with a strict
    // comparison keeps the lower column on ties, like the sorted path below.
    s.sums.assign(P, 0.0);
    s.counts.assign(P, -1);
    for (int64_t j = 0; j < R; ++j) {
      if (ref_labels[j] == li) continue;
      const double n = d[j];
      for (int64_t k = 0; k < P; ++k)
        if (n > s.pos[k] && (s.counts[k] < 0 || n < s.sums[k])) { s.sums[k] = n; s.counts[k] = j; }
    }
    for (int64_t k = 0; k < P; ++k)
      if (s.counts[k] >= 0 && s.sums[k] < s.pos[k] + m) emit(k, s.sums[k], s.counts[k]);
    return out;
  }
  // Candidates: negatives farther than the nearest positive and nearer than the farthest q.
  s.pairs.clear();
  for (int64_t j = 0; j < R; ++j) {
    const double n = d[j];
    if (ref_labels[j] != li && n > p_min && n < q_max) s.pairs.emplace_back(n, j);
  }
  std::sort(s.pairs.begin(), s.pairs.end());  // ties -> lower column first
  const int64_t nc = static_cast<int64_t>(s.pairs.size());
  s.vals.resize(nc);
  for (int64_t k = 0; k < nc; ++k) s.vals[k] = s.pairs[k].first;
  for (int64_t k = 0; k < P; ++k) {
    const double p = s.pos[k];
    const int64_t first_farther = count_less_equal(s.vals.data(), nc, p);
    if (first_farther < nc && s.vals[first_farther] < p + m)
      emit(k, s.vals[first_farther], s.pairs[first_farther].second);
  }
  return out;
}

// Whether d[0, R) holds a NaN, as one integer max over the magnitude bits (NaN is above inf's pattern):
// a reduction the compiler vectorises, unlike a chain of float compares OR-ed into a bool.
template <typename T>
bool row_has_nan(const T* d, int64_t R) {
  using U = std::conditional_t<sizeof(T) == 4, int32_t, int64_t>;
  constexpr U kMagnitude = std::numeric_limits<U>::max();  // all bits but the sign
  const U inf_bits = std::bit_cast<U>(std::numeric_limits<T>::infinity());
  U m = 0;
  for (int64_t j = 0; j < R; ++j) {
    const U b = std::bit_cast<U>(d[j]) & kMagnitude;
    m = b > m ? b : m;
  }
  return m > inf_bits;
}

// A NaN among an anchor's positive or negative distances, when the anchor has a valid triplet, makes its loss
// NaN whatever the mining (the plain formula max(0, d_ap - d_an + m) is NaN for such a triplet; comparisons
// would otherwise skip NaN silently and hide a diverged model from the trainer's finite-loss check). Its
// gradient entries become NaN too and it counts no active triplet; its valid triplets are counted as usual
// for "all" (P x N) and "hard" (1), and as none for "semihard" (which ones are semi-hard is undefined).
// Returns false (nothing written) for the usual row without NaN: one vectorisable scan.
template <typename T>
bool nan_row(const T* d, const int64_t* ref_labels, int64_t R, int64_t li, int64_t self, Mining mining, T* g,
             RowOut* out) {
  if (!row_has_nan(d, R)) return false;
  int64_t P = 0, N = 0;
  bool nan = false;
  for (int64_t j = 0; j < R; ++j) {
    if (j == self) continue;
    (ref_labels[j] == li ? P : N) += 1;
    nan |= d[j] != d[j];
  }
  if (!nan || P == 0 || N == 0) return false;
  out->loss = std::numeric_limits<double>::quiet_NaN();
  out->active = 0;
  out->triplets = mining == Mining::All ? P * N : mining == Mining::Hard ? 1 : 0;
  for (int64_t j = 0; j < R; ++j)
    if (j != self) g[j] = std::numeric_limits<T>::quiet_NaN();
  return true;
}

std::tuple<at::Tensor, at::Tensor, at::Tensor, at::Tensor> triplet_margin_loss_from_dist_cpu(
    const at::Tensor& dist_in, const at::Tensor& labels_in, const at::Tensor& ref_labels_in, bool exclude_diagonal,
    double margin, c10::string_view mining_s, c10::string_view reduction_s, bool soft) {
  const auto [dist, labels, ref_labels, B, R, mining, reduction] =
      prepare_triplet_inputs(dist_in, labels_in, ref_labels_in, mining_s, reduction_s);

  at::Tensor grad = at::zeros_like(dist);
  std::vector<RowOut> rows(B);
  AT_DISPATCH_FLOATING_TYPES(dist.scalar_type(), "triplet_margin_loss_cpu", [&] {
    const scalar_t* d = dist.const_data_ptr<scalar_t>();
    const int64_t* lab = labels.const_data_ptr<int64_t>();
    const int64_t* ref = ref_labels.const_data_ptr<int64_t>();
    scalar_t* g = grad.data_ptr<scalar_t>();
    at::parallel_for(0, B, 8, [&](int64_t begin, int64_t end) {
      Scratch s;
      for (int64_t i = begin; i < end; ++i) {
        const int64_t self = exclude_diagonal ? i : -1;
        const scalar_t* di = d + i * R;
        scalar_t* gi = g + i * R;
        if (nan_row(di, ref, R, lab[i], self, mining, gi, &rows[i])) continue;
        switch (mining) {
          case Mining::All: rows[i] = batch_all_row(di, ref, R, lab[i], self, margin, gi, s); break;
          case Mining::Hard: rows[i] = batch_hard_row(di, ref, R, lab[i], self, margin, soft, gi); break;
          case Mining::SemiHard: rows[i] = semihard_row(di, ref, R, lab[i], self, margin, soft, gi, s); break;
        }
      }
    });
  });

  // Summed in row order after the parallel pass, so the result does not depend on the thread count.
  double total = 0;
  int64_t active = 0, triplets = 0;
  for (const RowOut& r : rows) {
    total += r.loss;
    active += r.active;
    triplets += r.triplets;
  }
  const double scale = reduction_scale(reduction, active, triplets);
  if (scale != 1.0) grad.mul_(scale);
  return {at::scalar_tensor(total * scale, dist.options()), at::scalar_tensor(active, labels.options()),
          at::scalar_tensor(triplets, labels.options()), grad};
}

}  // namespace

TORCH_LIBRARY_IMPL(ssml_fast, CPU, m) {
  m.impl("triplet_margin_loss_from_dist", &triplet_margin_loss_from_dist_cpu);
}

}  // namespace ssml_fast
