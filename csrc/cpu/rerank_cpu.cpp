// CPU backend of k-reciprocal re-ranking (Zhong et al., CVPR 2017), reproducing the widely used numpy
// code's numbers with sparse structures only:
//   - one blocked pass over the joint set's distances (a B x N GEMM tile at a time, never N x N) gives each
//     row's first k1 + 1 neighbours by partial selection, its largest distance (the row normaliser) and,
//     for query rows, the original-distance part of the output;
//   - k-reciprocal sets, their expansion and the rows of V are per-row sparse (about k1..2 k1 entries);
//   - the local query expansion merges k2 sparse rows; the Jaccard step walks an inverted index.
// Memory: the (q, g) output + O(N k1 k2) + one GEMM tile. The top-K list entry point needs no features.
// The per-row steps (distances, reciprocal sets, expansion, weights, the final combination) are the bodies in
// common/rerank_math.h that the CUDA kernels run too; this file adds what is CPU-specific: the fused selection
// of the distance pass, O(1) stamp membership, a dense accumulator for the query expansion (the GPU merges) and
// the inverted index of the Jaccard step (the GPU merges pairs). Each gives the same numbers as the GPU path's
// choice, which tests/test_rerank_gpu_algorithm.py checks exactly.
//
// Conventions (the numpy code's, made deterministic):
//   d(i, j)  squared euclidean distance, clamped at 0, exactly 0 on the diagonal;
//   dn(i, j) = d(i, j) / max_j' d(i, j') (0 when the row's max is 0);
//   neighbour order of row i: dn ascending, ties to the lower index (numpy's argsort leaves ties open);
//   k-reciprocal set R(i): j among i's first k1 + 1 neighbours with i among j's first k1 + 1;
//   expansion: for c in R(i), c's round(k1 / 2)-reciprocal set H(c) (half-to-even rounding, first
//   round(k1 / 2) + 1 neighbours) is added when |H(c) ∩ R(i)| > 2/3 |H(c)| (the same double expression);
//   V_ij = exp(-dn(i, j)) / sum over the expanded set; with k2 != 1 V_i <- mean of V over i's first k2
//   neighbours; jaccard_ij = 1 - m / (2 - m), m = sum_l min(V_il, V_jl); out = (1 - lambda) jaccard + lambda dn.
// Sets larger than the joint set are truncated to it, as numpy's slicing does.
#include <algorithm>
#include <cmath>
#include <limits>
#include <memory>
#include <numeric>
#include <vector>

#include <ATen/Dispatch.h>
#include <ATen/Parallel.h>
#include <ATen/TensorOperators.h>
#include <ATen/ops/cat.h>
#include <ATen/ops/empty.h>
#include <ATen/ops/mm.h>
#include <torch/library.h>

#include "common/duplicates_cpu.h"
#include "common/rerank_host.h"
#include "common/rerank_math.h"

namespace ssml_fast {
namespace {

// Per-thread "is j marked for the current row" array without clearing between rows.
struct Stamp {
  std::vector<int64_t> owner;
  std::vector<int32_t> pos;
  explicit Stamp(int64_t n) : owner(n, -1), pos(n, 0) {}
  void mark(int64_t j, int64_t row, int32_t p = 0) { owner[j] = row; pos[j] = p; }
  bool has(int64_t j, int64_t row) const { return owner[j] == row; }
};

// Mutual-neighbour sets of size parameter len: out row i = {j in nn[i, :len] : i in nn[j, :len]}, in
// nn[i]'s order. nn: (n, L) rank order with L >= len. Returns counts; members in out (n, len).
std::vector<int32_t> reciprocal_sets(const std::vector<int32_t>& nn, int64_t n, int64_t L, int64_t len,
                                     std::vector<int32_t>& out) {
  std::vector<int32_t> sorted;
  if (len > kRerankScanMax) {
    sorted.resize(n * len);
    at::parallel_for(0, n, 256, [&](int64_t b, int64_t e) {
      for (int64_t i = b; i < e; ++i) {
        std::copy(&nn[i * L], &nn[i * L] + len, &sorted[i * len]);
        std::sort(&sorted[i * len], &sorted[i * len] + len);
      }
    });
  }
  const int32_t* sp = sorted.empty() ? nullptr : sorted.data();
  out.assign(n * len, 0);
  std::vector<int32_t> cnt(n);
  at::parallel_for(0, n, 256, [&](int64_t b, int64_t e) {
    for (int64_t i = b; i < e; ++i) cnt[i] = rerank_reciprocal_row(i, nn.data(), sp, L, len, &out[i * len]);
  });
  return cnt;
}

// Expansion membership through the thread's stamp arrays (O(1) per test; the GPU path scans instead).
struct StampMarks {
  Stamp& r;
  Stamp& e;
  int64_t row;
  void add_r(int32_t j) {
    r.mark(j, row);
    e.mark(j, row);
  }
  bool in_r(int32_t j) const { return r.has(j, row); }
  bool in_e(int32_t j, const int32_t*, int32_t) const { return e.has(j, row); }
  void add_e(int32_t j) { e.mark(j, row); }
};

// The sparse part shared by both entry points. nn (n, L): first L = min(k1 + 1, n) neighbours of each row in
// rank order; dist_n(i, j, stamp) -> dn(i, j) for any pair (the stamp belongs to the calling thread and may be
// used by it). Adds (1 - lambda) * jaccard to out (q, g), which holds lambda * dn on entry.
template <typename DistFn, typename PrepareRow>
void rerank_sparse(const RerankParams& p, const std::vector<int32_t>& nn, int64_t L, PrepareRow prepare_row,
                   DistFn dist_n, float* out) {
  const int64_t n = p.n, q = p.q, g = n - q;
  const int64_t len_half = std::min<int64_t>(half_round_even(p.k1) + 1, n);

  std::vector<int32_t> rset, hset;
  const std::vector<int32_t> rcnt = reciprocal_sets(nn, n, L, L, rset);
  const std::vector<int32_t> hcnt = reciprocal_sets(nn, n, L, len_half, hset);

  // V rows: exp(-dn) over the expanded k-reciprocal set, normalised to sum 1. Fixed-capacity rows (n, cap).
  const int64_t cap_v = rerank_expanded_capacity(L, len_half, n);
  // Uninitialised: only the first cnt[i] entries of a row are written or read.
  auto vcols = std::make_unique_for_overwrite<int32_t[]>(n * cap_v);
  auto vvals = std::make_unique_for_overwrite<float[]>(n * cap_v);
  std::vector<int32_t> vcnt(n);
  at::parallel_for(0, n, 64, [&](int64_t b, int64_t e) {
    Stamp in_r(n), in_e(n), scratch(n);
    std::vector<int32_t> members(cap_v);
    std::vector<double> wv(cap_v);
    for (int64_t i = b; i < e; ++i) {
      prepare_row(i, scratch);
      StampMarks marks{in_r, in_e, i};
      const int32_t m = rerank_expand_row(&rset[i * L], rcnt[i], hset.data(), hcnt.data(), len_half, marks,
                                          members.data(), cap_v);
      std::sort(members.begin(), members.begin() + m);
      rerank_weights_row(
          i, members.data(), m, [&](int64_t a, int64_t j) { return dist_n(a, j, scratch); }, wv.data(),
          &vcols[i * cap_v], &vvals[i * cap_v]);
      vcnt[i] = m;
    }
  });

  // Final rows as (columns, values, count) pointers: V's fixed-capacity rows, or the query expansion's.
  std::vector<const int32_t*> fcols(n);
  std::vector<const float*> fvals(n);
  for (int64_t i = 0; i < n; ++i) {
    fcols[i] = vcols.get() + i * cap_v;
    fvals[i] = vvals.get() + i * cap_v;
  }
  const int32_t* fcnt = vcnt.data();

  // Local query expansion: V_i <- mean of V over i's first k2 neighbours (the numpy code skips it at k2 = 1).
  // A dense per-thread accumulator visited row by row: the same sums, in the same order, as the k-way merge of
  // rerank_query_expand_row (the GPU path's, which needs no O(n) scratch) and about twice as fast here. Rows are
  // stored compactly per chunk of rows: fixed-capacity rows (k2 * capV) would cost 3x the page faults.
  constexpr int64_t kChunk = 256;
  std::vector<std::vector<int32_t>> ccols;
  std::vector<std::vector<float>> cvals;
  std::vector<int32_t> qcnt;
  if (p.k2 != 1) {
    const int64_t k2 = std::min<int64_t>(p.k2, L);
    const int64_t nchunks = (n + kChunk - 1) / kChunk;
    ccols.resize(nchunks);
    cvals.resize(nchunks);
    qcnt.resize(n);
    std::vector<int64_t> qoff(n);
    at::parallel_for(0, nchunks, 1, [&](int64_t cb, int64_t ce) {
      Stamp seen(n);
      std::vector<double> acc(n, 0.0);
      std::vector<int32_t> cols;
      for (int64_t ch = cb; ch < ce; ++ch) {
        std::vector<int32_t>& oc = ccols[ch];
        std::vector<float>& ov = cvals[ch];
        for (int64_t i = ch * kChunk; i < std::min(n, (ch + 1) * kChunk); ++i) {
          cols.clear();
          for (int64_t r = 0; r < k2; ++r) {
            const int64_t h = nn[i * L + r];
            for (int32_t t = 0; t < vcnt[h]; ++t) {
              const int32_t c = vcols[h * cap_v + t];
              if (!seen.has(c, i)) {
                seen.mark(c, i);
                cols.push_back(c);
                acc[c] = 0;
              }
              acc[c] += vvals[h * cap_v + t];
            }
          }
          std::sort(cols.begin(), cols.end());
          qoff[i] = static_cast<int64_t>(oc.size());
          for (const int32_t c : cols) {
            oc.push_back(c);
            ov.push_back(static_cast<float>(acc[c] / static_cast<double>(k2)));
          }
          qcnt[i] = static_cast<int32_t>(cols.size());
        }
      }
    });
    for (int64_t i = 0; i < n; ++i) {
      fcols[i] = ccols[i / kChunk].data() + qoff[i];
      fvals[i] = cvals[i / kChunk].data() + qoff[i];
    }
    fcnt = qcnt.data();
  }

  // Inverted index over the gallery rows: for each column l, the (gallery row - q, V_jl) with V_jl != 0.
  std::vector<int64_t> start(n + 1, 0);
  for (int64_t j = q; j < n; ++j)
    for (int32_t t = 0; t < fcnt[j]; ++t) ++start[fcols[j][t] + 1];
  for (int64_t l = 0; l < n; ++l) start[l + 1] += start[l];
  std::vector<std::pair<int32_t, float>> inv(start[n]);
  {
    std::vector<int64_t> fill(start.begin(), start.end() - 1);
    for (int64_t j = q; j < n; ++j)
      for (int32_t t = 0; t < fcnt[j]; ++t) inv[fill[fcols[j][t]]++] = {static_cast<int32_t>(j - q), fvals[j][t]};
  }

  // Jaccard distance of each query row to every gallery row, added to out.
  const float w_jac = static_cast<float>(1.0 - p.lambda);
  at::parallel_for(0, q, 16, [&](int64_t b, int64_t e) {
    std::vector<float> acc(g, 0.f);
    for (int64_t i = b; i < e; ++i) {
      for (int32_t c = 0; c < fcnt[i]; ++c) {
        const int32_t l = fcols[i][c];
        const float v = fvals[i][c];
        for (int64_t t = start[l]; t < start[l + 1]; ++t) acc[inv[t].first] += std::min(v, inv[t].second);
      }
      float* o = out + i * g;
      for (int64_t j = 0; j < g; ++j) {
        o[j] = rerank_combine(o[j], acc[j], w_jac);
        acc[j] = 0.f;
      }
    }
  });
}

// The `len` smallest (value, index) pairs among those offered in ascending index order, so an equal value
// never displaces an earlier index. Offer only values below cut(). Small lists use an insertion-sorted
// buffer, long ones a max-heap.
template <typename T>
class NearestK {
 public:
  explicit NearestK(int64_t len) : len_(len), buf_(len + 1) {}
  void reset() {
    cnt_ = 0;
    cut_ = std::numeric_limits<T>::infinity();
  }
  T cut() const { return cut_; }
  void offer(T v, int32_t j) {
    if (len_ <= kInsertionMax) {
      int64_t p = cnt_ < len_ ? cnt_++ : len_ - 1;
      while (p > 0 && v < buf_[p - 1].first) {
        buf_[p] = buf_[p - 1];
        --p;
      }
      buf_[p] = {v, j};
      if (cnt_ == len_) cut_ = buf_[len_ - 1].first;
      return;
    }
    if (cnt_ < len_) {
      buf_[cnt_++] = {v, j};
      std::push_heap(buf_.begin(), buf_.begin() + cnt_);
    } else {
      std::pop_heap(buf_.begin(), buf_.begin() + cnt_);
      buf_[cnt_ - 1] = {v, j};
      std::push_heap(buf_.begin(), buf_.begin() + cnt_);
    }
    if (cnt_ == len_) cut_ = buf_[0].first;
  }
  void sorted_into(int32_t* dst) {
    if (len_ > kInsertionMax) std::sort_heap(buf_.begin(), buf_.begin() + cnt_);
    for (int64_t r = 0; r < cnt_; ++r) dst[r] = buf_[r].second;
  }

 private:
  static constexpr int64_t kInsertionMax = 32;
  int64_t len_, cnt_ = 0;
  T cut_ = std::numeric_limits<T>::infinity();
  std::vector<std::pair<T, int32_t>> buf_;
};

// Rows of the GEMM tile per block: about 16M entries, so the tile stays near 64 MB whatever N is.
int64_t block_rows(int64_t n) { return std::clamp<int64_t>((int64_t(1) << 24) / std::max<int64_t>(n, 1), 32, 2048); }

template <typename T>
void rerank_features_impl(const at::Tensor& x, const RerankParams& p, at::Tensor& out_t) {
  const int64_t n = p.n, q = p.q, g = n - q, d = x.size(1);
  const int64_t L = std::min<int64_t>(p.k1 + 1, n);
  const T* X = x.const_data_ptr<T>();
  float* out = out_t.data_ptr<float>();
  const float lam = static_cast<float>(p.lambda);

  std::vector<T> sq(n);
  at::parallel_for(0, n, 1024, [&](int64_t b, int64_t e) {
    for (int64_t i = b; i < e; ++i) sq[i] = rerank_dot(X + i * d, X + i * d, d);
  });
  // Exact copies: distance exactly 0 between them (the GEMM form leaves rounding noise, which the row
  // normalisation blows up to O(1) for collapsed features) and re-ranked distance 0. copies[i]: the other
  // members of row i's group, CSR-style; empty (and free) when no row repeats.
  std::vector<int64_t> rep;
  const bool any_copies = duplicate_representatives(X, n, d, rep);
  std::vector<int64_t> copy_start, copy_list;
  if (any_copies) {
    std::vector<int64_t> size(n, 0);
    for (int64_t i = 0; i < n; ++i) ++size[rep[i]];
    std::vector<int64_t> group_start(n + 1, 0), fill;
    for (int64_t r = 0; r < n; ++r) group_start[r + 1] = group_start[r] + size[r];
    std::vector<int64_t> members(n);
    fill.assign(group_start.begin(), group_start.end() - 1);
    for (int64_t i = 0; i < n; ++i) members[fill[rep[i]]++] = i;
    copy_start.assign(n + 1, 0);
    for (int64_t i = 0; i < n; ++i) copy_start[i + 1] = copy_start[i] + size[rep[i]] - 1;
    copy_list.resize(copy_start[n]);
    for (int64_t i = 0; i < n; ++i) {
      int64_t c = copy_start[i];
      for (int64_t t = group_start[rep[i]]; t < group_start[rep[i] + 1]; ++t)
        if (members[t] != i) copy_list[c++] = members[t];
    }
  }

  // Blocked pass: neighbours, row max, and lambda * dn for the query rows.
  std::vector<int32_t> nn(n * L);
  std::vector<T> row_max(n);
  const int64_t B = block_rows(n);
  for (int64_t b0 = 0; b0 < n; b0 += B) {
    const int64_t nb = std::min(B, n - b0);
    at::Tensor tile = at::mm(x.narrow(0, b0, nb), x.t());
    T* G = tile.data_ptr<T>();
    at::parallel_for(0, nb, 4, [&](int64_t b, int64_t e) {
      NearestK<T> top(L);
      for (int64_t r = b; r < e; ++r) {
        const int64_t i = b0 + r;
        T* row = G + r * n;
        const T si = sq[i];
        for (int64_t j = 0; j < n; ++j) row[j] = rerank_sqdist(si, sq[j], row[j]);  // vectorisable
        row[i] = T(0);
        if (any_copies)
          for (int64_t c = copy_start[i]; c < copy_start[i + 1]; ++c) row[copy_list[c]] = T(0);
        T mx = T(0);
        top.reset();
        for (int64_t j = 0; j < n; ++j) {
          const T v = row[j];
          mx = v > mx ? v : mx;
          if (v < top.cut()) top.offer(v, static_cast<int32_t>(j));
        }
        top.sorted_into(&nn[i * L]);
        row_max[i] = mx;
        if (i < q) {
          float* o = out + i * g;
          for (int64_t j = 0; j < g; ++j) o[j] = rerank_scaled_dist(row[q + j], mx, lam);
        }
      }
    });
  }

  const RerankFeatureDist<T> feature_dist{X, sq.data(), row_max.data(), d};
  auto dist_n = [&](int64_t i, int64_t j, Stamp&) -> double { return feature_dist(i, j); };
  rerank_sparse(p, nn, L, [](int64_t, Stamp&) {}, dist_n, out);
  for (int64_t i = 0; any_copies && i < q; ++i)
    for (int64_t c = copy_start[i]; c < copy_start[i + 1]; ++c)
      if (copy_list[c] >= q) out[i * g + (copy_list[c] - q)] = 0.f;
}

template <typename T>
void rerank_topk_impl(const at::Tensor& dist, const at::Tensor& idx, const RerankParams& p, at::Tensor& out_t) {
  const int64_t n = p.n, q = p.q, g = n - q, K = dist.size(1);
  const int64_t L = std::min<int64_t>(p.k1 + 1, n);
  const T* D = dist.const_data_ptr<T>();
  const int64_t* I = idx.const_data_ptr<int64_t>();
  float* out = out_t.data_ptr<float>();
  const float lam = static_cast<float>(p.lambda);

  // Checks that need a pass over the lists: indices in range and unique per row.
  std::vector<int32_t> nn(n * L);
  at::parallel_for(0, n, 64, [&](int64_t b, int64_t e) {
    Stamp seen(n);
    for (int64_t i = b; i < e; ++i) {
      for (int64_t r = 0; r < K; ++r) {
        const int64_t j = I[i * K + r];
        TORCH_CHECK_VALUE(j >= 0 && j < n, "indices[", i, ", ", r, "] = ", j, " is outside [0, ", n, ")");
        TORCH_CHECK_VALUE(!seen.has(j, i), "indices row ", i, " lists ", j, " twice");
        seen.mark(j, i);
        if (r < L) nn[i * L + r] = static_cast<int32_t>(j);
        const T v = D[i * K + r];
        TORCH_CHECK_VALUE(std::isfinite(v), kTopkNotFinite, " (row ", i, ")");
        TORCH_CHECK_VALUE(v >= T(0), kTopkNegative, " (row ", i, ")");
        TORCH_CHECK_VALUE(r == 0 || v >= D[i * K + r - 1], kTopkNotSorted, " (row ", i, ")");
      }
      TORCH_CHECK_VALUE(seen.has(i, i) || !(D[i * K + K - 1] > T(0)), kTopkNoSelf, " (row ", i, ")");
    }
  });

  // Row normaliser: the largest listed distance; pairs missing from the list count at that distance (dn = 1).
  at::parallel_for(0, q, 16, [&](int64_t b, int64_t e) {
    for (int64_t i = b; i < e; ++i) {
      float* o = out + i * g;
      std::fill(o, o + g, rerank_topk_fill_value(D, K, i, lam));
      for (int64_t r = 0; r < K; ++r) rerank_topk_listed_entry(D, I, K, q, g, i, r, lam, out);
    }
  });

  auto prepare_row = [&](int64_t i, Stamp& s) {
    for (int64_t r = 0; r < K; ++r) s.mark(I[i * K + r], i, static_cast<int32_t>(r));
  };
  auto dist_n = [&](int64_t i, int64_t j, Stamp& s) -> double {
    return rerank_topk_dist(D, K, i, s.has(j, i) ? int64_t(s.pos[j]) : int64_t(-1));
  };
  rerank_sparse(p, nn, L, prepare_row, dist_n, out);
}

at::Tensor kreciprocal_rerank_cpu(const at::Tensor& query, const at::Tensor& gallery, int64_t k1, int64_t k2,
                                  double lambda_value) {
  check_rerank_params(k1, k2, lambda_value);
  check_rerank_features(query, gallery);
  const int64_t q = query.size(0), n = q + gallery.size(0);
  at::Tensor out = at::empty({q, n - q}, query.options().dtype(at::kFloat));
  if (q == 0 || n == q) return out;
  clamp_rerank_k(n, k1, k2);
  const FullFloat32Matmul full_precision;
  const at::Tensor x = rerank_joint_features(query, gallery);
  const RerankParams p{n, q, k1, k2, lambda_value};
  AT_DISPATCH_FLOATING_TYPES(x.scalar_type(), "kreciprocal_rerank_cpu",
                             [&] { rerank_features_impl<scalar_t>(x, p, out); });
  return out;
}

at::Tensor kreciprocal_rerank_topk_cpu(const at::Tensor& distances, const at::Tensor& indices, int64_t num_query,
                                       int64_t k1, int64_t k2, double lambda_value) {
  check_rerank_params(k1, k2, lambda_value);
  check_rerank_topk(distances, indices, num_query, k1);
  const int64_t n = distances.size(0);
  at::Tensor out = at::empty({num_query, n - num_query}, distances.options().dtype(at::kFloat));
  if (num_query == 0 || n == num_query) return out;
  clamp_rerank_k(n, k1, k2);
  const RerankParams p{n, num_query, k1, k2, lambda_value};
  const at::Tensor d = distances.contiguous(), i = indices.contiguous();
  AT_DISPATCH_FLOATING_TYPES(d.scalar_type(), "kreciprocal_rerank_topk_cpu",
                             [&] { rerank_topk_impl<scalar_t>(d, i, p, out); });
  return out;
}

}  // namespace

TORCH_LIBRARY_IMPL(ssml_fast, CPU, m) {
  m.impl("kreciprocal_rerank", &kreciprocal_rerank_cpu);
  m.impl("kreciprocal_rerank_topk", &kreciprocal_rerank_topk_cpu);
}

}  // namespace ssml_fast
