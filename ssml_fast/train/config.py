"""Run-level settings (not the method's): data split, seed, device, precision, evaluation, output."""
from __future__ import annotations

from dataclasses import dataclass
from typing import Optional


@dataclass
class RunConfig:
    dataset: str = "mnist5k"
    data_root: Optional[str] = None  # directory of a file-backed dataset (cub, cars196, sop, ..., folder)
    image_size: int = 224            # file-backed: crop size (224; 227 for GoogLeNet as in the thesis)
    pipeline: str = "official"       # file-backed: official (each method's views) | thesis (256 -> crop + flip)
    num_workers: int = 0             # file-backed: DataLoader workers decoding / augmenting images
    train_classes: Optional[tuple[int, ...]] = None  # default: the dataset's (mnist5k: 0-4)
    val_mode: str = "samples"        # samples | classes | none: validation carved from the training classes
    val_fraction: float = 0.1
    seed: int = 0
    device: str = "auto"             # auto | cpu | cuda | cuda:N
    amp: str = "off"                 # off | bf16 | fp16 (autocast; fp16 with a grad scaler on CUDA)
    threads: int = 0                 # torch threads (0: leave torch's default)
    eval_every: int = 1              # validation every N epochs (0: never)
    select: str = "last"             # last | best: the model the test evaluation uses (best = val MAP@R)
    deterministic: bool = True
    sync_bn: bool = False            # torchrun: SyncBatchNorm (global-batch BN statistics; else averaged per step)
    keep_freed_memory: bool = True   # glibc malloc keeps freed blocks: no page faults per step (train/allocator.py)
    quiet: bool = False

    def __post_init__(self):
        if self.val_mode not in ("samples", "classes", "none"):
            raise ValueError(f"val_mode must be samples, classes or none, got {self.val_mode!r}")
        if not 0 <= self.val_fraction < 1:
            raise ValueError(f"val_fraction must be in [0, 1), got {self.val_fraction}")
        if self.amp not in ("off", "bf16", "fp16"):
            raise ValueError(f"amp must be off, bf16 or fp16, got {self.amp!r}")
        if self.select not in ("last", "best"):
            raise ValueError(f"select must be last or best, got {self.select!r}")
        if self.eval_every < 0:
            raise ValueError(f"eval_every must be >= 0, got {self.eval_every}")
        if self.num_workers < 0:
            raise ValueError(f"num_workers must be >= 0, got {self.num_workers}")
        if self.pipeline not in ("official", "thesis"):
            raise ValueError(f"pipeline must be official or thesis, got {self.pipeline!r}")
        if self.image_size < 8:
            raise ValueError(f"image_size must be >= 8, got {self.image_size}")
        if not isinstance(self.keep_freed_memory, bool):
            raise ValueError(f"keep_freed_memory must be True or False, got {self.keep_freed_memory!r}")
        if self.threads < 0:
            raise ValueError(f"threads must be >= 0, got {self.threads}")
        if not (self.device in ("auto", "cpu", "cuda") or self.device.startswith("cuda:")):
            raise ValueError(f"device must be auto, cpu, cuda or cuda:N, got {self.device!r}")
        if self.select == "best" and (self.eval_every == 0 or self.val_mode == "none"):
            raise ValueError("select=best needs a validation split (val_mode) and eval_every >= 1")
