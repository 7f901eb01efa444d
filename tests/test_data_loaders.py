"""File-backed dataset loaders on tiny fixture trees in the exact official layouts (tests/_data_trees.py):
counts, labels, class-disjoint splits, query crops, error paths, and the restricted gnd unpickler."""
import os
import pickle
import warnings

import numpy as np
import pytest
import torch

import _data_trees as trees
from ssml_fast.data import DatasetError, UnsafePickleError, load_dataset, load_revisitop, restricted_load
from ssml_fast.data import cub as cub_mod
from ssml_fast.data.pipeline import EvalImages


def _load(name, root, **kw):
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # fixtures are never the full set
        return load_dataset(name, root=root, val_mode=kw.pop("val_mode", "none"), **kw)


# ---- CUB-200-2011 ------------------------------------------------------------------------------
def test_cub_classes_1_100_train_101_200_test(tmp_path):
    trees.cub(tmp_path)
    with pytest.warns(UserWarning, match="not the full 11788"):
        s = load_dataset("cub", root=tmp_path, val_mode="none")
    assert s.train_classes == [1, 2] and s.test_classes == [101, 102]
    assert len(s.train_images) == 6 and len(s.test_images) == 6
    assert s.train_labels.tolist() == [1, 1, 1, 2, 2, 2]
    assert all("images/001.Bird_1" in str(p) for p in s.train_images.paths[:3])
    assert s.image_shape == (3, 224, 224) and (s.mean, s.std) == (0.449, 0.226)


def test_cub_validation_is_carved_from_training_classes(tmp_path):
    trees.cub(tmp_path, classes=(1, 2, 3, 101), per_class=5)
    s = _load("cub", tmp_path, val_mode="samples", val_fraction=0.2)
    assert len(s.val_labels) == 3 and set(s.val_labels.tolist()) == {1, 2, 3}
    assert not set(s.val_images.paths) & set(s.train_images.paths) and len(s.train_labels) == 12
    s = _load("cub", tmp_path, val_mode="classes", val_classes=[2])
    assert s.val_classes == [2] and s.train_classes == [1, 3] and s.test_classes == [101]


def test_cub_counts_checked_when_the_full_set_is_listed(tmp_path, monkeypatch):
    trees.cub(tmp_path, sub="CUB_200_2011")  # the archive's top folder is accepted as root too
    monkeypatch.setattr(cub_mod, "FULL_COUNTS", {"total": 12, "train": 6, "test": 6})
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        s = load_dataset("cub", root=tmp_path, val_mode="none")
    assert len(s.train_labels) == 6
    monkeypatch.setattr(cub_mod, "FULL_COUNTS", {"total": 12, "train": 5, "test": 7})
    with pytest.raises(DatasetError, match="expected 5 / 7"):
        load_dataset("cub", root=tmp_path, val_mode="none")


def test_cub_errors_name_the_expected_file(tmp_path):
    with pytest.raises(DatasetError, match=r"images.txt not found: expected .*images.txt"):
        load_dataset("cub", root=tmp_path)
    trees.cub(tmp_path)
    os.remove(tmp_path / "images" / "101.Bird_101" / "Bird_101_0001.jpg")
    with pytest.raises(DatasetError, match=r"Bird_101_0001.jpg listed in .*images.txt does not exist"):
        _load("cub", tmp_path)
    (tmp_path / "image_class_labels.txt").write_text("1 1\nnot a line\n")
    with pytest.raises(DatasetError, match=r"image_class_labels.txt line 2"):
        _load("cub", tmp_path)
    with pytest.raises(ValueError, match="--data-root"):
        load_dataset("cub")
    with pytest.raises(ValueError, match="train_classes does not apply to cub"):
        load_dataset("cub", [1, 2], root=tmp_path)
    with pytest.raises(DatasetError, match="--data-root .* is not a directory"):
        load_dataset("cub", root=tmp_path / "nowhere")


# ---- Cars196 ------------------------------------------------------------------------------------
def test_cars_devkit_annotations_first_98_classes_train(tmp_path):
    trees.cars_mat(tmp_path)
    s = _load("cars196", tmp_path)
    assert s.train_classes == [1, 2] and s.test_classes == [99, 100]
    assert len(s.train_labels) == 4 and len(s.test_labels) == 4
    assert str(s.test_images.paths[0]).endswith("car_ims/000005.jpg")


def test_cars_class_folders_merged_from_train_and_test(tmp_path):
    for part in ("train", "test"):
        trees.class_folders(tmp_path / part, names=[f"{i:03d}" for i in range(1, 5)], per_class=1, ext=".jpg")
    with pytest.warns(UserWarning, match="4 class folders, not 196"):
        s = load_dataset("cars196", root=tmp_path, val_mode="none")
    assert s.train_classes == [1, 2] and s.test_classes == [3, 4] and len(s.train_labels) == 4


def test_cars_errors(tmp_path):
    with pytest.raises(DatasetError, match="cars_annos.mat"):
        load_dataset("cars196", root=tmp_path)
    (tmp_path / "cars_annos.mat").write_bytes(b"not a mat file")
    with pytest.raises(DatasetError, match="not the Cars196 devkit annotation file"):
        load_dataset("cars196", root=tmp_path)


# ---- Stanford Online Products / In-Shop -----------------------------------------------------------
def test_sop_train_and_test_files(tmp_path):
    trees.sop(tmp_path)
    with pytest.warns(UserWarning, match="not the full 59551 / 60502"):
        s = load_dataset("sop", root=tmp_path, val_mode="none")
    assert s.train_classes == [1, 2] and s.test_classes == [3, 4]
    assert len(s.train_labels) == 4 and s.test_labels.tolist() == [3, 3, 4]
    (tmp_path / "Ebay_test.txt").write_text("id class path\n")
    with pytest.raises(DatasetError, match="Ebay_test.txt: the first line must be"):
        _load("sop", tmp_path)
    os.remove(tmp_path / "Ebay_train.txt")
    with pytest.raises(DatasetError, match="Ebay_train.txt not found: expected"):
        _load("sop", tmp_path)


def test_sop_overlapping_classes_are_refused(tmp_path):
    trees.sop(tmp_path, train=((1, 2),), test=((1, 1),))
    with pytest.raises(DatasetError, match="class-disjoint"):
        _load("sop", tmp_path)


def test_inshop_query_gallery(tmp_path):
    trees.inshop(tmp_path)
    s = _load("inshop", tmp_path)
    assert s.train_classes == [1, 2] and s.test_classes == [7, 9]
    assert s.test_labels.tolist() == [7, 9, 7, 9, 9]  # queries first, then the gallery
    assert s.test_images.gallery_mask.tolist() == [False, False, True, True, True]
    lines = (tmp_path / "list_eval_partition.txt").read_text().splitlines()
    (tmp_path / "list_eval_partition.txt").write_text("\n".join(["99"] + lines[1:]))
    with pytest.raises(DatasetError, match="announces 99 images but 9"):
        _load("inshop", tmp_path)


# ---- GLDv2 --------------------------------------------------------------------------------------
def test_gldv2_train_csv_clean_subset_and_fraction(tmp_path):
    trees.gldv2(tmp_path)
    s = _load("gldv2", tmp_path)
    assert s.train_classes == [5, 9, 12] and len(s.train_labels) == 6
    assert len(s.test_labels) == 0 and s.test_classes == []  # training only: evaluated on rOxford / rParis
    assert str(s.train_images.paths[0]).split("/train/")[1][:6] == "0/0/1/"
    from ssml_fast.data.gldv2 import load_gldv2
    c = load_gldv2(tmp_path, clean=True, min_images=2, val_mode="none")
    assert c.train_classes == [5, 12] and len(c.train_labels) == 5
    f = load_gldv2(tmp_path, class_fraction=0.34, subset_seed=1, val_mode="none")
    assert len(f.train_classes) == 1
    (tmp_path / "train.csv").write_text("url,id\n")
    with pytest.raises(DatasetError, match="train.csv: the header must be 'id,url,landmark_id'"):
        _load("gldv2", tmp_path)


# ---- image folder / CSV / unlabeled -----------------------------------------------------------------
def test_image_folder_csv_and_unlabeled(tmp_path):
    trees.class_folders(tmp_path / "f")
    s = _load("folder", tmp_path / "f")
    assert s.train_classes == [0, 1] and s.test_classes == [2, 3] and s.extras["class_names"] == list("abcd")
    s = _load("folder", tmp_path / "f", train_classes=[1, 3])
    assert s.train_classes == [1, 3] and s.test_classes == [0, 2]
    rows = ["path,label"] + [f"f/{c}/{i}.png,{c}" for c in "abcd" for i in range(2)]
    (tmp_path / "labels.csv").write_text("\n".join(rows) + "\n")
    s = _load("csv", tmp_path / "labels.csv")
    assert s.extras["class_names"] == list("abcd") and len(s.train_labels) == 4 and len(s.test_labels) == 4
    u = load_dataset("unlabeled", root=tmp_path / "f")
    assert len(u.train_labels) == 12 and set(u.train_labels.tolist()) == {-1} and len(u.test_labels) == 0
    (tmp_path / "bad.csv").write_text("f/a/0.png\n")
    with pytest.raises(DatasetError, match="bad.csv line 1: expected 'path,label'"):
        _load("csv", tmp_path / "bad.csv")
    with pytest.raises(DatasetError, match="no class folders"):
        _load("folder", tmp_path / "f" / "a")
    with pytest.raises(ValueError, match="bundled: root"):
        load_dataset("digits", root=tmp_path)


# ---- rOxford5k / rParis6k --------------------------------------------------------------------------
@pytest.mark.parametrize("arrays", [True, False])
def test_revisitop_gnd_and_query_crops(tmp_path, arrays):
    trees.revisitop(tmp_path, "rparis6k", arrays=arrays)
    r = load_revisitop(tmp_path, "rparis6k")
    assert len(r.database) == 5 and len(r.queries) == 2
    assert r.gnd[0] == {"bbx": [4.0, 6.0, 36.0, 30.0], "easy": [0, 1], "hard": [2], "junk": [3]}
    q = EvalImages(r.queries)[0]
    assert q.shape == (3, 24, 32)  # the query is its box, not the 64 x 48 image
    # Capped at 32 on the long side: the crop is scaled by the full image's factor 32 / 64.
    small = load_revisitop(tmp_path, "rparis6k", max_size=32)
    assert EvalImages(small.queries)[0].shape == (3, 12, 16)
    assert EvalImages(small.database)[0].shape == (3, 24, 32)


class _Exploit:
    def __init__(self, marker):
        self.marker = marker

    def __reduce__(self):
        return (os.system, (f"touch {self.marker}",))


def test_restricted_unpickler_refuses_code_without_running_it(tmp_path):
    marker = tmp_path / "pwned"
    d = tmp_path / "roxford5k"
    d.mkdir()
    with open(d / "gnd_roxford5k.pkl", "wb") as f:
        pickle.dump({"imlist": [], "qimlist": [], "gnd": [_Exploit(marker)]}, f)
    with pytest.raises(UnsafePickleError, match=r"refers to (posix|os)\.system"):
        load_revisitop(tmp_path, "roxford5k")
    assert not marker.exists()
    with open(tmp_path / "eval.pkl", "wb") as f:
        f.write(b"cbuiltins\neval\n(V1+1\ntR.")
    with pytest.raises(UnsafePickleError, match="builtins.eval"):
        restricted_load(tmp_path / "eval.pkl")
    with open(tmp_path / "set.pkl", "wb") as f:
        pickle.dump({1, 2}, f, protocol=2)  # protocol 2 pickles a set through builtins.set
    with pytest.raises(UnsafePickleError, match="builtins.set"):
        restricted_load(tmp_path / "set.pkl")
    # The data types the gnd files hold load fine.
    with open(tmp_path / "ok.pkl", "wb") as f:
        pickle.dump({"a": [1, 2.5, "x", (3,)], "b": np.arange(3), "c": np.float64(2.0)}, f, protocol=2)
    ok = restricted_load(tmp_path / "ok.pkl")
    assert ok["a"] == [1, 2.5, "x", (3,)] and ok["b"].tolist() == [0, 1, 2] and ok["c"] == 2.0


def test_revisitop_malformed_gnd(tmp_path):
    with pytest.raises(DatasetError, match=r"expected .*roxford5k/gnd_roxford5k.pkl"):
        load_revisitop(tmp_path, "roxford5k")
    trees.revisitop(tmp_path)
    path = tmp_path / "roxford5k" / "gnd_roxford5k.pkl"
    with open(path, "wb") as f:
        pickle.dump({"imlist": ["db_0"], "qimlist": ["q_0"], "gnd": [{"bbx": [5, 5, 1, 1], "easy": [0]}]}, f)
    with pytest.raises(DatasetError, match=r"bbx'\] must be \(x1, y1, x2, y2\)"):
        load_revisitop(tmp_path, "roxford5k")
    with open(path, "wb") as f:
        pickle.dump({"imlist": ["db_0"], "qimlist": ["q_0"], "gnd": [{"bbx": [0, 0, 1, 1], "easy": [3]}]}, f)
    with pytest.raises(DatasetError, match="outside the 1 database images"):
        load_revisitop(tmp_path, "roxford5k")
    path.write_bytes(b"\x80\x02truncated")
    with pytest.raises(DatasetError, match="not a readable revisitop ground-truth pickle"):
        load_revisitop(tmp_path, "roxford5k")
    with pytest.raises(ValueError, match="name must be one of roxford5k, rparis6k"):
        load_revisitop(tmp_path, "oxford")


def test_file_split_tensors_are_long_and_consistent(tmp_path):
    trees.cub(tmp_path)
    s = _load("cub", tmp_path)
    for part in ("train", "val", "test"):
        files, labels = getattr(s, f"{part}_images"), getattr(s, f"{part}_labels")
        assert labels.dtype == torch.long and torch.equal(files.labels, labels) and len(files) == len(labels)
