#pragma once
#include <cmath>
#include "common/hd.h"

namespace ssml_fast {

enum class Metric : int { Euclidean = 0, SqEuclidean = 1, Cosine = 2 };

// Distance from the Gram entry. Euclidean family: sq_x, sq_y are squared row norms and dot = <x, y>;
// the squared distance is clamped at 0 because the GEMM form can round slightly negative.
// Cosine: dot is <x/|x|, y/|y|> and sq_x, sq_y are unused.
template <typename T>
SSML_HD T distance_from_gram(T sq_x, T sq_y, T dot, Metric metric) {
  if (metric == Metric::Cosine) return T(1) - dot;
  T d2 = sq_x + sq_y - T(2) * dot;
  d2 = d2 > T(0) ? d2 : T(0);
  return metric == Metric::Euclidean ? sqrt(d2) : d2;
}

// Coefficient H with dL/dx_i = sum_j H_ij (x_i - y_j) (euclidean family) or
// dL/dxhat_i = sum_j H_ij yhat_j (cosine), given g = dL/dd_ij and the forward distance d.
// At d = 0 the euclidean gradient is taken as 0, like torch.cdist.
template <typename T>
SSML_HD T distance_grad_coef(T g, T d, Metric metric) {
  switch (metric) {
    case Metric::Euclidean: return d > T(0) ? g / d : T(0);
    case Metric::SqEuclidean: return d > T(0) ? T(2) * g : T(0);
    default: return -g;
  }
}

}  // namespace ssml_fast
