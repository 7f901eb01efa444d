"""Config dataclasses: presets, YAML, --set, and errors that name the key."""
import pytest

from ssml_fast.config import ConfigError, apply_overrides, load_yaml, parse_set, to_yaml
from ssml_fast.methods import METHODS, make_config


def test_parse_set_reads_yaml_values_and_numbers():
    got = parse_set(["lr=1e-3", "epochs=5", "milestones=[20, 40]", "loss_kwargs.margin=0.3", "head=linear",
                     "grad_clip=null", "normalize=false"])
    assert got == {"lr": 1e-3, "epochs": 5, "milestones": [20, 40], "loss_kwargs.margin": 0.3, "head": "linear",
                   "grad_clip": None, "normalize": False}


@pytest.mark.parametrize("items, message", [(["lr"], "key=value"), (["=3"], "key=value"), (["x=[1"], "cannot parse")])
def test_parse_set_errors(items, message):
    with pytest.raises(ConfigError, match=message):
        parse_set(items)


def test_overrides_are_typed_and_checked():
    cfg = make_config("supervised")
    out = apply_overrides(cfg, {"lr": 1, "milestones": [3, 5], "loss_kwargs.margin": 0.5})
    assert out.lr == 1.0 and isinstance(out.lr, float) and out.milestones == (3, 5)
    assert out.loss_kwargs == {"margin": 0.5, "mining": "all"} and cfg.loss_kwargs["margin"] == 0.2
    with pytest.raises(ConfigError, match="epochs must be an integer"):
        apply_overrides(cfg, {"epochs": 2.5})
    with pytest.raises(ConfigError, match="normalize must be true or false"):
        apply_overrides(cfg, {"normalize": "yes"})
    with pytest.raises(ConfigError, match="unknown config key 'lrr'"):
        apply_overrides(cfg, {"lrr": 1.0})
    with pytest.raises(ConfigError, match="lr is not a mapping"):
        apply_overrides(cfg, {"lr.x": 1.0})
    with pytest.raises(ConfigError, match="lr must be > 0"):
        apply_overrides(cfg, {"lr": -1.0})


def test_setting_the_loss_resets_its_kwargs_to_that_losses_defaults():
    cfg = make_config("supervised")
    ms = apply_overrides(cfg, {"loss": "multi_similarity", "loss_kwargs.alpha": 2})
    assert ms.loss_kwargs == {"alpha": 2}                     # not triplet's margin / mining
    assert apply_overrides(cfg, {"loss_kwargs.alpha": 2, "loss": "multi_similarity"}).loss_kwargs == {"alpha": 2}
    assert apply_overrides(cfg, {"loss": "arcface", "loss_kwargs": {"margin": 30}}).loss_kwargs == {"margin": 30}
    assert apply_overrides(ms, {"loss": "triplet"}).loss_kwargs == {"margin": 0.2, "mining": "all"}
    assert apply_overrides(cfg, {"miner": "batch_hard"}).miner_kwargs == {}
    make_config("supervised", "small", [("--set", {"loss": "arcface"})])   # validates (used to fail on margin)


@pytest.mark.parametrize("name", list(METHODS))
def test_every_method_has_official_and_small_presets_that_validate(name):
    official = make_config(name)
    assert make_config(name, "official") == official
    small = make_config(name, "small")
    assert type(small) is type(official)
    assert to_yaml(small).startswith("backbone:")


def test_yaml_file(tmp_path):
    p = tmp_path / "c.yaml"
    p.write_text("lr: 3e-4\nloss_kwargs:\n  margin: 0.1\n")
    assert load_yaml(p) == {"lr": 3e-4, "loss_kwargs": {"margin": 0.1}}
    p.write_text("- a\n- b\n")
    with pytest.raises(ConfigError, match="expected a mapping"):
        load_yaml(p)
    with pytest.raises(ConfigError, match="does not exist"):
        load_yaml(tmp_path / "missing.yaml")
