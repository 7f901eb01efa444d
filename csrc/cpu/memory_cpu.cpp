// CPU backend of the memory-bank ops: the FIFO ring copy (queue_enqueue_) and the fused
// gather-mix-normalise-scatter of the momentum bank (bank_momentum_update_). Both write in place and
// allocate nothing proportional to the ring or bank size.
#include <algorithm>
#include <cstring>
#include <utility>
#include <vector>

#include <ATen/Dispatch.h>
#include <ATen/OpMathType.h>
#include <ATen/Parallel.h>
#include <ATen/core/Tensor.h>
#include <torch/library.h>

#include "common/memory_checks.h"
#include "common/memory_math.h"

namespace ssml_fast {
namespace {

// Large copies are split so both cores share the memory bandwidth; small ones stay on one thread.
constexpr int64_t kCopyGrain = int64_t{1} << 16;

void parallel_copy(char* dst, const char* src, int64_t bytes) {
  at::parallel_for(0, bytes, kCopyGrain, [&](int64_t begin, int64_t end) {
    std::memcpy(dst + begin, src + begin, static_cast<size_t>(end - begin));
  });
}

void enqueue_one(const at::Tensor& buffer, const at::Tensor& rows_in, int64_t ptr) {
  const at::Tensor rows = rows_in.contiguous();
  const int64_t S = buffer.size(0), N = rows.size(0);
  if (N == 0 || buffer.numel() == 0) return;
  const int64_t row_bytes = static_cast<int64_t>(buffer.nbytes()) / S;
  char* dst = static_cast<char*>(buffer.data_ptr());
  const char* src = static_cast<const char*>(rows.const_data_ptr());
  // The surviving rows [first, N) form at most two contiguous runs of slots: up to the end of the ring,
  // then from slot 0.
  const int64_t first = enqueue_first_row(N, S);
  const int64_t slot0 = ring_slot(ptr, first, S);
  const int64_t run1 = std::min(N - first, S - slot0);
  parallel_copy(dst + slot0 * row_bytes, src + first * row_bytes, run1 * row_bytes);
  parallel_copy(dst, src + (first + run1) * row_bytes, (N - first - run1) * row_bytes);
}

void queue_enqueue_cpu(const at::Tensor& buffer, const at::Tensor& rows, int64_t ptr) {
  check_enqueue_args(buffer, rows, ptr);
  enqueue_one(buffer, rows, ptr);
}

void queue_enqueue_many_cpu(at::TensorList buffers, at::TensorList rows, int64_t ptr) {
  check_enqueue_many_args(buffers, rows, ptr);
  for (size_t i = 0; i < buffers.size(); ++i) enqueue_one(buffers[i], rows[i], ptr);
}

void bank_momentum_update_cpu(const at::Tensor& bank, const at::Tensor& ids_in, const at::Tensor& feats_in,
                              double momentum) {
  check_bank_update_args(bank, ids_in, feats_in, momentum);
  const at::Tensor ids = ids_in.contiguous();
  const at::Tensor feats = feats_in.contiguous();
  const int64_t N = bank.size(0), D = bank.size(1), B = ids.numel();
  if (B == 0) return;
  const int64_t* id = ids.const_data_ptr<int64_t>();

  // (id, row) sorted: rows sharing an id become one group, in ascending row order, so the mean of
  // duplicates is summed in a fixed order whatever the thread count.
  std::vector<std::pair<int64_t, int64_t>> order(B);
  for (int64_t r = 0; r < B; ++r) {
    TORCH_CHECK_INDEX(id[r] >= 0 && id[r] < N, "ids[", r, "] = ", id[r], " is out of range for a bank of ", N,
                      " slots");
    order[r] = {id[r], r};
  }
  std::sort(order.begin(), order.end());
  std::vector<int64_t> group_start;
  group_start.reserve(B + 1);
  for (int64_t k = 0; k < B; ++k)
    if (k == 0 || order[k].first != order[k - 1].first) group_start.push_back(k);
  const int64_t G = static_cast<int64_t>(group_start.size());
  group_start.push_back(B);

  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, bank.scalar_type(), "bank_momentum_update_cpu", [&] {
    using acc_t = at::opmath_type<scalar_t>;
    scalar_t* bk = bank.data_ptr<scalar_t>();
    const scalar_t* f = feats.const_data_ptr<scalar_t>();
    const acc_t m = static_cast<acc_t>(momentum);
    at::parallel_for(0, G, 16, [&](int64_t g_begin, int64_t g_end) {
      std::vector<acc_t> mixed(D);
      for (int64_t g = g_begin; g < g_end; ++g) {
        const int64_t k0 = group_start[g], k1 = group_start[g + 1];
        scalar_t* slot = bk + order[k0].first * D;
        acc_t sum_sq = 0;
        for (int64_t d = 0; d < D; ++d) {
          acc_t s = 0;
          for (int64_t k = k0; k < k1; ++k) s += static_cast<acc_t>(f[order[k].second * D + d]);
          mixed[d] = momentum_mix<acc_t>(m, static_cast<acc_t>(slot[d]), s, k1 - k0);
          sum_sq += mixed[d] * mixed[d];
        }
        const acc_t scale = inv_norm<acc_t>(sum_sq);
        for (int64_t d = 0; d < D; ++d) slot[d] = static_cast<scalar_t>(mixed[d] * scale);
      }
    });
  });
}

}  // namespace

TORCH_LIBRARY_IMPL(ssml_fast, CPU, m) {
  m.impl("queue_enqueue_", &queue_enqueue_cpu);
  m.impl("queue_enqueue_many_", &queue_enqueue_many_cpu);
  m.impl("bank_momentum_update_", &bank_momentum_update_cpu);
}

}  // namespace ssml_fast
