// CUDA backend of triplet_margin_loss_from_dist: the shared sorted-rows orchestration with CUDA launches.
#include <c10/cuda/CUDAException.h>
#include <c10/cuda/CUDAGuard.h>
#include <c10/cuda/CUDAStream.h>
#include <torch/library.h>

#include "common/triplet_sorted_host.h"
#include "cuda/launchers.h"

namespace ssml_fast {
namespace {

struct CudaLaunch {
  template <typename T>
  static void batch_all(const T* dist, const TripletRows& r, const T* negs, const double* prefix, const int64_t* n_neg,
                        const T* pos, const int64_t* n_pos, double* contrib, int64_t* active, T* grad) {
    cuda::batch_all<T>(dist, r, negs, prefix, n_neg, pos, n_pos, contrib, active, grad,
                       c10::cuda::getCurrentCUDAStream());
    C10_CUDA_KERNEL_LAUNCH_CHECK();
  }
  template <typename T>
  static void batch_hard(const T* dist, const TripletRows& r, bool soft, double* row_loss, int64_t* row_active,
                         int64_t* row_valid, T* grad) {
    cuda::batch_hard<T>(dist, r, soft, row_loss, row_active, row_valid, grad, c10::cuda::getCurrentCUDAStream());
    C10_CUDA_KERNEL_LAUNCH_CHECK();
  }
  template <typename T>
  static void semihard(const T* dist, const TripletRows& r, bool soft, const T* negs, const int64_t* neg_idx,
                       const int64_t* n_neg, double* contrib, int64_t* active, int64_t* valid, int64_t* choice,
                       T* grad) {
    cuda::semihard<T>(dist, r, soft, negs, neg_idx, n_neg, contrib, active, valid, choice, grad,
                      c10::cuda::getCurrentCUDAStream());
    C10_CUDA_KERNEL_LAUNCH_CHECK();
  }
};

std::tuple<at::Tensor, at::Tensor, at::Tensor, at::Tensor> triplet_margin_loss_from_dist_cuda(
    const at::Tensor& dist, const at::Tensor& labels, const at::Tensor& ref_labels, bool exclude_diagonal,
    double margin, c10::string_view mining, c10::string_view reduction, bool soft) {
  check_triplet_devices(dist, labels, ref_labels);  // before the guard: a CPU tensor must raise, not fault
  c10::cuda::CUDAGuard guard(dist.device());
  return triplet_sorted_impl<CudaLaunch>(dist, labels, ref_labels, exclude_diagonal, margin, mining, reduction, soft);
}

}  // namespace

TORCH_LIBRARY_IMPL(ssml_fast, CUDA, m) {
  m.impl("triplet_margin_loss_from_dist", &triplet_margin_loss_from_dist_cuda);
}

}  // namespace ssml_fast
