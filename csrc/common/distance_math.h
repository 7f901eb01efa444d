#pragma once
#include <cmath>
#include <cstdint>
#include "common/hd.h"

namespace ssml_fast {

enum class Metric : int { Euclidean = 0, SqEuclidean = 1, Cosine = 2 };

// Distance from the Gram entry. Euclidean family: sq_x, sq_y are squared row norms and dot = <x, y>;
// the squared distance is clamped at 0 because the GEMM form can round slightly negative. The clamp
// lets NaN through (`d2 < 0` is false for NaN): a NaN row must give NaN distances, not 0.
// Cosine: dot is <x/|x|, y/|y|> and sq_x, sq_y are unused.
template <typename T>
SSML_HD T distance_from_gram(T sq_x, T sq_y, T dot, Metric metric) {
  if (metric == Metric::Cosine) return T(1) - dot;
  T d2 = sq_x + sq_y - T(2) * dot;
  d2 = d2 < T(0) ? T(0) : d2;
  return metric == Metric::Euclidean ? sqrt(d2) : d2;
}

// Is the GEMM-form entry trustworthy? Not when a squared norm or the result is NaN / inf: a NaN or
// inf coordinate, or a finite row so large (float32 beyond ~1e19) that its squared norm overflows.
template <typename T>
SSML_HD bool gram_form_ok(T sq_x, T sq_y, T value) {
  using std::isfinite;
  return isfinite(sq_x) && isfinite(sq_y) && isfinite(value);
}

// The euclidean-family distance of one pair straight from the coordinates, for the entries the GEMM
// form cannot give: differences in double, scaled by the largest one before squaring (as hypot does),
// so huge finite rows keep their true distance and only a true value beyond the type's range becomes
// inf. NaN wherever the plain formula sqrt(sum((x - y)^2)) is NaN (a NaN coordinate, or inf - inf),
// inf where it is inf.
template <typename T>
SSML_HD T direct_distance(const T* x, const T* y, int64_t D, Metric metric) {
  using std::fabs;
  using std::isinf;
  using std::sqrt;
  double m = 0;
  for (int64_t t = 0; t < D; ++t) {
    const double d = fabs(static_cast<double>(x[t]) - static_cast<double>(y[t]));
    if (d != d) return static_cast<T>(d);
    m = d > m ? d : m;
  }
  if (m == 0 || isinf(m)) return static_cast<T>(m);
  double s = 0;
  for (int64_t t = 0; t < D; ++t) {
    const double r = (static_cast<double>(x[t]) - static_cast<double>(y[t])) / m;
    s += r * r;
  }
  const double dist = m * sqrt(s);
  return static_cast<T>(metric == Metric::Euclidean ? dist : dist * dist);
}

// Coefficient H with dL/dx_i = sum_j H_ij (x_i - y_j) (euclidean family) or
// dL/dxhat_i = sum_j H_ij yhat_j (cosine), given g = dL/dd_ij and the forward distance d.
// At d = 0 the euclidean gradient is taken as 0, like torch.cdist; a NaN distance gives a NaN
// coefficient (the comparison `d == 0` is false for NaN), so NaN reaches the gradients too.
template <typename T>
SSML_HD T distance_grad_coef(T g, T d, Metric metric) {
  switch (metric) {
    case Metric::Euclidean: return d == T(0) ? T(0) : g / d;
    case Metric::SqEuclidean: return d == T(0) ? T(0) : (d == d ? T(2) * g : d);
    default: return -g;
  }
}

}  // namespace ssml_fast
