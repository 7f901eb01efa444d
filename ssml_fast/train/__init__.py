"""The trainer: a thin loop over a method's hooks, checkpoints, optimisers and schedules, logs."""
from .allocator import freed_memory_setting, keep_freed_memory
from .checkpoint import load_checkpoint, save_checkpoint
from .config import RunConfig
from .evaluate import embed_images, evaluate_method
from .loop import NonFiniteLossError, Trainer, TrainingInterrupted, data_info, derive_seed, resolve_device
from .optim import OPTIMIZERS, SCHEDULES, build_optimizer, build_scheduler

__all__ = ["NonFiniteLossError", "OPTIMIZERS", "RunConfig", "SCHEDULES", "Trainer", "TrainingInterrupted",
           "build_optimizer", "build_scheduler", "data_info", "derive_seed", "embed_images", "evaluate_method",
           "freed_memory_setting", "keep_freed_memory",
           "load_checkpoint", "resolve_device", "save_checkpoint"]
