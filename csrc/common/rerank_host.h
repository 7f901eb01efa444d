#pragma once
// Host side of the CUDA backend's k-reciprocal re-ranking: argument checks (shared with the CPU kernel), the
// distance pass through ATen (GEMM tiles, stable sort for the neighbour lists, row max) and the sparse steps
// through `Launch` (CUDA kernels, or CPU loops over the same bodies for tests; common/rerank_math.h).
//
// Differences from the CPU kernel, none of which changes a number: neighbours come from a top-k selection on
// unique (distance, column) keys of each GEMM tile row (a stable sort for float64; ties to the lower index, as
// the CPU's selection), set membership is tested by scanning the
// bounded per-row lists instead of O(n) stamp arrays, and the Jaccard step merges each (query, gallery) pair of
// sparse rows instead of walking an inverted index (the same terms summed in the same column order).
// Memory: the (q, g) output, a tile of about 4M distances with its keys, and fixed-capacity sparse rows:
// (n, capV) for V and (n, k2 * capV) for the expanded V, capV = rerank_expanded_capacity (84 at k1 = 20).
// The only host synchronisations are the index checks of the top-K entry point.
#include <algorithm>
#include <cmath>
#include <limits>
#include <type_traits>

#include <ATen/Dispatch.h>
#include <ATen/TensorOperators.h>
#include <ATen/core/Tensor.h>
#include <ATen/ops/abs.h>
#include <ATen/ops/amax.h>
#include <ATen/ops/arange.h>
#include <ATen/ops/isfinite.h>
#include <ATen/ops/stack.h>
#include <ATen/ops/cat.h>
#include <ATen/ops/empty.h>
#include <ATen/ops/mm.h>
#include <ATen/ops/bitwise_and.h>
#include <ATen/ops/sort.h>
#include <ATen/ops/topk.h>

#include "common/contextual_host.h"  // duplicate_representatives_aten
#include "common/full_precision.h"
#include "common/rerank_math.h"

namespace ssml_fast {

struct RerankParams {
  int64_t n;      // joint set size
  int64_t q;      // queries are rows [0, q), gallery rows [q, n)
  int64_t k1, k2;
  double lambda;
};

inline void check_rerank_params(int64_t k1, int64_t k2, double lambda) {
  TORCH_CHECK_VALUE(k1 >= 1, "k1 must be >= 1, got ", k1);
  TORCH_CHECK_VALUE(k2 >= 1 && k2 <= k1, "k2 must be in [1, k1] = [1, ", k1, "], got ", k2);
  TORCH_CHECK_VALUE(lambda >= 0 && lambda <= 1, "lambda_value must be in [0, 1], got ", lambda);
}

// k1 and k2 beyond the joint set change nothing (lists of k1 + 1 and round(k1 / 2) + 1 neighbours are
// truncated to n, and k2 to the list length): clamped here, so k1 + 1 and the list sizes cannot overflow
// whatever k1 is (k1 = 2n already truncates both lists to n).
inline void clamp_rerank_k(int64_t n, int64_t& k1, int64_t& k2) {
  const int64_t cap = 2 * std::max<int64_t>(n, 1);
  k1 = std::min(k1, cap);
  k2 = std::min(k2, cap);
}

inline void check_rerank_features(const at::Tensor& query, const at::Tensor& gallery) {
  TORCH_CHECK_VALUE(query.dim() == 2 && gallery.dim() == 2, "query and gallery must be 2-D (n, d), got shapes ",
                    query.sizes(), " and ", gallery.sizes());
  TORCH_CHECK_VALUE(query.size(1) == gallery.size(1), "gallery has dimension ", gallery.size(1),
                    " but query has ", query.size(1));
  TORCH_CHECK_TYPE(query.scalar_type() == gallery.scalar_type() &&
                       (query.scalar_type() == at::kFloat || query.scalar_type() == at::kDouble),
                   "query and gallery must both be float32 or both float64, got ", query.scalar_type(), " and ",
                   gallery.scalar_type());
  TORCH_CHECK_VALUE(query.device() == gallery.device(), "gallery is on ", gallery.device(), " but query is on ",
                    query.device());
  TORCH_CHECK_VALUE(query.size(0) + gallery.size(0) < std::numeric_limits<int32_t>::max(),
                    "too many rows for int32 neighbour indices");
}

// The joint set [query; gallery], contiguous, checked finite and scaled by a power of two when its largest
// coordinate is outside [2^-40, 2^40]. The re-ranked distances are scale-invariant (each row is divided by its
// max) and a power-of-two scale is exact, so this changes no number; it keeps squared norms from overflowing
// (float32 beyond ~1e19) or underflowing. One host read of the largest coordinate (also the NaN/inf check).
inline at::Tensor rerank_joint_features(const at::Tensor& query, const at::Tensor& gallery) {
  at::Tensor x = at::cat({query, gallery}, 0).contiguous();
  if (x.numel() == 0) return x;
  const at::Tensor m = at::stack({at::abs(query).amax(), at::abs(gallery).amax()}).to(at::kDouble).cpu();
  const double mq = m.const_data_ptr<double>()[0], mg = m.const_data_ptr<double>()[1];
  TORCH_CHECK_VALUE(std::isfinite(mq), "query contains NaN or infinite values");
  TORCH_CHECK_VALUE(std::isfinite(mg), "gallery contains NaN or infinite values");
  const double amax = std::max(mq, mg);
  if (amax > 0 && (amax > 0x1p40 || amax < 0x1p-40)) x.mul_(std::exp2(-std::floor(std::log2(amax))));
  return x;
}

inline void check_rerank_topk(const at::Tensor& distances, const at::Tensor& indices, int64_t num_query, int64_t k1) {
  TORCH_CHECK_VALUE(distances.dim() == 2 && indices.sizes() == distances.sizes(),
                    "distances and indices must be 2-D of one shape (N, K), got ", distances.sizes(), " and ",
                    indices.sizes());
  TORCH_CHECK_TYPE(distances.scalar_type() == at::kFloat || distances.scalar_type() == at::kDouble,
                   "distances must be float32 or float64, got ", distances.scalar_type());
  TORCH_CHECK_TYPE(indices.scalar_type() == at::kLong, "indices must be int64, got ", indices.scalar_type());
  TORCH_CHECK_VALUE(indices.device() == distances.device(), "indices is on ", indices.device(),
                    " but distances is on ", distances.device());
  const int64_t n = distances.size(0), K = distances.size(1);
  TORCH_CHECK_VALUE(num_query >= 0 && num_query <= n, "num_query must be in [0, ", n, "], got ", num_query);
  TORCH_CHECK_VALUE(n < std::numeric_limits<int32_t>::max(), "too many rows for int32 neighbour indices");
  const int64_t need = k1 >= n ? n : k1 + 1;
  TORCH_CHECK_VALUE(K >= need, "the lists hold ", K, " neighbours per row; k1 = ", k1, " needs at least ", need);
}

// The value rules of top-K lists, one message each (the kernels check in their passes, or through
// rerank_topk_violations on the GPU path).
inline constexpr const char* kTopkNotFinite = "distances must be finite; they contain NaN or infinite values";
inline constexpr const char* kTopkNegative =
    "distances must be >= 0 (squared distances; clamp at 0 the tiny negative values faiss can return)";
inline constexpr const char* kTopkNotSorted = "distances must be non-decreasing along each row (nearest first)";
// Row i may leave i out only when every listed distance is 0: exact copies of i with lower indices can then
// fill the list by the index tie rule.
inline constexpr const char* kTopkNoSelf =
    "each row i of the lists must include i itself (the joint set's own top-K, self included)";

// Sparse steps on the device. nn (n, L) int32: each row's first L = min(k1 + 1, n) neighbours in rank order.
// dist(i, j) -> dn(i, j). out (q, g) holds lambda * dn on entry and gets (1 - lambda) * jaccard added.
template <typename Launch, typename Dist>
void rerank_sparse_gpu_algorithm(const RerankParams& p, const at::Tensor& nn, const Dist& dist, at::Tensor& out) {
  const int64_t n = p.n, q = p.q, g = n - q, L = nn.size(1);
  const int64_t len_half = std::min<int64_t>(half_round_even(p.k1) + 1, n);
  const auto i32 = nn.options().dtype(at::kInt);
  const int32_t* nnp = nn.const_data_ptr<int32_t>();

  // Sorted copies for binary-search membership of long lists (the CPU kernel's rule; the result is the same).
  const at::Tensor sorted_l = L > kRerankScanMax ? std::get<0>(at::sort(nn, 1)).contiguous() : at::Tensor();
  const at::Tensor sorted_h =
      len_half > kRerankScanMax ? std::get<0>(at::sort(nn.narrow(1, 0, len_half), 1)).contiguous() : at::Tensor();
  at::Tensor rset = at::empty({n, L}, i32), rcnt = at::empty({n}, i32);
  at::Tensor hset = at::empty({n, len_half}, i32), hcnt = at::empty({n}, i32);
  Launch::reciprocal(nnp, sorted_l.defined() ? sorted_l.const_data_ptr<int32_t>() : nullptr, n, L, L,
                     rset.data_ptr<int32_t>(), rcnt.data_ptr<int32_t>());
  Launch::reciprocal(nnp, sorted_h.defined() ? sorted_h.const_data_ptr<int32_t>() : nullptr, n, L, len_half,
                     hset.data_ptr<int32_t>(), hcnt.data_ptr<int32_t>());

  const int64_t cap_v = rerank_expanded_capacity(L, len_half, n);
  at::Tensor members = at::empty({n, cap_v}, i32), w = at::empty({n, cap_v}, nn.options().dtype(at::kDouble));
  at::Tensor vcols = at::empty({n, cap_v}, i32), vvals = at::empty({n, cap_v}, nn.options().dtype(at::kFloat));
  at::Tensor vcnt = at::empty({n}, i32);
  const RerankExpandArgs ea{n,
                            L,
                            len_half,
                            cap_v,
                            rset.const_data_ptr<int32_t>(),
                            rcnt.const_data_ptr<int32_t>(),
                            hset.const_data_ptr<int32_t>(),
                            hcnt.const_data_ptr<int32_t>(),
                            members.data_ptr<int32_t>(),
                            w.data_ptr<double>(),
                            vcols.data_ptr<int32_t>(),
                            vvals.data_ptr<float>(),
                            vcnt.data_ptr<int32_t>()};
  Launch::expand(ea, dist);
  members = at::Tensor();
  w = at::Tensor();

  int64_t cap = cap_v;
  if (p.k2 != 1) {  // the numpy code skips the local query expansion at k2 = 1
    const int64_t k2 = std::min<int64_t>(p.k2, L);
    const int64_t cap_q = rerank_expansion_capacity(k2, cap_v, n);
    at::Tensor heads = at::empty({n, k2}, i32);
    at::Tensor qcols = at::empty({n, cap_q}, i32), qvals = at::empty({n, cap_q}, vvals.options());
    at::Tensor qcnt = at::empty({n}, i32);
    const RerankQueryExpandArgs qa{n,
                                   L,
                                   k2,
                                   cap_v,
                                   cap_q,
                                   nnp,
                                   vcols.const_data_ptr<int32_t>(),
                                   vvals.const_data_ptr<float>(),
                                   vcnt.const_data_ptr<int32_t>(),
                                   heads.data_ptr<int32_t>(),
                                   qcols.data_ptr<int32_t>(),
                                   qvals.data_ptr<float>(),
                                   qcnt.data_ptr<int32_t>()};
    Launch::query_expand(qa);
    vcols = qcols;
    vvals = qvals;
    vcnt = qcnt;
    cap = cap_q;
  }

  const RerankJaccardArgs ja{q, g, cap, vcols.const_data_ptr<int32_t>(), vvals.const_data_ptr<float>(),
                             vcnt.const_data_ptr<int32_t>(), static_cast<float>(1.0 - p.lambda)};
  Launch::jaccard(ja, out.data_ptr<float>());
}

// Rows of a GEMM tile per block: about 4M distances, so the tile and its sort stay near 100 MB.
inline int64_t rerank_gpu_block_rows(int64_t n) {
  return std::clamp<int64_t>((int64_t(1) << 22) / std::max<int64_t>(n, 1), 1, 4096);
}

template <typename Launch>
at::Tensor kreciprocal_rerank_gpu_algorithm(const at::Tensor& query, const at::Tensor& gallery, int64_t k1, int64_t k2,
                                            double lambda_value) {
  check_rerank_params(k1, k2, lambda_value);
  check_rerank_features(query, gallery);
  const int64_t q = query.size(0), n = q + gallery.size(0), g = n - q;
  at::Tensor out = at::empty({q, g}, query.options().dtype(at::kFloat));
  if (q == 0 || g == 0) return out;
  clamp_rerank_k(n, k1, k2);
  const FullFloat32Matmul full_precision;
  const at::Tensor x = rerank_joint_features(query, gallery);
  // Exact copies of a row are at distance exactly 0 (the GEMM form leaves rounding noise there, which the row
  // normalisation would blow up to O(1) for collapsed features), and at re-ranked distance 0.
  const at::Tensor rep = duplicate_representatives_aten(x);
  const int64_t d = x.size(1), L = std::min<int64_t>(k1 + 1, n);
  const RerankParams p{n, q, k1, k2, lambda_value};
  const float lam = static_cast<float>(lambda_value);
  at::Tensor nn = at::empty({n, L}, x.options().dtype(at::kInt));
  at::Tensor row_max = at::empty({n}, x.options());
  at::Tensor sq = at::empty({n}, x.options());
  AT_DISPATCH_FLOATING_TYPES(x.scalar_type(), "kreciprocal_rerank_gpu_algorithm", [&] {
    const scalar_t* X = x.const_data_ptr<scalar_t>();
    Launch::template row_sqnorms<scalar_t>(X, n, d, sq.data_ptr<scalar_t>());
    const int64_t B = rerank_gpu_block_rows(n);
    for (int64_t b0 = 0; b0 < n; b0 += B) {
      const int64_t nb = std::min(B, n - b0);
      at::Tensor tile = at::mm(x.narrow(0, b0, nb), x.t()).contiguous();
      Launch::template tile_sqdist<scalar_t>(tile.data_ptr<scalar_t>(), sq.const_data_ptr<scalar_t>(),
                                             rep.const_data_ptr<int64_t>(), b0, nb, n);
      row_max.narrow(0, b0, nb).copy_(at::amax(tile, 1));
      if (b0 < q)
        Launch::template tile_out<scalar_t>(tile.const_data_ptr<scalar_t>(), row_max.const_data_ptr<scalar_t>(), b0,
                                            std::min(nb, q - b0), n, q, lam, out.data_ptr<float>());
      // The first L by (distance, column), the CPU kernel's order. float32: a top-L selection on unique
      // (distance bits, column) keys; float64 has no room for the column in the key: a stable sort.
      if constexpr (std::is_same_v<scalar_t, float>) {
        at::Tensor keys = at::empty({nb, n}, x.options().dtype(at::kLong));
        Launch::tile_keys(tile.const_data_ptr<float>(), nb, n, keys.data_ptr<int64_t>());
        const at::Tensor top = std::get<0>(at::topk(keys, L, /*dim=*/1, /*largest=*/false, /*sorted=*/true));
        nn.narrow(0, b0, nb).copy_(top.bitwise_and(0xffffffffLL));
      } else {
        const at::Tensor order = std::get<1>(at::sort(tile, /*stable=*/true, /*dim=*/1, /*descending=*/false));
        nn.narrow(0, b0, nb).copy_(order.narrow(1, 0, L));
      }
    }
    const RerankFeatureDist<scalar_t> dist{X, sq.const_data_ptr<scalar_t>(), row_max.const_data_ptr<scalar_t>(), d};
    rerank_sparse_gpu_algorithm<Launch>(p, nn, dist, out);
  });
  Launch::zero_copies(rep.const_data_ptr<int64_t>(), q, g, out.data_ptr<float>());
  return out;
}

// The value rules of top-K lists on the device, one flag each, read back to the host at once (a kernel
// cannot raise): in range, finite, >= 0, non-decreasing, self listed (or the row all at distance 0). Then, by sorting each row by index,
// the duplicate check (one more read) and the binary-search positions of the V step.
inline void check_topk_values_on_device(const at::Tensor& D, const at::Tensor& I, int64_t n) {
  const int64_t K = D.size(1);
  const at::Tensor rows = at::arange(n, I.options()).unsqueeze(1);
  const at::Tensor sorted_ok = K > 1 ? (D.narrow(1, 1, K - 1) >= D.narrow(1, 0, K - 1)).all() : at::ones({}, I.options().dtype(at::kBool));
  const at::Tensor flags = at::stack({((I < 0) | (I >= n)).any(), ~at::isfinite(D).all(), (D < 0).any(),
                                      ~sorted_ok, ~((I == rows).any(1) | (D.select(1, K - 1) <= 0)).all()})
                               .cpu();
  const bool* f = flags.const_data_ptr<bool>();
  TORCH_CHECK_VALUE(!f[0], "indices has an entry outside [0, ", n, ")");
  TORCH_CHECK_VALUE(!f[1], kTopkNotFinite);
  TORCH_CHECK_VALUE(!f[2], kTopkNegative);
  TORCH_CHECK_VALUE(!f[3], kTopkNotSorted);
  TORCH_CHECK_VALUE(!f[4], kTopkNoSelf);
}

template <typename Launch>
at::Tensor kreciprocal_rerank_topk_gpu_algorithm(const at::Tensor& distances, const at::Tensor& indices,
                                                 int64_t num_query, int64_t k1, int64_t k2, double lambda_value) {
  check_rerank_params(k1, k2, lambda_value);
  check_rerank_topk(distances, indices, num_query, k1);
  const int64_t n = distances.size(0), K = distances.size(1), q = num_query, g = n - q;
  at::Tensor out = at::empty({q, g}, distances.options().dtype(at::kFloat));
  if (q == 0 || g == 0) return out;
  clamp_rerank_k(n, k1, k2);
  const at::Tensor D = distances.contiguous(), I = indices.contiguous();
  // The only synchronisations: the value checks read their flags back to the host (a kernel cannot raise).
  check_topk_values_on_device(D, I, n);
  // Each row sorted by index: the duplicate check, and j's list position by binary search in the V step.
  const auto [sorted_idx, sorted_pos] = at::sort(I, 1);
  if (K > 1)
    TORCH_CHECK_VALUE(!(sorted_idx.narrow(1, 1, K - 1) == sorted_idx.narrow(1, 0, K - 1)).any().item<bool>(),
                      "an indices row lists a neighbour twice");
  const int64_t L = std::min<int64_t>(k1 + 1, n);
  const at::Tensor nn = I.narrow(1, 0, L).to(at::kInt).contiguous();
  const RerankParams p{n, q, k1, k2, lambda_value};
  AT_DISPATCH_FLOATING_TYPES(D.scalar_type(), "kreciprocal_rerank_topk_gpu_algorithm", [&] {
    const scalar_t* Dp = D.const_data_ptr<scalar_t>();
    const int64_t* Ip = I.const_data_ptr<int64_t>();
    Launch::template topk_out<scalar_t>(Dp, Ip, K, q, g, static_cast<float>(lambda_value), out.data_ptr<float>());
    const RerankTopkSortedDist<scalar_t> dist{Dp, sorted_idx.const_data_ptr<int64_t>(),
                                              sorted_pos.const_data_ptr<int64_t>(), K};
    rerank_sparse_gpu_algorithm<Launch>(p, nn, dist, out);
  });
  return out;
}

}  // namespace ssml_fast
