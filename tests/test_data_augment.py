"""Batched augmentations: exact identities, geometry against torch.rot90 / shifts, noise, cutout, batching."""
import time

import pytest
import torch
import torch.nn.functional as F

from ssml_fast.data import AUGMENTATIONS, AugmentParams, BatchAugment, affine_theta, make_augment
from ssml_fast.data import augment as augment_module


def _theta(b=1, angle=0.0, scale=1.0, shear=0.0, shift=(0.0, 0.0), flip=False, h=9, w=9):
    full = lambda v: torch.full((b,), float(v), dtype=torch.float64)  # noqa: E731
    return affine_theta(full(angle), full(scale), full(shear), torch.tensor([shift] * b, dtype=torch.float64),
                        torch.full((b,), flip), h, w)


def _apply(x, **kw):
    theta = _theta(len(x), h=x.shape[-2], w=x.shape[-1], **kw)
    return BatchAugment(rotation=1.0).apply(x, AugmentParams(theta, None, None))


def _gen(seed=0):
    return torch.Generator().manual_seed(seed)


def test_identity_returns_x_itself():
    x = torch.rand(5, 1, 8, 8)
    for aug in (BatchAugment(), make_augment("none"), make_augment(None),
                BatchAugment(rotation=0, scale=(1, 1), shift=0, shear=0, noise=0, cutout=0, hflip=False)):
        assert aug.is_identity and aug(x, _gen()) is x


def test_identity_affine_parameters_resample_exactly():
    x = torch.rand(3, 2, 9, 7)
    assert torch.allclose(_apply(x), x, atol=1e-6, rtol=0)


@pytest.mark.parametrize("size", [8, 9, 28])
@pytest.mark.parametrize("angle, k", [(90.0, 1), (-90.0, -1), (180.0, 2)])
def test_rotation_matches_rot90(size, angle, k):
    x = torch.rand(2, 1, size, size)
    assert torch.allclose(_apply(x, angle=angle), torch.rot90(x, k, (-2, -1)), atol=1e-5, rtol=0)


def test_integer_shift_matches_a_zero_filled_translation():
    x = torch.rand(2, 1, 5, 7)
    out = _apply(x, shift=(2 / 7, -1 / 5))  # 2 px right, 1 px up
    expected = torch.zeros_like(x)
    expected[..., :4, 2:] = x[..., 1:, :5]
    assert torch.allclose(out, expected, atol=1e-5, rtol=0)


def test_shear_moves_rows_by_factor_times_offset_from_centre():
    x = torch.rand(1, 1, 9, 9)
    out = _apply(x, shear=0.5)
    assert torch.allclose(out[..., 4, :], x[..., 4, :], atol=1e-5)          # centre row fixed
    assert torch.allclose(out[..., 6, 1:], x[..., 6, :-1], atol=1e-5)       # 2 rows down: 1 px right
    assert torch.allclose(out[..., 2, :-1], x[..., 2, 1:], atol=1e-5)       # 2 rows up: 1 px left


def test_flip_and_scale_semantics():
    x = torch.rand(2, 1, 6, 6)
    assert torch.allclose(_apply(x, flip=True), x.flip(-1), atol=1e-5)
    yy, xx = torch.meshgrid(torch.arange(32.0), torch.arange(32.0), indexing="ij")
    blob = torch.exp(-((yy - 15.5) ** 2 + (xx - 15.5) ** 2) / (2 * 3.0 ** 2)).view(1, 1, 32, 32)
    ratio = _apply(blob, scale=1.5).sum() / blob.sum()
    assert ratio == pytest.approx(1.5 ** 2, rel=0.03)  # scale > 1 enlarges the content


def test_non_square_rotation_stays_a_rotation():
    x = torch.zeros(1, 1, 9, 15)
    x[..., 4, 9] = 1.0  # 2 px right of the centre (4, 7)
    out = _apply(x, angle=90.0)
    assert out[..., 2, 7].item() == pytest.approx(1.0, abs=1e-5)  # now 2 px above it
    assert out.sum().item() == pytest.approx(1.0, abs=1e-5)


def test_fast_grid_equals_affine_grid():
    theta = torch.randn(6, 2, 3, dtype=torch.float64)
    for h, w in ((28, 28), (5, 11)):
        ref = F.affine_grid(theta, [6, 1, h, w], align_corners=False)
        assert torch.allclose(augment_module.affine_grid(theta, h, w), ref, atol=1e-12)


def test_same_seed_same_views_other_seed_other_views():
    x = torch.rand(16, 1, 28, 28)
    aug = make_augment("strong")
    a, b, c = aug(x, _gen(1)), aug(x, _gen(1)), aug(x, _gen(2))
    assert torch.equal(a, b) and not torch.equal(a, c)
    torch.manual_seed(5)
    d = aug(x)
    torch.manual_seed(5)
    assert torch.equal(d, aug(x))  # generator=None draws from the global CPU generator


def test_cpu_generator_gives_the_same_views_on_every_device(device):
    x = torch.rand(8, 1, 28, 28)
    aug = make_augment("strong")
    ref = aug(x, _gen(3))
    out = aug(x.to(device), _gen(3))
    assert out.device.type == device.type
    assert torch.allclose(out.cpu(), ref, atol=1e-5)


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64, torch.bfloat16])
def test_shape_dtype_device_preserved_and_input_untouched(dtype):
    x = torch.rand(4, 3, 10, 12).to(dtype)
    before = x.clone()
    for name in AUGMENTATIONS:
        out = make_augment(name)(x, _gen())
        assert out.shape == x.shape and out.dtype == dtype and out.device == x.device
    assert torch.equal(x, before)


def test_noise_std_and_clamp():
    x = torch.full((64, 1, 28, 28), 0.5)
    out = BatchAugment(noise=0.1)(x, _gen())
    assert (out - 0.5).std().item() == pytest.approx(0.1, rel=0.03)
    assert out.mean().item() == pytest.approx(0.5, abs=0.005)
    out = BatchAugment(noise=0.5)(torch.zeros(8, 1, 8, 8), _gen())
    assert out.min() == 0.0 and out.max() <= 1.0 and (out > 0).float().mean() == pytest.approx(0.5, abs=0.1)


@pytest.mark.parametrize("h, w, frac, side", [(28, 28, 0.25, (7, 7)), (8, 8, 0.25, (2, 2)), (10, 20, 0.3, (3, 6)),
                                              (8, 8, 0.01, (1, 1))])
def test_cutout_zeroes_one_square_inside_the_image(h, w, frac, side):
    x = torch.ones(256, 2, h, w)
    aug = BatchAugment(cutout=frac)
    assert aug.cutout_size(h, w) == side
    out = aug(x, _gen())
    zero = out == 0
    assert torch.equal(zero[:, 0], zero[:, 1])  # the same square in every channel
    assert (zero[:, 0].sum((1, 2)) == side[0] * side[1]).all()
    rows, cols = zero[:, 0].any(2), zero[:, 0].any(1)
    assert (rows.sum(1) == side[0]).all() and (cols.sum(1) == side[1]).all()  # one rectangle
    assert rows[:, 0].any() and rows[:, -1].any() and cols[:, 0].any() and cols[:, -1].any()  # reaches edges


def test_whole_batch_in_one_grid_sample_call(monkeypatch):
    calls = []
    real = F.grid_sample
    monkeypatch.setattr(augment_module.F, "grid_sample", lambda *a, **k: calls.append(a[0].shape) or real(*a, **k))
    x = torch.rand(4096, 1, 28, 28)
    start = time.perf_counter()
    out = make_augment("strong")(x, _gen())
    elapsed = time.perf_counter() - start
    assert calls == [x.shape] and out.shape == x.shape
    assert elapsed < 5.0  # 0.33 s measured (1 thread, load 7 on 2 cores); generous for shared CI cores


def test_params_are_drawn_on_cpu_and_only_for_enabled_parts():
    p = BatchAugment(noise=0.1).sample((3, 1, 4, 4), _gen())
    assert p.theta is None and p.cutout is None and p.noise.device.type == "cpu"
    p = make_augment("strong").sample((3, 1, 4, 4), _gen())
    assert p.theta.shape == (3, 2, 3) and p.theta.dtype == torch.float64 and p.cutout.shape == (3, 2)


def test_make_augment_specs():
    assert make_augment("mild") == BatchAugment(rotation=15, scale=(0.85, 1.15), shift=0.1)
    strong = make_augment("strong")
    assert (strong.rotation, strong.scale, strong.shift, strong.shear, strong.noise, strong.cutout) == \
        (20.0, (0.75, 1.2), 0.15, 0.2, 0.1, 0.25)
    assert make_augment({"rotation": 10, "scale": [0.9, 1.1]}) == BatchAugment(rotation=10, scale=(0.9, 1.1))
    assert make_augment({"preset": "mild", "noise": 0.05}).noise == 0.05
    assert make_augment({"preset": "mild", "noise": 0.05}).rotation == 15
    aug = BatchAugment(shift=0.2)
    assert make_augment(aug) is aug
    with pytest.raises(ValueError, match="'wobble'"):
        make_augment("wobble")
    with pytest.raises(ValueError, match="'rotate'"):
        make_augment({"rotate": 10})
    with pytest.raises(TypeError, match="spec"):
        make_augment(3)


@pytest.mark.parametrize("kwargs, word", [
    (dict(rotation=-1), "rotation"), (dict(rotation=200), "rotation"), (dict(rotation="5"), "rotation"),
    (dict(scale=(1.2, 0.8)), "scale"), (dict(scale=(0, 1)), "scale"), (dict(scale=1.0), "scale"),
    (dict(scale=(1, float("inf"))), "scale"), (dict(shift=-0.1), "shift"), (dict(shift=1.5), "shift"),
    (dict(shear=-0.1), "shear"), (dict(noise=-0.1), "noise"), (dict(cutout=1.2), "cutout"),
    (dict(hflip=1), "hflip"),
])
def test_bad_arguments_are_named(kwargs, word):
    with pytest.raises(ValueError, match=word):
        BatchAugment(**kwargs)


def test_bad_inputs_are_named():
    aug = make_augment("mild")
    with pytest.raises(ValueError, match="x must"):
        aug(torch.rand(1, 8, 8))
    with pytest.raises(ValueError, match="x must"):
        aug(torch.ones(2, 1, 8, 8, dtype=torch.uint8))
    with pytest.raises(TypeError, match="generator"):
        aug(torch.rand(2, 1, 8, 8), generator=0)


def test_params_must_match_the_batch():
    aug = make_augment("strong")
    p = aug.sample((4, 1, 8, 8), _gen())
    for bad in (torch.rand(3, 1, 8, 8), torch.rand(4, 2, 8, 8)):
        with pytest.raises(ValueError, match="params"):
            aug.apply(bad, p)
    with pytest.raises(ValueError, match="shape"):
        aug.sample((4, 8, 8), _gen())
