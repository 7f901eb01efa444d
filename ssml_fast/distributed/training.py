"""What a trainer does differently under torchrun, in one object; on one process every call is a no-op.

`TrainingGroup` holds the process group's view for one Trainer and provides the hooks the training loop
calls (ssml_fast/train/loop.py):
- `prepare(method)`: SyncBatchNorm (option) and DDP over the method's training step;
- `step(method, batch)`: the step through DDP (gradients averaged over ranks in backward);
- `step_loss(loss, interrupt)`: one all-reduce per step carrying the loss (the logged value is the mean
  over ranks) and every rank's Ctrl-C flag, so all ranks stop, or detect a non-finite loss, at the same
  step and none waits forever in a collective;
- `after_backward(method)`: BatchNorm statistics averaged over ranks (when not synchronised), before
  the method's EMA teacher update, so teachers stay identical;
- `embed(embed_fn, fn, module, images, ...)`: a pass over a dataset sharded across ranks and gathered
  (whole-training-set embedding for STML / InsCLR, evaluation);
- `reduce_epoch(sums, counts, n_images)`: epoch logs averaged over ranks, images counted over all ranks;
- `views_seed_parts()`: each rank's augmentations come from its own stream;
- `gather_states(obj)` / `load_on_main(fn)`: checkpoint contents from every rank, and a checkpoint read by
  rank 0 only and broadcast (multi-node runs need no shared file system to resume).
"""
from __future__ import annotations

from typing import Callable, Optional

import torch
import torch.distributed as dist

from .ddp import shard_bounds, sharded_rows, wrap_ddp
from .env import World, setup
from .gather import all_gather_object, broadcast_object
from .sync_batchnorm import average_batchnorm_buffers, convert_sync_batchnorm, unsynced_batchnorms


class TrainingGroup:
    def __init__(self, device: torch.device, *, sync_bn: bool = False, find_unused_parameters: bool = True):
        self.world, dev = setup(device)
        self.device = dev if dev is not None else device
        self.sync_bn = bool(sync_bn)
        self.find_unused_parameters = find_unused_parameters
        self.ddp = None

    # ---- who am I ------------------------------------------------------------------------------
    @property
    def distributed(self) -> bool:
        return self.world.distributed

    @property
    def is_main(self) -> bool:
        return self.world.is_main

    @property
    def size(self) -> int:
        return self.world.size

    # ---- the model -----------------------------------------------------------------------------
    def prepare(self, method: torch.nn.Module) -> None:
        """SyncBatchNorm (if asked) and DDP over `method.training_step`; call after method.to(device)."""
        if not self.distributed:
            return
        if self.sync_bn:
            convert_sync_batchnorm(method)
        self.ddp = wrap_ddp(method, self.device, find_unused_parameters=self.find_unused_parameters)

    def step(self, method, batch):
        return self.ddp(batch) if self.ddp is not None else method.training_step(batch)

    def step_loss(self, loss: torch.Tensor, interrupt: bool) -> tuple[torch.Tensor, bool]:
        """(the loss averaged over ranks, whether any rank was interrupted); (loss, interrupt) on one process."""
        if not self.distributed:
            return loss.detach(), interrupt
        packed = torch.stack([loss.detach().double(), torch.tensor(float(interrupt), dtype=torch.float64,
                                                                   device=loss.device)])
        dist.all_reduce(packed)
        return (packed[0] / self.size).to(loss.dtype), bool(packed[1] > 0)

    def after_backward(self, method: torch.nn.Module) -> None:
        if self.distributed and unsynced_batchnorms(method):
            average_batchnorm_buffers(method)

    # ---- data ----------------------------------------------------------------------------------
    def views_seed_parts(self) -> tuple:
        """Extra seed parts of this rank's augmentation stream (none on one process: unchanged streams)."""
        return ("rank", self.world.rank, self.world.size) if self.distributed else ()

    def embed(self, embed_fn: Callable, fn, module, images, device, batch_size: int = 512) -> torch.Tensor:
        """embed_fn(fn, module, images, device, batch_size) over this rank's contiguous shard of `images`
        (a tensor, or anything with .subset(indices)), gathered in rank order: identical on every rank."""
        if not self.distributed:
            return embed_fn(fn, module, images, device, batch_size)

        def part(start: int, end: int) -> torch.Tensor:
            chunk = images[start:end] if torch.is_tensor(images) else images.subset(range(start, end))
            return embed_fn(fn, module, chunk, device, batch_size)

        return sharded_rows(part, len(images))

    def reduce_epoch(self, sums: dict, n_images: int) -> tuple[dict, int]:
        """Per-epoch sums averaged over ranks (one all-reduce; the keys are sorted so ranks agree), images summed."""
        if not self.distributed:
            return sums, n_images
        keys = sorted(sums)
        if all_gather_object(keys) != [keys] * self.size:
            raise RuntimeError(f"ranks logged different values this epoch: {all_gather_object(keys)}")
        device = sums[keys[0]].device if keys and torch.is_tensor(sums[keys[0]]) else self.device
        packed = torch.stack([torch.as_tensor(sums[k], dtype=torch.float64, device=device).reshape(())
                              for k in keys] + [torch.tensor(float(n_images), dtype=torch.float64, device=device)])
        dist.all_reduce(packed)
        out = {k: packed[i] / self.size for i, k in enumerate(keys)}
        return out, int(packed[-1].item())

    # ---- checkpoints ---------------------------------------------------------------------------
    def gather_states(self, obj) -> Optional[list]:
        """Every rank's `obj` in rank order (None on one process)."""
        return all_gather_object(obj) if self.distributed else None

    def load_on_main(self, load: Callable[[], dict]) -> dict:
        """load() on rank 0, its result (or its error) on every rank."""
        if not self.distributed:
            return load()
        result, error = None, None
        if self.is_main:
            try:
                result = load()
            except Exception as e:  # re-raised on every rank, so no rank waits in a collective
                error = (type(e).__name__, str(e))
        result, error = broadcast_object((result, error))
        if error is not None:
            kinds = {"FileNotFoundError": FileNotFoundError, "ValueError": ValueError}
            raise kinds.get(error[0], RuntimeError)(error[1])
        return result


__all__ = ["TrainingGroup", "World", "shard_bounds"]
