// CPU backend of STML's loss-term ops (relative distance, relaxed contrastive, self-distillation KL): a few
// passes per row, rows in parallel, row sums accumulated in double and added in row order, so the result
// does not depend on the number of threads. The per-row loops are plain functions outside the dtype
// dispatch macro, branch-free and marked `omp simd`, so they vectorise (a branch on delta - d > 0 made the
// relaxed contrastive pass 3x slower, data-dependently).
#include <algorithm>
#include <cmath>
#include <limits>
#include <vector>

#include <ATen/Dispatch.h>
#include <ATen/Parallel.h>
#include <ATen/ops/empty.h>
#include <ATen/ops/empty_like.h>
#include <ATen/ops/scalar_tensor.h>
#include <torch/library.h>

#include "common/stml_checks.h"
#include "common/stml_math.h"

namespace ssml_fast {
namespace {

// Rows per task: at least ~16k elements each, so small matrices run on one thread.
int64_t row_grain(int64_t c) { return std::max<int64_t>(1, 16384 / std::max<int64_t>(c, 1)); }

// sum_{j in [b, e)} v[j] in double, over four fixed lanes (element j goes to lane (j - b) % 4) added in a fixed
// order at the end. Each lane is a plain sequential sum, so the result is the same whether the compiler
// vectorises the loop or not, in every copy of the caller (at::parallel_for calls its body both inline and
// inside the OpenMP region, and the two copies may be compiled differently): results do not depend on the
// number of threads. Four independent chains also hide the add latency.
template <typename T>
double sum_range(const T* v, int64_t b, int64_t e) {
  double s0 = 0, s1 = 0, s2 = 0, s3 = 0;
  int64_t j = b;
  for (; j + 4 <= e; j += 4) {
    s0 += static_cast<double>(v[j]);
    s1 += static_cast<double>(v[j + 1]);
    s2 += static_cast<double>(v[j + 2]);
    s3 += static_cast<double>(v[j + 3]);
  }
  if (j < e) s0 += static_cast<double>(v[j]);
  if (j + 1 < e) s1 += static_cast<double>(v[j + 1]);
  if (j + 2 < e) s2 += static_cast<double>(v[j + 2]);
  return (s0 + s1) + (s2 + s3);
}

// The same sum without element `skip` (the self pair): two ranges, so nothing is added and subtracted.
template <typename T>
double sum_except(const T* v, int64_t c, int64_t skip) {
  return sum_range(v, 0, skip) + sum_range(v, skip + 1, c);
}

at::Tensor total_of(const std::vector<double>& rows, at::ScalarType dtype) {
  double total = 0;
  for (double v : rows) total += v;
  return at::scalar_tensor(total, at::TensorOptions().dtype(dtype));
}

template <typename T>
void relative_row(const T* d, T* out, T* inv, int64_t c, int64_t i, double eps) {
  // The GEMM form leaves ~sqrt(eps) noise at the self pair: the sum skips it, and rel_ii is exactly 0.
  const T k = static_cast<T>(relative_inv<double>(sum_except(d, c, i), static_cast<double>(c), eps));
#pragma omp simd
  for (int64_t j = 0; j < c; ++j) out[j] = d[j] * k;
  out[i] = 0;
  *inv = k;
}

template <typename T>
void relative_backward_row(const T* g, const T* r, T k, T* out, int64_t c, int64_t i) {
  // The products first (into out), then their sum: elementwise loops vectorise, the sum stays deterministic.
#pragma omp simd
  for (int64_t j = 0; j < c; ++j) out[j] = g[j] * r[j];
  // dL/dd_ij = (x_ij - (1/c) sum_l x_il rel_il) / mu_i
  const T mean = static_cast<T>(sum_range(out, 0, c) / static_cast<double>(c));
#pragma omp simd
  for (int64_t j = 0; j < c; ++j) out[j] = (g[j] - mean) * k;
  out[i] = 0;
}

// Writes each pair's value into `grad`, sums it without the self pair, then overwrites it with the
// gradient: branch-free passes (columns from `pull_from` on take the pull part only). Returns the row's sum.
template <typename T>
double relaxed_contrastive_row(const T* d, const T* w, T* grad, int64_t c, int64_t i, T delta, T scale,
                               int64_t pull_from) {
#pragma omp simd
  for (int64_t j = 0; j < pull_from; ++j) grad[j] = rc_value<T>(d[j], w[j], delta);
#pragma omp simd
  for (int64_t j = pull_from; j < c; ++j) grad[j] = rc_pull_value<T>(d[j], w[j]);
  const double s = sum_except(grad, c, i);
#pragma omp simd
  for (int64_t j = 0; j < pull_from; ++j) grad[j] = rc_grad<T>(d[j], w[j], delta) * scale;
#pragma omp simd
  for (int64_t j = pull_from; j < c; ++j) grad[j] = rc_pull_grad<T>(d[j], w[j]) * scale;
  grad[i] = 0;  // the self pair is not a pair
  return s;
}

// KL row, first half: the logits -d / T shifted by their row max into xf / xg (the excluded self column
// at -inf); returns the two maxima, NaN for a row holding a NaN (torch's log_softmax makes it all NaN).
template <typename T>
void kl_shift_row(const T* f, const T* g, T* xf, T* xg, int64_t c, int64_t skip, T neg_inv_t, T* mf_out,
                  T* mg_out) {
  const T ninf = -std::numeric_limits<T>::infinity();
#pragma omp simd
  for (int64_t j = 0; j < c; ++j) {
    xf[j] = f[j] * neg_inv_t;
    xg[j] = g[j] * neg_inv_t;
  }
  if (skip >= 0) xf[skip] = xg[skip] = ninf;
  T mf = ninf, mg = ninf;
  int nan = 0;
#pragma omp simd reduction(max : mf, mg) reduction(| : nan)
  for (int64_t j = 0; j < c; ++j) {
    mf = std::max(mf, xf[j]);
    mg = std::max(mg, xg[j]);
    nan |= static_cast<int>(xf[j] != xf[j]) | static_cast<int>(xg[j] != xg[j]);
  }
  if (nan) mf = mg = std::numeric_limits<T>::quiet_NaN();
#pragma omp simd
  for (int64_t j = 0; j < c; ++j) {
    xf[j] -= mf;
    xg[j] -= mg;
  }
  *mf_out = mf;
  *mg_out = mg;
}

// KL row, second half, after ef = exp(xf), eg = exp(xg): sum_j q_j log(q_j / p_j), and ef is overwritten
// with the gradient scale * (q - p) / T (eg with the terms).
template <typename T>
double kl_finish_row(const T* f, const T* g, T* ef, T* eg, int64_t c, int64_t skip, T mf, T mg,
                     T neg_inv_t, T inv_t, T scale) {
  const double zf = sum_range(ef, 0, c), zg = sum_range(eg, 0, c);
  const T lse_f = mf + static_cast<T>(std::log(zf)), lse_g = mg + static_cast<T>(std::log(zg));
  const T rzf = static_cast<T>(1.0 / zf), rzg = static_cast<T>(1.0 / zg);
  // Each column's KL term replaces eg (read just before), then a deterministic sum of them.
#pragma omp simd
  for (int64_t j = 0; j < c; ++j) {
    const T q = eg[j] * rzg, p = ef[j] * rzf;
    eg[j] = kl_column<T>(f[j] * neg_inv_t - lse_f, g[j] * neg_inv_t - lse_g, q);
    ef[j] = (q - p) * inv_t * scale;
  }
  if (skip >= 0) ef[skip] = 0;  // p = q = 0 there (and its kl_column is 0: q == 0)
  return sum_range(eg, 0, c);
}

std::tuple<at::Tensor, at::Tensor> row_relative_cpu(const at::Tensor& dist_in, double eps) {
  check_rows_matrix("dist", dist_in);
  const at::Tensor dist = dist_in.contiguous();
  const int64_t n = dist.size(0), c = dist.size(1);
  at::Tensor rel = at::empty_like(dist), inv = at::empty({n}, dist.options());
  AT_DISPATCH_FLOATING_TYPES(dist.scalar_type(), "row_relative_cpu", [&] {
    const scalar_t* d = dist.const_data_ptr<scalar_t>();
    scalar_t* r = rel.data_ptr<scalar_t>();
    scalar_t* iv = inv.data_ptr<scalar_t>();
    at::parallel_for(0, n, row_grain(c), [&](int64_t begin, int64_t end) {
      for (int64_t i = begin; i < end; ++i) relative_row<scalar_t>(d + i * c, r + i * c, iv + i, c, i, eps);
    });
  });
  return {rel, inv};
}

at::Tensor row_relative_backward_cpu(const at::Tensor& grad_in, const at::Tensor& rel_in, const at::Tensor& inv_in) {
  check_rows_matrix("rel", rel_in);
  check_like("grad", grad_in, rel_in, "rel");
  check_row_vector("inv", inv_in, rel_in);
  const at::Tensor grad = grad_in.contiguous(), rel = rel_in.contiguous(), inv = inv_in.contiguous();
  const int64_t n = rel.size(0), c = rel.size(1);
  at::Tensor out = at::empty_like(rel);
  AT_DISPATCH_FLOATING_TYPES(rel.scalar_type(), "row_relative_backward_cpu", [&] {
    const scalar_t* g = grad.const_data_ptr<scalar_t>();
    const scalar_t* r = rel.const_data_ptr<scalar_t>();
    const scalar_t* iv = inv.const_data_ptr<scalar_t>();
    scalar_t* o = out.data_ptr<scalar_t>();
    at::parallel_for(0, n, row_grain(c), [&](int64_t begin, int64_t end) {
      for (int64_t i = begin; i < end; ++i)
        relative_backward_row<scalar_t>(g + i * c, r + i * c, iv[i], o + i * c, c, i);
    });
  });
  return out;
}

std::tuple<at::Tensor, at::Tensor> relaxed_contrastive_rows_cpu(const at::Tensor& dist_in, const at::Tensor& w_in,
                                                                double delta, double scale, int64_t push_cols) {
  check_rows_matrix("dist", dist_in);
  check_like("weights", w_in, dist_in, "dist");
  const at::Tensor dist = dist_in.contiguous(), w = w_in.contiguous();
  const int64_t n = dist.size(0), c = dist.size(1), pull_from = checked_push_cols(push_cols, c);
  at::Tensor grad = at::empty_like(dist);
  std::vector<double> rows(n, 0.0);
  AT_DISPATCH_FLOATING_TYPES(dist.scalar_type(), "relaxed_contrastive_rows_cpu", [&] {
    const scalar_t* d = dist.const_data_ptr<scalar_t>();
    const scalar_t* wp = w.const_data_ptr<scalar_t>();
    scalar_t* gp = grad.data_ptr<scalar_t>();
    const scalar_t dl = static_cast<scalar_t>(delta), sc = static_cast<scalar_t>(scale);
    at::parallel_for(0, n, row_grain(c), [&](int64_t begin, int64_t end) {
      for (int64_t i = begin; i < end; ++i)
        rows[i] = relaxed_contrastive_row<scalar_t>(d + i * c, wp + i * c, gp + i * c, c, i, dl, sc, pull_from) *
                  scale;
    });
  });
  return {total_of(rows, dist.scalar_type()), grad};
}

std::tuple<at::Tensor, at::Tensor> self_distillation_kl_rows_cpu(const at::Tensor& df_in, const at::Tensor& dg_in,
                                                                 double temperature, bool exclude_self, double scale) {
  check_rows_matrix("student_dist", df_in);
  check_like("teacher_dist", dg_in, df_in, "student_dist");
  TORCH_CHECK_VALUE(temperature > 0, "temperature must be positive, got ", temperature);
  const at::Tensor df = df_in.contiguous(), dg = dg_in.contiguous();
  const int64_t n = df.size(0), c = df.size(1);
  // ef / eg: the shifted logits, then their exponentials (ATen's vectorised exp, which a plain loop over
  // std::exp is not); ef becomes the gradient in the last pass.
  at::Tensor ef = at::empty_like(df), eg = at::empty_like(df);
  at::Tensor mf_t = at::empty({n}, df.options()), mg_t = at::empty({n}, df.options());
  std::vector<double> rows(n, 0.0);
  AT_DISPATCH_FLOATING_TYPES(df.scalar_type(), "self_distillation_kl_rows_cpu", [&] {
    using T = scalar_t;
    const T* f = df.const_data_ptr<T>();
    const T* g = dg.const_data_ptr<T>();
    T* pf = ef.data_ptr<T>();
    T* pg = eg.data_ptr<T>();
    T* mf = mf_t.data_ptr<T>();
    T* mg = mg_t.data_ptr<T>();
    const T neg_inv_t = static_cast<T>(-1.0 / temperature), inv_t = static_cast<T>(1.0 / temperature);
    const T sc = static_cast<T>(scale);
    at::parallel_for(0, n, row_grain(c), [&](int64_t begin, int64_t end) {
      for (int64_t i = begin; i < end; ++i)
        kl_shift_row<T>(f + i * c, g + i * c, pf + i * c, pg + i * c, c, exclude_self ? i : -1, neg_inv_t, mf + i,
                        mg + i);
    });
    ef.exp_();
    eg.exp_();
    at::parallel_for(0, n, row_grain(c), [&](int64_t begin, int64_t end) {
      for (int64_t i = begin; i < end; ++i)
        rows[i] = kl_finish_row<T>(f + i * c, g + i * c, pf + i * c, pg + i * c, c, exclude_self ? i : -1, mf[i],
                                   mg[i], neg_inv_t, inv_t, sc) * scale;
    });
  });
  return {total_of(rows, df.scalar_type()), ef};
}

}  // namespace

TORCH_LIBRARY_IMPL(ssml_fast, CPU, m) {
  m.impl("row_relative", &row_relative_cpu);
  m.impl("row_relative_backward", &row_relative_backward_cpu);
  m.impl("relaxed_contrastive_rows", &relaxed_contrastive_rows_cpu);
  m.impl("self_distillation_kl_rows", &self_distillation_kl_rows_cpu);
}

}  // namespace ssml_fast
