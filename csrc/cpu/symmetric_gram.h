#pragma once
// x x^T of a float32 (n, d) matrix with the work of half a GEMM (CPU).
#include <ATen/core/Tensor.h>

namespace ssml_fast {

// G = x x^T, (n, n), exactly symmetric (the upper triangle is the mirror of the lower one). On x86-64 CPUs
// with AVX2 + FMA, float32: only the tiles on and below the diagonal are computed (~55 % of the GEMM's
// multiply-adds at n = 240), with each entry summed in one fixed order, so the result is bitwise the same
// for any thread count. Otherwise (float64, other CPUs) at::mm(x, x.t()) mirrored the same way.
at::Tensor symmetric_gram_cpu(const at::Tensor& x);

// Does symmetric_gram_cpu(x) take that kernel? There every entry G_ij is the same sequence of multiply-adds
// over rows i and j (one k order, one register tile, for every tile), so two rows equal in value give
// G_ij == G_ii == G_jj exactly: a necessary condition for duplicate rows that costs no pass over x.
bool symmetric_gram_entrywise(const at::Tensor& x);

}  // namespace ssml_fast
