"""CenterLoss (Wen et al. 2016, "A Discriminative Feature Learning Approach for Deep Face Recognition"):
softmax cross-entropy plus a pull of each embedding towards a learned centre of its class."""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from .. import _validation as _checks
from . import _pairs
from ._proxies import ProxyLoss

CENTER_UPDATES = ("paper", "gradient")


class CenterLoss(ProxyLoss):
    """Per sample: -log softmax_y(W^T x_i + b) + lambda_c / 2 * ||x_i - c_{y_i}||^2 (the paper's
    L = L_S + lambda L_C, eq. 5, per sample; the default MeanReducer averages it over the batch).

    Not in PML; PML's argument style: CenterLoss(num_classes, embedding_size, lambda_c=0.003, alpha=0.5,
    center_update="paper", bias=True, *, weight_init_func=normal, weight_regularizer=None,
    weight_reg_weight=1, reducer=MeanReducer(), embedding_regularizer=None, embedding_reg_weight=1).
    lambda_c = 0.003 and alpha = 0.5 are the paper's face-recognition settings.
      `W` (embedding_size, num_classes) and `b` (num_classes,) (bias=False: none): the softmax classifier,
        learnable parameters the optimiser trains; get_logits(x) = x W + b.
      `centers` (num_classes, embedding_size), initialised to 0.
    How the centres learn (center_update):
      "paper" (default): Algorithm 1 of the paper. `centers` is a buffer, not a parameter: the optimiser
        never sees it (no learning rate, weight decay, momentum or gradient clipping applies), the loss's
        gradient reaches only the embeddings (d/dx_i = lambda_c (x_i - c_{y_i}) / B under the mean), and
        every forward call in training mode with gradients enabled then moves the centres of the classes
        in the batch by eq. 4, c_j <- c_j - alpha * sum_{i: y_i = j} (c_j - x_i) / (1 + n_j), from the
        batch's embeddings (detached). The loss value uses the centres before the move. The update reads
        only x and the old centres, so doing it in the forward equals the paper's order (after the
        parameter update of the same iteration). Evaluation (model.eval() or torch.no_grad()) does not
        move them. It is saved by state_dict().
      "gradient": `centers` is an nn.Parameter trained by the optimiser with the loss's gradient,
        lambda_c (c_j - x_i) / B summed over the class's samples (the common re-implementation; its step
        scales with the learning rate and the batch, unlike alpha).
    An indices_tuple weights each sample's loss by count / max count (as PML's classification losses);
    the centre update uses every sample of the batch.
    Call: loss(embeddings (B, embedding_size), labels (B,), indices_tuple=None).
    """

    weight_attr = "W"
    weight_layout = "columns"

    def __init__(self, num_classes: int, embedding_size: int, lambda_c: float = 0.003, alpha: float = 0.5,
                 center_update: str = "paper", bias: bool = True, *, reducer=None, weight_regularizer=None,
                 weight_reg_weight: float = 1.0, weight_init_func=None, embedding_regularizer=None,
                 embedding_reg_weight: float = 1.0):
        lambda_c = _checks.check_nonnegative("lambda_c", lambda_c)
        alpha = _checks.check_nonnegative("alpha", alpha)
        if alpha > 1:
            raise ValueError(f"alpha must lie in [0, 1] (the paper's centre learning rate), got {alpha}")
        _checks.check_choice("center_update", center_update, CENTER_UPDATES)
        if not isinstance(bias, bool):
            raise TypeError(f"bias must be True or False, got {bias!r}")
        super().__init__(num_classes, embedding_size, None, reducer, embedding_regularizer,
                         embedding_reg_weight, weight_regularizer, weight_reg_weight,
                         weight_init_func=weight_init_func)
        self.lambda_c, self.alpha, self.center_update = lambda_c, alpha, center_update
        self.b = nn.Parameter(torch.zeros(self.num_classes)) if bias else None
        centers = torch.zeros(self.num_classes, self.embedding_size)
        if center_update == "gradient":
            self.centers = nn.Parameter(centers)
        else:
            self.register_buffer("centers", centers)

    def _cast_weight(self, embeddings):
        x = super()._cast_weight(embeddings)
        for t in (self.b, self.centers):
            if t is not None and (t.dtype != x.dtype or t.device != x.device):
                t.data = t.data.to(device=x.device, dtype=x.dtype)
        return x

    def _logits(self, x):
        # addmm: the bias is added inside the GEMM, no second (B, C) tensor
        return x @ self.W if self.b is None else torch.addmm(self.b, x, self.W)

    def get_logits(self, embeddings: torch.Tensor) -> torch.Tensor:
        """(B, num_classes): the softmax classifier's logits x W + b."""
        with _pairs.autocast_off(embeddings):
            return self._logits(self._logits_input(embeddings))

    def compute_loss(self, embeddings, labels, indices_tuple, ref_emb, ref_labels):
        x, _ = self._check(embeddings, labels, ref_emb)
        ce = F.cross_entropy(self._logits(x), labels, reduction="none")
        c = self.centers[labels]
        per_sample = ce + 0.5 * self.lambda_c * (x - c).pow(2).sum(dim=1)
        if indices_tuple is not None:
            per_sample = per_sample * _pairs.sample_weights(indices_tuple, x.shape[0], x.dtype, x.device)
        out = self.reduce_per_sample(per_sample, embeddings, labels)
        if self.center_update == "paper" and self.training and torch.is_grad_enabled():
            self._paper_update(x.detach(), labels)
        return out

    @torch.no_grad()
    def _paper_update(self, x, labels):
        """eq. 4: delta c_j = sum_{i: y_i = j} (c_j - x_i) / (1 + n_j); c_j <- c_j - alpha delta c_j."""
        n = torch.bincount(labels, minlength=self.num_classes).to(x.dtype)
        sum_x = torch.zeros_like(self.centers).index_add_(0, labels, x)
        delta = (n[:, None] * self.centers - sum_x) / (1 + n[:, None])
        self.centers.sub_(self.alpha * delta)

    def extra_repr(self):
        return f"lambda_c={self.lambda_c}, alpha={self.alpha}, center_update={self.center_update!r}"
