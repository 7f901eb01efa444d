#pragma once
// Runtime CPU feature checks for the kernels with hand-written AVX2 paths (symmetric_gram.cpp,
// contextual_cache_cpu.cpp), read once. SSML_FAST_DISABLE_AVX2=1 in the environment forces their portable
// paths, so those are tested on AVX2 machines too (tests/test_cpu_fallbacks.py).
#include <cstdlib>
#include <cstring>

namespace ssml_fast {

inline bool avx2_disabled_by_env() {
  const char* v = std::getenv("SSML_FAST_DISABLE_AVX2");
  return v != nullptr && std::strcmp(v, "") != 0 && std::strcmp(v, "0") != 0;
}

inline bool cpu_has_avx2_fma() {
#if defined(__x86_64__) && (defined(__GNUC__) || defined(__clang__))
  static const bool ok = !avx2_disabled_by_env() && __builtin_cpu_supports("avx2") && __builtin_cpu_supports("fma");
  return ok;
#else
  return false;
#endif
}

}  // namespace ssml_fast
