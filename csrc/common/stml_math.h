#pragma once
// Per-element math of STML's loss terms (relative distance, relaxed contrastive, self-distillation KL),
// shared by the CPU kernels (g++) and the CUDA kernels (nvcc). Every matrix is (n, c) with c >= n: row i
// of a batch against [batch; other columns], so column i of row i is the self pair.
#include "common/hd.h"

namespace ssml_fast {

// max(x, 0) keeping a NaN (torch.clamp_min does), written as the select CPU loops vectorise (maxps order).
template <typename A>
SSML_HD A relu(A x) { return x < A(0) ? A(0) : x; }

// max(a, b) that keeps a NaN of either (torch.amax does): a NaN row's softmax is NaN, never a finite guess.
// The CUDA row max; the CPU loop takes a plain max plus a NaN flag instead, which vectorises (same result).
template <typename A>
SSML_HD A max_keep_nan(A a, A b) { return a != a ? a : ((b > a || b != b) ? b : a); }

// 1 / max(row_sum / c, eps): the reciprocal of the row mean (zero self-distance included in c).
template <typename A>
SSML_HD A relative_inv(A row_sum, A c, A eps) {
  const A mean = row_sum / c;
  return A(1) / (mean < eps ? eps : mean);  // a NaN mean stays NaN (the comparison is false)
}

// One pair of the relaxed contrastive sum: w d^2 + (1 - w) [delta - d]_+^2, written as (d^2 - r^2) w + r^2,
// and its derivative in d, 2 (w (d + r) - r) (eq 3.21). Two plain functions (no out-parameter), so the
// CPU loops over a row vectorise.
template <typename A>
SSML_HD A rc_value(A d, A w, A delta) {
  const A r = relu(delta - d);
  const A rr = r * r;
  return (d * d - rr) * w + rr;
}

template <typename A>
SSML_HD A rc_grad(A d, A w, A delta) {
  const A r = relu(delta - d);
  return A(2) * ((d + r) * w - r);
}

// The pull part alone, w d^2, and its derivative 2 w d: a column that pulls without pushing.
template <typename A>
SSML_HD A rc_pull_value(A d, A w) { return d * d * w; }

template <typename A>
SSML_HD A rc_pull_grad(A d, A w) { return A(2) * d * w; }

// One column of KL(q || p) for a row, with log p = lf - lse_f and log q = lg - lse_g the log-softmaxes of
// the logits lf = -d^f / T, lg = -d^g / T. q log(q / p), 0 where q is 0 (q log q -> 0, also for -inf
// logits); the derivative in d^f is (q - p) / T.
template <typename A>
SSML_HD A kl_column(A log_p, A log_q, A q) { return q == A(0) ? A(0) : q * (log_q - log_p); }

}  // namespace ssml_fast
