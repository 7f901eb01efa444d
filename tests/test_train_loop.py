"""The trainer: every method steps, resume is bit-identical, NaN stops a run, Ctrl-C leaves a checkpoint."""
import math

import pytest
import torch

from ssml_fast.data import load_dataset
from ssml_fast.methods import METHODS, get_method, make_config
from conftest import interrupt_after
from ssml_fast.train import NonFiniteLossError, RunConfig, Trainer, TrainingInterrupted, data_info, load_checkpoint

TIME_KEYS = ("seconds", "images_per_s")


@pytest.fixture(scope="module")
def split():
    """digits (train 0-4, test 5-9) with 300 of the 811 training images: every method x every trainer test
    stays within the CI budget (4-5 steps per epoch at batch 60)."""
    import dataclasses

    s = load_dataset("digits", seed=0)
    keep = torch.randperm(len(s.train_labels), generator=torch.Generator().manual_seed(0))[:300].sort().values
    return dataclasses.replace(s, train_images=s.train_images[keep], train_labels=s.train_labels[keep])


def _method(name, split, **overrides):
    overrides = {"batch_size": 60, "epochs": 2, **overrides}
    cfg = make_config(name, "small", [("test", overrides)])
    torch.manual_seed(0)
    return get_method(name)(cfg, data_info(split))


def assert_same_state(a, b):
    """state_dicts equal entry by entry (tensors bit-identical; extra state such as a queue's pointer ==)."""
    assert a.keys() == b.keys()
    for k in a:
        assert (torch.equal(a[k], b[k]) if torch.is_tensor(a[k]) else a[k] == b[k]), k


def _strip_times(history):
    return [{k: v for k, v in row.items() if k not in TIME_KEYS} for row in history]


@pytest.mark.parametrize("name", list(METHODS))
def test_one_step_changes_parameters_and_gives_finite_loss(name, split):
    m = _method(name, split)
    before = {k: v.clone() for k, v in m.state_dict().items() if torch.is_tensor(v)}
    t = Trainer(m, split, RunConfig(seed=0, quiet=True, eval_every=0))
    sampler = m.batch_sampler(m.stages()[0], t.ctx)
    m.on_epoch_start(0, sampler, t.ctx)
    idx = torch.as_tensor(next(iter(sampler)))
    from ssml_fast.methods import Batch

    x = split.train_images[idx]
    batch = Batch(m.views(x, torch.Generator().manual_seed(0)), split.train_labels[idx] if m.uses_labels else None, idx)
    out = m.training_step(batch)
    assert out.loss.dim() == 0 and math.isfinite(out.loss.item())
    t.optimizer.zero_grad()
    out.loss.backward()
    m.after_backward()
    t.optimizer.step()
    changed = [k for k, v in m.state_dict().items()
               if torch.is_tensor(v) and v.is_floating_point() and not torch.equal(v, before[k])]
    assert any("trunk" in k for k in changed), changed


@pytest.mark.parametrize("name", list(METHODS))
def test_self_supervised_methods_never_see_labels(name, split, monkeypatch):
    m = _method(name, split, epochs=1)
    seen = []
    original = m.training_step

    def spy(batch):
        seen.append(batch.labels is not None)
        return original(batch)

    monkeypatch.setattr(m, "training_step", spy)
    Trainer(m, split, RunConfig(seed=0, quiet=True, eval_every=0)).fit()
    assert seen and all(s == m.uses_labels for s in seen)


@pytest.mark.parametrize("name", list(METHODS))
def test_resume_is_bit_identical(name, split, tmp_path):
    straight = Trainer(_method(name, split), split, RunConfig(seed=0, quiet=True), tmp_path / "a")
    res_a = straight.fit()

    first = Trainer(_method(name, split, epochs=2), split, RunConfig(seed=0, quiet=True), tmp_path / "b")
    # Stop after one epoch by interrupting at the last step of epoch 1, then resume in a new trainer.
    steps = len(first.method.batch_sampler(first.method.stages()[0], first.ctx))
    interrupt_after(first, steps)
    with pytest.raises(TrainingInterrupted):
        first.fit()
    second = Trainer(_method(name, split, epochs=2), split, RunConfig(seed=0, quiet=True), tmp_path / "b")
    res_b = second.fit(resume=True)

    assert_same_state(straight.method.state_dict(), second.method.state_dict())
    assert _strip_times(res_a["history"]) == _strip_times(res_b["history"])
    assert res_a["test"] == res_b["test"]


def test_sigint_mid_epoch_saves_a_loadable_checkpoint_and_resumes_exactly(split, tmp_path):
    straight = Trainer(_method("supervised", split), split, RunConfig(seed=0, quiet=True), tmp_path / "a")
    straight.fit()
    t = Trainer(_method("supervised", split), split, RunConfig(seed=0, quiet=True), tmp_path / "b")
    interrupt_after(t, 5)
    with pytest.raises(TrainingInterrupted, match="epoch 1, step 5"):
        t.fit()
    state = load_checkpoint(tmp_path / "b" / "last.pt")
    assert state["position"] == {"stage": 0, "epoch": 0, "step": 5}
    resumed = Trainer(_method("supervised", split), split, RunConfig(seed=0, quiet=True), tmp_path / "b")
    resumed.fit(resume=True)
    assert_same_state(straight.method.state_dict(), resumed.method.state_dict())
    assert _strip_times(straight.history) == _strip_times(resumed.history)


def test_non_finite_loss_stops_naming_epoch_and_step_and_keeps_last_good_checkpoint(split, tmp_path):
    m = _method("supervised", split, epochs=3)
    t = Trainer(m, split, RunConfig(seed=0, quiet=True), tmp_path)
    steps = len(m.batch_sampler(m.stages()[0], t.ctx))
    original = m.training_step
    calls = {"n": 0}

    def poisoned(batch):
        calls["n"] += 1
        out = original(batch)
        if calls["n"] == steps + 3:  # epoch 2, step 3
            out.loss = out.loss * float("nan")
        return out

    m.training_step = poisoned
    with pytest.raises(NonFiniteLossError, match=r"epoch 2, step 3.*last good checkpoint"):
        t.fit()
    state = load_checkpoint(tmp_path / "last.pt")
    assert state["position"]["epoch"] == 1
    assert all(torch.isfinite(v).all() for v in state["method"].values() if torch.is_tensor(v) and v.is_floating_point())


def test_huge_learning_rate_is_caught_not_checkpointed_as_nan(split, tmp_path):
    m = _method("spreading", split, epochs=2, lr=1e12, optimizer="sgd", schedule="constant")
    t = Trainer(m, split, RunConfig(seed=0, quiet=True), tmp_path)
    with pytest.raises(NonFiniteLossError, match="non-finite"):
        t.fit()
    if (tmp_path / "last.pt").exists():
        state = load_checkpoint(tmp_path / "last.pt")
        assert all(torch.isfinite(v).all() for v in state["method"].values() if torch.is_tensor(v) and v.is_floating_point())


def test_logs_are_written_per_epoch(split, tmp_path):
    Trainer(_method("simclr", split), split, RunConfig(seed=0, quiet=True), tmp_path).fit()
    lines = (tmp_path / "log.jsonl").read_text().splitlines()
    assert len(lines) == 2
    header = (tmp_path / "metrics.csv").read_text().splitlines()[0].split(",")
    for key in ("epoch", "loss", "lr", "val_map_at_r", "seconds", "images_per_s"):
        assert key in header
    assert (tmp_path / "best.pt").exists()


def test_select_best_uses_the_best_validation_epoch(split, tmp_path):
    res = Trainer(_method("supervised", split, epochs=3), split, RunConfig(seed=0, quiet=True, select="best"),
                  tmp_path).fit()
    assert res["best"]["val_map_at_r"] == max(r["val_map_at_r"] for r in res["history"])


def test_bf16_autocast_on_cpu_trains(split):
    m = _method("simclr", split, epochs=1)
    res = Trainer(m, split, RunConfig(seed=0, quiet=True, amp="bf16", eval_every=0)).fit()
    assert math.isfinite(res["history"][0]["loss"])
