#pragma once
// The ops' distances come from float32 GEMMs whose results rank neighbours and pick hardest pairs: with
// TF32 (allow_tf32, set_float32_matmul_precision("high")) or bf16 (MKLDNN "medium") they lose about three
// digits and neighbour lists drift. This guard runs an op's GEMMs in full float32 whatever the user chose
// and restores the user's settings afterwards. The settings are process-global, so a GEMM that another
// thread runs meanwhile also gets full precision (never less).
#include <ATen/Context.h>

namespace ssml_fast {

class FullFloat32Matmul {
 public:
  FullFloat32Matmul() {
    at::Context& ctx = at::globalContext();
    cuda_ = ctx.float32Precision(at::Float32Backend::CUDA, at::Float32Op::MATMUL);
    mkldnn_ = ctx.float32Precision(at::Float32Backend::MKLDNN, at::Float32Op::MATMUL);
    active_ = ctx.float32MatmulPrecision() != at::Float32MatmulPrecision::HIGHEST || ctx.allowTF32CuBLAS() ||
              reduced(cuda_) || reduced(mkldnn_);
    if (active_) {
      ctx.setFloat32Precision(at::Float32Backend::CUDA, at::Float32Op::MATMUL, at::Float32Precision::IEEE);
      ctx.setFloat32Precision(at::Float32Backend::MKLDNN, at::Float32Op::MATMUL, at::Float32Precision::IEEE);
    }
  }
  ~FullFloat32Matmul() {
    if (!active_) return;
    at::Context& ctx = at::globalContext();
    ctx.setFloat32Precision(at::Float32Backend::CUDA, at::Float32Op::MATMUL, cuda_);
    ctx.setFloat32Precision(at::Float32Backend::MKLDNN, at::Float32Op::MATMUL, mkldnn_);
  }
  FullFloat32Matmul(const FullFloat32Matmul&) = delete;
  FullFloat32Matmul& operator=(const FullFloat32Matmul&) = delete;

 private:
  static bool reduced(at::Float32Precision p) {
    return p == at::Float32Precision::TF32 || p == at::Float32Precision::BF16;
  }
  at::Float32Precision cuda_, mkldnn_;
  bool active_ = false;
};

}  // namespace ssml_fast
