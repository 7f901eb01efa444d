"""STML with a memory of past embeddings (the thesis's suggestion, section 6.2; no reference code has it).

STML learns from the soft targets of one batch: with 240 embeddings of ~50 images, each sample sees few
hard negatives, and the contextual similarity sees only the neighbourhoods the batch happens to hold.
This method keeps a FIFO memory (`ssml_fast.memory.FeatureQueue`) of the last `memory_size` embeddings
of past batches, each stored as (teacher g, student f, student g, dataset id), and computes every term of
the STML loss for the batch rows against batch ∪ memory columns (`STMLLoss.memory_terms`):

- Teacher side: the contextual similarity runs over the N + M teacher embeddings (the fused op at
  n = N + M), so the k-reciprocal neighbourhoods of a batch sample can be found among many more images.
  Teacher embeddings are what the EMA teacher said when the entry was stored; the teacher moves slowly
  (EMA), so they are the least stale part of an entry (the argument of MoCo / cross-batch memory).
- Student side: relaxed contrastive and KL terms take each batch row against all C = N + M columns; the
  memory columns are constants (detached), as in cross-batch memory (XBM): the batch is pulled towards
  memory entries its targets say are similar and pushed from the others, so every step sees up to M more
  negatives. The row-mean normalisation runs over all C columns.
- Exclusions: memory entries whose id is in the current batch (the same image from an earlier step, an
  older copy of a row) are dropped: they would be near-duplicates with stale features, turning the
  self-pair into a spurious strongest positive.
- Warm-up: the memory is filled from the first step but used only after `memory_warmup` steps, when the
  student's features have stopped moving fast (XBM's observation that early features drift too much).
  Before that, and with memory_size 0, the method is exactly `stml`.
- Columns (`memory_columns`): "all" (the default, the design above) puts the memory columns in every
  student-side term. "pull" keeps them in the relaxed contrastive's pull part w d^2 and in the KL but drops
  their push part (1 - w) [delta - d^]_+^2: without labels, most memory entries of the anchor's class are
  outside its k-reciprocal neighbourhood (w ~ 0), so with few classes the extra negatives are mostly false
  ones, while an entry the targets call similar is a positive the batch did not hold. "context" uses the
  memory only on the teacher side: the batch pairs' targets w come from neighbourhoods over batch ∪ memory,
  the student terms are the in-batch ones (the memory sharpens the targets, adds no columns).
- Weight: `memory_weight` w < 1 blends the memory loss with the in-batch STML loss,
  w L(batch ∪ memory) + (1 - w) L(batch) (one more in-batch loss per step, small next to the memory terms).
The loss is normalised by N (C - 1) in the "code" form, so its scale matches STML's at M = 0.

Cost: the memory's teacher embeddings never change once stored, so their Gram matrix is kept from step to
step (`ssml_fast.memory.ContextualCache`, `memory_cache=True`, the default): a step computes the batch's
N x M block, the neighbour lists (an exact scan of the cached rows on the CPU; elsewhere each slot's nearest
slots kept across enqueues) and the batch rows of w, instead of the fused op's (N + M)^2 d GEMM and (N + M)^2
work (at N 240, M 4096, d 1024: ~0.1 s instead of ~1.3 s on this CPU). `memory_cache=False` recomputes the fused op every step: the same w up to float rounding (the
neighbour lists agree except between similarities within rounding of each other). The cache costs an
(M, M) float32 buffer (64 MB at 4096) and (M, 32) lists, saved in checkpoints so a resume is bit-identical. The memory's
columns enter the student-side distances as constants, so their backward is one GEMM into the batch rows.
Columns are the batch, then the live memory slots in slot (storage) order.

Under torchrun the loss runs on the gathered global batch (rank order, with gradient) against the memory,
which every rank holds identically (the queue gathers all ranks' rows in rank order), so a multi-process
step equals the one-process step on the whole batch (tests/test_distributed.py).
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar

import torch

from .. import _validation as _checks
from ..memory import FeatureQueue
from ..distributed import gather_batch
from ..memory import ContextualCache
from ..memory.queue import distributed_world
from .base import Batch, DataInfo, StepOutput
from .stml import STML, STMLConfig


MEMORY_COLUMNS = ("all", "pull", "context")


@dataclass
class STMLMemoryConfig(STMLConfig):
    memory_size: int = 4096     # past embeddings kept (per entry: teacher g, student f, student g, id)
    memory_warmup: int = 1000   # optimiser steps before the memory is used
    memory_weight: float = 1.0  # w: loss = w L(batch ∪ memory) + (1 - w) L(batch); 1 = the memory loss alone
    memory_cache: bool = True   # keep the memory's teacher Gram between steps (False: the fused op every step)
    memory_columns: str = "all"  # where the memory enters the student's terms: all / pull / context (docstring)

    def __post_init__(self):
        super().__post_init__()
        _checks.check_choice("memory_columns", self.memory_columns, MEMORY_COLUMNS)
        if not 0.0 <= self.memory_weight <= 1.0:
            raise ValueError(f"memory_weight must be in [0, 1], got {self.memory_weight}")
        if self.memory_size < 0:
            raise ValueError(f"memory_size must be >= 0, got {self.memory_size}")
        if self.memory_warmup < 0:
            raise ValueError(f"memory_warmup must be >= 0, got {self.memory_warmup}")


class STMLMemory(STML):
    name: ClassVar[str] = "stml_memory"
    Config: ClassVar[type] = STMLMemoryConfig
    presets: ClassVar[dict] = {
        "official": {},
        # M = 512: the contextual similarity over batch ∪ memory costs an (N + M)^2 d GEMM per step
        # (bench/results_stml.md); 2048 made a step 3-5x slower than stml's on this CPU. Validation split
        # (bench/results_presets.md, round 2, seeds 0 / 1): this preset 0.804 / 0.773 MAP@R, memory_weight 0.5
        # 0.814 / 0.776, M = 256 0.809 / 0.774 (within the seed spread 0.031: preset kept), plain stml
        # 0.821 / 0.775: the memory does not help on this data. memory_columns="pull": chosen on both validation
        # splits of training classes (fit 0-2 / validate 3-4, fit 5-7 / validate 8-9; seeds 0-3,
        # bench/memory_columns_validation.py, results_memory_columns.md): above "all" in 7 of the 8 same-seed
        # pairs, +0.0034 / +0.0040 MAP@R on the means; "context" -0.0006 / -0.0008.
        "small": {**STML.presets["small"], "memory_size": 512, "memory_warmup": 100, "memory_columns": "pull"},
    }

    def __init__(self, config: STMLMemoryConfig, data: DataInfo):
        super().__init__(config, data)
        self._dims = (config.g_dim, config.embedding_dim, config.g_dim)  # teacher g, student f, student g
        self.memory = FeatureQueue(config.memory_size, sum(self._dims)) if config.memory_size else None
        self.cache = ContextualCache(config.memory_size) if config.memory_size and config.memory_cache else None
        self.register_buffer("steps_done", torch.zeros((), dtype=torch.long))
        self._pending = None
        self._global_rows = 0  # rows of the (gathered) batch: what the queue writes under torchrun

    def _memory_for(self, ids: torch.Tensor, with_teacher: bool = True, with_students: bool = True):
        """(f, g, t, ids) of the live memory entries (those sharing no id with the batch), in slot order (the
        cache's column order), each part gathered contiguous; t is None when not asked for (the cache
        has its Gram), f and g are None when not asked for (memory_columns="context" reads no student rows)."""
        if self.memory is None or len(self.memory) == 0 or int(self.steps_done) < self.config.memory_warmup:
            return None
        emb, _, mem_ids = self.memory.view()
        keep = torch.nonzero(~torch.isin(mem_ids, ids)).flatten()
        t, f, g = emb.split(self._dims, dim=1)
        t = t.index_select(0, keep) if with_teacher else None
        f, g = (f.index_select(0, keep), g.index_select(0, keep)) if with_students else (None, None)
        return f, g, t, mem_ids.index_select(0, keep)

    def _cached_weights(self, t: torch.Tensor, ids: torch.Tensor):
        """The soft targets (N, N + K) over [batch; live memory] from the cache."""
        emb, _, mem_ids = self.memory.view()
        dead = torch.isin(mem_ids, ids)
        live = int((~dead).sum())
        if self.loss_fn.k > t.shape[0] + live:
            raise ValueError(f"k={self.loss_fn.k} exceeds the {t.shape[0] + live} rows of batch and memory")
        w, _ = self.cache.weights(t, ids, emb[:, : self._dims[0]], mem_ids, (self.memory.ptr, self.memory.count),
                                  self.loss_fn.k, self.loss_fn.sigma, dead=dead)
        return w

    def training_step(self, batch: Batch) -> StepOutput:
        x = torch.cat(batch.views)
        ids = batch.index.repeat(len(batch.views))
        with torch.no_grad():
            t = self.teacher(x)
        f, g = self._student(x)
        # The queue gathers every rank's rows when they are enqueued: this rank's own rows are stored.
        self._pending = (torch.cat([t, f.detach(), g.detach()], dim=1).float(), ids)
        # Under torchrun the loss sees every rank's views (rank order, with gradient), as in `stml`: the
        # single-process loss of the global batch, against the memory every rank holds identically.
        f, g, t, ids = gather_batch(f, g, t, ids)
        self._global_rows = ids.shape[0]
        context = self.config.memory_columns == "context"
        memory = self._memory_for(ids, with_teacher=self.cache is None, with_students=not context)
        weights = None
        used = 0 if memory is None else memory[3].shape[0]
        if used:
            if self.cache is not None:
                weights = self._cached_weights(t, ids)
            if context:
                # the memory only sharpens the targets: w of batch pairs with neighbourhoods over batch ∪ memory
                if weights is None:  # memory_cache=False: the fused op over [batch; live memory]
                    weights = self.loss_fn.memory_targets(t, ids, memory[2], memory[3])
                memory, weights = None, weights[:, : t.shape[0]]
        loss = self.loss_fn(f, g, t, ids, memory, weights=weights,
                            memory_push=self.config.memory_columns != "pull")
        p = self.loss_fn.parts
        w = self.config.memory_weight
        if used and w < 1.0:
            # A blend keeps the in-batch terms' exact targets next to the memory's (staler) columns.
            loss = w * loss + (1.0 - w) * self.loss_fn(f, g, t, ids)
        return StepOutput(loss, {"rc_f": p.rc_f, "rc_g": p.rc_g, "kl": p.kl, "memory_used": float(used)})

    def after_step(self, batch: Batch, out: StepOutput) -> None:
        if self.memory is not None and self._pending is not None:
            emb, ids = self._pending
            ptr = self.memory.ptr
            self.memory.enqueue(emb, ids=ids)
            if self.cache is not None:  # under torch.distributed every rank's rows were written, in rank order:
                # the gathered batch whose block `weights` computed (reused when the row counts agree)
                gathered = self.memory.gather and distributed_world(self.memory.process_group) > 1
                rows = self._global_rows if gathered else emb.shape[0]
                self.cache.enqueued(ptr, rows, self.memory.view()[0][:, : self._dims[0]],
                                    (self.memory.ptr, self.memory.count))
        self._pending = None
        self.steps_done += 1
