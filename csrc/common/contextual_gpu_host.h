#pragma once
// Host orchestration of the CUDA backend of contextual_similarity, templated on `Launch` (the CUDA kernels of
// cuda/contextual_cuda.cu, or CPU loops over the same per-element bodies of common/contextual_kernels.h for the
// tests), like common/rerank_host.h. The Gram GEMM and the dense expansion GEMM go through ATen (cuBLAS / MKL).
//
// Launch provides, for scalar type T and device pointers:
//   sqdist<T>(gram, inv, s, rep, n, eps, d2)  rank<T>(d2, ids, n, k, nn, in_knn)
//   mutual(in_knn, n, rb, rsize)             wtilde<T>(rb, rsize, n, wt)
//   combine<T>(d2, wt, what, nn, n, k, m, sigma, w, w_p, w_c)
// The host synchronises twice: for the NaN check (with the scale of the rows) and in the duplicate-row search.
#include <tuple>

#include <ATen/Dispatch.h>
#include <ATen/core/Tensor.h>
#include <ATen/ops/empty.h>
#include <ATen/ops/mm.h>
#include <ATen/ops/zeros.h>

#include "common/contextual_host.h"
#include "common/full_precision.h"
#include "common/numerics.h"

namespace ssml_fast {

template <typename Launch>
std::tuple<at::Tensor, at::Tensor, at::Tensor> contextual_similarity_gpu_algorithm(
    const at::Tensor& teacher_emb, int64_t k, double sigma, const std::optional<at::Tensor>& ids,
    const Launch& launch) {
  // The NaN / inf check and the exact power-of-two rescaling of rows whose squared norms would overflow, in
  // one host read.
  const at::Tensor x = contextual_rescaled(teacher_emb.contiguous());
  const at::Tensor id = ids.has_value() ? ids->contiguous() : at::Tensor();
  const int64_t n = x.size(0), W = (n + 63) / 64, m = expansion_size(k);
  const auto f32 = x.options().dtype(at::kFloat);
  at::Tensor w = at::empty({n, n}, f32), w_p = at::empty({n, n}, f32), w_c = at::empty({n, n}, f32);

  const FullFloat32Matmul full_precision;
  const at::Tensor gram = at::mm(x, x.t());
  at::Tensor d2 = at::empty({n, n}, x.options());
  const at::Tensor nn = at::empty({n, k}, x.options().dtype(at::kLong));
  const at::Tensor in_knn = at::empty({n, n}, x.options().dtype(at::kByte));
  const at::Tensor rb = at::empty({n, W}, x.options().dtype(at::kLong));  // bit sets, as uint64 words
  const at::Tensor rsize = at::zeros({n}, x.options().dtype(at::kInt));
  at::Tensor wt = at::empty({n, n}, x.options());
  auto* rb_bits = reinterpret_cast<uint64_t*>(rb.data_ptr<int64_t>());

  AT_DISPATCH_FLOATING_TYPES(x.scalar_type(), "contextual_similarity_gpu_algorithm", [&] {
    at::Tensor inv = at::empty({n}, x.options()), s = at::empty({n}, x.options());
    const at::Tensor rep = duplicate_representatives_aten(x);
    launch.template sqdist<scalar_t>(gram.const_data_ptr<scalar_t>(), inv.data_ptr<scalar_t>(),
                                     s.data_ptr<scalar_t>(), rep.const_data_ptr<int64_t>(), n, kNormEps,
                                     d2.data_ptr<scalar_t>());
    launch.template rank<scalar_t>(d2.const_data_ptr<scalar_t>(), id.defined() ? id.const_data_ptr<int64_t>() : nullptr,
                                   n, k, nn.data_ptr<int64_t>(), in_knn.data_ptr<uint8_t>());
    launch.mutual(in_knn.const_data_ptr<uint8_t>(), n, rb_bits, rsize.data_ptr<int32_t>());
    launch.template wtilde<scalar_t>(rb_bits, rsize.const_data_ptr<int32_t>(), n, wt.data_ptr<scalar_t>());
    // Without a host sync the exact sparse work is unknown; n * m * k bounds it.
    at::Tensor what;
    if (prefer_dense_expansion(n * m * k, n)) what = dense_expansion(nn, m, wt);
    launch.template combine<scalar_t>(d2.const_data_ptr<scalar_t>(), wt.const_data_ptr<scalar_t>(),
                                      what.defined() ? what.const_data_ptr<scalar_t>() : nullptr,
                                      nn.const_data_ptr<int64_t>(), n, k, m, sigma, w.data_ptr<float>(),
                                      w_p.data_ptr<float>(), w_c.data_ptr<float>());
  });
  return {w, w_p, w_c};
}

}  // namespace ssml_fast
