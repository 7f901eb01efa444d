"""Trunks, heads and the trunk registry: shapes, out_dim, pooling, normalisation, gradients, errors."""
import pytest
import torch
from torch import nn

from ssml_fast.models import (
    TRUNKS, ConvTrunk, IdentityHead, MLPHead, SmallCNN, available_trunks, build_trunk, make_head,
)

torch.manual_seed(0)


@pytest.mark.parametrize("name, shape, pool, dim", [
    ("small_cnn", (1, 28, 28), "flatten", 576), ("small_cnn", (1, 28, 28), "gap", 64),
    ("small_cnn", (1, 28, 28), "gmp", 64), ("small_cnn", (1, 28, 28), "gap+gmp", 64),
    ("small_cnn", (1, 8, 8), "flatten", 64), ("small_cnn", (1, 8, 8), "gap", 64),
    ("small_cnn_wide", (1, 28, 28), "flatten", 128 * 9), ("small_cnn_wide", (3, 8, 8), "gap+gmp", 128),
])
def test_trunk_shapes_and_out_dim(name, shape, pool, dim):
    trunk = build_trunk(name, shape, 0.3, 0.4, pool=pool)
    out = trunk(torch.rand(5, *shape))
    assert trunk.out_dim == dim and out.shape == (5, dim) and out.dtype == torch.float32
    assert torch.isfinite(out).all()


def test_28px_maps_shrink_28_14_7_3_and_8px_stops_pooling_at_1():
    assert ConvTrunk(image_size=28).feature_map_size == (3, 3)
    assert ConvTrunk(image_size=8).feature_map_size == (1, 1)
    deep = ConvTrunk(channels=(4, 4, 4, 4, 4), image_size=8)  # 8 -> 4 -> 2 -> 1 -> 1 -> 1
    assert deep.feature_map_size == (1, 1) and deep(torch.rand(2, 1, 8, 8)).shape == (2, 4)
    assert ConvTrunk(image_size=(28, 9)).feature_map_size == (3, 1)


def test_pools_agree_with_a_plain_reference():
    trunk = ConvTrunk(image_size=28).eval()
    x = torch.rand(3, 1, 28, 28)
    z = trunk.forward_map(x)
    assert z.shape == (3, 64, 3, 3)
    for pool, ref in (("flatten", z.reshape(3, -1)), ("gap", z.mean((2, 3))), ("gmp", z.flatten(2).max(2).values),
                      ("gap+gmp", z.mean((2, 3)) + z.flatten(2).max(2).values)):
        trunk.pool = pool
        assert torch.allclose(trunk(x), ref, atol=1e-6)


def test_input_normalisation_is_applied_and_saved():
    a = ConvTrunk(image_size=8, mean=0.3, std=0.4).eval()
    b = ConvTrunk(image_size=8).eval()
    b.load_state_dict({k: v for k, v in a.state_dict().items() if k not in ("mean", "std")}, strict=False)
    x = torch.rand(2, 1, 8, 8)
    assert torch.allclose(a(x), b((x - 0.3) / 0.4), atol=1e-5)
    assert a.state_dict()["mean"].item() == pytest.approx(0.3) and a.state_dict()["std"].item() == pytest.approx(0.4)


def test_channels_last_changes_layout_not_features():
    a = ConvTrunk(image_size=28, channels_last=True).eval()
    b = ConvTrunk(image_size=28, channels_last=False).eval()
    b.load_state_dict(a.state_dict())
    x = torch.rand(4, 1, 28, 28)
    assert torch.allclose(a(x), b(x), atol=1e-5)
    assert a.blocks[1][0].weight.is_contiguous(memory_format=torch.channels_last)


def test_gradients_reach_every_parameter():
    trunk = build_trunk("small_cnn", (1, 28, 28), 0.3, 0.4)
    head = make_head("mlp", trunk.out_dim, 32)
    x = torch.rand(6, 1, 28, 28, requires_grad=True)
    head(trunk(x)).square().sum().backward()
    for name, p in list(trunk.named_parameters()) + list(head.named_parameters()):
        assert p.grad is not None and torch.isfinite(p.grad).all() and p.grad.abs().sum() > 0, name
    assert x.grad.abs().sum() > 0


def test_flatten_trunk_rejects_other_image_sizes():
    with pytest.raises(ValueError, match="image_size"):
        ConvTrunk(image_size=28)(torch.rand(1, 1, 32, 32))
    assert ConvTrunk(image_size=28, pool="gap")(torch.rand(1, 1, 32, 32)).shape == (1, 64)


@pytest.mark.parametrize("kwargs, word", [
    (dict(in_channels=0), "in_channels"), (dict(channels=()), "channels"), (dict(channels=(16, 0)), "channels"),
    (dict(image_size=(28,)), "image_size"), (dict(image_size=0), "image_size"), (dict(pool="avg"), "pool"),
    (dict(mean=float("nan")), "mean"), (dict(std=0.0), "std"), (dict(channels_last=1), "channels_last"),
])
def test_trunk_bad_arguments_are_named(kwargs, word):
    with pytest.raises(ValueError, match=word):
        ConvTrunk(**kwargs)


def test_registry():
    names = {"small_cnn", "small_cnn_wide", "resnet18", "resnet50", "resnet101", "googlenet"}
    assert set(TRUNKS) == names and set(available_trunks()) == names | {"timm:<timm model name>"}
    assert all(callable(f) for f in TRUNKS.values())
    assert build_trunk("small_cnn_wide", (1, 28, 28), 0.3, 0.4, channels=(8, 8)).out_dim == 8 * 7 * 7
    with pytest.raises(ValueError, match=r"backbone 'resnet9'.*googlenet, resnet101.*small_cnn, small_cnn_wide"):
        build_trunk("resnet9", (1, 28, 28), 0.3, 0.4)
    with pytest.raises(ValueError, match="image_shape"):
        build_trunk("small_cnn", (28, 28), 0.3, 0.4)
    with pytest.raises(ValueError, match="image_shape"):
        build_trunk("small_cnn", (1, 28, 0), 0.3, 0.4)


@pytest.mark.parametrize("kind, kwargs, out_dim", [
    ("identity", {}, 576), ("linear", {}, 128), ("linear", dict(out_dim=64), 64),
    ("mlp", {}, 128), ("mlp", dict(out_dim=32, hidden=256), 32),
])
def test_head_shapes(kind, kwargs, out_dim):
    head = make_head(kind, 576, **kwargs)
    assert head.out_dim == out_dim and head(torch.randn(4, 576)).shape == (4, out_dim)


def test_head_structure_and_orthogonal_init():
    x = torch.randn(3, 10)
    assert isinstance(make_head("identity", 10), IdentityHead) and torch.equal(make_head("identity", 10)(x), x)
    mlp = make_head("mlp", 10, 6)
    assert isinstance(mlp, MLPHead) and [type(m) for m in mlp] == [nn.Linear, nn.BatchNorm1d, nn.ReLU, nn.Linear]
    assert mlp[0].in_features == 10 and mlp[0].out_features == 10 and mlp.hidden == 10
    ortho = make_head("mlp", 10, 6, hidden=20, init="orthogonal")
    for lin in (ortho[0], ortho[3]):
        w = lin.weight
        gram = w @ w.T if w.shape[0] <= w.shape[1] else w.T @ w
        assert torch.allclose(gram, torch.eye(min(w.shape)), atol=1e-5)
        assert lin.bias is None or torch.equal(lin.bias, torch.zeros_like(lin.bias))
    lin = make_head("linear", 10, 4, init="orthogonal")
    assert torch.allclose(lin.weight @ lin.weight.T, torch.eye(4), atol=1e-5) and not lin.bias.any()


@pytest.mark.parametrize("args, kwargs, word", [
    (("conv", 10), {}, "kind"), (("linear", 10), dict(init="xavier"), "init"), (("linear", 0), {}, "in_dim"),
    (("linear", 10, 0), {}, "out_dim"), (("mlp", 10), dict(hidden=0), "hidden"),
    (("linear", 10), dict(hidden=5), "hidden"), (("identity", 10), dict(hidden=5), "hidden"),
])
def test_head_bad_arguments_are_named(args, kwargs, word):
    with pytest.raises(ValueError, match=word):
        make_head(*args, **kwargs)


def test_small_cnn_still_works():
    model = SmallCNN(embedding_dim=8, width=4)
    out = model(torch.rand(3, 1, 8, 8))
    assert out.shape == (3, 8) and torch.allclose(out.norm(dim=1), torch.ones(3), atol=1e-5)
