"""Where the trainer's training batches come from: the in-memory tensor or a file-backed DataLoader.

In-memory splits (`ImageSplit`, the bundled datasets) keep the fast path: the training images live on the
training device, a step indexes them and `method.views(x, generator)` augments the batch there.

File-backed splits (`ssml_fast.data.FileSplit`) stream: a DataLoader fed by the method's batch sampler
(`batch_sampler=`, wrapped by `data.pipeline.KeyedBatchSampler`) decodes and augments in its workers the
views `method.view_specs(stage)` names, with per-(seed, stage, epoch, step, slot) seeds, so a resumed epoch
replays the same views. One loader per stage (its views may change with the stage), with persistent
workers when `num_workers` > 0.
"""
from __future__ import annotations

from typing import Iterator

import torch


def is_file_backed(images) -> bool:
    return not isinstance(images, torch.Tensor)


class TrainData:
    def __init__(self, split, device: torch.device):
        self.device = device
        self.file_backed = is_file_backed(split.train_images)
        self.split = split
        # What ctx.embed_train embeds: the tensor on the device, or the ImageFiles (streamed by embed_images).
        self.images = split.train_images if self.file_backed else split.train_images.to(device)
        self._loader = None
        self._loader_stage = None

    def view_specs(self, method, stage) -> list:
        """The stage's `ViewSpec`s at the split's crop size, through the split's pipeline family."""
        from ..data.transforms import preset, thesis_view

        names = list(method.view_specs(stage))
        if self.split.pipeline == "thesis":
            names = [thesis_view(n) for n in names]
        return [preset(n, self.split.image_size, self.split.train_images.resize) for n in names]

    def _stage_loader(self, method, stage, s_idx: int):
        from ..data.pipeline import train_loader

        if self._loader is None or self._loader_stage != s_idx:
            self.close()
            self._loader = train_loader(self.split.train_images, self.view_specs(method, stage))
            self._loader_stage = s_idx
        return self._loader

    def steps(self, method, stage, s_idx: int, epoch: int, seed: int, sampler, skip: int,
              generator: torch.Generator) -> Iterator[tuple[int, torch.Tensor, list]]:
        """(step, indices (B,) on the device, views) for the steps >= skip of one epoch."""
        if not self.file_backed:
            for step, indices in enumerate(sampler):
                if step < skip:
                    continue
                idx = torch.as_tensor(indices, dtype=torch.long, device=self.device)
                yield step, idx, method.views(self.images[idx], generator)
            return
        loader = self._stage_loader(method, stage, s_idx)
        dist = torch.distributed
        rank = dist.get_rank() if dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1 else None
        loader.batch_sampler.reset(sampler, seed, s_idx, epoch, skip, rank=rank)
        blocking = not (loader.pin_memory and self.device.type == "cuda")
        for step, (idx, views) in enumerate(loader, start=skip):
            yield (step, idx.to(self.device, non_blocking=not blocking),
                   [v.to(self.device, non_blocking=not blocking) for v in views])

    def close(self) -> None:
        """Drops the loader (its persistent workers exit with it)."""
        if self._loader is not None:
            it = getattr(self._loader, "_iterator", None)
            if it is not None and hasattr(it, "_shutdown_workers"):
                it._shutdown_workers()
        self._loader = None
        self._loader_stage = None
