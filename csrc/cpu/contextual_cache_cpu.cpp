// _contextual_cache_neighbours (CPU): the neighbour lists N_k of every row of U = [batch; memory slots] for
// stml_memory's ContextualCache, by an exact scan of each row's cached similarities.
//
// The rule is the fused contextual op's: row i's list is i itself, then the rows sharing its id (by
// similarity descending, equal similarities to the lower column), then the other live rows the same way;
// memory slots marked dead take part in nothing, except to fill a list that has fewer than k live
// candidates (then after every live one, in the same order), as ContextualCache's exact fallback does.
//
// Why a scan: ContextualCache's PyTorch path keeps each slot's 32 nearest slots between steps and merges in
// the batch's columns, because a torch.topk over the (M, N + M) similarities every step costs ~80 ms at
// M = 4096; keeping the lists up to date took ~85 ms of its own. Here each row keeps a k-entry buffer; its
// memory part is pruned first by a proven bound from 64-column maxima (scan_pruned), then 16-column chunks
// that cannot enter the buffer are skipped.
#include <algorithm>
#include <cmath>
#include <limits>
#include <numeric>
#include <vector>

#include <ATen/Parallel.h>
#include <ATen/ops/empty.h>
#include <torch/library.h>

#include "cpu/cpu_features.h"

namespace ssml_fast {
namespace {

// (value, column) a ranks before (value, column) b: higher similarity, then the lower column. A total order,
// so the best `cap` of a set do not depend on the order they are offered in (rows offer their memory columns
// before their batch columns, so that the memory part's high cut prunes the batch part).
inline bool ranks_before(float va, int64_t ca, float vb, int64_t cb) { return va > vb || (va == vb && ca < cb); }

// The best `cap` (similarity, column) pairs offered, best first.
struct TopBuffer {
  int64_t cap = 0, size = 0;
  float val[64];
  int64_t col[64];
  // Entries below cut() cannot enter (equal ones may, with a lower column).
  float cut() const { return size < cap ? -std::numeric_limits<float>::infinity() : val[cap - 1]; }
  void offer(float v, int64_t c) {
    if (size == cap && !ranks_before(v, c, val[cap - 1], col[cap - 1])) return;
    int64_t p = size < cap ? size++ : cap - 1;
    while (p > 0 && ranks_before(v, c, val[p - 1], col[p - 1])) {
      val[p] = val[p - 1], col[p] = col[p - 1];
      --p;
    }
    val[p] = v, col[p] = c;
  }
};

constexpr int64_t kChunk = 16;

#if defined(__x86_64__) && (defined(__GNUC__) || defined(__clang__))
#include <immintrin.h>
// Does any of the 16 floats at p reach cut? Two AVX compares (a float max reduction does not vectorise
// without fast-math, and its 16-step dependency chain was most of the scan's time).
__attribute__((target("avx2"))) bool chunk_exceeds_avx2(const float* p, float cut) {
  const __m256 c = _mm256_set1_ps(cut);
  const __m256 a = _mm256_cmp_ps(_mm256_loadu_ps(p), c, _CMP_GE_OQ);
  const __m256 b = _mm256_cmp_ps(_mm256_loadu_ps(p + 8), c, _CMP_GE_OQ);
  return _mm256_movemask_ps(_mm256_or_ps(a, b)) != 0;
}
#else
bool chunk_exceeds_avx2(const float*, float) { return true; }
#endif

bool chunk_exceeds(const float* p, float cut, bool avx2) {
  if (avx2) return chunk_exceeds_avx2(p, cut);
  int hit = 0;
  for (int64_t q = 0; q < kChunk; ++q) hit |= p[q] >= cut;
  return hit != 0;
}

// Offers the entries of sims[0, len) (columns col0 + t) that pass `keep`, skipping 16-wide chunks with no
// entry reaching the buffer's cut (the common case once the buffer is full).
template <typename Keep>
void scan(const float* sims, int64_t len, int64_t col0, TopBuffer& buf, Keep keep, bool avx2) {
  int64_t t = 0;
  for (; t + kChunk <= len; t += kChunk) {
    if (!chunk_exceeds(sims + t, buf.cut(), avx2)) continue;
    for (int64_t q = t; q < t + kChunk; ++q)
      if (sims[q] >= buf.cut() && keep(col0 + q)) buf.offer(sims[q], col0 + q);
  }
  for (; t < len; ++t)
    if (sims[t] >= buf.cut() && keep(col0 + t)) buf.offer(sims[t], col0 + t);
}

constexpr int64_t kGroup = 4 * kChunk;  // columns per group of the pruning bound

#if defined(__x86_64__) && (defined(__GNUC__) || defined(__clang__))
// out[g] = max over group g (64 floats) of row[j] + penalty[j] (penalty -inf for dead columns, else 0). One
// horizontal reduction per 64 columns: per 16-column chunk (as before) the reductions were most of the scan.
__attribute__((target("avx2"))) void group_maxima_avx2(const float* row, const float* penalty, int64_t groups,
                                                      float* out) {
  for (int64_t g = 0; g < groups; ++g) {
    const float* p = row + g * kGroup;
    const float* q = penalty + g * kGroup;
    __m256 m = _mm256_add_ps(_mm256_loadu_ps(p), _mm256_loadu_ps(q));
    for (int64_t o = 8; o < kGroup; o += 8)
      m = _mm256_max_ps(m, _mm256_add_ps(_mm256_loadu_ps(p + o), _mm256_loadu_ps(q + o)));
    __m128 h = _mm_max_ps(_mm256_castps256_ps128(m), _mm256_extractf128_ps(m, 1));
    h = _mm_max_ps(h, _mm_movehl_ps(h, h));
    h = _mm_max_ss(h, _mm_shuffle_ps(h, h, 1));
    out[g] = _mm_cvtss_f32(h);
  }
}
#else
void group_maxima_avx2(const float*, const float*, int64_t, float*) {}
#endif

void group_maxima(const float* row, const float* penalty, int64_t groups, float* out, bool avx2) {
  if (avx2) return group_maxima_avx2(row, penalty, groups, out);
  for (int64_t g = 0; g < groups; ++g) {
    float m = -std::numeric_limits<float>::infinity();
    for (int64_t q = g * kGroup; q < (g + 1) * kGroup; ++q) m = std::max(m, row[q] + penalty[q]);
    out[g] = m;
  }
}

// scan() over a memory row, pruned first. Refused columns are the dead ones (penalised to -inf in the
// maxima) and `extra` others. A bound tau at most the cap-th best kept value: of any cap + extra groups of
// columns whose maxima are >= tau, at least cap hold no refused column, so at least cap kept values are >= tau.
// Groups of 64 columns give tau cheaply (the want-th largest of len / 64 maxima); in the groups whose maximum
// reaches tau (and the running cut) the 16-column chunks with an entry reaching both are looked into. Which
// entries are offered, and in which order, is the plain scan's, so the lists are the same.
// maxima: scratch of len / 64 floats.
template <typename Keep>
void scan_pruned(const float* sims, int64_t len, int64_t col0, TopBuffer& buf, Keep keep, const float* penalty,
                 int64_t extra, float* maxima, bool avx2) {
  const int64_t groups = len / kGroup, want = buf.cap + extra;
  float tau = -std::numeric_limits<float>::infinity();
  int64_t t = 0;
  if (groups > want) {
    group_maxima(sims, penalty, groups, maxima, avx2);
    TopBuffer best;  // the `want` largest group maxima (want <= 64: the caller checks)
    best.cap = want;
    for (int64_t g = 0; g < groups; ++g)
      if (maxima[g] >= best.cut()) best.offer(maxima[g], g);
    tau = best.val[want - 1];
    for (int64_t g = 0; g < groups; ++g) {
      if (!(maxima[g] >= tau) || !(maxima[g] >= buf.cut())) continue;
      for (int64_t c = g * kGroup; c < (g + 1) * kGroup; c += kChunk) {
        if (!chunk_exceeds(sims + c, std::max(tau, buf.cut()), avx2)) continue;
        for (int64_t q = c; q < c + kChunk; ++q)
          if (sims[q] >= tau && sims[q] >= buf.cut() && keep(col0 + q)) buf.offer(sims[q], col0 + q);
      }
    }
    t = groups * kGroup;
  }
  for (int64_t q = t; q < len; ++q)  // no bound (few groups), or the tail past the last whole group
    if (sims[q] >= tau && sims[q] >= buf.cut() && keep(col0 + q)) buf.offer(sims[q], col0 + q);
}

at::Tensor contextual_cache_neighbours_cpu(const at::Tensor& g_bb_in, const at::Tensor& g_bm_in,
                                           const at::Tensor& g_mb_in, const at::Tensor& gram, int64_t count,
                                           const at::Tensor& ids_in,
                                           const at::Tensor& dead_in, int64_t k) {
  TORCH_CHECK_TYPE(g_bb_in.scalar_type() == at::kFloat && g_bm_in.scalar_type() == at::kFloat &&
                       gram.scalar_type() == at::kFloat,
                   "g_bb, g_bm and gram must be float32");
  TORCH_CHECK_VALUE(g_bb_in.dim() == 2 && g_bb_in.size(0) == g_bb_in.size(1), "g_bb must be (n, n), got ",
                    g_bb_in.sizes());
  const int64_t n = g_bb_in.size(0), u = n + count;
  TORCH_CHECK_VALUE(g_bm_in.dim() == 2 && g_bm_in.size(0) == n && g_bm_in.size(1) == count, "g_bm must be (", n,
                    ", ", count, "), got ", g_bm_in.sizes());
  TORCH_CHECK_VALUE(gram.dim() == 2 && gram.size(0) == gram.size(1) && gram.size(0) >= count && count >= 0 &&
                        gram.is_contiguous(),
                    "gram must be a contiguous square buffer of at least count = ", count, " rows, got ",
                    gram.sizes());
  TORCH_CHECK_VALUE(ids_in.dim() == 1 && ids_in.size(0) == u && ids_in.scalar_type() == at::kLong,
                    "ids must be int64 of length n + count = ", u);
  TORCH_CHECK_VALUE(dead_in.dim() == 1 && dead_in.size(0) == count && dead_in.scalar_type() == at::kBool,
                    "dead must be bool of length count = ", count);
  TORCH_CHECK_VALUE(k >= 1 && k <= u && k <= 64, "k must be in [1, min(64, n + count)], got ", k);
  // g_mb = g_bm^T (count, n), given by the caller (it writes the cache's columns from it too): a memory row's
  // batch columns contiguous, instead of n loads 16 KB apart per memory row.
  TORCH_CHECK_VALUE(g_mb_in.dim() == 2 && g_mb_in.size(0) == count && g_mb_in.size(1) == n &&
                        g_mb_in.scalar_type() == at::kFloat,
                    "g_mb must be float32 (", count, ", ", n, "), got ", g_mb_in.sizes());
  const at::Tensor g_bb = g_bb_in.contiguous(), g_bm = g_bm_in.contiguous(), g_mb = g_mb_in.contiguous();
  const at::Tensor ids_t = ids_in.contiguous(), dead_t = dead_in.contiguous();
  const float* GB = g_bb.const_data_ptr<float>();
  const float* GM = g_bm.const_data_ptr<float>();
  const float* GT = g_mb.const_data_ptr<float>();
  const float* GC = gram.const_data_ptr<float>();
  const int64_t ld = gram.size(1);
  const int64_t* ids = ids_t.const_data_ptr<int64_t>();
  const bool* dead = dead_t.const_data_ptr<bool>();

  // Rows sharing an id: U sorted by (id, index), each row's group a run of it.
  std::vector<int64_t> order(u);
  std::iota(order.begin(), order.end(), 0);
  std::stable_sort(order.begin(), order.end(), [&](int64_t a, int64_t b) { return ids[a] < ids[b]; });
  std::vector<int64_t> run_start(u), run_end(u);
  for (int64_t s = 0; s < u;) {
    int64_t e = s + 1;
    while (e < u && ids[order[e]] == ids[order[s]]) ++e;
    for (int64_t t = s; t < e; ++t) run_start[order[t]] = s, run_end[order[t]] = e;
    s = e;
  }
  auto sim = [&](int64_t i, int64_t j) -> float {
    if (i < n) return j < n ? GB[i * n + j] : GM[i * count + (j - n)];
    return j < n ? GT[(i - n) * n + j] : GC[(i - n) * ld + (j - n)];
  };
  auto is_dead = [&](int64_t j) { return j >= n && dead[j - n]; };

  at::Tensor out = at::empty({u, k}, ids_t.options());
  int64_t* O = out.data_ptr<int64_t>();
  // Dead memory columns penalised for the chunk maxima of scan_pruned.
  std::vector<float> penalty(count);
  for (int64_t s = 0; s < count; ++s) penalty[s] = dead[s] ? -std::numeric_limits<float>::infinity() : 0.f;
  const bool avx2 = cpu_has_avx2_fma();
  at::parallel_for(0, u, 64, [&](int64_t b, int64_t e) {
    std::vector<std::pair<float, int64_t>> forced;
    std::vector<float> maxima(count / kGroup + 1);
    for (int64_t i = b; i < e; ++i) {
      int64_t* list = O + i * k;
      // Forced: i, then its id's other live rows by (similarity desc, column asc).
      forced.clear();
      for (int64_t t = run_start[i]; t < run_end[i]; ++t) {
        const int64_t j = order[t];
        if (j != i && !is_dead(j)) forced.emplace_back(sim(i, j), j);
      }
      std::sort(forced.begin(), forced.end(),
                [](const auto& a, const auto& c) { return ranks_before(a.first, a.second, c.first, c.second); });
      int64_t pos = 0;
      list[pos++] = i;
      for (size_t t = 0; t < forced.size() && pos < k; ++t) list[pos++] = forced[t].second;
      if (pos == k) continue;
      // The rest: the best of the other live rows (memory part, then batch part; the order is free).
      TopBuffer buf;
      buf.cap = k - pos;
      const int64_t id = ids[i];
      auto live_other = [&](int64_t j) { return ids[j] != id && !is_dead(j); };
      // The memory part first (its pruned scan leaves a high cut), then the batch part.
      const float* mem_row = i < n ? GM + i * count : GC + (i - n) * ld;
      const float* batch_row = i < n ? GB + i * n : GT + (i - n) * n;
      int64_t extra = 0;  // memory columns sharing the row's id (itself included): refused besides the dead
      for (int64_t t = run_start[i]; t < run_end[i]; ++t) extra += order[t] >= n;
      if (buf.cap + extra <= 64)
        scan_pruned(mem_row, count, n, buf, live_other, penalty.data(), extra, maxima.data(), avx2);
      else
        scan(mem_row, count, n, buf, live_other, avx2);
      scan(batch_row, n, 0, buf, live_other, avx2);
      for (int64_t t = 0; t < buf.size; ++t) list[pos++] = buf.col[t];
      if (pos == k) continue;
      // Fewer than k live rows: the dead ones (not i) fill the list in the same order.
      TopBuffer rest;
      rest.cap = k - pos;
      auto dead_other = [&](int64_t j) { return j != i && is_dead(j); };
      scan(mem_row, count, n, rest, dead_other, avx2);
      for (int64_t t = 0; t < rest.size; ++t) list[pos++] = rest.col[t];
      TORCH_CHECK_VALUE(pos == k, "row ", i, " has fewer than k = ", k, " other rows");
    }
  });
  return out;
}

}  // namespace

TORCH_LIBRARY_IMPL(ssml_fast, CPU, m) { m.impl("_contextual_cache_neighbours", &contextual_cache_neighbours_cpu); }

}  // namespace ssml_fast
