// CPU backend of the memory-bank ops: the FIFO ring copy (queue_enqueue_) and the fused
// gather-mix-normalise-scatter of the momentum bank (bank_momentum_update_). Both write in place and
// allocate nothing proportional to the ring or bank size.
#include <algorithm>
#include <cstring>
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
constexpr int64_t kPrefetchAhead = 4;

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

// mixed[d] <- momentum_mix(m, slot[d], mixed[d], w); returns the squared norm of the result. The norm is
// accumulated in kLanes interleaved partial sums (lane = d % kLanes), a fixed order that lets the
// compiler vectorise instead of waiting on one serial chain of additions.
template <typename scalar_t, typename acc_t>
acc_t mix_row(const scalar_t* __restrict__ slot, acc_t* __restrict__ mixed, acc_t m, acc_t w, int64_t D) {
  constexpr int kLanes = 8;
  acc_t part[kLanes] = {};
  int64_t d = 0;
  for (; d + kLanes <= D; d += kLanes) {
    for (int l = 0; l < kLanes; ++l) {
      const acc_t v = momentum_mix<acc_t>(m, static_cast<acc_t>(slot[d + l]), mixed[d + l], w);
      mixed[d + l] = v;
      part[l] += v * v;
    }
  }
  for (int l = 0; d < D; ++d, ++l) {
    const acc_t v = momentum_mix<acc_t>(m, static_cast<acc_t>(slot[d]), mixed[d], w);
    mixed[d] = v;
    part[l] += v * v;
  }
  return ((part[0] + part[1]) + (part[2] + part[3])) + ((part[4] + part[5]) + (part[6] + part[7]));
}

// Rows grouped by id in O(B) with a small open-addressing table (no sort): groups in order of first
// occurrence, each group's rows linked in ascending row order.
struct IdGroups {
  std::vector<int64_t> head, count;  // per group: first row, number of rows
  std::vector<int64_t> next;         // per row: next row with the same id, or -1
};

IdGroups group_ids(const int64_t* id, int64_t B, int64_t N) {
  IdGroups g;
  g.next.assign(B, -1);
  g.head.reserve(B);
  g.count.reserve(B);
  std::vector<int64_t> tail;
  tail.reserve(B);
  int64_t cap = 16;
  while (cap < 2 * B) cap *= 2;
  std::vector<int64_t> table(cap, -1);  // slot -> group
  for (int64_t r = 0; r < B; ++r) {
    TORCH_CHECK_VALUE(id[r] >= 0 && id[r] < N, "ids[", r, "] = ", id[r], " is out of range for a bank of ", N,
                      " slots");
    uint64_t h = (static_cast<uint64_t>(id[r]) * 0x9E3779B97F4A7C15ull) >> 32;
    for (;; ++h) {
      int64_t& slot = table[h & (cap - 1)];
      if (slot < 0) {
        slot = static_cast<int64_t>(g.head.size());
        g.head.push_back(r);
        g.count.push_back(1);
        tail.push_back(r);
        break;
      }
      if (id[g.head[slot]] == id[r]) {
        g.next[tail[slot]] = r;
        tail[slot] = r;
        ++g.count[slot];
        break;
      }
    }
  }
  return g;
}

void bank_momentum_update_cpu(const at::Tensor& bank, const at::Tensor& ids_in, const at::Tensor& feats_in,
                              double momentum) {
  check_bank_update_args(bank, ids_in, feats_in, momentum);
  const at::Tensor ids = ids_in.contiguous();
  const at::Tensor feats = bank_update_feats(bank, feats_in);
  const int64_t N = bank.size(0), D = bank.size(1), B = ids.numel();
  if (B == 0) return;
  const int64_t* id = ids.const_data_ptr<int64_t>();
  const IdGroups groups = group_ids(id, B, N);
  const int64_t G = static_cast<int64_t>(groups.head.size());
  // Below ~32k elements of work per thread, waking a second thread costs more than it saves.
  const int64_t grain = std::max<int64_t>(1, (int64_t{1} << 15) / std::max<int64_t>(D, 1));

  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, bank.scalar_type(), "bank_momentum_update_cpu", [&] {
    using acc_t = at::opmath_type<scalar_t>;
    scalar_t* bk = bank.data_ptr<scalar_t>();
    const scalar_t* f = feats.const_data_ptr<scalar_t>();
    const acc_t m = static_cast<acc_t>(momentum);
    const int64_t row_bytes = D * static_cast<int64_t>(sizeof(scalar_t));
    at::parallel_for(0, G, grain, [&](int64_t g_begin, int64_t g_end) {
      std::vector<acc_t> buf(D);
      acc_t* mixed = buf.data();
      for (int64_t g = g_begin; g < g_end; ++g) {
        // The bank rows are random accesses into a large table: fetch a few groups ahead so the
        // cache misses overlap instead of stalling one row at a time.
        if (g + kPrefetchAhead < g_end) {
          const char* ahead = reinterpret_cast<const char*>(bk + id[groups.head[g + kPrefetchAhead]] * D);
          for (int64_t b = 0; b < row_bytes; b += 64) __builtin_prefetch(ahead + b, 1);
        }
        int64_t r = groups.head[g];
        scalar_t* slot = bk + id[r] * D;
        // Sum of the group's rows, in ascending row order (the CUDA kernel sums in the same order).
        for (int64_t d = 0; d < D; ++d) mixed[d] = static_cast<acc_t>(f[r * D + d]);
        for (r = groups.next[r]; r >= 0; r = groups.next[r])
          for (int64_t d = 0; d < D; ++d) mixed[d] += static_cast<acc_t>(f[r * D + d]);
        const acc_t scale = inv_norm<acc_t>(mix_row(slot, mixed, m, feat_weight<acc_t>(m, groups.count[g]), D));
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
