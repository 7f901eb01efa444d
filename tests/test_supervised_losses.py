"""Issue 12 losses inside the `supervised` method: selectable by short name, the loss's parameters in their
own optimiser group at loss_lr, CenterLoss's paper update through a training step, and
`ssml-fast compare --methods supervised:arcface,supervised:cosface` (the method:loss spec)."""
import dataclasses

import pytest
import torch

from ssml_fast import cli
from ssml_fast.config import ConfigError
from ssml_fast.data import load_dataset
from ssml_fast.methods import Batch, get_method, make_config
from ssml_fast.methods._components import LOSSES
from ssml_fast.train import data_info
from ssml_fast.train.optim import build_optimizer

PROXY_FAMILY = ["arcface", "subcenter_arcface", "cosface", "large_margin_softmax", "sphereface",
                "normalized_softmax", "soft_triple", "center"]


@pytest.fixture(scope="module")
def split():
    """digits (train 0-4, test 5-9) with 300 of the training images, as tests/test_train_loop.py."""
    s = load_dataset("digits", seed=0)
    keep = torch.randperm(len(s.train_labels), generator=torch.Generator().manual_seed(0))[:300].sort().values
    return dataclasses.replace(s, train_images=s.train_images[keep], train_labels=s.train_labels[keep])


def _method(spec, split, **overrides):
    cfg = make_config(spec, "small", [("test", {"batch_size": 60, "epochs": 1, **overrides})])
    torch.manual_seed(0)
    return get_method(spec)(cfg, data_info(split))


def test_every_issue12_proxy_loss_has_a_short_name():
    from ssml_fast import losses

    for name in PROXY_FAMILY:
        assert hasattr(losses, LOSSES[name]), name


@pytest.mark.parametrize("loss", PROXY_FAMILY)
def test_one_step_trains_network_and_loss_parameters(loss, split):
    m = _method(f"supervised:{loss}", split, loss_lr=0.05, batch_size=20)
    opt = build_optimizer(m.config, m.parameter_groups())
    names = [g["name"] for g in opt.param_groups]
    assert names == ["network", "loss"]
    loss_group = opt.param_groups[1]
    assert loss_group["lr"] == 0.05
    own = {id(p) for p in m.loss_fn.parameters()}
    assert {id(p) for p in loss_group["params"]} == own
    assert not own & {id(p) for p in opt.param_groups[0]["params"]}
    x = split.train_images[:20]
    batch = Batch([m.augment(x, torch.Generator().manual_seed(0))], split.train_labels[:20], torch.arange(20))
    before = m.loss_fn.weight.detach().clone()
    centers = getattr(m.loss_fn, "centers", None)
    centers = None if centers is None else centers.detach().clone()
    out = m.training_step(batch)
    assert torch.isfinite(out.loss)
    out.loss.backward()
    opt.step()
    assert not torch.equal(before, m.loss_fn.weight.detach())
    if centers is not None:  # CenterLoss: the paper's update moved the centres during the step
        assert "centers" not in dict(m.loss_fn.named_parameters())
        assert not torch.equal(centers, m.loss_fn.centers)


def test_loss_group_lr_defaults_and_losses_without_parameters(split):
    m = _method("supervised:arcface", split)
    groups = m.parameter_groups()
    assert [g["name"] for g in groups] == ["network", "loss"] and "lr" not in groups[1]
    m = _method("supervised:arcface", split, head_lr=0.01)
    assert [g.get("lr") for g in m.parameter_groups() if g["name"] == "loss"] == [0.01]
    m = _method("supervised", split)  # the triplet default: no parameters, no loss group
    assert [g["name"] for g in m.parameter_groups()] == ["network"]
    with pytest.raises(ConfigError, match="loss_lr must be > 0"):
        make_config("supervised", None, [("test", {"loss_lr": 0.0})])


def test_spec_sets_the_loss_and_its_default_arguments():
    cfg = make_config("supervised:cosface", "small")
    assert cfg.loss == "cosface" and cfg.loss_kwargs == {}
    assert make_config("supervised:triplet").loss_kwargs == {"margin": 0.2, "mining": "all"}
    # later overrides win over the spec
    cfg = make_config("supervised:cosface", "small", [("--set", {"loss_kwargs.margin": 0.2})])
    assert cfg.loss_kwargs == {"margin": 0.2}
    assert get_method("supervised:arcface") is get_method("supervised")


@pytest.mark.parametrize("spec,match", [
    ("supervised:nope", "--methods: method spec 'supervised:nope': unknown loss 'nope'; available: .*arcface"),
    ("simclr:arcface", "--methods: method spec 'simclr:arcface': method 'simclr' takes no"),
    ("supervised:", "nothing after ':'"),
    ("nomethod:arcface", "unknown method 'nomethod'"),
])
def test_bad_specs_name_the_argument(spec, match):
    from ssml_fast.compare import check_methods

    with pytest.raises(ConfigError, match=match):
        check_methods([spec])


def test_cli_compare_compares_losses(split, tmp_path, capsys, monkeypatch):
    import ssml_fast.data

    monkeypatch.setattr(ssml_fast.data, "load_dataset", lambda *a, **k: split)
    rc = cli.main(["compare", "--dataset", "digits", "--methods", "supervised:arcface,supervised:cosface",
                   "--epochs", "1", "--quiet", "--out", str(tmp_path)])
    out = capsys.readouterr().out
    assert rc == 0
    assert "| supervised:arcface | supervised |" in out and "| supervised:cosface | supervised |" in out
    rc = cli.main(["compare", "--dataset", "digits", "--methods", "supervised:arcfac", "--epochs", "1",
                   "--out", str(tmp_path)])
    assert rc == 2
    assert "--methods: method spec 'supervised:arcfac': unknown loss 'arcfac'" in capsys.readouterr().err


PAIR_FAMILY = ["circle", "angular", "margin", "supcon", "log_ratio"]


@pytest.mark.parametrize("loss", PAIR_FAMILY)
def test_pair_family_losses_take_a_finite_step_in_supervised(loss, split):
    m = _method(f"supervised:{loss}", split, batch_size=20)
    x = split.train_images[:20]
    batch = Batch([m.augment(x, torch.Generator().manual_seed(0))], split.train_labels[:20], torch.arange(20))
    out = m.training_step(batch)
    assert torch.isfinite(out.loss)
    out.loss.backward()
    assert any(p.grad is not None and p.grad.abs().sum() > 0 for p in m.trunk.parameters())


def test_margin_loss_keeps_pmls_single_beta_unless_classes_are_asked_for(split):
    assert _method("supervised:margin", split).loss_fn.beta.numel() == 1
    m = _method("supervised:margin", split, loss_kwargs={"learn_beta": True, "num_classes": 5})
    assert m.loss_fn.beta.numel() == 5
    groups = {g["name"] for g in m.parameter_groups()}
    assert "loss" in groups
