// The whole C++ surface of ssml_fast: every op schema, nothing else. Kernels live in cpu/ and cuda/;
// autograd and fake (meta) kernels are attached from Python (ssml_fast/ops/).
#include <torch/library.h>

TORCH_LIBRARY(ssml_fast, m) {
  // x: (B, D), y: (R, D), same float dtype and device -> (B, R) distances.
  // metric: "euclidean" | "sqeuclidean" | "cosine" (1 - cosine similarity).
  m.def("pairwise_distance(Tensor x, Tensor y, str metric) -> Tensor");
  // grad, dist: (B, R) -> (grad_x (B, D), grad_y (R, D)); when y is x (one tensor), (the whole gradient of
  // that tensor, zeros): autograd adds the two, and the sum costs one GEMM instead of two.
  // y_grad=False: y takes no gradient (a constant bank / memory): its GEMM is skipped and the second output
  // is an empty (0,) tensor (with y is x too: the whole gradient is then the first output).
  m.def("pairwise_distance_backward(Tensor grad, Tensor x, Tensor y, Tensor dist, str metric, bool y_grad=True) -> (Tensor, Tensor)");

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

  // ---- Contextual similarity and k-reciprocal re-ranking (no autograd: targets and evaluation). ----
  // teacher_emb: (n, d) float32/float64; 1 <= k <= n; sigma > 0; ids: (n,) int64 or None.
  // Returns (w, w_p, w_c), each (n, n) float32: STML's w = (w^P + w^C) / 2 and its two parts (thesis
  // eqs 3.15-3.20). N_k(i) is ordered by (i itself, rows sharing ids[i], the rest) then squared distance,
  // ties to the lower index.
  m.def("contextual_similarity(Tensor teacher_emb, int k, float sigma, Tensor? ids) "
        "-> (Tensor w, Tensor w_p, Tensor w_c)");
  // Same contract; the CUDA backend's algorithm executed on the CPU (tests only: it is how machines
  // without a GPU run the GPU code path).
  m.def("_contextual_similarity_gpu_algorithm(Tensor teacher_emb, int k, float sigma, Tensor? ids) "
        "-> (Tensor w, Tensor w_p, Tensor w_c)");
  // query: (q, d), gallery: (g, d), same float dtype -> (q, g) float32 k-reciprocal re-ranked distances
  // (Zhong et al. 2017, the numbers of the widely used numpy code) over the joint set [query; gallery].
  // k1 >= 1, 1 <= k2 <= k1, 0 <= lambda_value <= 1.
  m.def("kreciprocal_rerank(Tensor query, Tensor gallery, int k1, int k2, float lambda_value) -> Tensor");
  // The same from top-K neighbour lists over the joint set of N = num_query + g rows: distances (N, K)
  // float squared distances, non-decreasing along each row; indices (N, K) int64; K >= min(k1 + 1, N).
  // Pairs missing from row i's list count as at row i's largest listed distance -> (num_query, g) float32.
  m.def("kreciprocal_rerank_topk(Tensor distances, Tensor indices, int num_query, int k1, int k2, "
        "float lambda_value) -> Tensor");
  // Same contracts; the CUDA backend's re-ranking algorithm executed on the CPU (tests only: it is how
  // machines without a GPU run the GPU code path).
  m.def("_kreciprocal_rerank_gpu_algorithm(Tensor query, Tensor gallery, int k1, int k2, float lambda_value) -> Tensor");
  m.def("_kreciprocal_rerank_gpu_algorithm_topk(Tensor distances, Tensor indices, int num_query, int k1, int k2, "
        "float lambda_value) -> Tensor");

  // ---- STML with a memory (ssml_fast/ops/contextual_rows.py): w^C of the first `rows` of n rows from all n
  // neighbour lists (n, k) -> (rows, n) in dtype (float32 / float64). CPU only: other devices run the
  // PyTorch version of contextual_similarity_rows, which gives the same values.
  m.def("_contextual_expansion_rows(Tensor neighbours, int rows, ScalarType dtype) -> Tensor");
  // ContextualCache's neighbour lists (u = n + count, k) of [batch; memory slots] from the batch's similarity
  // blocks g_bb (n, n), g_bm (n, count) and its transpose g_mb (count, n), the cached slot Gram
  // gram[:count, :count], ids (u,), dead (count,). CPU only: other devices keep the cache's PyTorch list path.
  m.def("_contextual_cache_neighbours(Tensor g_bb, Tensor g_bm, Tensor g_mb, Tensor gram, int count, Tensor ids, "
        "Tensor dead, int k) -> Tensor");

  // ---- STML's loss terms (ssml_fast/losses: RelaxedContrastiveLoss, SelfDistillationKL, STMLLoss). ----
  // Every matrix is (n, c), c >= n, float32/float64: rows of a batch against [batch; other columns], so
  // column i of row i is the self pair. Autograd is attached in Python from the returned gradients.
  // dist -> (rel, inv): rel_ij = d_ij * inv_i, inv_i = 1 / max(sum_{j != i} d_ij / c, eps), rel_ii = 0.
  m.def("row_relative(Tensor dist, float eps) -> (Tensor, Tensor)");
  // dL/d dist from dL/d rel: (grad_ij - (1/c) sum_l grad_il rel_il) * inv_i, 0 at j = i.
  m.def("row_relative_backward(Tensor grad, Tensor rel, Tensor inv) -> Tensor");
  // -> (scale * sum_i sum_{j != i} w d^2 + (1 - w) [delta - d]_+^2 (0-d), its gradient in dist (n, c)).
  // Columns j >= push_cols (when push_cols >= 0) take the pull part w d^2 only: stml_memory's memory columns
  // that pull without pushing. -1: every column.
  m.def("relaxed_contrastive_rows(Tensor dist, Tensor weights, float delta, float scale, int push_cols=-1) -> "
        "(Tensor, Tensor)");
  // p_i = softmax_j(-student_dist_ij / T), q_i = softmax_j(-teacher_dist_ij / T) over the columns (without
  // column i when exclude_self) -> (scale * sum_i KL(q_i || p_i) (0-d), scale * (q - p) / T (n, c)), the
  // gradient in student_dist (teacher_dist is a constant).
  m.def("self_distillation_kl_rows(Tensor student_dist, Tensor teacher_dist, float temperature, bool exclude_self, "
        "float scale) -> (Tensor, Tensor)");
}
