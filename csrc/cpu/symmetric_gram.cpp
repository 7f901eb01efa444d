// symmetric_gram_cpu: x x^T computing only the tiles on and below the diagonal.
//
// Why our own kernel: libtorch exports no SYRK, and a Gram through at::mm does the whole n x n product. At the
// sizes of an STML step (n = 240, d = 1024) the Gram matrices of the student g / teacher embeddings are a third
// of the loss's time; a blocked at::mm over the lower block triangle saves little because MKL is inefficient
// on the small blocks. This is the usual BLIS structure (packed panels, a 6 x 16 register tile, k blocked by
// 256), restricted to the lower triangle; at one thread it runs at the same GFLOP/s as MKL's sgemm on the
// 2-core AMD VM of our benchmarks (~33, that core's peak), so the saving is the skipped upper tiles.
#include "cpu/symmetric_gram.h"
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
  constexpr int64_t kB = 32;
  at::parallel_for(0, (n + kB - 1) / kB, 1, [&](int64_t b0, int64_t b1) {
    for (int64_t bi = b0; bi < b1; ++bi) {
      const int64_t i0 = bi * kB, i1 = std::min(n, i0 + kB);
      for (int64_t j0 = i0; j0 < n; j0 += kB) {  // blocks at and right of the diagonal block, rows i0..i1
        const int64_t j1 = std::min(n, j0 + kB);
        for (int64_t i = i0; i < i1; ++i)
          for (int64_t j = std::max(j0, i + 1); j < j1; ++j) g[i * n + j] = g[j * n + i];
      }
    }
  });
}

#ifdef SSML_GRAM_AVX2
constexpr int64_t MR = 6, NR = 16, KC = 256, MC = 48;  // MC: 8 row panels; A block 48 KB, one B tile 16 KB

// Rows [r0, r0 + rows) x columns [c0, c0 + kc) of x (row stride d) as `rows / width` panels, each kc x width
// with the width rows of one k contiguous; rows past n are zero.
void pack_panels(const float* x, int64_t n, int64_t d, int64_t r0, int64_t rows, int64_t c0, int64_t kc,
                 int64_t width, float* out) {
  for (int64_t p0 = r0; p0 < r0 + rows; p0 += width) {
    for (int64_t r = 0; r < width; ++r) {
      const int64_t row = p0 + r;
      if (row < n) {
        const float* src = x + row * d + c0;
        for (int64_t k = 0; k < kc; ++k) out[k * width + r] = src[k];
      } else {
        for (int64_t k = 0; k < kc; ++k) out[k * width + r] = 0.f;
      }
    }
    out += kc * width;
  }
}

// C[0:mr, 0:nr] (row stride ldc) (+)= the 6 x 16 product of packed panels a (kc x 6) and b (kc x 16).
__attribute__((target("avx2,fma"))) void tile_6x16(int64_t kc, const float* a, const float* b, float* c,
                                                   int64_t ldc, bool accumulate, int64_t mr, int64_t nr) {
  __m256 c00 = _mm256_setzero_ps(), c01 = c00, c10 = c00, c11 = c00, c20 = c00, c21 = c00;
  __m256 c30 = c00, c31 = c00, c40 = c00, c41 = c00, c50 = c00, c51 = c00;
  for (int64_t k = 0; k < kc; ++k, a += MR, b += NR) {
    const __m256 b0 = _mm256_loadu_ps(b), b1 = _mm256_loadu_ps(b + 8);
    __m256 av = _mm256_broadcast_ss(a);
    c00 = _mm256_fmadd_ps(av, b0, c00), c01 = _mm256_fmadd_ps(av, b1, c01);
    av = _mm256_broadcast_ss(a + 1);
    c10 = _mm256_fmadd_ps(av, b0, c10), c11 = _mm256_fmadd_ps(av, b1, c11);
    av = _mm256_broadcast_ss(a + 2);
    c20 = _mm256_fmadd_ps(av, b0, c20), c21 = _mm256_fmadd_ps(av, b1, c21);
    av = _mm256_broadcast_ss(a + 3);
    c30 = _mm256_fmadd_ps(av, b0, c30), c31 = _mm256_fmadd_ps(av, b1, c31);
    av = _mm256_broadcast_ss(a + 4);
    c40 = _mm256_fmadd_ps(av, b0, c40), c41 = _mm256_fmadd_ps(av, b1, c41);
    av = _mm256_broadcast_ss(a + 5);
    c50 = _mm256_fmadd_ps(av, b0, c50), c51 = _mm256_fmadd_ps(av, b1, c51);
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
    pack_panels(x, n, d, 0, tiles * NR, pc, kc, NR, packed_b.data());
    at::parallel_for(0, blocks, 1, [&](int64_t o0, int64_t o1) {
      std::vector<float> packed_a(MC * kc);
      for (int64_t o = o0; o < o1; ++o) {
        const int64_t i_begin = order[o] * MC, rows = std::min(MC, n - i_begin);
        const int64_t panels = (rows + MR - 1) / MR;
        pack_panels(x, n, d, i_begin, panels * MR, pc, kc, MR, packed_a.data());
        const int64_t last_row = i_begin + rows - 1;
        for (int64_t jt = 0; jt * NR <= last_row; ++jt) {
          const int64_t j0 = jt * NR, nr = std::min(NR, n - j0);
          const float* b = packed_b.data() + jt * NR * kc;
          for (int64_t p = 0; p < panels; ++p) {
            const int64_t i0 = i_begin + p * MR, mr = std::min(MR, n - i0);
            if (j0 > i0 + mr - 1) continue;  // tile wholly above the diagonal
            tile_6x16(kc, packed_a.data() + p * MR * kc, b, g + i0 * n + j0, n, pc > 0, mr, nr);
          }
        }
      }
    });
  }
}
#endif

}  // namespace

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
