"""InsCLR: instance-wise contrastive learning with graph-based positive mining (Deng et al., 2022; thesis 3.2,
Algorithm 1; official code as described in METHODS.md 2).

Stages ("cycles"), each starting from the previous stage's weights:
  * begin: embed the non-augmented training set (stage 0: the initial network with the head replaced by
    identity, i.e. the L2-normalised pooled features; later stages: the model's embedding), and build every
    image's candidate pool of `pool_size` neighbours with their similarities by exact faiss inner-product
    search (itself excluded). The pool and its similarities are static within the stage.
  * base stages (`base_stages`, METHODS.md 2.3-2.5 v1): batches of anchors, each followed by its K = 3
    first pool neighbours (CandidatePoolSampler), all with the anchor's pseudo label; everything else in
    the batch is a negative. A memory of one slot per training image holds the detached augmented feature
    (MemoryBank, momentum 0 = overwrite), enqueued from step `memory_start_step` of the stage (before it is
    read in the same step); from step `memory_get_step` it gives `memory_negatives` random filled slots as
    negatives, excluding the top-`memory_exclude_top` pool neighbours of every batch item.
  * final "impr" stage (2.3 selection, 2.5 v2): the anchors' neighbours are kept as positives only when
    their similarity to the anchor on non-augmented features (same model, eval mode) is >= 0.6
    (`selection_threshold`), otherwise they are negatives and leave the memory loss's rows. The memory
    (augmented and non-augmented features) is filled by a full eval-mode pass before training. Per group
    (anchor + accepted neighbours) `ssml_fast.memory.positive_mining.mine_positives` takes the initial
    positives from the static pool similarities (>= `positive_threshold`), the candidates up to
    `negative_threshold`, and `expansion_rounds` rounds of query expansion (top `expansion_k` candidates
    by mean similarity >= `expansion_threshold` to the growing query set of non-augmented memory
    features); the memory loss takes the batch rows against the mined positives (augmented memory
    features) and negatives (pool entries past the negative threshold, then random filled slots).
  * loss: InsCLRContrastiveLoss (lambda 0.4, mean over rows) on the batch, plus `memory_weight` x the same
    loss of the batch rows against the memory columns.
The embedding (training and evaluation) is the L2-normalised model output: official `norm_linear_norm`
(normalise, Linear without bias, normalise) on GeM (p = 3) features.

Official defaults: the GLDv2 configs (ResNet-101 is replaced by the config's `backbone`): 3 base stages
of 64 anchors x 4 and an impr stage of 16 x 4, pool 500, Adam lr 1e-4 (impr 3e-5) with coupled weight
decay 1e-4 (biases 0), multistep x 0.1 (60k steps decayed at 40k; impr 40k at 20k), no clipping, memory
v1 from steps 2000 / 4000 with 100,000 negatives excluding the top 50, v2 thresholds 0.75 / 0.5,
expansion 4 rounds of k = 5 at 0.60, 100,000 negatives. Steps are grouped into "epochs" of
`steps_per_epoch` = 10,000 steps (official base: 6 epochs decayed after 4; impr: 4 decayed after 2).

Deviations from the official code (each with the option that gives the official form):
  * The pitfalls of METHODS.md 2.7 that change training are fixed when `fix_pitfalls` is True (default;
    False = the official behaviour): (a) rejected neighbours of one anchor each get their own negative
    label (official: all get -a, so they are positives of each other); (b) two batch rows holding the same
    image (an anchor that is also someone's neighbour) are a positive pair, never a negative one
    (official: a negative of itself); (c) the batch's own images are never memory columns (official: they
    can be drawn as random negatives, and an accepted group member can be a negative of its own group);
    (d) in the impr stage, rejected members stay out of their group's pool positives and candidates, a
    slot mined by two groups is a positive of both (official: one label, arbitrarily), and unselected
    candidates (between the two thresholds) are not drawn as random negatives.
  * Per-stage lr and milestones: the impr stage's lr (`impr_lr`) and `impr_milestones` travel in
    `Stage.options` ("lr_scale" = impr_lr / lr, "milestones"), which the trainer applies per stage.
  * Candidate-pool descriptors are single-scale on the training image size (official: multi-scale
    [1, 1/sqrt 2, 1/2] at 512 x 512); the no-aug features are the un-augmented training images.
  * Duplicate slots in one memory update are averaged (MemoryBank), official: the last write wins.
  * The v2 memory's augmented copy is filled by the same non-augmented pass as its no-aug copy [the
    official fill of the augmented copy is unverified].
  * Positive pairs with s >= 1 - 1e-6 are not dropped (the loss drops the self pair; batch images are
    not memory columns, so no other exact copies occur; their 1 - s is ~0 anyway).

The "small" preset (28 x 28 digits, about a CPU minute): the headless small CNN's flattened features,
L2-normalised, are the embedding (head "identity"; "norm_linear_norm" scored lower), 2 base stages of 5
epochs (32 anchors x 4) and 2 impr epochs (16 x 4), pool 100, Adam lr 1e-4 in every stage (the official
base lr; impr_lr = lr, as validated on seed 0), cosine per stage, mild views, memory from step 0
(negatives from step 10; 4,096 = every filled slot), the official thresholds. Chosen on mnist5k classes
0-2 scored on held-out classes 3-4 (`bench/bench_insclr.py validate`, never the test classes).
Validation MAP@R (seed 0 unless two seeds are given): this preset 0.808, seed 1 0.789 (that run had
impr_lr 3e-5); the untrained network 0.779, seed 1 0.767. Others: lr 1e-3 (3 epochs per stage) 0.583;
lr 3e-4 0.800, seed 1 0.763; lr 3e-4 with 3 base stages 0.805, without the impr stage 0.792, with 1,024
memory negatives 0.790; head norm_linear_norm 0.701 (lr 1e-3) / 0.735 (lr 1e-4); lambda 0.7 0.722
(lr 1e-3) / 0.767 (lr 1e-4); no memory negatives (lr 1e-3) 0.588. The margins over the untrained
network (+0.02) are of the order of the seed spread. On the mnist5k test classes 5-9 (seed 0) the preset
gives R@1 0.960, MAP@R 0.397, NMI 0.519 against the untrained network's ~0.969 / 0.409 / 0.49: InsCLR
does not improve on its random-init starting point here (the thesis's tables 1 and 3: it fails when the
initial network's neighbours are not reliable). The random-init features are all similar, so every pool
neighbour passes the selection and the positive threshold, and the impr stage mines ~150 pool positives
per group: pseudo labels at the level of whole classes.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, ClassVar, Optional

import torch
import torch.nn.functional as F
from torch import nn

from ..neighbors import knn_search
from ..losses import InsCLRContrastiveLoss
from ..memory import MemoryBank
from ..distributed import gather_batch
from ..memory.positive_mining import (SCORES, excluded_random_negatives, memory_columns, mine_positives)
from .base import Batch, DataInfo, Method, MethodConfig, Stage, StepOutput

HEADS = ("norm_linear_norm", "linear_norm", "identity")
POOLS = ("gem", "flatten", "gap", "gmp", "gap+gmp")


@dataclass
class InsCLRConfig(MethodConfig):
    # --- network (official GLDv2: GeM p=3, norm_linear_norm 2048 -> 2048) ---
    pool: str = "gem"
    gem_p: float = 3.0
    head: str = "norm_linear_norm"      # norm_linear_norm | linear_norm | identity (normalise only)
    embedding_dim: Optional[int] = None  # None = the trunk's feature size
    # --- optimisation (GLDv2) ---
    optimizer: str = "adam"
    lr: float = 1e-4
    impr_lr: float = 3e-5
    weight_decay: float = 1e-4          # coupled L2 (Adam), biases excluded
    schedule: str = "multistep"
    milestones: tuple[int, ...] = (4,)  # base stages, in epochs of steps_per_epoch
    impr_milestones: tuple[int, ...] = (2,)
    gamma: float = 0.1
    epochs: int = 6                     # per base stage
    impr_epochs: int = 4                # 0 = no impr stage
    base_stages: int = 3
    steps_per_epoch: Optional[int] = 10_000  # None = num_train // batch_size
    # --- batches ---
    batch_size: int = 256               # base stages: anchors x (1 + neighbours)
    impr_batch_size: int = 64           # impr stage: 16 x 4
    neighbours: int = 3                 # K pool neighbours per anchor
    # RandomResizedCrop area (0.75, 1.33) -> enlargement (0.87, 1.15); impr area (0.4, 1) -> (1, 1.58)
    augment: Any = field(default_factory=lambda: {"scale": (0.87, 1.15), "hflip": True})
    impr_augment: Any = field(default_factory=lambda: {"scale": (1.0, 1.58), "hflip": True})
    # --- candidate pools ---
    pool_size: int = 500
    initial_pool: str = "trunk"         # stage 0's pool: trunk (head = identity, official) | embedding
    # --- loss ---
    lambda_: float = 0.4
    memory_weight: float = 1.0
    # --- memory v1 (base stages) ---
    memory_start_step: int = 2000       # enqueue from this step of the stage
    memory_get_step: int = 4000         # negatives from this step
    memory_negatives: int = 100_000     # base: random negatives; impr: total negatives (0 = pool negatives)
    memory_exclude_top: int = 50        # potential positives kept out of the random negatives
    # --- impr stage: in-batch selection and memory v2 ---
    selection_threshold: float = 0.6
    positive_threshold: float = 0.75    # INSTRE 0.95
    negative_threshold: float = 0.5     # INSTRE 0.65
    expansion_threshold: float = 0.6
    expansion_rounds: int = 4           # INSTRE 2
    expansion_k: int = 5                # INSTRE 20
    expansion_score: str = "thresholded_mean"  # thresholded_mean (official) | mean (thesis Algorithm 1)
    impr_negatives: bool = True         # INSTRE impr: False (positives only in the memory loss)
    fix_pitfalls: bool = True

    def __post_init__(self):
        super().__post_init__()
        k1 = self.neighbours + 1
        checks = [
            (self.pool in POOLS, f"pool must be one of {', '.join(POOLS)}, got {self.pool!r}"),
            (self.head in HEADS, f"head must be one of {', '.join(HEADS)}, got {self.head!r}"),
            (self.gem_p > 0, f"gem_p must be > 0, got {self.gem_p}"),
            (self.embedding_dim is None or self.embedding_dim >= 1,
             f"embedding_dim must be >= 1 or None, got {self.embedding_dim}"),
            (self.head != "identity" or self.embedding_dim is None,
             "embedding_dim must be None with head=identity (the trunk's features are the embedding)"),
            (self.impr_lr > 0, f"impr_lr must be > 0, got {self.impr_lr}"),
            (self.base_stages >= 0, f"base_stages must be >= 0, got {self.base_stages}"),
            (self.impr_epochs >= 0, f"impr_epochs must be >= 0, got {self.impr_epochs}"),
            (self.base_stages > 0 or self.impr_epochs > 0, "base_stages = 0 and impr_epochs = 0: nothing to train"),
            (all(m >= 0 for m in self.impr_milestones), f"impr_milestones must be >= 0, got {self.impr_milestones}"),
            (self.steps_per_epoch is None or self.steps_per_epoch >= 1,
             f"steps_per_epoch must be >= 1 or None, got {self.steps_per_epoch}"),
            (self.neighbours >= 1, f"neighbours must be >= 1, got {self.neighbours}"),
            (self.batch_size % k1 == 0, f"batch_size={self.batch_size} must be a multiple of neighbours + 1 = {k1}"),
            (self.impr_batch_size >= 2 and self.impr_batch_size % k1 == 0,
             f"impr_batch_size={self.impr_batch_size} must be a multiple of neighbours + 1 = {k1}"),
            (self.neighbours < self.pool_size,
             f"neighbours (K={self.neighbours}) must be < pool_size={self.pool_size}"),
            (self.initial_pool in ("trunk", "embedding"),
             f"initial_pool must be trunk or embedding, got {self.initial_pool!r}"),
            (self.lambda_ == self.lambda_ and -1 <= self.lambda_ <= 1, f"lambda_ must be in [-1, 1], got {self.lambda_}"),
            (self.memory_weight >= 0, f"memory_weight must be >= 0, got {self.memory_weight}"),
            (self.memory_start_step >= 0, f"memory_start_step must be >= 0, got {self.memory_start_step}"),
            (self.memory_get_step >= self.memory_start_step,
             f"memory_get_step={self.memory_get_step} must be >= memory_start_step={self.memory_start_step}"),
            (self.memory_negatives >= 0, f"memory_negatives must be >= 0, got {self.memory_negatives}"),
            (0 <= self.memory_exclude_top <= self.pool_size,
             f"memory_exclude_top must be in [0, pool_size={self.pool_size}], got {self.memory_exclude_top}"),
            (self.expansion_rounds >= 0, f"expansion_rounds must be >= 0, got {self.expansion_rounds}"),
            (self.expansion_k >= 1, f"expansion_k must be >= 1, got {self.expansion_k}"),
            (self.expansion_score in SCORES, f"expansion_score must be one of {', '.join(SCORES)}, "
                                             f"got {self.expansion_score!r}"),
        ]
        for name in ("selection_threshold", "positive_threshold", "negative_threshold", "expansion_threshold"):
            v = getattr(self, name)
            checks.append((v == v and -1 <= v <= 1, f"{name} must be in [-1, 1], got {v}"))
        checks.append((self.negative_threshold <= self.positive_threshold,
                       f"negative_threshold={self.negative_threshold} must be <= "
                       f"positive_threshold={self.positive_threshold}"))
        for ok, message in checks:
            if not ok:
                raise ValueError(message)


class GeM(nn.Module):
    """Generalised-mean pooling with a fixed p: (mean over pixels of clamp(x, eps)^p)^(1/p)."""

    def __init__(self, p: float = 3.0, eps: float = 1e-6):
        super().__init__()
        self.p, self.eps = float(p), float(eps)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x.clamp(min=self.eps).pow(self.p).mean(dim=(2, 3)).pow(1.0 / self.p)


def select_neighbours(f_noaug: torch.Tensor, k1: int, threshold: float) -> torch.Tensor:
    """In-batch positive selection (impr stage): rows laid out as [anchor, K neighbours] x groups; a
    neighbour is accepted when its similarity to its anchor is >= threshold; anchors always are."""
    B = f_noaug.shape[0]
    anchor = (torch.arange(B, device=f_noaug.device) // k1) * k1
    accepted = (f_noaug[anchor] * f_noaug).sum(1) >= threshold
    accepted[::k1] = True
    return accepted


def batch_pairs(index: torch.Tensor, group: torch.Tensor, accepted: torch.Tensor, fix_pitfalls: bool):
    """(a1, p, a2, n) pairs of a batch: same pseudo label = positive, otherwise negative.

    Accepted rows carry their group's label; rejected ones -(group + 1) (official) or a label of their own
    (fixed). Fixed: two rows holding the same image are a positive pair and never a negative one.
    """
    B = index.shape[0]
    ar = torch.arange(B, device=index.device)
    if fix_pitfalls:
        label = torch.where(accepted, group + 1, -(ar + 1))
    else:
        label = torch.where(accepted, group + 1, -(group + 1))
    same = label[:, None] == label[None, :]
    eye = torch.eye(B, dtype=torch.bool, device=index.device)
    if fix_pitfalls:
        dup = index[:, None] == index[None, :]
        pos, neg = (same | dup) & ~eye, ~same & ~dup
    else:
        pos, neg = same & ~eye, ~same
    a1, p = pos.nonzero(as_tuple=True)
    a2, n = neg.nonzero(as_tuple=True)
    return a1, p, a2, n


class InsCLR(Method):
    name: ClassVar[str] = "insclr"
    Config: ClassVar[type] = InsCLRConfig
    uses_labels: ClassVar[bool] = False
    presets: ClassVar[dict] = {
        "official": {},
        # 28 x 28 digits from scratch, chosen on mnist5k classes 0-2 -> 3-4 (module docstring).
        "small": dict(pool="flatten", head="identity", optimizer="adam", lr=1e-4, impr_lr=1e-4,
                      weight_decay=1e-4, schedule="cosine", milestones=(), impr_milestones=(),
                      base_stages=2, epochs=5, impr_epochs=2, steps_per_epoch=None,
                      batch_size=128, impr_batch_size=64, augment="mild", impr_augment="mild",
                      pool_size=100, memory_start_step=0, memory_get_step=10, memory_negatives=4096,
                      memory_exclude_top=50),
    }

    def __init__(self, config: InsCLRConfig, data: DataInfo):
        super().__init__(config, data)
        N = data.num_train
        if config.pool_size >= N:
            raise ValueError(f"pool_size={config.pool_size} must be < the {N} training images")
        if config.impr_batch_size > N:
            raise ValueError(f"impr_batch_size={config.impr_batch_size} is larger than the {N} training images")
        from ..data.augment import make_augment

        self.impr_augment = make_augment(config.impr_augment)
        if config.pool == "gem":
            self.trunk = self.build_trunk(pool="gap")  # GeM runs on its feature map (forward_map)
            self.gem = GeM(config.gem_p)
        else:
            self.trunk = self.build_trunk(pool=config.pool)
            self.gem = None
        d_in = self.trunk.out_dim
        d = config.embedding_dim or d_in
        if config.head == "identity":
            self.head = nn.Identity()
        else:
            self.head = nn.Linear(d_in, d, bias=config.head == "linear_norm")
        self.dim = d
        self.loss_fn = InsCLRContrastiveLoss(lambda_=config.lambda_, reduction="mean")
        P = config.pool_size
        # Pools, memory and the stage's step are state: a run resumed inside a stage keeps them.
        self.register_buffer("pool_idx", torch.zeros(N, P, dtype=torch.long))
        self.register_buffer("pool_sim", torch.zeros(N, P))
        self.register_buffer("pool_stage", torch.tensor(-1))
        self.register_buffer("stage_step", torch.zeros((), dtype=torch.long))
        self.register_buffer("filled", torch.zeros(N, dtype=torch.bool))
        self.memory = MemoryBank(N, d)
        self.memory_noaug = MemoryBank(N, d) if config.impr_epochs > 0 else None
        self._stage: Optional[Stage] = None
        self._seed = 0

    # ---- network -------------------------------------------------------------------------------
    def features(self, x: torch.Tensor) -> torch.Tensor:
        """The pooled trunk features (the network with its head replaced by identity)."""
        return self.gem(self.trunk.forward_map(x)) if self.gem is not None else self.trunk(x)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = self.features(x)
        if self.config.head == "norm_linear_norm":
            h = self.head(F.normalize(h, dim=1))
        else:
            h = self.head(h)
        return F.normalize(h, dim=1)

    def _trunk_embedding(self, x):
        return F.normalize(self.features(x), dim=1)

    @torch.no_grad()
    def embed(self, x: torch.Tensor) -> torch.Tensor:
        return self(x)

    def parameter_groups(self) -> list[dict]:
        # Biases without weight decay (official); with head_lr set, the head's parameters in groups of
        # their own at head_lr (the transfer recipe; the official code has one lr).
        trunk = {id(p) for p in self.trunk.parameters()} if self.config.head_lr is not None else None
        decay, no_decay, head_decay, head_no_decay = [], [], [], []
        for n, p in self.named_parameters():
            if p.requires_grad:
                head = trunk is not None and id(p) not in trunk
                bias = n.endswith(".bias")
                ((head_no_decay if bias else head_decay) if head else (no_decay if bias else decay)).append(p)
        groups = [{"params": decay, "name": "network"}, {"params": no_decay, "weight_decay": 0.0, "name": "biases"}]
        if head_decay or head_no_decay:
            groups += [{"params": head_decay, "lr": self.config.head_lr, "name": "heads"},
                       {"params": head_no_decay, "lr": self.config.head_lr, "weight_decay": 0.0, "name": "head_biases"}]
        return groups

    # ---- stages --------------------------------------------------------------------------------
    def stages(self) -> list[Stage]:
        c = self.config
        out = [Stage(f"base{i + 1}", c.epochs, {"index": i, "kind": "base", "lr_scale": 1.0,
                                                "milestones": tuple(c.milestones)})
               for i in range(c.base_stages)]
        if c.impr_epochs > 0:
            out.append(Stage("impr", c.impr_epochs, {"index": c.base_stages, "kind": "impr",
                                                      "lr_scale": c.impr_lr / c.lr,
                                                      "milestones": tuple(c.impr_milestones)}))
        return out

    def begin_stage(self, stage: Stage, ctx) -> None:
        self._stage, self._seed = stage, int(ctx.seed)
        index = stage.options["index"]
        if getattr(ctx, "resuming", False) and int(self.pool_stage) == index:
            return  # pools, memory and step counter come from the checkpoint
        fn = self._trunk_embedding if index == 0 and self.config.initial_pool == "trunk" else self.embed
        emb = ctx.embed_train(fn)
        self._build_pool(emb)
        self.pool_stage.fill_(index)
        self.stage_step.zero_()
        self.filled.zero_()
        if stage.options["kind"] == "impr":
            feats = emb if fn == self.embed else ctx.embed_train(self.embed)
            feats = feats.to(self.memory.bank.device)
            ids = torch.arange(self.data.num_train, device=feats.device)
            self.memory.update(ids, feats, 0.0)
            self.memory_noaug.update(ids, feats, 0.0)
            self.filled.fill_(True)

    @torch.no_grad()
    def _build_pool(self, emb: torch.Tensor) -> None:
        # Exact inner product (faiss IndexFlatIP) on unit rows = cosine, as compute_candidate_pool.py.
        sim, idx = knn_search(F.normalize(emb.float(), dim=1), self.config.pool_size, metric="inner_product")
        self.pool_idx.copy_(idx.to(self.pool_idx.device))
        self.pool_sim.copy_(sim.to(self.pool_sim.device))

    def _kind(self) -> str:
        return self._stage.options["kind"] if self._stage is not None else "base"

    def batch_sampler(self, stage: Stage, ctx):
        from ..samplers import CandidatePoolSampler

        if self._stage is None or int(self.pool_stage) != stage.options["index"]:
            self.begin_stage(stage, ctx)  # a caller that skipped begin_stage (tests, tools)
        c = self.config
        size = c.impr_batch_size if stage.options["kind"] == "impr" else c.batch_size
        sampler = CandidatePoolSampler(self.data.num_train, size // (c.neighbours + 1), c.neighbours,
                                       pool_size=c.pool_size, metric="cosine", num_batches=c.steps_per_epoch,
                                       seed=ctx.seed, use_gpu=False)
        # The anchor's first K pool entries, as the official sampler (no re-ranking by current features).
        sampler.set_candidate_pool(self.pool_idx.cpu())
        return sampler

    # ---- the step ------------------------------------------------------------------------------
    def views(self, images, generator):
        if self._kind() == "impr":
            return [self.impr_augment(images, generator), images]
        return [self.augment(images, generator)]

    def view_specs(self, stage=None) -> list:
        # Official GLDv2 configs: base 224 scale (0.75, 1.33); impr 448 scale (0.4, 1) plus the no-aug 512 view.
        kind = stage.options["kind"] if stage is not None else self._kind()
        return ["insclr_impr", "insclr_noaug"] if kind == "impr" else ["insclr"]

    def _generator(self) -> torch.Generator:
        """Randomness of the memory draws, replayed from (seed, stage, step) on resume."""
        index = int(self.pool_stage)
        seed = ((self._seed * 1_000_003 + index) * 1_000_003 + int(self.stage_step)) % (2 ** 63)
        return torch.Generator().manual_seed(seed)

    def training_step(self, batch: Batch) -> StepOutput:
        c = self.config
        idx = batch.index
        B, k1 = idx.shape[0], c.neighbours + 1
        G = B // k1
        group = torch.arange(B, device=idx.device) // k1
        f = self(batch.views[0]).float()  # the loss and the memory work in float32 under autocast
        impr = self._kind() == "impr"
        if impr:
            with torch.no_grad():
                was = self.training
                self.eval()
                f_noaug = self(batch.views[1]).float()
                self.train(was)
            accepted = select_neighbours(f_noaug, k1, c.selection_threshold)
        else:
            accepted = torch.ones(B, dtype=torch.bool, device=idx.device)
        loss_b = self.loss_fn(f, indices_tuple=batch_pairs(idx, group, accepted, c.fix_pitfalls))
        logs = {"loss_batch": loss_b.detach(), "accepted": accepted[group * k1 != torch.arange(B, device=idx.device)]
                .float().mean()}
        step = int(self.stage_step)
        fd = f.detach().float()
        mem_loss = None
        if impr:
            # Enqueue before the memory is read (official order).
            self.memory.update(idx, fd, 0.0)
            self.memory_noaug.update(idx, f_noaug, 0.0)
            # The banks take every rank's rows (in rank order) under torchrun; so must the filled mask.
            self.filled[gather_batch(idx)] = True
            mem_loss = self._impr_memory_loss(f, idx, group, accepted, G, k1, logs)
        else:
            if step >= c.memory_start_step:
                self.memory.update(idx, fd, 0.0)
                self.filled[gather_batch(idx)] = True
            if step >= c.memory_get_step and c.memory_negatives > 0:
                exclude = self.pool_idx[idx, :c.memory_exclude_top]
                if c.fix_pitfalls:
                    exclude = torch.cat([exclude.reshape(-1), idx])
                cols = excluded_random_negatives(self.data.num_train, c.memory_negatives, filled=self.filled,
                                                 exclude=exclude, generator=self._generator())
                logs["memory_negatives"] = float(cols.numel())
                if cols.numel():
                    zeros = torch.zeros(cols.numel(), dtype=torch.long, device=idx.device)
                    mem_loss = self.loss_fn(f, group + 1, ref_emb=self.memory.bank[cols], ref_labels=zeros)
        loss = loss_b
        if mem_loss is not None:
            logs["loss_memory"] = mem_loss.detach()
            loss = loss + c.memory_weight * mem_loss
        return StepOutput(loss, logs)

    def _impr_memory_loss(self, f, idx, group, accepted, G, k1, logs):
        c = self.config
        fix = c.fix_pitfalls
        members, acc = idx.view(G, k1), accepted.view(G, k1)
        mined = mine_positives(self.pool_idx, self.pool_sim, members, acc, self.memory_noaug.bank,
                               positive_threshold=c.positive_threshold, negative_threshold=c.negative_threshold,
                               expansion_threshold=c.expansion_threshold, rounds=c.expansion_rounds,
                               k=c.expansion_k, score=c.expansion_score, exclude_rejected=fix)
        cols = memory_columns(mined, self.data.num_train,
                              num_negatives=c.memory_negatives if c.impr_negatives else 0,
                              filled=self.filled, batch_index=idx if fix else None, exclude_candidates=fix,
                              one_label_per_slot=not fix, generator=self._generator())
        if not c.impr_negatives:
            cols.negative_slots = cols.negative_slots[:0]
        rows = accepted.nonzero().squeeze(1)
        fr, gr = f[rows], group[rows]
        logs["memory_positives"] = float(cols.membership.sum()) / G
        logs["memory_negatives"] = float(cols.negative_slots.numel())
        total = None
        if cols.positive_slots.numel():
            member = cols.membership[gr]                       # (rows, Cp): positive pairs
            a1, p = member.nonzero(as_tuple=True)
            a2, n = (~member).nonzero(as_tuple=True)
            total = self.loss_fn(fr, indices_tuple=(a1, p, a2, n), ref_emb=self.memory.bank[cols.positive_slots])
        if cols.negative_slots.numel():
            zeros = torch.zeros(cols.negative_slots.numel(), dtype=torch.long, device=idx.device)
            neg = self.loss_fn(fr, gr + 1, ref_emb=self.memory.bank[cols.negative_slots], ref_labels=zeros)
            total = neg if total is None else total + neg
        return total

    def after_step(self, batch: Batch, out: StepOutput) -> None:
        self.stage_step += 1
