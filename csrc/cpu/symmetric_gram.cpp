// symmetric_gram_cpu: x x^T computing only the tiles on and below the diagonal.
//
// Why our own kernel: libtorch exports no SYRK, and a Gram through at::mm does the whole n x n product. At the
// sizes of an STML step (n = 240, d = 1024) the Gram matrices of the student g / teacher embeddings are a third
// of the loss's time; a blocked at::mm over the lower block triangle saves little because MKL is inefficient
// on the small blocks. This is the usual BLIS structure (packed panels, a 6 x 16 register tile, k blocked by
// 256; the A side read in place), restricted to the lower triangle; at one thread it runs at the same GFLOP/s as MKL's sgemm on the
// 2-core AMD VM of our benchmarks (~33, that core's peak), so the saving is the skipped upper tiles.
#include "cpu/symmetric_gram.h"
#include "cpu/blocked_pairs.h"
#include "cpu/cpu_features.h"

#include <algorithm>
#include <cstring>
#include <vector>

#include <ATen/Dispatch.h>
#include <ATen/Parallel.h>
#include <ATen/ops/empty.h>
#include <ATen/ops/mm.h>
#include <ATen/ops/zeros.h>

#if defined(__x86_64__) && (defined(__GNUC__) || defined(__clang__))
#include <immintrin.h>
#define SSML_GRAM_AVX2 1
#endif

namespace ssml_fast {
namespace {

// Mirror the lower triangle onto the upper one, in square blocks so both sides stay in cache.
template <typename T>
void mirror_lower(T* g, int64_t n) {
  for_each_upper_pair(n, [&](int64_t i, int64_t j) {
    if (j != i) g[i * n + j] = g[j * n + i];
  });
}

#ifdef SSML_GRAM_AVX2
constexpr int64_t MR = 6, NR = 16, KC = 256, MC = 48;  // MC: 8 row tiles (48 KB of x rows), one B panel 16 KB

// The 8 x 8 block at rows[0..8) (each a pointer to 8 floats) transposed into out + k * width, k = 0..7.
__attribute__((target("avx2,fma"))) inline void transpose_8x8(const float* const* rows, float* out,
                                                             int64_t width) {
  __m256 r0 = _mm256_loadu_ps(rows[0]), r1 = _mm256_loadu_ps(rows[1]), r2 = _mm256_loadu_ps(rows[2]);
  __m256 r3 = _mm256_loadu_ps(rows[3]), r4 = _mm256_loadu_ps(rows[4]), r5 = _mm256_loadu_ps(rows[5]);
  __m256 r6 = _mm256_loadu_ps(rows[6]), r7 = _mm256_loadu_ps(rows[7]);
  const __m256 t0 = _mm256_unpacklo_ps(r0, r1), t1 = _mm256_unpackhi_ps(r0, r1);
  const __m256 t2 = _mm256_unpacklo_ps(r2, r3), t3 = _mm256_unpackhi_ps(r2, r3);
  const __m256 t4 = _mm256_unpacklo_ps(r4, r5), t5 = _mm256_unpackhi_ps(r4, r5);
  const __m256 t6 = _mm256_unpacklo_ps(r6, r7), t7 = _mm256_unpackhi_ps(r6, r7);
  const __m256 u0 = _mm256_shuffle_ps(t0, t2, 0x44), u1 = _mm256_shuffle_ps(t0, t2, 0xEE);
  const __m256 u2 = _mm256_shuffle_ps(t1, t3, 0x44), u3 = _mm256_shuffle_ps(t1, t3, 0xEE);
  const __m256 u4 = _mm256_shuffle_ps(t4, t6, 0x44), u5 = _mm256_shuffle_ps(t4, t6, 0xEE);
  const __m256 u6 = _mm256_shuffle_ps(t5, t7, 0x44), u7 = _mm256_shuffle_ps(t5, t7, 0xEE);
  _mm256_storeu_ps(out + 0 * width, _mm256_permute2f128_ps(u0, u4, 0x20));
  _mm256_storeu_ps(out + 1 * width, _mm256_permute2f128_ps(u1, u5, 0x20));
  _mm256_storeu_ps(out + 2 * width, _mm256_permute2f128_ps(u2, u6, 0x20));
  _mm256_storeu_ps(out + 3 * width, _mm256_permute2f128_ps(u3, u7, 0x20));
  _mm256_storeu_ps(out + 4 * width, _mm256_permute2f128_ps(u0, u4, 0x31));
  _mm256_storeu_ps(out + 5 * width, _mm256_permute2f128_ps(u1, u5, 0x31));
  _mm256_storeu_ps(out + 6 * width, _mm256_permute2f128_ps(u2, u6, 0x31));
  _mm256_storeu_ps(out + 7 * width, _mm256_permute2f128_ps(u3, u7, 0x31));
}

// Columns [c0, c0 + kc) of all n rows of x (row stride d) as NR-wide panels, each kc x NR with the NR rows
// of one k contiguous; rows past n are zero. By 8 x 8 register transposes: a scalar loop here cost as much
// as a fifth of the kernel's time at n = 240 (one scattered store per element).
__attribute__((target("avx2,fma"))) void pack_b_panels(const float* x, int64_t n, int64_t d, int64_t panels,
                                                       int64_t c0, int64_t kc, float* out) {
  alignas(32) static const float zeros[8] = {0.f, 0.f, 0.f, 0.f, 0.f, 0.f, 0.f, 0.f};
  const int64_t k8 = kc - kc % 8;
  for (int64_t p = 0; p < panels; ++p, out += kc * NR) {
    for (int64_t half = 0; half < NR; half += 8) {
      const float* rows[8];
      for (int64_t r = 0; r < 8; ++r) {
        const int64_t row = p * NR + half + r;
        rows[r] = row < n ? x + row * d + c0 : zeros;
      }
      for (int64_t k = 0; k < k8; k += 8) {
        transpose_8x8(rows, out + k * NR + half, NR);
        for (int64_t r = 0; r < 8; ++r)
          if (rows[r] != zeros) rows[r] += 8;
      }
      for (int64_t r = 0; r < 8; ++r)  // the k tail, rows already advanced to column k8
        for (int64_t k = k8; k < kc; ++k) out[k * NR + half + r] = rows[r] == zeros ? 0.f : rows[r][k - k8];
    }
  }
}

// C[0:mr, 0:nr] (row stride ldc) (+)= the 6 x (8 V) product of rows a, a + lda, ... (k contiguous, read in
// place: 6 rows x kc of x stay in L1, so unlike b they need no packing) and the packed panel b (kc x 16, of
// which the first 8 V columns are used). Rows at or past mr read row 0 again (their results are not stored).
// V = 2 is the main tile; V = 1 the diagonal tiles whose columns on or below the diagonal fit in 8 (half
// the work there; ~3 % of the whole at n = 240).
template <int V>
__attribute__((target("avx2,fma"))) void tile_6xv(int64_t kc, const float* a, int64_t lda, const float* b,
                                                  float* c, int64_t ldc, bool accumulate, int64_t mr, int64_t nr) {
  const float* a0 = a;
  const float* a1 = mr > 1 ? a + lda : a;
  const float* a2 = mr > 2 ? a + 2 * lda : a;
  const float* a3 = mr > 3 ? a + 3 * lda : a;
  const float* a4 = mr > 4 ? a + 4 * lda : a;
  const float* a5 = mr > 5 ? a + 5 * lda : a;
  __m256 c00 = _mm256_setzero_ps(), c01 = c00, c10 = c00, c11 = c00, c20 = c00, c21 = c00;
  __m256 c30 = c00, c31 = c00, c40 = c00, c41 = c00, c50 = c00, c51 = c00;
  for (int64_t k = 0; k < kc; ++k, b += NR) {
    const __m256 b0 = _mm256_loadu_ps(b);
    const __m256 b1 = V == 2 ? _mm256_loadu_ps(b + 8) : b0;
    __m256 av = _mm256_broadcast_ss(a0 + k);
    c00 = _mm256_fmadd_ps(av, b0, c00);
    if constexpr (V == 2) c01 = _mm256_fmadd_ps(av, b1, c01);
    av = _mm256_broadcast_ss(a1 + k);
    c10 = _mm256_fmadd_ps(av, b0, c10);
    if constexpr (V == 2) c11 = _mm256_fmadd_ps(av, b1, c11);
    av = _mm256_broadcast_ss(a2 + k);
    c20 = _mm256_fmadd_ps(av, b0, c20);
    if constexpr (V == 2) c21 = _mm256_fmadd_ps(av, b1, c21);
    av = _mm256_broadcast_ss(a3 + k);
    c30 = _mm256_fmadd_ps(av, b0, c30);
    if constexpr (V == 2) c31 = _mm256_fmadd_ps(av, b1, c31);
    av = _mm256_broadcast_ss(a4 + k);
    c40 = _mm256_fmadd_ps(av, b0, c40);
    if constexpr (V == 2) c41 = _mm256_fmadd_ps(av, b1, c41);
    av = _mm256_broadcast_ss(a5 + k);
    c50 = _mm256_fmadd_ps(av, b0, c50);
    if constexpr (V == 2) c51 = _mm256_fmadd_ps(av, b1, c51);
  }
  alignas(32) float t[MR][NR];
  _mm256_store_ps(t[0], c00), _mm256_store_ps(t[0] + 8, c01), _mm256_store_ps(t[1], c10);
  _mm256_store_ps(t[1] + 8, c11), _mm256_store_ps(t[2], c20), _mm256_store_ps(t[2] + 8, c21);
  _mm256_store_ps(t[3], c30), _mm256_store_ps(t[3] + 8, c31), _mm256_store_ps(t[4], c40);
  _mm256_store_ps(t[4] + 8, c41), _mm256_store_ps(t[5], c50), _mm256_store_ps(t[5] + 8, c51);
  for (int64_t i = 0; i < mr; ++i) {
    float* row = c + i * ldc;
    if (accumulate)
      for (int64_t j = 0; j < nr; ++j) row[j] += t[i][j];
    else
      std::memcpy(row, t[i], sizeof(float) * nr);
  }
}

void lower_gram_avx2(const float* x, int64_t n, int64_t d, float* g) {
  const int64_t tiles = (n + NR - 1) / NR, blocks = (n + MC - 1) / MC;
  std::vector<float> packed_b(tiles * NR * KC);
  // Row blocks get more work the lower they are: hand them out as 0, last, 1, last - 1, ... so the two
  // halves at::parallel_for gives two threads hold about equal work.
  std::vector<int64_t> order;
  for (int64_t lo = 0, hi = blocks - 1; lo <= hi; ++lo, --hi) {
    order.push_back(lo);
    if (hi != lo) order.push_back(hi);
  }
  for (int64_t pc = 0; pc < d; pc += KC) {  // k blocks in a fixed order: each entry's sum order is fixed
    const int64_t kc = std::min(KC, d - pc);
    pack_b_panels(x, n, d, tiles, pc, kc, packed_b.data());
    at::parallel_for(0, blocks, 1, [&](int64_t o0, int64_t o1) {
      for (int64_t o = o0; o < o1; ++o) {
        const int64_t i_begin = order[o] * MC, rows = std::min(MC, n - i_begin);
        const int64_t panels = (rows + MR - 1) / MR;
        const int64_t last_row = i_begin + rows - 1;
        for (int64_t jt = 0; jt * NR <= last_row; ++jt) {
          const int64_t j0 = jt * NR, nr = std::min(NR, n - j0);
          const float* b = packed_b.data() + jt * NR * kc;
          for (int64_t p = 0; p < panels; ++p) {
            const int64_t i0 = i_begin + p * MR, mr = std::min(MR, n - i0);
            if (j0 > i0 + mr - 1) continue;  // tile wholly above the diagonal
            // Columns past the panel's last row are above the diagonal (mirrored later): when the ones
            // needed fit in 8, the half tile. Every entry still gets the same multiply-adds in one order.
            const int64_t needed = std::min(nr, i0 + mr - j0);
            if (needed <= 8)
              tile_6xv<1>(kc, x + i0 * d + pc, d, b, g + i0 * n + j0, n, pc > 0, mr, needed);
            else
              tile_6xv<2>(kc, x + i0 * d + pc, d, b, g + i0 * n + j0, n, pc > 0, mr, nr);
          }
        }
      }
    });
  }
}
#endif

}  // namespace

bool symmetric_gram_entrywise(const at::Tensor& x) {
#ifdef SSML_GRAM_AVX2
  return x.dim() == 2 && x.scalar_type() == at::kFloat && cpu_has_avx2_fma() && x.size(0) > 0 && x.size(1) > 0;
#else
  return false;
#endif
}

at::Tensor symmetric_gram_cpu(const at::Tensor& x_in) {
  TORCH_CHECK_VALUE(x_in.dim() == 2, "symmetric_gram: x must be 2-D, got shape ", x_in.sizes());
  const at::Tensor x = x_in.contiguous();
  const int64_t n = x.size(0), d = x.size(1);
#ifdef SSML_GRAM_AVX2
  if (x.scalar_type() == at::kFloat && cpu_has_avx2_fma() && n > 0) {
    if (d == 0) return at::zeros({n, n}, x.options());
    at::Tensor g = at::empty({n, n}, x.options());
    lower_gram_avx2(x.const_data_ptr<float>(), n, d, g.data_ptr<float>());
    mirror_lower(g.data_ptr<float>(), n);
    return g;
  }
#endif
  at::Tensor g = at::mm(x, x.t());
  AT_DISPATCH_FLOATING_TYPES(g.scalar_type(), "symmetric_gram_cpu", [&] { mirror_lower(g.data_ptr<scalar_t>(), n); });
  return g;
}

}  // namespace ssml_fast
