"""DataLoaders over `ImageFiles`: decoding and augmentation in worker processes, reproducible per item.

Training: the method's batch sampler (lists of dataset indices) is wrapped by `KeyedBatchSampler`, which
pairs every index with a seed derived from (run seed, stage, epoch, step, slot in the batch) and drops
the steps a mid-epoch resume has already done. A worker decodes the image once and draws each view's
random crop / flip / colour with torch's RNG seeded from (that seed, view number), inside
`torch.random.fork_rng`, so the views of a step depend only on those numbers: not on the worker that
made them, on `num_workers`, or on what ran before. The slot (not only the index) enters the seed because
a batch may hold one image twice (InsCLR neighbours, STML's k-NN lists) and each copy gets its own views.

Evaluation: `eval_loader(files)` yields (B, 3, S, S) batches in file order, with the evaluation transform;
revisitop images (variable size, long side capped) come one at a time.
"""
from __future__ import annotations

from typing import Iterable, Sequence

import numpy as np
import torch
from torch.utils.data import DataLoader, Dataset

from .files import ImageFiles
from .transforms import ViewSpec, build_transform, eval_spec, revisitop_scale


def item_seed(*parts: int) -> int:
    """A 63-bit seed from integers (np.random.SeedSequence mixing: independent streams per tuple)."""
    state = np.random.SeedSequence([int(p) & (2**63 - 1) for p in parts]).generate_state(2, np.uint32)
    return (int(state[0]) << 32 | int(state[1])) & (2**63 - 1)


class TrainViews(Dataset):
    """Item `(index, seed)` -> `(index, [view tensors])`, one view per `ViewSpec`."""

    def __init__(self, files: ImageFiles, specs: Sequence[ViewSpec]):
        if not specs:
            raise ValueError("specs is empty: a training step needs at least one view")
        self.files, self.specs = files, list(specs)
        self.transforms = [build_transform(s) for s in self.specs]

    def __len__(self) -> int:
        return len(self.files)

    def __getitem__(self, key):
        index, seed = key
        image = self.files.open(index)
        views = []
        for v, transform in enumerate(self.transforms):
            with torch.random.fork_rng(devices=[]):  # leaves the caller's RNG as it was (num_workers=0)
                torch.manual_seed(item_seed(seed, v))
                views.append(transform(image))
        return index, views


def collate_views(items):
    index = torch.tensor([i for i, _ in items], dtype=torch.long)
    views = [torch.stack(vs) for vs in zip(*(v for _, v in items))]
    return index, views


class KeyedBatchSampler:
    """Wraps a batch sampler: batch `step` -> [(index, item seed)], steps < `skip` dropped.

    `reset(sampler, seed, stage, epoch, skip)` points it at the epoch to iterate (it is iterated in the
    main process, so this works with persistent workers too).
    """

    def __init__(self):
        self.sampler: Iterable = ()
        self.key = (0, 0, 0)
        self.skip = 0
        self.rank: tuple = ()

    def reset(self, sampler, seed: int, stage: int, epoch: int, skip: int = 0,
              rank: int | None = None) -> "KeyedBatchSampler":
        """`rank` (under torchrun, with a sampler that is not a DistributedBatchSampler): slot j of every rank's
        shard gets its own seed. A DistributedBatchSampler's shards are keyed by their global slots instead."""
        self.sampler, self.key, self.skip = sampler, (int(seed), int(stage), int(epoch)), int(skip)
        self.rank = () if rank is None else (int(rank),)
        return self

    def __len__(self) -> int:
        return max(0, len(self.sampler) - self.skip)

    def __iter__(self):
        seed, stage, epoch = self.key
        for step, batch in enumerate(self.sampler):
            if step < self.skip:
                continue
            # A rank's shard of a global batch (samplers.DistributedBatchSampler) keys its views by the global
            # slot, so N processes draw exactly the views one process draws for the same global batch.
            offset = getattr(self.sampler, "last_offset", None)
            if offset is not None:
                yield [(int(i), item_seed(seed, stage, epoch, step, offset + slot)) for slot, i in enumerate(batch)]
            else:
                yield [(int(i), item_seed(seed, stage, epoch, step, slot, *self.rank)) for slot, i in enumerate(batch)]


def _worker_init(_worker_id: int) -> None:
    torch.set_num_threads(1)  # one decode per core; torch's intra-op threads would oversubscribe


def _loader_kw(files: ImageFiles) -> dict:
    kw = dict(num_workers=files.num_workers, pin_memory=files.pin_memory)
    if files.num_workers > 0:
        kw.update(persistent_workers=True, prefetch_factor=2, worker_init_fn=_worker_init)
    return kw


def train_loader(files: ImageFiles, specs: Sequence[ViewSpec]) -> DataLoader:
    """A DataLoader of `(index (B,), [views (B, 3, S_v, S_v)])`, driven by its `KeyedBatchSampler`
    (`loader.batch_sampler.reset(...)` before each epoch)."""
    return DataLoader(TrainViews(files, specs), batch_sampler=KeyedBatchSampler(), collate_fn=collate_views,
                      **_loader_kw(files))


class EvalImages(Dataset):
    def __init__(self, files: ImageFiles):
        self.files = files
        self.spec = eval_spec(files)
        self.transform = build_transform(self.spec)

    def __len__(self) -> int:
        return len(self.files)

    def __getitem__(self, i: int) -> torch.Tensor:
        if self.spec.kind == "revisitop":
            return self.transform(open_revisitop(self.files, i, self.spec.size))
        return self.transform(self.files.open(i))


def open_revisitop(files: ImageFiles, i: int, max_size: int):
    """Image i with its long side capped to max_size; a box is cut first and scaled by the factor that
    caps the *full* image (revisitop / InsCLR)."""
    from PIL import Image

    with Image.open(files.paths[i]) as im:
        im = im.convert("RGB")
    s = revisitop_scale(im.width, im.height, max_size)
    if files.boxes is not None and files.boxes[i] is not None:
        x1, y1, x2, y2 = (float(v) for v in files.boxes[i])
        im = im.crop((int(round(x1)), int(round(y1)), int(round(x2)), int(round(y2))))
    if s < 1.0:
        im = im.resize((max(1, round(im.width * s)), max(1, round(im.height * s))), Image.BILINEAR)
    return im


def eval_loader(files: ImageFiles, batch_size: int = 128) -> DataLoader:
    """Batches of evaluation crops in file order (variable-size revisitop images: batches of one)."""
    ds = EvalImages(files)
    bs = 1 if ds.spec.kind == "revisitop" else batch_size
    kw = _loader_kw(files)
    kw.pop("persistent_workers", None)  # one pass
    return DataLoader(ds, batch_size=bs, shuffle=False, **kw)
