#pragma once
#include <cstdint>
#include "common/triplet_math.h"

namespace ssml_fast {

// Factor from the summed loss to the reduced loss. An empty denominator (no active or no valid
// triplet) gives 0: loss 0 and a zero gradient rather than 0/0.
inline double reduction_scale(Reduction reduction, int64_t active, int64_t triplets) {
  switch (reduction) {
    case Reduction::MeanNonzero: return active > 0 ? 1.0 / static_cast<double>(active) : 0.0;
    case Reduction::Mean: return triplets > 0 ? 1.0 / static_cast<double>(triplets) : 0.0;
    default: return 1.0;
  }
}

}  // namespace ssml_fast
