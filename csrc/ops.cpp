// The whole C++ surface of ssml_fast: every op schema, nothing else. Kernels live in cpu/ and cuda/;
// autograd and fake (meta) kernels are attached from Python (ssml_fast/ops/).
#include <torch/library.h>

TORCH_LIBRARY(ssml_fast, m) {
  // x: (B, D), y: (R, D), same float dtype and device -> (B, R) distances.
  // metric: "euclidean" | "sqeuclidean" | "cosine" (1 - cosine similarity).
  m.def("pairwise_distance(Tensor x, Tensor y, str metric) -> Tensor");
  // grad, dist: (B, R) -> (grad_x (B, D), grad_y (R, D)).
  m.def("pairwise_distance_backward(Tensor grad, Tensor x, Tensor y, Tensor dist, str metric) -> (Tensor, Tensor)");

  // dist: (B, R) anchor-to-reference distances; labels: (B,) int64; ref_labels: (R,) int64.
  // exclude_diagonal: reference j == anchor i is never a positive (the reference set is the batch).
  // mining: "all" | "hard" | "semihard"; reduction: "mean_nonzero" | "mean" | "sum".
  // Returns (loss: 0-d, num_active: 0-d int64, num_triplets: 0-d int64, dloss_ddist: (B, R)).
  m.def("triplet_margin_loss_from_dist(Tensor dist, Tensor labels, Tensor ref_labels, bool exclude_diagonal, "
        "float margin, str mining, str reduction, bool soft) -> (Tensor, Tensor, Tensor, Tensor)");
  // Same contract; the CUDA backend's algorithm executed on the CPU (tests only: it is how machines
  // without a GPU run the GPU code path).
  m.def("_triplet_margin_loss_from_dist_sorted(Tensor dist, Tensor labels, Tensor ref_labels, "
        "bool exclude_diagonal, float margin, str mining, str reduction, bool soft) -> (Tensor, Tensor, Tensor, Tensor)");

  // ---- Memory banks (ssml_fast/memory). In place, no autograd (they run under no_grad). ----
  // buffer: (S, ...) contiguous ring of S slots, any dtype; rows: (N, ...) same trailing shape and dtype;
  // 0 <= ptr < S. Row k goes to slot (ptr + k) % S; with N > S only the last S rows are written, so the
  // ring holds what N one-row enqueues would leave (strict FIFO). The caller advances ptr by N mod S.
  m.def("queue_enqueue_(Tensor(a!) buffer, Tensor rows, int ptr) -> ()");
  // The same for aligned rings in one call (a queue's embeddings, labels and ids): buffers[i] receives
  // rows[i]; every buffer has the same number of slots S and every rows the same N.
  m.def("queue_enqueue_many_(Tensor(a!)[] buffers, Tensor[] rows, int ptr) -> ()");
  // bank: (N, D) contiguous float; ids: (B,) int64 in [0, N); feats: (B, D) bank's dtype; 0 <= momentum < 1.
  // bank[id] = normalise(momentum * bank[id] + (1 - momentum) * f), f = the mean of the feats rows
  // carrying that id (duplicates summed in ascending row order), normalise(x) = x / max(||x||, 1e-12).
  m.def("bank_momentum_update_(Tensor(a!) bank, Tensor ids, Tensor feats, float momentum) -> ()");
}
