"""Training across processes (torchrun, DDP): process groups, gathers with gradient, exact loss wrapping.

Layer: low level (torch only). Losses, memories, samplers, methods and the trainer call into it; on
one process every function is the identity, so single-process code paths do not change.

- `setup()` / `world()`: the process group from torchrun's environment (NCCL on CUDA, gloo on CPU).
- `gather_batch(*tensors)`: every rank's rows in rank order, with gradient: a loss on the result, on
  every rank, has the single-process value on the concatenated batch, and after DDP's gradient
  averaging the single-process gradient (`gather` explains why).
- `DistributedLossWrapper(loss, miner)`: the same for any PML-style loss and miner.
- `SyncBatchNorm` / `convert_sync_batchnorm`: global-batch BN statistics, also on the CPU.
- `wrap_ddp(method, device)`: DDP over a method's training step; `sharded_rows`: a pass over a dataset
  split across ranks and gathered (evaluation, STML's / InsCLR's whole-training-set embedding).
- `TrainingGroup`: the trainer's hooks under torchrun (DDP, per-step sync, sharded passes, checkpoints).
"""
from .ddp import StepModule, shard_bounds, sharded_rows, wrap_ddp
from .env import World, barrier, cleanup, is_initialized, is_main, launched_by_torchrun, rank, setup, world, world_size
from .gather import (active_world, all_gather_object, all_gather_rows, all_gather_with_grad, all_reduce_mean,
                     all_reduce_sum_with_grad, broadcast_object, gather_batch, gathered, inside_gathered, rank_offset,
                     row_counts)
from .loss_wrapper import DistributedLossWrapper, DistributedMinerWrapper, gather_call
from .sync_batchnorm import SyncBatchNorm, average_batchnorm_buffers, convert_sync_batchnorm, unsynced_batchnorms
from .training import TrainingGroup

__all__ = ["DistributedLossWrapper", "DistributedMinerWrapper", "StepModule", "SyncBatchNorm", "TrainingGroup", "World",
           "active_world", "all_gather_object", "all_gather_rows", "all_gather_with_grad", "all_reduce_mean",
           "all_reduce_sum_with_grad", "average_batchnorm_buffers", "barrier", "broadcast_object", "cleanup",
           "convert_sync_batchnorm", "gather_batch", "gather_call", "gathered", "inside_gathered", "is_initialized",
           "is_main", "launched_by_torchrun", "rank", "rank_offset", "row_counts", "setup", "shard_bounds",
           "sharded_rows", "unsynced_batchnorms", "world", "world_size", "wrap_ddp"]
