"""Process-group setup from torchrun's environment, and the rank / world size everything else asks for.

torchrun (and `python -m torch.distributed.run`) starts one process per device and sets RANK,
WORLD_SIZE, LOCAL_RANK, MASTER_ADDR and MASTER_PORT. `setup()` reads them and initialises the default
process group once: NCCL when the run trains on CUDA (each process on `cuda:LOCAL_RANK`), gloo on the CPU.
Without those variables (a plain `python` / `ssml-fast` call) nothing is initialised and every helper
here answers "rank 0 of 1", so single-process code paths are unchanged.
"""
from __future__ import annotations

import os
from dataclasses import dataclass
from datetime import timedelta
from typing import Optional

import torch
import torch.distributed as dist

ENV_KEYS = ("RANK", "WORLD_SIZE", "LOCAL_RANK", "MASTER_ADDR", "MASTER_PORT")


@dataclass(frozen=True)
class World:
    """Where this process stands: rank in [0, size), its rank on this node, and the default group's backend."""

    rank: int = 0
    size: int = 1
    local_rank: int = 0
    backend: Optional[str] = None

    @property
    def is_main(self) -> bool:
        """Rank 0: the process that logs and writes checkpoints."""
        return self.rank == 0

    @property
    def distributed(self) -> bool:
        return self.size > 1


def is_initialized() -> bool:
    return dist.is_available() and dist.is_initialized()


def world(group=None) -> World:
    """The current World (rank 0 of 1 when torch.distributed is not initialised)."""
    if not is_initialized():
        return World()
    local = int(os.environ.get("LOCAL_RANK", dist.get_rank(group)))
    return World(rank=dist.get_rank(group), size=dist.get_world_size(group), local_rank=local,
                 backend=str(dist.get_backend(group)))


def world_size(group=None) -> int:
    return dist.get_world_size(group) if is_initialized() else 1


def rank(group=None) -> int:
    return dist.get_rank(group) if is_initialized() else 0


def is_main() -> bool:
    return rank() == 0


def launched_by_torchrun() -> bool:
    """True when the environment describes a multi-process launch (WORLD_SIZE > 1 with a rendezvous)."""
    try:
        return int(os.environ.get("WORLD_SIZE", "1")) > 1 and all(k in os.environ for k in ENV_KEYS[:2])
    except ValueError:
        raise ValueError(f"WORLD_SIZE must be an integer, got {os.environ.get('WORLD_SIZE')!r}") from None


def default_backend(device: torch.device) -> str:
    return "nccl" if device.type == "cuda" else "gloo"


def setup(device: Optional[torch.device | str] = None, *, backend: Optional[str] = None,
          timeout_minutes: float = 30.0) -> tuple[World, Optional[torch.device]]:
    """Initialise the default process group from torchrun's environment (idempotent).

    device: the device the run asked for ("auto", "cpu", "cuda", a torch.device or None). Under a
    multi-process launch a CUDA request becomes `cuda:LOCAL_RANK` (one GPU per process) and selects the
    NCCL backend; anything else uses gloo. `backend` overrides the choice. Returns (World, device):
    the device is the one this process must use (unchanged when not distributed).
    """
    dev = None if device is None else _resolve(device)
    if not launched_by_torchrun() and not is_initialized():
        return World(), dev
    local = int(os.environ.get("LOCAL_RANK", "0"))
    if dev is not None and dev.type == "cuda":
        if torch.cuda.device_count() <= local:
            raise ValueError(f"LOCAL_RANK={local} but only {torch.cuda.device_count()} CUDA devices are visible "
                             "(start torchrun with --nproc_per_node <= the number of GPUs)")
        dev = torch.device("cuda", local)
        torch.cuda.set_device(dev)
    if not is_initialized():
        chosen = backend or default_backend(dev if dev is not None else torch.device("cpu"))
        dist.init_process_group(backend=chosen, timeout=timedelta(minutes=timeout_minutes))
    return world(), dev


def _resolve(device) -> torch.device:
    if isinstance(device, torch.device):
        return device
    if device == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    return torch.device(device)


def cleanup() -> None:
    """Destroy the default process group if one is initialised (end of a torchrun script)."""
    if is_initialized():
        dist.destroy_process_group()


def barrier() -> None:
    if world_size() > 1:
        dist.barrier()
