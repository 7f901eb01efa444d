#pragma once
// Numerical constants shared by every kernel (CPU and CUDA), defined once.

namespace ssml_fast {

// torch.nn.functional.normalize's eps: x / max(||x||, eps). Every op that normalises rows (pairwise cosine
// distance, the memory bank's momentum update, contextual similarity's teacher rows) uses this one value, so
// the fused ops agree with F.normalize and with each other.
constexpr double kNormEps = 1e-12;

}  // namespace ssml_fast
