"""A minimal supervised training loop: batches from a batch sampler, one loss, NaN-guarded, checkpointed."""
from __future__ import annotations

import time
from pathlib import Path
from typing import Callable, Iterable, Optional

import torch
from torch import nn

from .checkpoint import save_checkpoint


class NonFiniteLossError(RuntimeError):
    """Raised when a step produces a NaN/inf loss; the last good checkpoint is left untouched."""


@torch.no_grad()
def embed(model: nn.Module, images: torch.Tensor, batch_size: int = 512) -> torch.Tensor:
    """(N, ...) inputs -> (N, D) embeddings in eval mode; the model's train/eval mode is restored."""
    was_training = model.training
    model.eval()
    try:
        return torch.cat([model(images[i:i + batch_size]) for i in range(0, len(images), batch_size)])
    finally:
        model.train(was_training)


def train_epochs(
    model: nn.Module,
    loss_fn: nn.Module,
    images: torch.Tensor,
    labels: torch.Tensor,
    batch_sampler: Iterable,
    optimizer: torch.optim.Optimizer,
    epochs: int,
    augment: Optional[Callable[[torch.Tensor], torch.Tensor]] = None,
    checkpoint_path: Optional[Path] = None,
    checkpoint_extra: Optional[dict] = None,
    log: Callable[[str], None] = print,
) -> list[dict]:
    """Trains for `epochs`; returns per-epoch {epoch, loss, active, seconds}.

    `batch_sampler` yields lists of indices (e.g. MPerClassSampler) and may have `set_epoch`.
    After each epoch the model and optimizer are checkpointed atomically to `checkpoint_path`, with
    `checkpoint_extra` (e.g. the model's constructor arguments) alongside.
    """
    history = []
    for epoch in range(1, epochs + 1):
        if hasattr(batch_sampler, "set_epoch"):
            batch_sampler.set_epoch(epoch)
        model.train()
        # Sums stay on the device: the finite-loss check is the only host sync per step.
        start, total, steps, active = time.perf_counter(), torch.zeros(()), 0, torch.zeros((), dtype=torch.long)
        for idx in batch_sampler:
            idx = torch.as_tensor(idx, dtype=torch.long)
            x = images[idx]
            if augment is not None:
                x = augment(x)
            loss = loss_fn(model(x), labels[idx])
            if not torch.isfinite(loss):
                where = f"; last good checkpoint: {checkpoint_path}" if checkpoint_path and checkpoint_path.exists() else ""
                raise NonFiniteLossError(f"non-finite loss {loss.item()} at epoch {epoch}, step {steps + 1}{where}")
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
            total = total.to(loss.device) + loss.detach()
            steps += 1
            active = active.to(loss.device) + getattr(loss_fn, "num_active", 0)
        row = dict(epoch=epoch, loss=float(total) / max(steps, 1), active=int(active),
                   seconds=time.perf_counter() - start)
        history.append(row)
        log(f"epoch {epoch:3d}  loss {row['loss']:.4f}  active triplets {active:7d}  {row['seconds']:.1f}s")
        if checkpoint_path is not None:
            save_checkpoint(checkpoint_path, {**(checkpoint_extra or {}), "epoch": epoch, "model": model.state_dict(),
                                              "optimizer": optimizer.state_dict(), "history": history})
    return history
