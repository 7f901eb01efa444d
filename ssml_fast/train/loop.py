"""The training loop: stages -> epochs -> steps over a method's hooks, with checkpoints and resume.

Nothing here knows a method: it calls the hooks of `ssml_fast.methods.base.Method` in the documented
order, and reads the optimisation fields every method config shares (`MethodConfig`).

Reproducibility. All randomness is derived from `run.seed`: the initial weights (torch's global RNG,
seeded before the method is built), each epoch's batches (samplers replay epoch e from (seed, e)) and
each epoch's augmentations (a CPU generator seeded from (seed, stage, epoch)). A checkpoint holds the
method's state (networks, teachers, banks), the optimiser, the scheduler, the grad scaler, the RNG
states, the position (stage, epoch, step) and the history, so `resume` continues bit-identically: from an
epoch boundary always, and from a Ctrl-C mid-epoch for methods whose batches depend only on the seed
(the done batches of the epoch are skipped and the augmentation generator's state is restored).
"""
from __future__ import annotations

import math
import signal
import time
from dataclasses import asdict
from pathlib import Path
from typing import Optional

import numpy as np
import torch

from ..distributed import TrainingGroup
from ..methods.base import Batch, DataInfo, Method
from ..samplers import DistributedBatchSampler
from .checkpoint import load_checkpoint, save_checkpoint
from .allocator import keep_freed_memory
from .config import RunConfig
from .data_path import TrainData, is_file_backed
from .evaluate import embed_images, evaluate_method
from .log import RunLogger
from .optim import build_optimizer, build_scheduler

CHECKPOINT_FORMAT = 1


class NonFiniteLossError(RuntimeError):
    """A step produced a NaN/inf loss. The run stopped; the last good checkpoint is untouched."""


class TrainingInterrupted(KeyboardInterrupt):
    """Ctrl-C (SIGINT) during training: a checkpoint of the current step was written first."""

    def __init__(self, message: str, checkpoint: Optional[Path]):
        super().__init__(message)
        self.checkpoint = checkpoint


def derive_seed(*parts) -> int:
    """A 63-bit seed from (seed, stage, epoch, purpose...): independent, replayable streams."""
    words = [p if isinstance(p, int) else int.from_bytes(str(p).encode()[:8].ljust(8, b"\0"), "little")
             for p in parts]
    state = np.random.SeedSequence([w & (2**63 - 1) for w in words]).generate_state(2, np.uint32)
    return (int(state[0]) << 32 | int(state[1])) & (2**63 - 1)


def resolve_device(name: str) -> torch.device:
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    dev = torch.device(name)
    if dev.type == "cuda" and not torch.cuda.is_available():
        raise ValueError(f"device {name!r} requested but CUDA is not available")
    return dev


def data_info(split) -> DataInfo:
    return DataInfo(image_shape=tuple(split.image_shape), mean=split.mean, std=split.std,
                    num_train=len(split.train_labels), train_classes=tuple(split.train_classes))


class _Context:
    """What hooks see of the trainer (methods.base.TrainContext)."""

    def __init__(self, trainer: "Trainer"):
        self._t = trainer
        self.device = trainer.device
        self.seed = trainer.run.seed
        self.train_labels = trainer.split.train_labels
        self.stage_index = 0
        self.epoch = 0
        self.resuming = False   # True while a resumed stage is re-entered (methods keep their pools)
        self.resume_step = 0    # steps of the current epoch already done before a resume

    def embed_train(self, fn=None, batch_size: int = 512) -> torch.Tensor:
        m = self._t.method
        # Under torchrun each rank embeds a shard; the gathered result is identical on every rank.
        return self._t.group.embed(embed_images, fn or m.embed, m, self._t.train_images, self.device, batch_size)

    def generator(self, purpose: str) -> torch.Generator:
        return torch.Generator().manual_seed(derive_seed(self.seed, self.stage_index, self.epoch, purpose))


class Trainer:
    """Fits `method` on `split` (an ssml_fast.data.ImageSplit) under `run`; writes to `out_dir`.

    Files in out_dir: last.pt (every epoch, atomic), best.pt (best validation MAP@R), metrics.csv,
    log.jsonl, tb/ (TensorBoard, when installed), summary.json (after fit).
    """

    def __init__(self, method: Method, split, run: RunConfig, out_dir=None, *, config_record: Optional[dict] = None):
        self.method, self.split, self.run = method, split, run
        if getattr(run, "keep_freed_memory", True):
            keep_freed_memory()  # before the first step allocates: each step then reuses the last one's pages
        self.out_dir = Path(out_dir) if out_dir is not None else None
        self.device = resolve_device(run.device)
        # torchrun: the process group (NCCL on CUDA, gloo on CPU) and this rank's device (ssml_fast.distributed).
        self.group = TrainingGroup(self.device, sync_bn=getattr(run, "sync_bn", False))
        self.device = self.group.device
        self.method.to(self.device)
        if is_file_backed(split.train_images):  # decoded in DataLoader workers (train/data_path.py)
            self.split = split = split.with_loader(run.num_workers, self.device.type == "cuda")
        self.data = TrainData(split, self.device)
        self.train_images = self.data.images
        self.train_labels = split.train_labels.to(self.device)
        self.config_record = config_record or {}
        self.ctx = _Context(self)
        main = self.group.is_main  # rank 0 logs and writes checkpoints
        self.logger = RunLogger(self.out_dir if main else None, quiet=run.quiet or not main)
        self.group.prepare(method)  # SyncBatchNorm (option) and DDP over training_step, before the optimiser
        self.optimizer = build_optimizer(method.config, method.parameter_groups())
        self.scheduler = None
        self.scaler = torch.amp.GradScaler(self.device.type, enabled=(run.amp == "fp16" and self.device.type == "cuda"))
        self.history: list[dict] = []
        self.best: Optional[dict] = None
        self.global_step = 0
        self._interrupt = False

    # ---- checkpoints ---------------------------------------------------------------------------
    @property
    def last_path(self) -> Optional[Path]:
        return self.out_dir / "last.pt" if self.out_dir is not None else None

    def _state(self, position: dict, aug_state: Optional[torch.Tensor], epoch_sums: Optional[dict]) -> dict:
        return {
            "format": CHECKPOINT_FORMAT,
            "method_name": self.method.name,
            **self.config_record,
            "method": self.method.state_dict(),
            "optimizer": self.optimizer.state_dict(),
            "scheduler": self.scheduler.state_dict() if self.scheduler is not None else None,
            "scaler": self.scaler.state_dict(),
            "rng": {"torch": torch.get_rng_state(), "aug": aug_state,
                    "aug_ranks": self.group.gather_states(aug_state), "world_size": self.group.size,
                    "cuda": torch.cuda.get_rng_state_all() if torch.cuda.is_available() else []},
            "position": position,
            "epoch_sums": epoch_sums,
            "global_step": self.global_step,
            "history": self.history,
            "best": self.best,
        }

    def _save(self, path: Optional[Path], **kw) -> None:
        if path is not None:
            state = self._state(**kw)  # on every rank (it gathers the ranks' augmentation states)
            if self.group.is_main:
                save_checkpoint(path, state)

    def _load(self, path: Path) -> dict:
        def read() -> dict:
            if not path.is_file():
                raise FileNotFoundError(f"--resume: no checkpoint at {path} (train without --resume first)")
            return load_checkpoint(path)

        state = self.group.load_on_main(read)  # rank 0 reads, every rank gets it (no shared file system needed)
        if state.get("method_name") != self.method.name:
            raise ValueError(f"--resume: {path} was written by method {state.get('method_name')!r}, "
                             f"not {self.method.name!r}")
        self.method.load_state_dict(state["method"])
        self.optimizer.load_state_dict(state["optimizer"])
        self.scaler.load_state_dict(state["scaler"])
        torch.set_rng_state(state["rng"]["torch"])
        if torch.cuda.is_available() and state["rng"]["cuda"]:
            torch.cuda.set_rng_state_all(state["rng"]["cuda"])
        self.history = list(state["history"])
        self.best = state["best"]
        self.global_step = state["global_step"]
        return state

    # ---- the loop ------------------------------------------------------------------------------
    def fit(self, resume: bool = False) -> dict:
        """Trains through every stage; returns {"history", "val", "test", "best", "train_seconds"}."""
        resumed = self._load(self.last_path) if resume else None
        position = resumed["position"] if resumed else {"stage": 0, "epoch": 0, "step": 0}
        old_handler = signal.getsignal(signal.SIGINT)
        if old_handler is not None:  # only in the main thread of a normal interpreter
            try:
                signal.signal(signal.SIGINT, self._on_sigint)
            except ValueError:
                old_handler = None
        start = time.perf_counter()
        try:
            for s_idx, stage in enumerate(self.method.stages()):
                first_epoch = position["epoch"] if s_idx == position["stage"] else 0
                if s_idx < position["stage"] or first_epoch >= stage.epochs:
                    if s_idx == position["stage"]:
                        resumed = None  # that stage had finished: the next one starts its own schedule
                    continue
                self.ctx.stage_index, self.ctx.resuming = s_idx, resumed is not None
                self.method.begin_stage(stage, self.ctx)
                sampler = self.method.batch_sampler(stage, self.ctx)
                steps = len(sampler)
                if steps < 1:
                    raise ValueError(f"the batch sampler of stage {stage.name!r} yields no batch "
                                     f"(batch_size larger than the {len(self.split.train_labels)} training images?)")
                self._new_scheduler(stage, steps)
                if resumed is not None:
                    self.scheduler.load_state_dict(resumed["scheduler"])
                    # Building the scheduler reset the groups' lr (and OneCycle's momentum): take them back.
                    self.optimizer.load_state_dict(resumed["optimizer"])
                for epoch in range(first_epoch, stage.epochs):
                    skip = position["step"] if resumed is not None else 0
                    self._epoch(s_idx, stage, epoch, sampler, steps, skip, resumed if skip else None)
                    resumed = None
                resumed = None
        finally:
            if old_handler is not None:
                signal.signal(signal.SIGINT, old_handler)
            self.data.close()
            self.logger.close()
        train_seconds = sum(r["seconds"] for r in self.history)
        return self._finish(train_seconds, time.perf_counter() - start)

    def _new_scheduler(self, stage, steps_per_epoch: int) -> None:
        cfg = self.method.config
        # A new stage restarts the schedule from each group's base lr (InsCLR's cycles); a scheduler
        # built over a group that already has "initial_lr" would start from that instead.
        # Stage.options may scale the lr ("lr_scale", InsCLR's lower impr lr) and set its own "milestones".
        scale = float(stage.options.get("lr_scale", 1.0))
        for g in self.optimizer.param_groups:
            g["lr"] = g.setdefault("base_lr", g["lr"]) * scale
            g.pop("initial_lr", None)
        self.scheduler = build_scheduler(cfg, self.optimizer, stage.epochs * steps_per_epoch, steps_per_epoch,
                                         milestones=stage.options.get("milestones"))

    def _epoch(self, s_idx, stage, epoch, sampler, steps, skip, resumed) -> None:
        method, run, ctx = self.method, self.run, self.ctx
        ctx.epoch = epoch
        if hasattr(sampler, "set_epoch"):
            # Samplers replay epoch e from (seed, e); offset by stage so cycles do not repeat batches.
            sampler.set_epoch(s_idx * 100_003 + epoch)
        ctx.resume_step = skip  # > 0: resuming inside this epoch (methods keep their saved batch tables)
        t_start = time.perf_counter()  # epoch time includes the epoch hooks (STML's re-embedding), not validation
        method.on_epoch_start(epoch, sampler, ctx)
        ctx.resume_step = 0
        # Each rank draws its own augmentations (the same stream as before on one process).
        gen = torch.Generator().manual_seed(derive_seed(ctx.seed, ctx.stage_index, ctx.epoch, "views",
                                                        *self.group.views_seed_parts()))
        # Epoch sums stay on the training device: reading them per step would add a host sync per logged
        # value (the finite-loss check is the one sync a step needs).
        zero = lambda: torch.zeros((), dtype=torch.float64, device=self.device)  # noqa: E731
        sums = {"loss": zero()}
        counts = {"loss": 0}
        if resumed is not None:
            gen.set_state(self._aug_state(resumed, gen))
            sums = {k: torch.tensor(v, dtype=torch.float64, device=self.device)
                    for k, v in resumed["epoch_sums"]["sums"].items()}
            counts = dict(resumed["epoch_sums"]["counts"])
        method.train()
        amp_dtype = {"bf16": torch.bfloat16, "fp16": torch.float16}.get(run.amp)
        bar = self.logger.progress(steps, f"{method.name} {stage.name} epoch {epoch + 1}/{stage.epochs}")
        if bar is not None and skip:
            bar.update(skip)
        n_images = 0
        # Under torchrun every rank draws the same global batch and keeps its shard (samplers.distributed).
        batches = DistributedBatchSampler(sampler) if self.group.distributed else sampler
        for step, idx, views in self.data.steps(method, stage, s_idx, epoch, run.seed, batches, skip, gen):
            batch = Batch(views=views, labels=self.train_labels[idx] if method.uses_labels else None, index=idx)
            with torch.autocast(self.device.type, dtype=amp_dtype, enabled=amp_dtype is not None):
                out = self.group.step(method, batch)  # through DDP under torchrun
            loss = out.loss
            # The loss over ranks (and any rank's Ctrl-C) in one all-reduce: all ranks stop at the same step.
            seen, self._interrupt = self.group.step_loss(loss, self._interrupt)
            if not bool(torch.isfinite(seen)):
                kept = (f"the last good checkpoint {self.last_path} is kept"
                        if self.last_path is not None and self.last_path.exists() else "no checkpoint was written yet")
                raise NonFiniteLossError(
                    f"non-finite loss ({seen.item()}) at stage {stage.name!r}, epoch {epoch + 1}, step {step + 1}; "
                    f"training stopped and {kept} (lower the learning rate, or try grad_clip)")
            self.optimizer.zero_grad(set_to_none=True)
            self.scaler.scale(loss).backward()
            self.group.after_backward(method)  # BN statistics averaged over ranks before EMA teachers read them
            if method.config.grad_clip is not None:
                self.scaler.unscale_(self.optimizer)
                torch.nn.utils.clip_grad_norm_(method.parameters(), method.config.grad_clip)
            method.after_backward()
            self.scaler.step(self.optimizer)
            self.scaler.update()
            self.scheduler.step()
            method.after_step(batch, out)
            self.global_step += 1
            n_images += len(idx)
            sums["loss"] += seen.double()
            counts["loss"] += 1
            for k, v in out.logs.items():
                v = v.detach().double().to(self.device) if torch.is_tensor(v) else float(v)
                sums[k] = sums.get(k, zero()) + v
                counts[k] = counts.get(k, 0) + 1
            if bar is not None:
                bar.set_postfix(loss=f"{loss.item():.4f}", refresh=False)
                bar.update(1)
            if self._interrupt:
                if bar is not None:
                    bar.close()
                self._save(self.last_path, position={"stage": s_idx, "epoch": epoch, "step": step + 1},
                           aug_state=gen.get_state(),
                           epoch_sums={"sums": {k: float(v) for k, v in sums.items()}, "counts": counts})
                where = f"; checkpoint {self.last_path} (continue with --resume)" if self.last_path else ""
                raise TrainingInterrupted(f"interrupted at stage {stage.name!r}, epoch {epoch + 1}, "
                                          f"step {step + 1}{where}", self.last_path)
        if bar is not None:
            bar.close()
        # A finite loss can still be followed by an optimiser step into inf / NaN weights: never write
        # such a state over the last good checkpoint.
        bad = [n for n, t in method.state_dict().items() if torch.is_tensor(t) and t.is_floating_point()
               and not bool(torch.isfinite(t).all())]
        if bad:
            kept = (f"the last good checkpoint {self.last_path} is kept"
                    if self.last_path is not None and self.last_path.exists() else "no checkpoint was written yet")
            raise NonFiniteLossError(f"non-finite weights ({bad[0]}, ...) after stage {stage.name!r}, epoch "
                                     f"{epoch + 1}; training stopped and {kept} (lower the learning rate, or try grad_clip)")
        method.on_epoch_end(epoch, ctx)
        seconds = time.perf_counter() - t_start
        row = {"stage": stage.name, "epoch": epoch + 1, "global_step": self.global_step}
        sums, n_images = self.group.reduce_epoch(sums, n_images)  # means over ranks, images over all ranks
        row.update({k: float(sums[k]) / max(1, counts[k]) for k in sums})
        row["lr"] = self.optimizer.param_groups[0]["lr"]
        if run.eval_every and (epoch + 1) % run.eval_every == 0 and len(self.split.val_labels) > 1:
            val = evaluate_method(method, self.split.val_images, self.split.val_labels, self.device, nmi=False,
                                  embed=self._embed)
            row["val_map_at_r"], row["val_recall@1"] = val["map_at_r"], val["recall@1"]
        row["seconds"] = seconds
        row["images_per_s"] = n_images / seconds if seconds > 0 else float("nan")
        self.history.append(row)
        improved = "val_map_at_r" in row and (self.best is None or row["val_map_at_r"] > self.best["val_map_at_r"])
        if improved:
            self.best = {"stage": stage.name, "epoch": epoch + 1, "val_map_at_r": row["val_map_at_r"]}
        position = {"stage": s_idx, "epoch": epoch + 1, "step": 0}
        self._save(self.last_path, position=position, aug_state=None, epoch_sums=None)
        if improved and self.out_dir is not None:
            self._save(self.out_dir / "best.pt", position=position, aug_state=None, epoch_sums=None)
        extras = "  ".join(f"{k} {row[k]:.4g}" for k in row
                           if k not in ("stage", "epoch", "global_step", "seconds", "images_per_s", "lr"))
        self.logger.epoch(self.history, f"[{method.name}] {stage.name} epoch {epoch + 1}/{stage.epochs}  {extras}  "
                                        f"{seconds:.1f}s ({row['images_per_s']:.0f} img/s)")

    def _finish(self, train_seconds: float, wall_seconds: float) -> dict:
        method = self.method
        if self.run.select == "best" and self.best is not None and self.out_dir is not None:
            best = self.out_dir / "best.pt"
            method.load_state_dict(self.group.load_on_main(lambda: load_checkpoint(best))["method"])
        val = (evaluate_method(method, self.split.val_images, self.split.val_labels, self.device, embed=self._embed)
               if len(self.split.val_labels) > 1 else {})
        # A training-only dataset (GLDv2) has no test part: it is evaluated on rOxford5k / rParis6k.
        test = (evaluate_method(method, self.split.test_images, self.split.test_labels, self.device, embed=self._embed)
                if len(self.split.test_labels) > 1 else {})
        return {"history": self.history, "val": val, "test": test, "best": self.best,
                "train_seconds": train_seconds, "wall_seconds": wall_seconds}

    def _embed(self, fn, module, images, device, batch_size: int = 512) -> torch.Tensor:
        """embed_images, sharded over the ranks and gathered under torchrun (evaluation)."""
        return self.group.embed(embed_images, fn, module, images, device, batch_size)

    def _aug_state(self, resumed: dict, gen: torch.Generator) -> torch.Tensor:
        """The augmentation stream of a mid-epoch checkpoint for this rank: its own saved state when the
        world size is unchanged; after a world-size change the fresh stream of this epoch (the batches are
        the same global batches, the augmentations are not replayed)."""
        rng = resumed["rng"]
        saved_world = rng.get("world_size", 1)
        if saved_world == self.group.size:
            ranks = rng.get("aug_ranks")
            return ranks[self.group.world.rank] if ranks else rng["aug"]
        return gen.get_state()

    def _on_sigint(self, signum, frame) -> None:
        if self._interrupt:  # a second Ctrl-C: stop at once
            raise KeyboardInterrupt
        self._interrupt = True
