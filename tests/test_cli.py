"""`ssml-fast train | eval | compare`: what a user types, including every mistake, fails before training."""
import json
import os
import subprocess
import sys
import time

import pytest

from ssml_fast import cli


def run(capsys, *argv):
    rc = cli.main(list(argv))
    out = capsys.readouterr()
    return rc, out.out, out.err


FAST = ["--dataset", "digits", "--epochs", "1", "--set", "batch_size=64", "--quiet"]


@pytest.mark.parametrize("argv, message", [
    (["train", "--method", "nope"], "unknown method 'nope'"),
    (["train", "--dataset", "imagenet"], "dataset 'imagenet' is unknown"),
    (["train", "--set", "loss=nope"], "unknown loss 'nope'"),
    (["train", "--set", "optimizer=rmsprop"], "optimizer"),
    (["train", "--set", "learning_rate=0.1"], "unknown config key 'learning_rate'"),
    (["train", "--set", "lr"], "--set expects key=value"),
    (["train", "--set", "lr=fast"], "lr must be a number"),
    (["train", "--set", "loss_kwargs.bogus=1"], "has no argument 'bogus'"),
    (["train", "--train-classes", "0,1,2,3,4,5,6,7,8,9"], "train_classes"),
    (["train", "--train-classes", "0,42"], "train_classes"),
    (["train", "--set", "sampler=m_per_class", "--set", "batch_size=64", "--set", "samples_per_class=4"],
     "classes per batch"),
    (["train", "--set", "batch_size=100000"], "batch_size"),
    (["train", "--epochs", "0"], "epochs must be >= 1"),
    (["train", "--config", "/nonexistent/c.yaml"], "does not exist"),
    (["train", "--amp", "fp8"], "amp"),
    (["train", "--preset", "huge"], "unknown preset 'huge'"),
    (["compare", "--methods", "supervised,nope"], "unknown method 'nope'"),
    (["compare", "--seeds", "a,b"], "--seeds expects integers"),
    (["compare", "--epochs", "0"], "--epochs must be >= 1"),
    (["compare", "--train-classes", "0,1,2,3,4,5,6,7,8,9"], "train_classes"),
    (["compare", "--methods", "supervised,simclr", "--set", "nosuchkey=1"], "unknown config key 'nosuchkey'"),
    (["compare", "--methods", "supervised", "--backbone", "resnet7"], "backbone 'resnet7' is unknown"),
    (["compare", "--methods", "supervised", "--weights", "/nonexistent.pth"], "--weights"),
])
def test_bad_input_fails_before_training_with_one_line(capsys, tmp_path, argv, message):
    t0 = time.perf_counter()
    rc, out, err = run(capsys, *argv, "--out", str(tmp_path / "run"))
    assert rc == 2
    assert message in err, err
    assert err.startswith("error: ") and "Traceback" not in err
    assert not (tmp_path / "run" / "last.pt").exists()
    assert time.perf_counter() - t0 < 20


def test_resume_without_checkpoint_is_a_usage_error(capsys, tmp_path):
    rc, _, err = run(capsys, "train", *FAST, "--out", str(tmp_path), "--resume")
    assert rc == 2 and "--resume: no checkpoint" in err


def test_bad_yaml_config_names_the_key(capsys, tmp_path):
    cfg = tmp_path / "c.yaml"
    cfg.write_text("lr: 0.01\nmomentun: 0.9\n")
    rc, _, err = run(capsys, "train", "--config", str(cfg), "--out", str(tmp_path / "r"))
    assert rc == 2 and "unknown config key 'momentun'" in err
    cfg.write_text("lr: [unclosed\n")
    rc, _, err = run(capsys, "train", "--config", str(cfg), "--out", str(tmp_path / "r"))
    assert rc == 2 and "not valid YAML" in err


def test_print_config_shows_resolved_values(capsys):
    rc, out, _ = run(capsys, "train", "--method", "spreading", "--print-config", "--set", "temperature=0.05")
    assert rc == 0
    assert "temperature: 0.05" in out and "preset small" in out and "dataset: mnist5k" in out
    rc, out, _ = run(capsys, "train", "--method", "spreading", "--print-config", "--preset", "official")
    assert "optimizer: sgd" in out and "epochs: 60" in out
    rc, out, _ = run(capsys, "train", "--method", "spreading", "--print-config")
    assert "keep_freed_memory: true" in out
    rc, out, _ = run(capsys, "train", "--method", "spreading", "--print-config", "--keep-freed-memory", "off")
    assert rc == 0 and "keep_freed_memory: false" in out


def test_train_then_eval_with_rerank(capsys, tmp_path):
    rc, out, err = run(capsys, "train", *FAST, "--out", str(tmp_path))
    assert rc == 0, err
    assert "test (unseen classes [5, 6, 7, 8, 9])" in out
    assert (tmp_path / "last.pt").exists() and (tmp_path / "summary.json").exists()
    rc, out, err = run(capsys, "eval", str(tmp_path / "last.pt"), "--rerank", "--k1", "10", "--k2", "3")
    assert rc == 0, err
    assert "   cosine: recall@1" in out and " reranked: recall@1" in out


def test_train_yaml_and_set_overrides_reach_the_method(capsys, tmp_path):
    cfg = tmp_path / "c.yaml"
    cfg.write_text("loss: multi_similarity\nloss_kwargs: {alpha: 2.0, beta: 50.0, base: 0.5}\nminer: multi_similarity\n")
    rc, _, err = run(capsys, "train", *FAST, "--config", str(cfg), "--set", "lr=3e-4", "--out", str(tmp_path / "r"))
    assert rc == 0, err
    summary = json.loads((tmp_path / "r" / "summary.json").read_text())
    assert summary["config"]["loss"] == "multi_similarity" and summary["config"]["lr"] == 3e-4


@pytest.mark.parametrize("content", [b"", b"hello, not a checkpoint\n", os.urandom(4096), b"PK\x03\x04garbage"])
def test_eval_rejects_files_that_are_not_checkpoints(capsys, tmp_path, content):
    p = tmp_path / "ck.pt"
    p.write_bytes(content)
    rc, _, err = run(capsys, "eval", str(p))
    assert rc == 2 and "not a readable ssml-fast checkpoint" in err and "Traceback" not in err


def test_eval_rejects_a_foreign_torch_file(capsys, tmp_path):
    import torch

    torch.save({"weights": torch.zeros(3)}, tmp_path / "other.pt")
    rc, _, err = run(capsys, "eval", str(tmp_path / "other.pt"))
    assert rc == 2 and "not a checkpoint written by" in err
    rc, _, err = run(capsys, "eval", str(tmp_path / "missing.pt"))
    assert rc == 2 and "does not exist" in err


def test_sigint_in_a_real_process_leaves_a_loadable_checkpoint(tmp_path):
    import torch

    proc = subprocess.Popen([sys.executable, "-m", "ssml_fast.cli", "train", "--dataset", "digits", "--epochs", "50",
                             "--set", "batch_size=32", "--quiet", "--out", str(tmp_path)],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    deadline = time.time() + 120
    while not (tmp_path / "last.pt").exists() and time.time() < deadline and proc.poll() is None:
        time.sleep(0.2)
    proc.send_signal(2)
    _, err = proc.communicate(timeout=120)
    assert proc.returncode == 130, err
    assert "--resume" in err
    state = torch.load(tmp_path / "last.pt", weights_only=True)
    assert state["position"]["step"] > 0 or state["position"]["epoch"] >= 1


def test_compare_applies_set_and_backbone_flags_to_every_method_and_the_baseline():
    from ssml_fast.compare import backbone_overrides, prepare_runs

    args = cli.build_parser().parse_args(["compare", "--set", "embedding_dim=64", "--pool", "gap"])
    overrides = cli._config_overrides(args)
    configs = prepare_runs("digits", ["supervised", "spreading"], epochs=1, preset=None, overrides=overrides)
    assert all(c.embedding_dim == 64 and c.pool == "gap" for c in configs.values())
    assert backbone_overrides(overrides) == {"pool": "gap"}    # what the baseline network is built with
