"""The retrieval service (ssml_fast.search): index / search / append round trips on a generated image folder,
the IVF path's recall, re-ranking, streaming memory, the evaluation transform, and the CLI's errors."""
import json
from dataclasses import asdict, replace
from pathlib import Path

import numpy as np
import pytest
import torch

from ssml_fast import cli
from ssml_fast.search import Index, build_index, faiss_index, store
from ssml_fast.search.images import EvalTransform, list_images
from ssml_fast.search import streaming

N_IMAGES = 40


def run(capsys, *argv):
    rc = cli.main([str(a) for a in argv])
    out = capsys.readouterr()
    return rc, out.out, out.err


@pytest.fixture(scope="module", autouse=True)
def one_thread():
    """Tiny batches: one torch / faiss thread (two threads spin for ~0.5 s per call on a loaded 2-core VM)."""
    import faiss

    threads, omp = torch.get_num_threads(), faiss.omp_get_max_threads()
    torch.set_num_threads(1)
    faiss.omp_set_num_threads(1)
    yield
    torch.set_num_threads(threads)
    faiss.omp_set_num_threads(omp)


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory):
    """A checkpoint written by the Trainer as `ssml-fast train` writes it (1 epoch on 300 digits)."""
    from ssml_fast.data import load_dataset
    from ssml_fast.methods import get_method, make_config
    from ssml_fast.train import RunConfig, Trainer, data_info

    split = load_dataset("digits", seed=0)
    keep = torch.randperm(len(split.train_labels), generator=torch.Generator().manual_seed(0))[:300]
    split = replace(split, train_images=split.train_images[keep], train_labels=split.train_labels[keep])
    config = make_config("supervised", "small", [("test", {"batch_size": 60, "epochs": 1})])
    run_config = RunConfig(dataset="digits", seed=0, quiet=True, eval_every=0)
    torch.manual_seed(0)
    method = get_method("supervised")(config, data_info(split))
    out = tmp_path_factory.mktemp("run")
    record = {"method_config": asdict(config), "run_config": asdict(run_config), "model_info": asdict(data_info(split))}
    Trainer(method, split, run_config, out, config_record=record).fit()
    return out / "last.pt"


def _write_images(folder: Path, start: int, count: int) -> list[Path]:
    """`count` distinct random images (grey, RGB, RGBA; png / jpg / bmp / webp) in nested folders."""
    from PIL import Image

    paths = []
    for i in range(start, start + count):
        rng = np.random.default_rng(i)
        sub = folder / f"class{i % 3}" / ("deep" if i % 5 == 0 else "")
        sub.mkdir(parents=True, exist_ok=True)
        blocks = rng.integers(0, 256, (4, 4), dtype=np.uint8)
        grey = np.kron(blocks, np.ones((6, 6), np.uint8))  # 24 x 24, survives the resize to 8 x 8
        ext = (".png", ".jpg", ".bmp", ".webp", ".png")[i % 5]
        if i % 4 == 1:
            img = Image.fromarray(np.stack([grey, 255 - grey, grey], -1))
        elif i % 4 == 2:
            img = Image.fromarray(np.stack([grey, grey, grey, np.full_like(grey, 255)], -1))
            ext = ".png"
        else:
            img = Image.fromarray(grey)
        p = sub / f"img{i:03d}{ext}"
        img.save(p, quality=100) if ext == ".jpg" else img.save(p)
        paths.append(p)
    return paths


@pytest.fixture(scope="module")
def folder(tmp_path_factory):
    root = tmp_path_factory.mktemp("photos")
    _write_images(root, 0, N_IMAGES)
    (root / "notes.txt").write_text("not an image")
    return root


@pytest.fixture(scope="module")
def flat_index(checkpoint, folder, tmp_path_factory):
    return build_index(checkpoint, folder, tmp_path_factory.mktemp("idx") / "flat", batch_size=8, show_progress=False)


def test_round_trip_each_image_finds_itself_first(flat_index, folder, checkpoint):
    files = list_images(folder)
    assert len(files) == N_IMAGES
    index = Index.load(flat_index.folder)
    assert len(index) == N_IMAGES and index.plan.kind == "flat"
    assert index.paths == [f.relative_to(folder.resolve()).as_posix() for f in files]
    meta = json.loads((flat_index.folder / store.META).read_text())
    assert meta["root"] == str(folder.resolve()) and meta["model"]["method_name"] == "supervised"
    from ssml_fast.train.restore import file_sha256

    assert meta["model"]["checkpoint_sha256"] == file_sha256(checkpoint)
    results = index.search(files, k=5)
    for f, r in zip(files, results):
        assert r.paths[0] == f, (f, r.paths)
        assert r.scores[0] == pytest.approx(1.0, abs=1e-3)
        assert np.all(np.diff(r.scores) <= 1e-6)
    # the stored float16 vectors are the model's embeddings; searching by vector gives the same lists
    vec = index.vectors(np.arange(3))
    by_vec = index.search(vec, k=5)
    assert [list(r.ids) for r in by_vec] == [list(r.ids) for r in results[:3]]


def test_cli_index_and_search(capsys, checkpoint, folder, tmp_path):
    rc, out, err = run(capsys, "index", "--checkpoint", checkpoint, "--images", folder, "--out", tmp_path / "ix",
                       "--workers", "0", "--batch-size", "16")
    assert rc == 0, err
    assert f"indexed {N_IMAGES} images" in out and "flat (exact)" in out
    files = list_images(folder)
    rc, out, err = run(capsys, "search", "--index", tmp_path / "ix", "--query", files[0], files[5], "-k", "3",
                       "--grid", tmp_path / "grid.png", "--json")
    assert rc == 0, err
    rows = json.loads(out)
    assert [r["results"][0]["path"] for r in rows] == [str(files[0]), str(files[5])]
    assert all(len(r["results"]) == 3 for r in rows)
    assert (tmp_path / "grid.png").stat().st_size > 1000
    rc, out, err = run(capsys, "search", "--index", tmp_path / "ix", "--query", folder / "class1", "-k", "2",
                       "--grid", "none")
    assert rc == 0, err
    assert out.count("query ") == sum(1 for f in files if "class1" in f.parts)


def test_append_adds_new_images_skips_present_ones_and_refuses_another_checkpoint(checkpoint, tmp_path, capsys):
    photos = tmp_path / "photos"
    first = _write_images(photos, 0, 10)
    index = build_index(checkpoint, photos, tmp_path / "ix", show_progress=False)
    assert len(index) == 10
    second = _write_images(photos, 10, 6)
    report = index.add(photos, checkpoint=checkpoint)
    assert (report.added, report.already_present) == (6, 10)
    index.save()
    again = Index.load(tmp_path / "ix")
    assert len(again) == 16 and len(set(again.paths)) == 16
    for f, r in zip(first + second, again.search(first + second, k=1)):
        assert r.paths[0] == f.resolve()
    assert again.add(photos).added == 0
    # a different checkpoint (other weights) is refused, by the API and by the CLI naming --checkpoint
    other = tmp_path / "other.pt"
    state = torch.load(checkpoint, weights_only=True)
    state["method"] = {k: v + 1 if v.is_floating_point() else v for k, v in state["method"].items()}
    torch.save(state, other)
    with pytest.raises(ValueError, match="checkpoint: .* is not the checkpoint this index was built"):
        again.add(photos, checkpoint=other)
    _write_images(photos, 16, 2)
    rc, _, err = run(capsys, "index", "--checkpoint", other, "--images", photos, "--out", tmp_path / "ix", "--append")
    assert rc == 2 and err.startswith("error: --checkpoint:")
    rc, out, err = run(capsys, "index", "--images", photos, "--out", tmp_path / "ix", "--append", "--workers", "0")
    assert rc == 0, err
    assert "appended 2 images" in out and "16 already in the index" in out
    assert len(Index.load(tmp_path / "ix")) == 18


def _clustered(n, d, centres, rng, noise=0.35):
    lab = rng.integers(0, len(centres), n)
    x = centres[lab] + noise * rng.standard_normal((n, d)).astype(np.float32)
    return x / np.linalg.norm(x, axis=1, keepdims=True)


def test_ivf_recall_on_a_synthetic_set():
    rng = np.random.default_rng(0)
    d = 32
    centres = rng.standard_normal((200, d)).astype(np.float32) / np.sqrt(d)
    base = _clustered(20_000, d, centres, rng).astype(np.float16)  # stored as the index stores them
    queries = _clustered(200, d, centres, rng)
    plan = faiss_index.plan_index(len(base), "auto", "cosine", flat_max=10_000)
    assert plan.kind == "ivf" and plan.nlist == faiss_index.default_nlist(20_000)
    ivf = faiss_index.build(plan, base)
    plan = faiss_index.calibrate(ivf, plan, base)
    assert 1 <= plan.nprobe <= plan.nlist and plan.calibrated_recall >= faiss_index.CALIBRATION_TARGET
    _, truth = faiss_index.exact_search(queries, base, 10, "cosine", chunk=7000)  # chunk merge exercised
    _, found = ivf.search(queries, 10)
    assert faiss_index.recall_at_k(found, truth) >= 0.95
    # exact_search is exact: equal to a brute-force numpy top-10
    sims = queries @ base.astype(np.float32).T
    ref = np.argsort(-sims, axis=1, kind="stable")[:, :10]
    assert faiss_index.recall_at_k(truth, ref) > 0.999


def test_ivf_and_hnsw_service_paths_and_rebuild_on_append(checkpoint, folder, tmp_path):
    files = list_images(folder)
    for kind in ("ivf", "hnsw"):
        index = build_index(checkpoint, files, tmp_path / kind, index_type=kind, show_progress=False)
        assert index.plan.kind == kind and index.plan.calibrated_recall is not None
        loaded = Index.load(tmp_path / kind)
        assert all(r.paths[0] == f for f, r in zip(files, loaded.search(files, k=3)))
    # an automatic flat index becomes IVF when an append takes it past flat_max
    index = build_index(checkpoint, files[:20], tmp_path / "auto", flat_max=30, show_progress=False)
    assert index.plan.kind == "flat"
    report = index.add(files)
    assert report.rebuilt and index.plan.kind == "ivf" and len(index) == N_IMAGES
    index.save()
    assert Index.load(tmp_path / "auto").plan.kind == "ivf"


def test_rerank_orders_the_shortlist_by_the_ops_distance(flat_index, folder):
    from ssml_fast.ops import kreciprocal_rerank

    files = list_images(folder)
    params = {"k1": 6, "k2": 3, "lambda_value": 0.3, "candidates": 20}
    plain = flat_index.search(files[:4], k=20)
    reranked = flat_index.search(files[:4], k=5, rerank=params)
    for p, r in zip(plain, reranked):
        q = flat_index.vectors(p.ids[:1])              # the query is the image itself
        dist = kreciprocal_rerank(torch.from_numpy(q), torch.from_numpy(flat_index.vectors(p.ids)), 6, 3, 0.3)[0]
        order = torch.argsort(dist, stable=True)[:5].numpy()
        assert list(r.ids) == list(p.ids[order])
        assert np.allclose(r.rerank_distances, dist.numpy()[order], atol=1e-3)  # float32 query vs float16 stored
        assert r.ids[0] == p.ids[0] and r.rerank_distances[0] == pytest.approx(0.0, abs=1e-6)
    with pytest.raises(ValueError, match="k2 must be <= k1"):
        flat_index.search(files[:1], rerank={"k1": 2, "k2": 3})


def test_cli_errors_name_the_argument(capsys, checkpoint, folder, flat_index, tmp_path):
    empty = tmp_path / "empty"
    empty.mkdir()
    (empty / "readme.txt").write_text("no images")
    cases = [
        (["search", "--index", tmp_path / "missing", "--query", list_images(folder)[0]], "--index"),
        (["search", "--index", empty, "--query", list_images(folder)[0]], "--index"),
        (["search", "--index", flat_index.folder, "--query", tmp_path / "nope.png"], "--query"),
        (["search", "--index", flat_index.folder, "--query", empty / "readme.txt"], "--query"),
        (["search", "--index", flat_index.folder, "--query", list_images(folder)[0], "-k", "0"], "-k"),
        (["index", "--checkpoint", checkpoint, "--images", empty, "--out", tmp_path / "o"], "--images"),
        (["index", "--checkpoint", checkpoint, "--images", tmp_path / "absent", "--out", tmp_path / "o"], "--images"),
        (["index", "--checkpoint", tmp_path / "absent.pt", "--images", folder, "--out", tmp_path / "o"], "--checkpoint"),
        (["index", "--images", folder, "--out", tmp_path / "o"], "--checkpoint"),
        (["index", "--checkpoint", checkpoint, "--images", folder, "--out", flat_index.folder], "--out"),
        (["index", "--checkpoint", checkpoint, "--images", folder, "--out", tmp_path / "o", "--nprobe", "0"], "--nprobe"),
        (["index", "--checkpoint", checkpoint, "--images", folder, "--out", tmp_path / "o", "--nlist", "0"], "--nlist"),
        (["index", "--images", folder, "--out", tmp_path / "none", "--append"], "--append"),
    ]
    for argv, flag in cases:
        rc, _, err = run(capsys, *argv)
        assert rc == 2 and err.startswith(f"error: {flag}") and "Traceback" not in err, (argv, err)
    assert not (tmp_path / "o").exists()  # every check ran before any work


def test_unreadable_images_are_skipped_with_a_warning(capsys, checkpoint, tmp_path):
    photos = tmp_path / "photos"
    good = _write_images(photos, 0, 5)
    (photos / "broken.png").write_bytes(b"\x89PNG\r\n\x1a\nthis is not really a png")
    import io
    from PIL import Image

    buf = io.BytesIO()
    Image.fromarray(np.random.default_rng(0).integers(0, 256, (64, 64, 3), dtype=np.uint8)).save(buf, "JPEG")
    (photos / "cut.jpg").write_bytes(buf.getvalue()[:400])   # a truncated JPEG: fails when decoded
    rc, out, err = run(capsys, "index", "--checkpoint", checkpoint, "--images", photos, "--out", tmp_path / "ix",
                       "--workers", "0")
    assert rc == 0, err
    assert err.count("warning: skipped unreadable image") == 2 and "broken.png" in err and "cut.jpg" in err
    assert "indexed 5 images" in out and "2 unreadable skipped" in out
    meta = json.loads((tmp_path / "ix" / store.META).read_text())
    assert sorted(p for p, _ in meta["skipped"]) == ["broken.png", "cut.jpg"]
    rc, _, err = run(capsys, "search", "--index", tmp_path / "ix", "--query", photos / "broken.png")
    assert rc == 2 and err.startswith("error: --query:") and "cannot be read" in err
    bad_only = tmp_path / "bad"
    bad_only.mkdir()
    (bad_only / "x.jpg").write_bytes(b"garbage")
    rc, _, err = run(capsys, "index", "--checkpoint", checkpoint, "--images", bad_only, "--out", tmp_path / "ix2")
    assert rc == 2 and err.startswith("error: --images:") and "could be read" in err


def test_streaming_holds_at_most_one_batch(checkpoint, folder, tmp_path, monkeypatch):
    """The loader decodes an image only when its batch is due: decoded-but-not-written never exceeds one batch."""
    decoded, written, outstanding = [0], [0], []
    original_get, original_write = streaming.ImagePathDataset.__getitem__, store.VectorWriter.write

    def counting_get(self, i):
        decoded[0] += 1
        outstanding.append(decoded[0] - written[0])
        return original_get(self, i)

    def counting_write(self, rows):
        written[0] += len(rows)
        return original_write(self, rows)

    monkeypatch.setattr(streaming.ImagePathDataset, "__getitem__", counting_get)
    monkeypatch.setattr(store.VectorWriter, "write", counting_write)
    build_index(checkpoint, folder, tmp_path / "ix", batch_size=5, num_workers=0, show_progress=False)
    assert decoded[0] == written[0] == N_IMAGES
    assert max(outstanding) <= 5


def test_eval_transform_follows_the_models_input():
    from PIL import Image

    small = EvalTransform((1, 8, 8))
    x = small(Image.new("RGB", (40, 30), (255, 0, 0)))
    assert x.shape == (1, 8, 8) and x.dtype == torch.float32
    assert torch.allclose(x, torch.full_like(x, round(0.299 * 255) / 255), atol=2 / 255)  # PIL's L = luma
    large = EvalTransform((3, 224, 224))
    assert large.resize == 256 and "centre crop 224x224" in large.describe()
    a = np.zeros((300, 400, 3), np.uint8)
    a[:, 200:] = 255                              # right half white: the centre crop keeps both halves
    y = large(Image.fromarray(a))
    assert y.shape == (3, 224, 224) and y[:, :, :100].max() == 0 and y[:, :, -100:].min() == 1
    # a model trained on a dataset on disk: that dataset's eval view (short side 256, centre crop 64)
    from ssml_fast.data.transforms import build_transform, preset
    from ssml_fast.search.images import transform_spec

    spec = transform_spec({"run_config": {"dataset": "cub", "pipeline": "official"}}, (3, 64, 64))
    assert spec == {"image_shape": [3, 64, 64], "pipeline": "eval", "resize": 256}
    photo = Image.fromarray(np.random.default_rng(0).integers(0, 256, (260, 300, 3), dtype=np.uint8))
    z = EvalTransform.of(spec)(photo)
    assert z.shape == (3, 64, 64) and torch.equal(z, build_transform(preset("eval", 64, 256))(photo))
    assert transform_spec({"run_config": {"dataset": "digits"}}, (1, 8, 8))["pipeline"] is None
    rgba = Image.new("RGBA", (10, 10), (0, 0, 0, 0))   # fully transparent -> white
    assert torch.all(EvalTransform((3, 8, 8))(rgba) == 1)
    with pytest.raises(ValueError, match="channels"):
        EvalTransform((4, 8, 8))


def test_restore_reads_the_model_info_without_loading_the_dataset(checkpoint, monkeypatch):
    import ssml_fast.data as data
    from ssml_fast.train.restore import restore_method

    monkeypatch.setattr(data, "load_dataset", lambda *a, **k: pytest.fail("dataset loaded"))
    method, info, _ = restore_method(checkpoint)
    assert info.image_shape == (1, 8, 8) and not method.training


def test_euclidean_metric_and_pil_queries(checkpoint, folder, tmp_path):
    """metric="euclidean": squared L2 scores ascending (self at 0); PIL images as queries."""
    from PIL import Image

    files = list_images(folder)[:10]
    index = build_index(checkpoint, files, tmp_path / "l2", metric="euclidean", show_progress=False)
    assert index.metric == "euclidean" and index.plan.kind == "flat"
    with Image.open(files[3]) as img:
        pil = img.copy()
    by_path, by_pil = index.search([files[3], pil], k=4)
    assert by_path.paths[0] == files[3] and by_path.scores[0] == pytest.approx(0.0, abs=1e-3)
    assert np.all(np.diff(by_path.scores) >= -1e-6)
    assert list(by_pil.ids) == list(by_path.ids) and by_pil.query == "image 1"
