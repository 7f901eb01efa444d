"""One training step split by phase, for every registered method at its "small" preset on mnist5k, batch 128
(or the preset's batch where 128 is not allowed, e.g. STML's queries x neighbours).

Run: .venv/bin/python bench/bench_train.py            (prints the table, writes bench/results_train.md)
or:  .venv/bin/python -m pytest bench/bench_train.py --benchmark-enable -s
SSML_BENCH_THREADS sets torch's intra-op threads (default 1), SSML_BENCH_STEPS the timed steps per method
(default 30, after SSML_BENCH_WARMUP = 5 untimed ones), SSML_BENCH_METHODS a comma list (default: every
entry of ssml_fast.methods.METHODS, so methods registered later are picked up), SSML_BENCH_OUT the markdown
path. A method whose step changes after a number of steps (stml_memory uses its memory after
`memory_warmup` steps) is warmed up past it, so the table times its steady-state step.

Issue 8 target: the step overhead outside the network's forward / backward (data, augmentation, loss,
mining, optimiser, hooks) is <= 15 % of a supervised step at batch 128 on a CPU.

How the step is split. `StepRunner.step` is the body of `ssml_fast.train.loop.Trainer._epoch`, in the same
order and with the same calls, with `time.perf_counter()` between the phases:
- data: the sampler's next batch of indices (its per-epoch permutation included), `images[idx]`, labels;
- augment: `method.views(x, generator)`;
- net fwd / loss fwd: `method.training_step(batch)` is one call, so the *network* is timed from inside it:
  a forward pre-hook and forward hook on every direct child module of the method that holds parameters and
  is not a loss or miner of ssml_fast (trunk, heads, later teachers), outermost call only. net fwd = time
  inside those modules; loss fwd = the rest of `training_step` (L2-normalise, concatenation, label mapping,
  miner, loss, logged values);
- loss bwd / net bwd: one `loss.backward()`. The forward hook registers a tensor hook on each network
  output that requires grad; it fires when the gradient w.r.t. that output has been computed, i.e. when
  backward leaves the loss part of the graph and enters the network. loss bwd = backward start -> first
  such hook, net bwd = the rest. (Nodes of the loss that run after the first network output got its
  gradient, e.g. a proxy loss's parameter accumulation, count as network: this can only flatter the loss.)
  Cross-check (`step(backward_check=True)`): on separate steps, `torch.autograd.grad(loss, final network
  outputs, retain_graph=True)` (the loss's backward alone; "final" = not consumed by another network
  module, e.g. the head's output but not the trunk's) is timed before the full `loss.backward()`; the
  table's "loss bwd (grad check)" column is that time, next to the hook-based figure;
- after_backward / after_step: the method hooks; optimizer: `zero_grad`, grad clipping when configured,
  `scaler.step`, `scaler.update`, `scheduler.step`;
- loop: the trainer's own bookkeeping (finite-loss check, autocast context, per-step log sums);
- epoch: `set_epoch`, `on_epoch_start`, `on_epoch_end` and the view generator, spread over the epoch's steps
  (validation, which the trainer runs between epochs, is not part of a step and is left out). Network
  forwards inside these hooks (STML / InsCLR re-embedding the training set once per epoch, no grad) are
  timed by the same module hooks and counted in "net fwd", spread over the epoch's steps the same way: they
  are the networks' forward passes the method needs; "epoch" keeps the rest (neighbour tables, pools).
overhead = median over the timed steps of (step - net fwd - net bwd) / step (also given from the per-phase
medians; under load the long network phases have the heavier tail, which makes that figure smaller). The methods
run round-robin, one step each per round, so a change of load on this shared machine hits all of them
alike (SPEC 9). "trainer ms/step" is the uninstrumented `Trainer.fit` (2 epochs, no validation) divided by
its steps: the instrumentation's own cost is the difference (the trainer's epoch seconds start after
`on_epoch_start`, so that figure leaves the "epoch" phase out).
"""
from __future__ import annotations

import os
import statistics
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

sys.path.insert(0, os.path.dirname(__file__))

from ssml_fast.data import load_dataset  # noqa: E402
from ssml_fast.methods import METHODS, Batch, get_method, make_config  # noqa: E402
from ssml_fast.train import RunConfig, Trainer, build_scheduler, data_info  # noqa: E402
from _machine import machine  # noqa: E402

THREADS = int(os.environ.get("SSML_BENCH_THREADS", "1"))
torch.set_num_threads(THREADS)
STEPS = int(os.environ.get("SSML_BENCH_STEPS", "30"))
WARMUP = int(os.environ.get("SSML_BENCH_WARMUP", "5"))
BATCH = 128
DATASET = "mnist5k"
PHASES = ("data", "augment", "net_fwd", "loss_fwd", "loss_bwd", "net_bwd", "after_backward", "optimizer",
          "after_step", "loop", "epoch")
NETWORK_PHASES = ("net_fwd", "net_bwd")
RESULTS = Path(os.environ.get("SSML_BENCH_OUT") or Path(__file__).with_name("results_train.md"))


def bench_methods() -> list[str]:
    names = os.environ.get("SSML_BENCH_METHODS")
    return [n.strip() for n in names.split(",") if n.strip()] if names else list(METHODS)


def bench_config(name: str, **extra):
    """The "small" preset at batch 128; a method whose batches must be a multiple of something else (STML:
    queries x neighbours) keeps its preset's batch size, reported in the table."""
    from ssml_fast.config import ConfigError

    try:
        return make_config(name, "small", [("bench", {"batch_size": BATCH, **extra})])
    except ConfigError:
        return make_config(name, "small", [("bench", extra)] if extra else [])


def network_modules(method: torch.nn.Module) -> dict:
    """The method's direct children that are networks: they hold parameters and are not ssml_fast losses
    or miners (a proxy loss's proxies are the loss's, not the network's); and their own children that hold
    parameters, for a method that calls the parts of a network directly (DINO's student.trunk and
    student.head, the official MultiCropWrapper order). Only outermost calls are timed, so a part called
    from inside its network is not counted twice."""
    out = {}
    for name, mod in method.named_children():
        kind = type(mod).__module__
        if kind.startswith(("ssml_fast.losses", "ssml_fast.miners")):
            continue
        if any(True for _ in mod.parameters()):
            out[name] = mod
            for sub, part in mod.named_children():
                if any(True for _ in part.parameters()):
                    out[f"{name}.{sub}"] = part
    return out


class _NetworkTimer:
    """Forward time inside the network modules, and when backward first reaches one of their outputs."""

    def __init__(self, modules: dict):
        self.depth = 0
        self.enter = 0.0
        self.reset()
        self.handles = []
        for mod in modules.values():
            self.handles.append(mod.register_forward_pre_hook(self._pre))
            self.handles.append(mod.register_forward_hook(self._post))

    def reset(self) -> None:
        self.forward, self.first_grad, self.outputs, self.inputs = 0.0, None, [], []

    def _pre(self, module, args):
        if self.depth == 0:
            self.inputs.extend(a for a in args if torch.is_tensor(a))
            self.enter = time.perf_counter()
        self.depth += 1

    def final_outputs(self) -> list:
        """Network outputs that no network module consumed (the head's, not the trunk's when the head
        takes the trunk's output): where the loss's part of the graph begins."""
        return [t for t in self.outputs if not any(t is i for i in self.inputs)]

    def _post(self, module, args, output):
        self.depth -= 1
        if self.depth:
            return
        for t in (output if isinstance(output, (tuple, list)) else (output,)):
            if torch.is_tensor(t) and t.requires_grad:
                t.register_hook(self._grad_arrived)
                self.outputs.append(t)
        self.forward += time.perf_counter() - self.enter

    def _grad_arrived(self, grad):
        if self.first_grad is None:
            self.first_grad = time.perf_counter()

    def remove(self) -> None:
        for h in self.handles:
            h.remove()


class StepRunner:
    """One method at its "small" preset (batch 128) with the trainer's optimiser, scheduler and context,
    stepping exactly like `Trainer._epoch` with timers between the phases."""

    def __init__(self, name: str, split, seed: int = 0):
        self.name = name
        cfg = bench_config(name)
        torch.manual_seed(seed)
        self.method = get_method(name)(cfg, data_info(split))
        # The Trainer supplies the optimiser, scaler and hook context exactly as in a run; its loop is
        # replayed below so the phases can be timed.
        self.trainer = Trainer(self.method, split, RunConfig(seed=seed, quiet=True, eval_every=0, device="cpu"))
        self.ctx = self.trainer.ctx
        self.images, self.labels = self.trainer.train_images, self.trainer.train_labels
        self.stage = self.method.stages()[0]
        self.method.begin_stage(self.stage, self.ctx)
        self.sampler = self.method.batch_sampler(self.stage, self.ctx)
        self.steps_per_epoch = len(self.sampler)
        self.scheduler = build_scheduler(cfg, self.trainer.optimizer, 10**6, self.steps_per_epoch)
        self.timer = _NetworkTimer(network_modules(self.method))
        self.epoch = -1
        self.epoch_seconds = 0.0
        self.epoch_net = 0.0  # network forward time inside the epoch hooks (the per-epoch re-embedding)
        self.samples: dict[str, list] = {p: [] for p in PHASES}
        self.iterator = iter(())
        self.method.train()

    def _next_epoch(self) -> None:
        self.timer.reset()
        t = time.perf_counter()
        if self.epoch >= 0:
            self.method.on_epoch_end(self.epoch, self.ctx)
        self.epoch += 1
        self.ctx.epoch = self.epoch
        if hasattr(self.sampler, "set_epoch"):
            self.sampler.set_epoch(self.epoch)
        self.method.on_epoch_start(self.epoch, self.sampler, self.ctx)
        self.gen = self.ctx.generator("views")
        self.method.train()
        self.iterator = iter(self.sampler)
        self.epoch_seconds = time.perf_counter() - t
        self.epoch_net = self.timer.forward

    def _indices(self):
        try:
            return next(self.iterator)
        except StopIteration:
            self._next_epoch()
            return None

    def step(self, record: bool = True, backward_check: bool = False) -> dict:
        method, opt, scaler = self.method, self.trainer.optimizer, self.trainer.scaler
        indices = self._indices()
        t0 = time.perf_counter()
        if indices is None:
            indices = next(self.iterator)
        idx = torch.as_tensor(indices, dtype=torch.long)
        x = self.images[idx]
        labels = self.labels[idx] if method.uses_labels else None
        t1 = time.perf_counter()
        batch = Batch(views=method.views(x, self.gen), labels=labels, index=idx)
        t2 = time.perf_counter()
        self.timer.reset()
        with torch.autocast("cpu", dtype=None, enabled=False):
            ta = time.perf_counter()
            out = method.training_step(batch)
            tb = time.perf_counter()
        loss = out.loss
        check = None
        finals = self.timer.final_outputs() if backward_check else []
        if finals:
            tc = time.perf_counter()
            torch.autograd.grad(loss, finals, retain_graph=True, allow_unused=True)
            check = time.perf_counter() - tc
        t3 = time.perf_counter()
        if not bool(torch.isfinite(loss.detach())):
            raise FloatingPointError(f"{self.name}: non-finite loss in the benchmark")
        t4 = time.perf_counter()
        opt.zero_grad(set_to_none=True)
        t5 = time.perf_counter()
        scaler.scale(loss).backward()
        t6 = time.perf_counter()
        first = self.timer.first_grad if self.timer.first_grad is not None else t6
        if method.config.grad_clip is not None:
            scaler.unscale_(opt)
            torch.nn.utils.clip_grad_norm_(method.parameters(), method.config.grad_clip)
        t7 = time.perf_counter()
        method.after_backward()
        t8 = time.perf_counter()
        scaler.step(opt)
        scaler.update()
        self.scheduler.step()
        t9 = time.perf_counter()
        method.after_step(batch, out)
        t10 = time.perf_counter()
        sums = loss.detach().double().cpu()
        for v in out.logs.values():
            sums = sums + (v.detach().double().cpu() if torch.is_tensor(v) else float(v))
        t11 = time.perf_counter()
        net_fwd = self.timer.forward + self.epoch_net / self.steps_per_epoch
        phases = {
            "data": t1 - t0,
            "augment": t2 - t1,
            "net_fwd": net_fwd,
            "loss_fwd": (tb - ta) - self.timer.forward,
            "loss_bwd": first - t5,
            "net_bwd": t6 - first,
            "after_backward": t8 - t7,
            "optimizer": (t5 - t4) + (t7 - t6) + (t9 - t8),
            "after_step": t10 - t9,
            "loop": (ta - t2) + (t3 - tb - (check or 0.0)) + (t4 - t3) + (t11 - t10),
            "epoch": (self.epoch_seconds - self.epoch_net) / self.steps_per_epoch,
        }
        if record:
            for k, v in phases.items():
                self.samples[k].append(v)
        if check is not None:
            self.samples.setdefault("loss_bwd_check", []).append(check)
        return phases

    def medians(self) -> dict:
        return {k: statistics.median(v) for k, v in self.samples.items() if v}


def trainer_ms_per_step(name: str, split, epochs: int = 2) -> float:
    """The real Trainer.fit (no validation, no output directory): training seconds / steps."""
    cfg = bench_config(name, epochs=epochs)
    torch.manual_seed(0)
    method = get_method(name)(cfg, data_info(split))
    res = Trainer(method, split, RunConfig(seed=0, quiet=True, eval_every=0, device="cpu")).fit()
    steps = res["history"][-1]["global_step"]
    return 1e3 * res["train_seconds"] / steps


def run_phase_split(names=None, steps: int = STEPS, warmup: int = WARMUP, check_steps: int = 10) -> dict:
    """Round-robin over the methods; returns {method: {"ms": phase medians in ms, "overhead": fraction,
    "trainer_ms": ..., "steps": ...}}."""
    names = names or bench_methods()
    split = load_dataset(DATASET, seed=0)
    runners, failed = {}, {}
    for n in names:
        try:
            runners[n] = StepRunner(n, split)
        except Exception as e:  # a method being written may not build yet: report it, time the others
            failed[n] = f"{type(e).__name__}: {e}"
            print(f"{n}: could not be built, not timed ({failed[n]})")
    for r in runners.values():
        # Past any step-count warm-up in the config (a memory bank that is used after memory_warmup steps).
        for _ in range(max(warmup, int(getattr(r.method.config, "memory_warmup", 0) or 0) + 5)):
            r.step(record=False)
    for _ in range(steps):
        for r in runners.values():
            r.step()
    for _ in range(check_steps):
        for r in runners.values():
            r.step(record=False, backward_check=True)
    out = {}
    for n, r in runners.items():
        med = {k: 1e3 * v for k, v in r.medians().items()}
        total = sum(med[p] for p in PHASES)
        per_step = [sum(r.samples[p][i] for p in PHASES) for i in range(steps)]
        per_step_overhead = [1 - (r.samples["net_fwd"][i] + r.samples["net_bwd"][i]) / per_step[i]
                             for i in range(steps)]
        out[n] = {"ms": med, "step_ms": total,
                  "overhead": statistics.median(per_step_overhead),
                  "overhead_of_medians": (total - sum(med[p] for p in NETWORK_PHASES)) / total,
                  "steps": steps, "steps_per_epoch": r.steps_per_epoch, "batch": r.method.config.batch_size,
                  "network": list(network_modules(r.method))}
        r.timer.remove()
    for n in runners:  # SSML_BENCH_TRAINER=0 skips the uninstrumented runs (2 epochs per method)
        out[n]["trainer_ms"] = (trainer_ms_per_step(n, split) if os.environ.get("SSML_BENCH_TRAINER", "1") != "0"
                                else float("nan"))
    for n, err in failed.items():
        out[n] = {"failed": err}
    return out


COLUMNS = [("data", "data"), ("augment", "augment"), ("net_fwd", "net fwd"), ("loss_fwd", "loss fwd"),
           ("loss_bwd", "loss bwd"), ("loss_bwd_check", "loss bwd (grad check)"), ("net_bwd", "net bwd"),
           ("optimizer", "optimizer"), ("hooks", "hooks"), ("loop", "loop"), ("epoch", "epoch")]


def table(res: dict) -> str:
    head = ["method", "batch"] + [c for _, c in COLUMNS] + ["step", "overhead", "overhead of medians",
                                                            "trainer ms/step"]
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for n, r in res.items():
        if "failed" in r:
            lines.append(f"| {n} | not timed: {r['failed']} |")
            continue
        ms = dict(r["ms"], hooks=r["ms"]["after_backward"] + r["ms"]["after_step"])
        cells = [n, str(r["batch"])] + [f"{ms[k]:.2f}" if k in ms else "-" for k, _ in COLUMNS]
        cells += [f"{r['step_ms']:.2f}", f"{100 * r['overhead']:.1f} %", f"{100 * r['overhead_of_medians']:.1f} %",
                  f"{r['trainer_ms']:.2f}"]
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)


def _commit() -> str:
    try:
        return subprocess.run(["git", "rev-parse", "--short", "HEAD"], capture_output=True, text=True,
                              cwd=Path(__file__).parent).stdout.strip() or "?"
    except OSError:
        return "?"


def _env_prefix() -> str:
    env = {k: v for k, v in sorted(os.environ.items()) if k.startswith("SSML_BENCH_") and k != "SSML_BENCH_THREADS"}
    return "".join(f"{k}={v} " for k, v in [("SSML_BENCH_THREADS", str(THREADS))] + list(env.items()))


def write_results(res: dict, load_before, load_after, seconds: float, path: Path = RESULTS) -> None:
    sup = res.get("supervised")
    verdict = ""
    if sup is not None:
        ok = sup["overhead"] <= 0.15
        verdict = (f"\n**Supervised overhead: {100 * sup['overhead']:.1f} % of the step "
                   f"(median over the timed steps; {100 * sup['overhead_of_medians']:.1f} % from the phase medians), "
                   f"target <= 15 %: "
                   f"{'met' if ok else 'NOT met'}.**\n")
    timed = {n: r for n, r in res.items() if "failed" not in r}
    over = [f"{n} {100 * r['overhead']:.1f} %" for n, r in timed.items() if r["overhead"] > 0.15]
    verdict += ("\n**Every method's overhead <= 15 %: " + ("met.**\n" if not over else
                "NOT met for " + ", ".join(over) + ".**\n"))
    nets = "; ".join(f"{n}: {', '.join(r['network'])}" for n, r in timed.items())
    text = f"""# Training-step phase split (bench/bench_train.py)

Run: `{_env_prefix()}.venv/bin/python bench/bench_train.py`, {time.strftime('%Y-%m-%d %H:%M UTC', time.gmtime())},
commit {_commit()} (plus uncommitted work of others in the checkout), {seconds:.0f} s.
Machine: {machine()}. Load average (1 min) {load_before:.2f} before, {load_after:.2f} after: the machine is shared,
absolute times are noisy; the methods ran round-robin, one step each per round.

Each method at its "small" preset, {DATASET} (train classes 0-4, 2,250 training images), batch {BATCH}, CPU,
{next(iter(timed.values()))['steps']} timed steps after {WARMUP} warm-up steps (memory_warmup + 5 for a method with a
memory warm-up); medians in ms. Network modules timed
as "net": {nets}. Phases and the way network and loss are separated: see the docstring of bench/bench_train.py.
"hooks" = after_backward + after_step; "epoch" = per-epoch hooks spread over the epoch's steps; "loss bwd
(grad check)" = `autograd.grad(loss, network outputs)` timed on 10 separate steps, a cross-check of the
hook-based "loss bwd". step = sum of the phase medians; overhead = median over the timed steps of
(step - net fwd - net bwd) / step; "overhead of medians" = the same fraction from the phase medians;
"trainer ms/step" = uninstrumented `Trainer.fit`, 2 epochs, no validation.

{table(res)}
{verdict}"""
    path.write_text(text)


def main() -> dict:
    load_before = os.getloadavg()[0]
    t = time.perf_counter()
    res = run_phase_split()
    seconds = time.perf_counter() - t
    print(table(res))
    for n, r in res.items():
        if "failed" in r:
            continue
        print(f"{n}: overhead {100 * r['overhead']:.1f} % (from the phase medians {100 * r['overhead_of_medians']:.1f} %)")
    write_results(res, load_before, os.getloadavg()[0], seconds)
    print(f"wrote {RESULTS}")
    return res


@pytest.fixture(scope="module")
def split():
    return load_dataset(DATASET, seed=0)


@pytest.mark.parametrize("name", bench_methods())
def test_train_step(benchmark, name, split):
    """Whole instrumented step per method; the phase medians of the timed rounds go to extra_info."""
    runner = StepRunner(name, split)
    benchmark.pedantic(runner.step, rounds=STEPS, warmup_rounds=WARMUP)
    med = runner.medians()
    total = sum(med[p] for p in PHASES)
    benchmark.extra_info.update(threads=torch.get_num_threads(), batch=BATCH,
                                overhead=(total - sum(med[p] for p in NETWORK_PHASES)) / total,
                                **{f"{k}_ms": 1e3 * v for k, v in med.items()})
    runner.timer.remove()


def test_phase_split():
    """The round-robin phase table (prints it; `python bench/bench_train.py` also writes the markdown)."""
    res = run_phase_split(steps=min(STEPS, 20), warmup=3, check_steps=5)
    print("\n" + table(res))
    for r in res.values():
        assert "failed" in r or 0 < r["overhead"] < 1


if __name__ == "__main__":
    main()
