"""Main job pieces: the digits split, augmentation, checkpoints, the NaN guard and `ssml-fast train`."""
import pytest
import torch

from ssml_fast import cli
from ssml_fast.checkpoint import load_checkpoint, save_checkpoint
from ssml_fast.data.digits import load_digits_split, random_shift
from ssml_fast.models import SmallCNN
from ssml_fast.train import NonFiniteLossError, train_epochs


def test_digits_split_is_open_set():
    d = load_digits_split((0, 1, 2, 3, 4))
    assert set(d.train_labels.tolist()) == {0, 1, 2, 3, 4}
    assert set(d.test_labels.tolist()) == {5, 6, 7, 8, 9}
    assert len(d.train_labels) + len(d.test_labels) == 1797
    assert d.train_images.shape[1:] == (1, 8, 8) and 0 <= d.train_images.min() and d.train_images.max() <= 1


@pytest.mark.parametrize("classes", [(), tuple(range(10)), (3, 12)])
def test_digits_split_rejects_bad_classes(classes):
    with pytest.raises(ValueError, match="train_classes"):
        load_digits_split(classes)


def test_random_shift_moves_pixels_without_changing_mass_inside():
    img = torch.zeros(1, 1, 8, 8)
    img[0, 0, 4, 4] = 1.0
    out = random_shift(img.repeat(50, 1, 1, 1), 1, torch.Generator().manual_seed(0))
    assert out.shape == (50, 1, 8, 8)
    assert torch.all(out.sum(dim=(1, 2, 3)) == 1)  # the pixel is away from the border: never lost
    assert len({tuple(o.nonzero()[0].tolist()) for o in out}) > 1


def test_checkpoint_roundtrip_weights_only(tmp_path):
    model = SmallCNN(embedding_dim=8, width=4)
    path = save_checkpoint(tmp_path / "ck.pt", {"epoch": 3, "model": model.state_dict()})
    state = load_checkpoint(path)
    assert state["epoch"] == 3
    assert all(torch.equal(state["model"][k], v) for k, v in model.state_dict().items())
    assert [p.name for p in tmp_path.iterdir()] == ["ck.pt"]  # no temp file left behind


def test_non_finite_loss_stops_and_keeps_last_checkpoint(tmp_path):
    d = load_digits_split()
    model = SmallCNN(embedding_dim=8, width=4)
    calls = {"n": 0}

    class Exploding(torch.nn.Module):
        def forward(self, emb, labels):
            calls["n"] += 1
            return emb.sum() * (float("nan") if calls["n"] > 3 else 0.0)

    batches = [list(range(i, i + 16)) for i in range(0, 48, 16)]
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    ck = tmp_path / "ck.pt"
    train_epochs(model, Exploding(), d.train_images, d.train_labels, batches, opt, 1, checkpoint_path=ck, log=lambda s: None)
    with pytest.raises(NonFiniteLossError, match="last good checkpoint"):
        train_epochs(model, Exploding(), d.train_images, d.train_labels, batches, opt, 1, checkpoint_path=ck,
                     log=lambda s: None)
    assert load_checkpoint(ck)["epoch"] == 1


def test_cli_train_runs_and_reports_recall(tmp_path, capsys):
    rc = cli.main(["train", "--epochs", "1", "--out", str(tmp_path), "--embedding-dim", "16"])
    out = capsys.readouterr().out
    assert rc == 0
    assert "before training: recall@1" in out and "after training:  recall@1" in out
    assert "Recall@1 on unseen classes" in out
    assert load_checkpoint(tmp_path / "checkpoint.pt")["epoch"] == 1
    assert (tmp_path / "summary.json").exists()


def test_cli_eval_with_rerank(tmp_path, capsys):
    assert cli.main(["train", "--epochs", "1", "--out", str(tmp_path), "--embedding-dim", "16"]) == 0
    capsys.readouterr()
    assert cli.main(["eval", str(tmp_path / "checkpoint.pt"), "--rerank", "--k1", "10", "--k2", "3"]) == 0
    out = capsys.readouterr().out
    assert "   cosine: recall@1" in out and " reranked: recall@1" in out


def test_cli_eval_missing_checkpoint(tmp_path, capsys):
    assert cli.main(["eval", str(tmp_path / "nope.pt")]) == 2
    assert "does not exist" in capsys.readouterr().err


def test_cli_info(capsys):
    assert cli.main(["info"]) == 0
    assert '"cuda"' in capsys.readouterr().out
