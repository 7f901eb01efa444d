#pragma once
// String options of the op schemas, parsed once at the op boundary for every backend.
#include <string_view>
#include <c10/util/Exception.h>
#include "common/distance_math.h"
#include "common/triplet_math.h"

namespace ssml_fast {

inline Metric parse_metric(std::string_view s) {
  if (s == "euclidean") return Metric::Euclidean;
  if (s == "sqeuclidean") return Metric::SqEuclidean;
  if (s == "cosine") return Metric::Cosine;
  TORCH_CHECK_VALUE(false, "distance must be 'euclidean', 'sqeuclidean' or 'cosine', got '", s, "'");
}

inline Mining parse_mining(std::string_view s) {
  if (s == "all") return Mining::All;
  if (s == "hard") return Mining::Hard;
  if (s == "semihard") return Mining::SemiHard;
  TORCH_CHECK_VALUE(false, "mining must be 'all', 'hard' or 'semihard', got '", s, "'");
}

inline Reduction parse_reduction(std::string_view s) {
  if (s == "mean_nonzero") return Reduction::MeanNonzero;
  if (s == "mean") return Reduction::Mean;
  if (s == "sum") return Reduction::Sum;
  TORCH_CHECK_VALUE(false, "reduction must be 'mean_nonzero', 'mean' or 'sum', got '", s, "'");
}

}  // namespace ssml_fast
