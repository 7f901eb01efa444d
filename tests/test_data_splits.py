"""Open-set splits: class-disjoint test, validation only from training classes, stratified, deterministic."""
import pytest
import torch

from ssml_fast.data import ImageSplit, split_by_class


def _toy(n_per_class=20, classes=6):
    labels = torch.arange(classes).repeat_interleave(n_per_class)
    # Each image encodes its own row index, so tests can tell which rows landed where.
    images = torch.arange(len(labels), dtype=torch.float32).div(len(labels)).view(-1, 1, 1, 1).expand(-1, 1, 2, 3)
    return images.contiguous(), labels


def _rows(images):
    n = 20 * 6
    return set(torch.round(images[:, 0, 0, 0] * n).long().tolist())


def _split(train=(0, 1, 2), **kw):
    images, labels = _toy()
    kw.setdefault("name", "toy")
    kw.setdefault("mean", 0.5)
    kw.setdefault("std", 0.25)
    return split_by_class(images, labels, train, **kw)


def test_samples_mode_is_class_disjoint_stratified_and_partitions_the_data():
    s = _split((0, 1, 2), val_fraction=0.25)
    assert isinstance(s, ImageSplit) and s.image_shape == (1, 2, 3)
    assert s.train_classes == [0, 1, 2] and s.test_classes == [3, 4, 5] and s.val_classes == [0, 1, 2]
    assert set(s.test_labels.tolist()) == {3, 4, 5}
    assert set(s.train_labels.tolist()) | set(s.val_labels.tolist()) == {0, 1, 2}
    assert torch.bincount(s.val_labels, minlength=3)[:3].tolist() == [5, 5, 5]
    assert torch.bincount(s.train_labels, minlength=3)[:3].tolist() == [15, 15, 15]
    parts = [_rows(s.train_images), _rows(s.val_images), _rows(s.test_images)]
    assert sum(map(len, parts)) == 120 and len(set.union(*parts)) == 120
    for x, y in ((s.train_images, s.train_labels), (s.val_images, s.val_labels), (s.test_images, s.test_labels)):
        assert x.dtype == torch.float32 and y.dtype == torch.int64 and len(x) == len(y)
        assert (torch.round(x[:, 0, 0, 0] * 120).long() // 20 == y).all()  # images stay with their labels
        assert torch.all(torch.diff(torch.round(x[:, 0, 0, 0] * 120)) > 0)  # original order kept
    assert s.mean == 0.5 and s.std == 0.25


def test_samples_mode_is_deterministic_in_seed():
    a, b, c = _split(seed=3), _split(seed=3), _split(seed=4)
    assert torch.equal(a.val_images, b.val_images) and torch.equal(a.train_images, b.train_images)
    assert not torch.equal(a.val_images, c.val_images)


def test_val_fraction_rounding_and_empty_modes():
    assert len(_split(val_fraction=0.0).val_labels) == 0
    assert _split(val_fraction=0.0).val_classes == []
    assert torch.bincount(_split(val_fraction=0.01).val_labels).tolist() == [1, 1, 1]  # at least one per class
    s = _split(val_mode="none")
    assert len(s.val_labels) == 0 and s.val_images.shape == (0, 1, 2, 3) and len(s.train_labels) == 60


def test_class_mode_holds_out_whole_training_classes():
    s = _split((0, 1, 2, 3), val_mode="classes")
    assert s.val_classes == [3] and s.train_classes == [0, 1, 2] and s.test_classes == [4, 5]
    assert set(s.val_labels.tolist()) == {3} and len(s.val_labels) == 20
    s = _split((0, 1, 2, 3), val_mode="classes", val_classes=[0, 2])
    assert s.val_classes == [0, 2] and s.train_classes == [1, 3]


def test_unsorted_and_duplicate_train_classes_and_tensor_ids():
    s = _split([2, 0, 0, torch.tensor(1)])
    assert s.train_classes == [0, 1, 2]


@pytest.mark.parametrize("kwargs, exc, words", [
    (dict(train=()), ValueError, "train_classes"),
    (dict(train=(0, 1, 2, 3, 4, 5)), ValueError, "train_classes"),
    (dict(train=(0, 9)), ValueError, "train_classes"),
    (dict(train=(0, 1.5)), TypeError, "train_classes"),
    (dict(train="012"), TypeError, "train_classes"),
    (dict(train=None), TypeError, "train_classes"),
    (dict(val_mode="class"), ValueError, "val_mode"),
    (dict(val_fraction=1.0), ValueError, "val_fraction"),
    (dict(val_fraction=-0.1), ValueError, "val_fraction"),
    (dict(val_classes=[0]), ValueError, "val_classes"),
    (dict(val_mode="classes", val_classes=[4]), ValueError, "val_classes"),
    (dict(val_mode="classes", val_classes=[]), ValueError, "val_classes"),
    (dict(train=(0, 1), val_mode="classes"), ValueError, "at least 2"),
    (dict(name=""), ValueError, "name"),
    (dict(mean=float("nan")), ValueError, "mean"),
    (dict(std=0.0), ValueError, "std"),
    (dict(seed=1.0), TypeError, "seed"),
])
def test_every_bad_argument_is_named(kwargs, exc, words):
    train = kwargs.pop("train", (0, 1, 2))
    with pytest.raises(exc, match=words):
        _split(train, **kwargs)


def test_bad_tensors_are_named():
    images, labels = _toy()
    with pytest.raises(ValueError, match="images"):
        split_by_class(images[:, 0], labels, (0,), name="t", mean=0.0, std=1.0)
    with pytest.raises(ValueError, match="images"):
        split_by_class(images.long(), labels, (0,), name="t", mean=0.0, std=1.0)
    with pytest.raises(ValueError, match="labels"):
        split_by_class(images, labels.float(), (0,), name="t", mean=0.0, std=1.0)
    with pytest.raises(ValueError, match="labels"):
        split_by_class(images, labels[:-1], (0,), name="t", mean=0.0, std=1.0)


def test_to_and_describe():
    s = _split()
    t = s.to("cpu")
    assert torch.equal(t.train_images, s.train_images) and t.train_classes == s.train_classes
    assert "train 54" in s.describe() and "test 60" in s.describe()
