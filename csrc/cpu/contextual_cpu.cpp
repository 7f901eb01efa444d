// CPU backend of contextual_similarity (STML, thesis eqs 3.15-3.20): one GEMM, then per row a partial
// selection of N_k(i), bit sets for the k-NN and mutual (R) sets, intersections by popcount, and the
// query expansion as sparse row sums. No Python loop, nothing larger than n x n.
#include <algorithm>
#include <bit>
#include <cmath>
#include <limits>
#include <numeric>
#include <type_traits>
#include <vector>

#if defined(__x86_64__) && (defined(__GNUC__) || defined(__clang__))
#include <immintrin.h>
#endif

#include <ATen/Dispatch.h>
#include <ATen/Parallel.h>
#include <ATen/TensorOperators.h>
#include <ATen/ops/empty.h>
#include <ATen/ops/exp.h>
#include <ATen/ops/from_blob.h>
#include <ATen/ops/mul.h>
#include <ATen/ops/zeros.h>
#include <torch/library.h>

#include "common/contextual_host.h"
#include "common/full_precision.h"
#include "common/contextual_math.h"
#include "common/duplicates_cpu.h"
#include "cpu/blocked_pairs.h"
#include "cpu/cpu_features.h"
#include "cpu/symmetric_gram.h"

namespace ssml_fast {
namespace {

// Rows per parallel_for task for O(n)-per-row work.
constexpr int64_t kRowGrain = 8;
// Up to this many neighbours per row are selected with an insertion buffer, beyond it with nth_element.
constexpr int64_t kInsertionMax = 32;

#if defined(__x86_64__) && (defined(__GNUC__) || defined(__clang__))
__attribute__((target("avx2"))) bool none_below_avx2(const float* p, float cut) {
  return _mm256_movemask_ps(_mm256_cmp_ps(_mm256_loadu_ps(p), _mm256_set1_ps(cut), _CMP_LT_OQ)) == 0;
}

// intersection_count with the POPCNT instruction (every AVX2 CPU has it); without -mpopcnt the builtin is
// a libgcc call per word.
__attribute__((target("popcnt"))) int64_t intersection_count_popcnt(const uint64_t* a, const uint64_t* b,
                                                                    int64_t words) {
  int64_t c = 0;
  for (int64_t w = 0; w < words; ++w) c += __builtin_popcountll(a[w] & b[w]);
  return c;
}

int64_t intersections(const uint64_t* a, const uint64_t* b, int64_t words, bool avx2) {
  return avx2 ? intersection_count_popcnt(a, b, words) : intersection_count(a, b, words);
}
#else
bool none_below_avx2(const float*, float) { return false; }
int64_t intersections(const uint64_t* a, const uint64_t* b, int64_t words, bool) {
  return intersection_count(a, b, words);
}
#endif

// Is none of the 8 values at p below cut? (float32 with AVX2: one compare; otherwise a plain loop.)
template <typename T>
bool none_below(const T* p, T cut, bool avx2) {
  if constexpr (std::is_same_v<T, float>) {
    if (avx2) return none_below_avx2(p, cut);
  }
  bool below = false;
  for (int q = 0; q < 8; ++q) below |= p[q] < cut;
  return !below;
}

// Row i of the squared unit distances from row i of an exactly symmetric Gram: entry j takes unit_sqdist's
// operands as (min(i, j), max(i, j)), the order in which the duplicate-aware loop reads them.
template <typename T>
void unit_sqdist_row(const T* g, const T* s, const T* inv, int64_t i, int64_t n, T* out) {
  const T si = s[i], ii = inv[i];
#pragma omp simd
  for (int64_t j = 0; j < i; ++j) out[j] = unit_sqdist<T>(g[j], s[j], si, inv[j], ii, false);
  out[i] = T(0);
#pragma omp simd
  for (int64_t j = i + 1; j < n; ++j) out[j] = unit_sqdist<T>(g[j], si, s[j], ii, inv[j], false);
}

template <typename T>
void contextual_cpu_impl(const at::Tensor& x, int64_t k, double sigma, const int64_t* ids, at::Tensor& w,
                         at::Tensor& w_p, at::Tensor& w_c) {
  const int64_t n = x.size(0);
  const int64_t W = (n + 63) / 64;  // 64-bit words per bit set
  const int64_t m = expansion_size(k);

  // d2 (n, n): squared distances of the L2-normalised rows, from the raw Gram matrix. Every entry is read from
  // the upper triangle at the rows' first copies (a GEMM may round identical rows or mirrored entries
  // differently), so d2 is exactly symmetric and identical rows tie exactly (their order is then by index).
  const FullFloat32Matmul full_precision;
  at::Tensor gram = symmetric_gram_cpu(x);
  {
    // Finite rows whose squared norm over- or underflows (float32 beyond ~1e19 or below ~1e-19) are brought
    // to scale first (exact, w is scale-invariant); the usual input pays one pass over the Gram diagonal.
    const T* dg = gram.const_data_ptr<T>();
    bool ok = true;
    for (int64_t i = 0; i < n && ok; ++i) {
      const T g = dg[i * n + i];
      ok = std::isfinite(g) && g > T(0x1p-80);  // a zero diagonal may be an underflow: look at the rows
    }
    if (!ok) {
      const at::Tensor xs = contextual_rescaled(x);
      if (!xs.is_same(x)) gram = symmetric_gram_cpu(xs);
    }
  }
  const T* G = gram.const_data_ptr<T>();
  std::vector<T> inv(n), s(n);
  for (int64_t i = 0; i < n; ++i) {
    const T g = G[i * n + i];
    // ||x_i||^2 is finite iff row i is (barring overflow of a huge finite row): the NaN check for free.
    TORCH_CHECK_VALUE(std::isfinite(g), "teacher_emb contains NaN or infinite values (row ", i, ")");
    inv[i] = T(1) / std::max(std::sqrt(g), T(kNormEps));
    s[i] = g * inv[i] * inv[i];
  }
  // Duplicates from the Gram when its entries allow it (its diagonal is finite here, checked above), else by
  // hashing the rows (~0.2 ms at 240 x 1024). A rescaled Gram is of x times one power of two, whose equal
  // rows are x's: the Gram test stays a necessary condition, and the element-wise check is on x itself.
  std::vector<int64_t> rep;
  const bool duplicates = symmetric_gram_entrywise(x)
                              ? duplicate_representatives_by_gram(x.const_data_ptr<T>(), G, n, x.size(1), rep)
                              : duplicate_representatives(x.const_data_ptr<T>(), n, x.size(1), rep);
  at::Tensor d2_t = at::empty({n, n}, x.options());
  T* d2 = d2_t.data_ptr<T>();
  if (!duplicates) {
    // The Gram is exactly symmetric (symmetric_gram_cpu mirrors it), so row i reads its own row of it, and
    // each entry takes its operands in the (lower index, higher index) order of the general loop below: the
    // same value, from contiguous vectorised passes instead of a strided mirror write.
    at::parallel_for(0, n, kRowGrain, [&](int64_t b, int64_t e) {
      for (int64_t i = b; i < e; ++i) unit_sqdist_row<T>(G + i * n, s.data(), inv.data(), i, n, d2 + i * n);
    });
  } else {
    // Row i's task writes (i, j >= i) and its mirror (j, i), which no other task touches.
    at::parallel_for(0, n, kRowGrain, [&](int64_t b, int64_t e) {
      for (int64_t i = b; i < e; ++i) {
        for (int64_t j = i; j < n; ++j) {
          const int64_t u = std::min(rep[i], rep[j]), v = std::max(rep[i], rep[j]);
          const T dist = unit_sqdist<T>(G[u * n + v], s[u], s[v], inv[u], inv[v], u == v);
          d2[i * n + j] = dist;
          d2[j * n + i] = dist;
        }
      }
    });
  }

  const bool avx2 = cpu_has_avx2_fma();
  // N_k(i) in rank order (nn, (n, k)) and as a bit set (nb, (n, W)).
  std::vector<int64_t> nn(n * k);
  std::vector<uint64_t> nb(n * W, 0), rb(n * W, 0);
  // Per row: i and the rows sharing its id (groups 0 and 1, usually a handful) are sorted outright. The
  // `rest` nearest of the others, by (d2, column): for small `rest` an insertion-sorted buffer scanned in
  // ascending column order (an equal distance never displaces an earlier column); otherwise nth_element on
  // the plain distances gives the cut value v, and the columns below v, then those equal to v in ascending
  // column order, fill the list.
  at::parallel_for(0, n, kRowGrain, [&](int64_t b, int64_t e) {
    std::vector<int64_t> forced, picked;
    std::vector<T> vals(n);
    for (int64_t i = b; i < e; ++i) {
      const T* row = d2 + i * n;
      auto before = [&](int64_t a, int64_t c) {
        return ranks_before<T>(neighbour_group(i, a, ids), row[a], a, neighbour_group(i, c, ids), row[c], c);
      };
      forced.assign(1, i);
      if (ids != nullptr)
        for (int64_t j = 0; j < n; ++j)
          if (j != i && ids[j] == ids[i]) forced.push_back(j);
      std::sort(forced.begin(), forced.end(), before);
      const int64_t nf = std::min<int64_t>(k, static_cast<int64_t>(forced.size()));
      const int64_t rest = k - nf;
      picked.clear();
      if (rest > 0 && rest <= kInsertionMax) {
        vals.resize(std::max<int64_t>(n, rest));
        picked.resize(rest);
        int64_t cnt = 0;
        T cut = std::numeric_limits<T>::infinity();
        for (int64_t j = 0; j < n; ++j) {
          // Once the buffer is full few entries beat its cut: 8 at a time are ruled out by one compare.
          if (cnt == rest && (j & 7) == 0 && j + 8 <= n && none_below(row + j, cut, avx2)) {
            j += 7;
            continue;
          }
          const T v = row[j];
          if (cnt == rest && !(v < cut)) continue;
          if (neighbour_group(i, j, ids) != 2) continue;
          int64_t p = cnt < rest ? cnt++ : rest - 1;
          while (p > 0 && v < vals[p - 1]) {
            vals[p] = vals[p - 1];
            picked[p] = picked[p - 1];
            --p;
          }
          vals[p] = v;
          picked[p] = j;
          if (cnt == rest) cut = vals[rest - 1];
        }
      } else if (rest > 0) {
        int64_t nv = 0;
        for (int64_t j = 0; j < n; ++j)
          if (neighbour_group(i, j, ids) == 2) vals[nv++] = row[j];
        std::nth_element(vals.begin(), vals.begin() + (rest - 1), vals.begin() + nv);
        const T cut = vals[rest - 1];
        for (int64_t j = 0; j < n; ++j)
          if (neighbour_group(i, j, ids) == 2 && row[j] < cut) picked.push_back(j);
        for (int64_t j = 0; j < n && static_cast<int64_t>(picked.size()) < rest; ++j)
          if (neighbour_group(i, j, ids) == 2 && row[j] == cut) picked.push_back(j);
        std::sort(picked.begin(), picked.end(), before);
      }
      for (int64_t r = 0; r < k; ++r) {
        const int64_t j = r < nf ? forced[r] : picked[r - nf];
        nn[i * k + r] = j;
        nb[i * W + (j >> 6)] |= 1ULL << (j & 63);
      }
    }
  });

  // R(i) = {j in N_k(i) : i in N_k(j)}, kept in N_k(i)'s order (rl, (n, k), first rs[i] valid) and as bits.
  std::vector<int64_t> rl(n * k), rs(n);
  at::parallel_for(0, n, kRowGrain, [&](int64_t b, int64_t e) {
    for (int64_t i = b; i < e; ++i) {
      int64_t c = 0;
      for (int64_t r = 0; r < k; ++r) {
        const int64_t j = nn[i * k + r];
        if (test_bit(&nb[j * W], i)) {
          rl[i * k + c++] = j;
          rb[i * W + (j >> 6)] |= 1ULL << (j & 63);
        }
      }
      rs[i] = c;  // >= 1: i is first in its own list
    }
  });

  // w~_ij = |R(i) ∩ R(j)| / |R(i)| for j in R(i) (eq 3.17), stored beside rl.
  std::vector<T> wt(n * k);
  at::parallel_for(0, n, kRowGrain, [&](int64_t b, int64_t e) {
    for (int64_t i = b; i < e; ++i) {
      const T inv_size = T(1) / static_cast<T>(rs[i]);
      for (int64_t c = 0; c < rs[i]; ++c) {
        const int64_t j = rl[i * k + c];
        wt[i * k + c] = static_cast<T>(intersections(&rb[i * W], &rb[j * W], W, avx2)) * inv_size;
      }
    }
  });

  // Query expansion (eq 3.18), unscaled: what_i = sum of w~_h over the first m entries h of N_k(i).
  int64_t sparse_work = 0;
  for (int64_t i = 0; i < n; ++i)
    for (int64_t r = 0; r < m; ++r) sparse_work += rs[nn[i * k + r]];
  at::Tensor what_t;
  if (prefer_dense_expansion(sparse_work, n)) {
    at::Tensor wt_dense = at::zeros({n, n}, x.options());
    T* wd = wt_dense.data_ptr<T>();
    for (int64_t h = 0; h < n; ++h)
      for (int64_t c = 0; c < rs[h]; ++c) wd[h * n + rl[h * k + c]] = wt[h * k + c];
    at::Tensor nn_t = at::from_blob(nn.data(), {n, k}, at::TensorOptions().dtype(at::kLong));
    what_t = dense_expansion(nn_t, m, wt_dense);
  } else {
    what_t = at::zeros({n, n}, x.options());
    T* what = what_t.data_ptr<T>();
    at::parallel_for(0, n, kRowGrain, [&](int64_t b, int64_t e) {
      for (int64_t i = b; i < e; ++i) {
        T* out = what + i * n;
        for (int64_t r = 0; r < m; ++r) {
          const int64_t h = nn[i * k + r];
          for (int64_t c = 0; c < rs[h]; ++c) out[rl[h * k + c]] += wt[h * k + c];
        }
      }
    });
  }

  // w^C = (w^ + w^T) / 2 (eq 3.19), w^P = exp(-d2 / sigma) (eq 3.15), w = (w^P + w^C) / 2 (eq 3.20).
  // w^P through ATen's vectorised exp; for float32 it is computed in the output itself.
  at::Tensor wp_t;
  if constexpr (std::is_same_v<T, float>) {
    at::mul_out(w_p, d2_t, -1.0 / sigma).exp_();
    wp_t = w_p;
  } else {
    wp_t = at::exp(d2_t * (-1.0 / sigma));
  }
  const T* wp = wp_t.const_data_ptr<T>();
  const T* what = what_t.const_data_ptr<T>();
  float* pw = w.data_ptr<float>();
  float* pp = w_p.data_ptr<float>();
  float* pc = w_c.data_ptr<float>();
  const T inv_m = T(1) / static_cast<T>(m);
  // In 32 x 32 block pairs: w^C_ij and w^C_ji are one value (its sum is symmetric), computed once and
  // written to both places while both blocks are in cache (row-wise, what_ji was a strided read).
  auto put = [&](int64_t i, int64_t j, T c) {
    const T p = wp[i * n + j];
    pc[i * n + j] = static_cast<float>(c);
    if constexpr (!std::is_same_v<T, float>) pp[i * n + j] = static_cast<float>(p);
    pw[i * n + j] = static_cast<float>((p + c) / T(2));
  };
  for_each_upper_pair(n, [&](int64_t i, int64_t j) {
    const T c = contextual_symmetric_part<T>(what[i * n + j], what[j * n + i], inv_m);
    put(i, j, c);
    if (j != i) put(j, i, c);
  });
}

std::tuple<at::Tensor, at::Tensor, at::Tensor> contextual_similarity_cpu(const at::Tensor& teacher_emb, int64_t k,
                                                                         double sigma,
                                                                         const std::optional<at::Tensor>& ids) {
  check_contextual_args(teacher_emb, k, sigma, ids);
  const at::Tensor x = teacher_emb.contiguous();
  const at::Tensor id = ids.has_value() ? ids->contiguous() : at::Tensor();
  const int64_t n = x.size(0);
  const auto opts = x.options().dtype(at::kFloat);
  at::Tensor w = at::empty({n, n}, opts), w_p = at::empty({n, n}, opts), w_c = at::empty({n, n}, opts);
  AT_DISPATCH_FLOATING_TYPES(x.scalar_type(), "contextual_similarity_cpu", [&] {
    contextual_cpu_impl<scalar_t>(x, k, sigma, id.defined() ? id.const_data_ptr<int64_t>() : nullptr, w, w_p, w_c);
  });
  return {w, w_p, w_c};
}

}  // namespace

TORCH_LIBRARY_IMPL(ssml_fast, CPU, m) {
  m.impl("contextual_similarity", &contextual_similarity_cpu);
}

}  // namespace ssml_fast
