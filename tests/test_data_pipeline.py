"""The file-backed data path: v2 pipelines, per-item reproducible views in DataLoader workers, the
methods' view declarations, and the trainer training / evaluating / resuming through it."""
import warnings

import pytest
import torch

import _data_trees as trees
from conftest import interrupt_after
from ssml_fast.data import load_dataset
from ssml_fast.data.pipeline import KeyedBatchSampler, TrainViews, item_seed, train_loader
from ssml_fast.data.transforms import PRESETS, ViewSpec, build_transform, preset
from ssml_fast.methods import get_method, make_config
from ssml_fast.train import RunConfig, Trainer, TrainingInterrupted, data_info, embed_images


@pytest.fixture(scope="module")
def folder(tmp_path_factory):
    root = tmp_path_factory.mktemp("folder")
    trees.class_folders(root, names=[f"c{i}" for i in range(6)], per_class=6)
    return root


def _split(root, **kw):
    return load_dataset("folder", root=root, image_size=kw.pop("image_size", 16), resize=20, val_mode="none", **kw)


def _img(value=120, size=(24, 20)):
    from PIL import Image
    return Image.new("RGB", size, (value, value, value))


def test_every_preset_builds_and_normalises():
    for name in PRESETS:
        if name == "revisitop":
            continue
        spec = preset(name, 16, 20)
        torch.manual_seed(0)
        out = build_transform(spec)(_img())
        assert out.dtype == torch.float32 and out.shape[0] == 3
        assert out.shape[1:] == ((512, 512) if name == "insclr_noaug" else (spec.size, spec.size)), name
    x = build_transform(preset("eval", 16, 20))(_img(51))  # [0, 1]: the trunk normalises
    torch.testing.assert_close(x, torch.full((3, 16, 16), 0.2), atol=1e-6, rtol=0)
    assert preset("dino_local", 224).size == 96 and preset("insclr_impr", 224).size == 448
    assert preset("dml").scale == (0.16, 1.0) and preset("insclr").scale == (0.75, 1.33)
    with pytest.raises(ValueError, match="view preset 'nope' is unknown"):
        preset("nope")
    with pytest.raises(ValueError, match="kind must be one of"):
        ViewSpec("zoom", 8)


def test_views_depend_only_on_the_item_seed(folder):
    s = _split(folder)
    ds = TrainViews(s.train_images, [preset("simclr", 16, 20), preset("dml", 16, 20)])
    torch.manual_seed(123)
    before = torch.get_rng_state()
    i, a = ds[(3, 77)]
    assert torch.equal(torch.get_rng_state(), before)  # the caller's RNG is untouched (num_workers=0)
    torch.manual_seed(999)
    _, b = ds[(3, 77)]
    _, c = ds[(3, 78)]
    assert i == 3 and all(torch.equal(x, y) for x, y in zip(a, b))
    assert not torch.equal(a[0], c[0]) and not torch.equal(a[0], a[1])


def test_keyed_batches_skip_and_seed_by_slot():
    k = KeyedBatchSampler().reset([[4, 4, 1], [2, 3, 0]], seed=5, stage=0, epoch=2, skip=1)
    assert len(k) == 1
    (batch,) = list(k)
    assert [i for i, _ in batch] == [2, 3, 0]
    assert batch[0][1] == item_seed(5, 0, 2, 1, 0)
    (first, _) = list(k.reset([[4, 4, 1], [2, 3, 0]], 5, 0, 2))
    assert first[0][1] != first[1][1]  # the same image twice in a batch gets two different seeds


def test_workers_give_the_same_batches_as_the_main_process(folder):
    s = _split(folder)
    specs = [preset("dino_global", 16, 20), preset("dino_local", 16, 20)]
    batches = [[0, 5, 2, 7], [1, 1, 3, 4]]
    out = {}
    for nw in (0, 2):
        loader = train_loader(s.train_images.with_loader(nw, False), specs)
        loader.batch_sampler.reset(batches, seed=0, stage=0, epoch=1)
        out[nw] = list(loader)
    for (i0, v0), (i2, v2) in zip(out[0], out[2]):
        assert torch.equal(i0, i2) and [v.shape for v in v0] == [(4, 3, 16, 16), (4, 3, 8, 8)]
        assert all(torch.equal(a, b) for a, b in zip(v0, v2))


def test_methods_declare_their_views():
    info = data_info(type("S", (), {"image_shape": (3, 16, 16), "mean": 0.0, "std": 1.0, "train_labels": [0] * 256,
                                    "train_classes": [0, 1]})())
    want = {"supervised": ["dml"], "stml": ["dml", "dml"], "simclr": ["simclr", "simclr"],
            "byol": ["simclr", "simclr"], "spreading": ["spreading", "spreading"]}
    for name, views in want.items():
        m = get_method(name)(make_config(name, "official", [("t", {"batch_size": 10})]), info)
        assert m.view_specs() == views, name
    dino = get_method("dino")(make_config("dino", "small", [("t", {"batch_size": 8})]), info)
    assert dino.view_specs() == ["dino_global"] * 2 + ["dino_local"] * dino.config.n_local
    ins = get_method("insclr")(make_config("insclr", "small", [("t", {"batch_size": 8})]), info)
    stages = ins.stages()
    assert ins.view_specs(stages[0]) == ["insclr"] and ins.view_specs(stages[-1]) == ["insclr_impr", "insclr_noaug"]


def _method(name, split, **over):
    torch.manual_seed(0)
    cfg = make_config(name, "small", [("t", {"epochs": 1, "batch_size": 8, **over})])
    return get_method(name)(cfg, data_info(split))


def test_supervised_trains_and_evaluates_through_the_dataloader(folder):
    # Two workers here; test_workers_give_the_same_batches_as_the_main_process covers num_workers 0 = 2.
    workers = 2
    s = _split(folder)
    m = _method("supervised", s)
    t = Trainer(m, s, RunConfig(dataset="folder", num_workers=workers, device="cpu", quiet=True))
    res = t.fit()
    assert t.data.file_backed and res["history"][0]["global_step"] == 2  # 18 training images // 8
    assert torch.isfinite(torch.tensor(res["history"][0]["loss"]))
    assert set(res["test"]) >= {"recall@1", "map_at_r", "nmi"}
    emb = embed_images(m.embed, m, s.test_images.with_loader(workers, False), "cpu")
    assert emb.shape == (18, m.embed(torch.zeros(1, 3, 16, 16)).shape[1])


def test_file_path_resumes_mid_epoch_exactly(folder, tmp_path):
    s = _split(folder)
    run = RunConfig(dataset="folder", device="cpu", quiet=True, seed=3)
    straight = Trainer(_method("supervised", s, batch_size=6), s, run, tmp_path / "a")
    straight.fit()
    t = Trainer(_method("supervised", s, batch_size=6), s, run, tmp_path / "b")
    interrupt_after(t, 1)
    with pytest.raises(TrainingInterrupted):
        t.fit()
    resumed = Trainer(_method("supervised", s, batch_size=6), s, run, tmp_path / "b")
    resumed.fit(resume=True)
    for k, v in straight.method.state_dict().items():
        assert torch.equal(v, resumed.method.state_dict()[k]), k


def test_in_memory_datasets_keep_the_tensor_path():
    from ssml_fast.train.data_path import TrainData
    s = load_dataset("digits")
    d = TrainData(s, torch.device("cpu"))
    assert not d.file_backed and isinstance(d.images, torch.Tensor)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        assert preset("eval").kind == "center"


def test_cli_data_arguments_are_checked_first(folder, capsys):
    from ssml_fast.cli import main
    assert main(["train", "--dataset", "cub", "--epochs", "1"]) == 2
    assert "--data-root" in capsys.readouterr().err
    assert main(["train", "--dataset", "folder", "--data-root", str(folder), "--num-workers", "-1"]) == 2
    assert "--num-workers must be >= 0" in capsys.readouterr().err
    assert main(["compare", "--dataset", "digits", "--data-root", str(folder)]) == 2
    assert "--data-root applies to the datasets on disk" in capsys.readouterr().err


def test_image_files_slice_and_display(folder):
    t = _split(folder).test_images
    assert len(t[2:5]) == 3 and t[2:5].paths == t.paths[2:5] and len(t[torch.tensor([0, 3])]) == 2
    img = t[0]
    assert img.shape == (3, 16, 16) and 0 <= float(img.min()) and float(img.max()) <= 1


def test_revisitop_evaluation_multiscale(tmp_path, capsys):
    from ssml_fast.cli import main
    from ssml_fast.train.revisitop_eval import evaluate_revisitop
    trees.revisitop(tmp_path, "roxford5k")
    info = data_info(type("S", (), {"image_shape": (3, 16, 16), "mean": 0.449, "std": 0.226,
                                    "train_labels": [0] * 16, "train_classes": [0, 1]})())
    torch.manual_seed(0)
    m = get_method("supervised")(make_config("supervised", "small", [("t", {"batch_size": 8, "pool": "gap"})]), info)
    out = evaluate_revisitop(m, tmp_path, "roxford5k", "cpu", scales=(1.0, 0.75), max_size=64)
    assert all(0 <= out[p] <= 1 for p in ("easy", "medium", "hard")) and "medium_mP@10" in out
    # An embedding that is the mean colour ranks the database by brightness: the AP follows by hand.
    m.embed = lambda x: torch.stack([x.mean((1, 2, 3)), torch.ones(len(x))], 1)
    out = evaluate_revisitop(m, tmp_path, "roxford5k", "cpu", scales=(1.0,), max_size=32)
    assert out["hard"] == pytest.approx(1.0)  # q_0 (grey 100, hard = db_2 at 110): its nearest by angle
    assert main(["eval", str(tmp_path / "none.pt"), "--revisitop", "oxford"]) == 2
    assert "--revisitop expects roxford5k and/or rparis6k" in capsys.readouterr().err


def test_evaluation_of_a_tiny_split_reports_the_ks_it_has(folder):
    from ssml_fast.train import evaluate_method
    s = _split(folder)
    m = _method("supervised", s)
    small = s.test_images[[0, 1, 6, 7]]  # four images, two classes: recall@4 / @8 do not exist
    out = evaluate_method(m, small, small.labels, "cpu", nmi=False)
    assert "recall@2" in out and "recall@4" not in out


def test_ranks_draw_different_views_for_the_same_slot():
    k = KeyedBatchSampler()
    r0 = list(k.reset([[1, 2]], 0, 0, 0, rank=0))[0]
    r1 = list(k.reset([[1, 2]], 0, 0, 0, rank=1))[0]
    alone = list(k.reset([[1, 2]], 0, 0, 0))[0]
    assert r0[0][1] != r1[0][1] and alone[0][1] == item_seed(0, 0, 0, 0, 0)


def test_sharded_batches_draw_the_views_of_one_process():
    # Under torchrun each rank holds a slice of the global batch; its view seeds follow the global slot, so
    # two processes augment exactly as one does (file-backed DDP runs equal 1-process runs).
    from ssml_fast.data.pipeline import KeyedBatchSampler
    from ssml_fast.samplers.distributed import DistributedBatchSampler

    batches = [[5, 1, 7, 3], [2, 0, 6, 4]]
    one = [x for b in KeyedBatchSampler().reset(DistributedBatchSampler(batches, rank=0, world_size=1), 3, 0, 1)
           for x in b]
    shards = [list(KeyedBatchSampler().reset(DistributedBatchSampler(batches, rank=r, world_size=2), 3, 0, 1))
              for r in range(2)]
    two = [x for step in range(2) for r in range(2) for x in shards[r][step]]
    assert two == one and len({s for _, s in one}) == len(one)
