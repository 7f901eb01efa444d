"""Op-level checks: gradcheck, opcheck, torch.compile, degenerate batches, bad input, CUDA."""
import pytest
import torch

import ssml_fast
from ssml_fast import ops
from tests.conftest import requires_cuda

MININGS = ["all", "hard", "semihard"]
OPS = ["pairwise_distance", "pairwise_distance_backward", "triplet_margin_loss_from_dist"]


def batch(B=12, n_classes=3, D=5, seed=0, dtype=torch.float64):
    g = torch.Generator().manual_seed(seed)
    return torch.randn(B, D, generator=g, dtype=dtype), torch.randint(0, n_classes, (B,), generator=g)


@pytest.mark.parametrize("distance", ["euclidean", "sqeuclidean", "cosine"])
@pytest.mark.parametrize("mining", MININGS)
def test_gradcheck(mining, distance):
    emb, labels = batch()
    emb.requires_grad_(True)
    assert torch.autograd.gradcheck(
        lambda x: ops.triplet_margin_loss(x, labels, 0.5, mining, distance), (emb,))


@pytest.mark.parametrize("distance", ["euclidean", "sqeuclidean", "cosine"])
def test_gradcheck_pairwise_distance(distance):
    x, _ = batch(7)
    y, _ = batch(5, seed=1)
    x.requires_grad_(True)
    y.requires_grad_(True)
    assert torch.autograd.gradcheck(lambda a, b: ops.pairwise_distance(a, b, distance), (x, y))


@pytest.mark.parametrize("distance", ["euclidean", "cosine"])
def test_opcheck_pairwise_distance(distance):
    x, _ = batch(7, dtype=torch.float32)
    y, _ = batch(5, seed=1, dtype=torch.float32)
    torch.library.opcheck(torch.ops.ssml_fast.pairwise_distance.default,
                          (x.requires_grad_(True), y.requires_grad_(True), distance))


@pytest.mark.parametrize("distance", ["euclidean", "sqeuclidean", "cosine"])
def test_constant_y_skips_its_gradient(distance):
    """y without grad (a detached memory): the backward skips y's GEMM; x's gradient is unchanged."""
    x, _ = batch(7)
    y, _ = batch(5, seed=1)
    x1, x2, y1 = x.clone().requires_grad_(True), x.clone().requires_grad_(True), y.clone().requires_grad_(True)
    w = torch.randn(7, 5, dtype=torch.float64)
    (ops.pairwise_distance(x1, y1, distance) * w).sum().backward()
    (ops.pairwise_distance(x2, y, distance) * w).sum().backward()
    torch.testing.assert_close(x2.grad, x1.grad, rtol=0, atol=0)
    assert torch.autograd.gradcheck(lambda a: ops.pairwise_distance(a, y, distance), (x2.detach().requires_grad_(True),))
    d = ops.pairwise_distance(x, y, distance)
    gx, gy = torch.ops.ssml_fast.pairwise_distance_backward(w, x, y, d, distance, False)
    assert gy.shape == (0,) and torch.equal(gx, x1.grad)
    torch.library.opcheck(torch.ops.ssml_fast.pairwise_distance_backward.default, (w, x, y, d, distance, False))


@pytest.mark.parametrize("mining", MININGS)
def test_opcheck_triplet(mining):
    emb, labels = batch(10, dtype=torch.float32)
    dist = torch.cdist(emb, emb).requires_grad_(True)
    torch.library.opcheck(torch.ops.ssml_fast.triplet_margin_loss_from_dist.default,
                          (dist, labels, labels, True, 0.3, mining, "mean_nonzero", False))


def test_torch_compile_traces_the_ops():
    emb, labels = batch(16, dtype=torch.float32)

    def f(x):
        return ops.triplet_margin_loss(x, labels, 0.3, "hard")

    compiled = torch.compile(f, backend="aot_eager", fullgraph=True)
    x1, x2 = emb.clone().requires_grad_(True), emb.clone().requires_grad_(True)
    l1, l2 = f(x1), compiled(x2)
    l1.backward()
    l2.backward()
    torch.testing.assert_close(l1, l2)
    torch.testing.assert_close(x1.grad, x2.grad)


@pytest.mark.parametrize("mining", MININGS)
@pytest.mark.parametrize("case", ["one_class", "singletons", "single_sample", "empty", "empty_ref"])
def test_degenerate_batches_give_zero(mining, case, device):
    emb, labels = batch(6)
    kw = {}
    if case == "one_class":
        labels = torch.zeros(6, dtype=torch.long)
    elif case == "singletons":
        labels = torch.arange(6)
    elif case == "single_sample":
        emb, labels = emb[:1], labels[:1]
    elif case == "empty":
        emb, labels = emb[:0], labels[:0]
    else:
        kw = dict(ref_emb=emb[:0], ref_labels=labels[:0])
    x = emb.to(device).requires_grad_(True)
    out = ops.triplet_margin_loss(x, labels.to(device), 0.2, mining, return_stats=True, **kw)
    out.loss.backward()
    assert out.loss.item() == 0 and int(out.num_triplets) == 0
    assert torch.isfinite(x.grad).all() and (x.grad == 0).all()


def test_nothing_active_gives_zero_not_nan():
    # Classes far apart: every triplet satisfies the margin, so mean_nonzero divides nothing.
    emb = torch.tensor([[0.0, 0], [0, 0.1], [10, 10], [10, 10.1]], requires_grad=True)
    labels = torch.tensor([0, 0, 1, 1])
    out = ops.triplet_margin_loss(emb, labels, 0.2, return_stats=True)
    out.loss.backward()
    assert out.loss.item() == 0 and int(out.num_active) == 0 and int(out.num_triplets) == 8
    assert (emb.grad == 0).all()


@pytest.mark.parametrize("kwargs,exc,needle", [
    (dict(emb=torch.randn(4)), ValueError, "emb"),
    (dict(emb=torch.randint(0, 3, (4, 2))), TypeError, "emb"),
    (dict(labels=torch.zeros(5, dtype=torch.long)), ValueError, "labels"),
    (dict(labels=torch.zeros(4)), TypeError, "labels"),
    (dict(labels=torch.zeros(4, 1, dtype=torch.long)), ValueError, "labels"),
    (dict(margin=-0.1), ValueError, "margin"),
    (dict(margin=float("nan")), ValueError, "margin"),
    (dict(mining="hardest"), ValueError, "mining"),
    (dict(distance="manhattan"), ValueError, "distance"),
    (dict(reduction="avg"), ValueError, "reduction"),
    (dict(ref_emb=torch.randn(3, 5)), ValueError, "ref_emb"),
    (dict(ref_emb=torch.randn(3, 2)), ValueError, "ref_labels"),
    (dict(ref_emb=torch.randn(3, 2), ref_labels=torch.zeros(2, dtype=torch.long)), ValueError, "ref_labels"),
    (dict(soft=True), ValueError, "soft"),
])
def test_bad_input_names_the_argument(kwargs, exc, needle):
    args = dict(emb=torch.randn(4, 2), labels=torch.tensor([0, 0, 1, 1]))
    args.update(kwargs)
    with pytest.raises(exc, match=needle):
        ops.triplet_margin_loss(**args)


def test_meta_device_shapes():
    emb = torch.empty(8, 4, device="meta")
    labels = torch.empty(8, dtype=torch.long, device="meta")
    out = ops.triplet_margin_loss(emb, labels, return_stats=True)
    assert out.loss.shape == () and out.num_active.dtype == torch.long


def test_cuda_kernels_registered_when_built_with_cuda():
    info = ssml_fast.build_info()
    for op in OPS:
        assert torch._C._dispatch_has_kernel_for_dispatch_key(f"ssml_fast::{op}", "CPU")
        assert torch._C._dispatch_has_kernel_for_dispatch_key(f"ssml_fast::{op}", "CUDA") == info["cuda"]


@requires_cuda
@pytest.mark.parametrize("mining", MININGS)
@pytest.mark.parametrize("soft", [False, True])
@pytest.mark.parametrize("n_classes", [2, 40])
@pytest.mark.parametrize("exclude", [True, False])
def test_cuda_matches_cpu(mining, soft, n_classes, exclude):
    # The same dist on both backends: mining is then decided on identical numbers, so counts and gradients
    # must agree exactly (the GPU runs the algorithm of the private _sorted op, checked against the CPU kernel
    # in test_triplet_gpu_algorithm.py). Only the loss sum may differ in its last bits (device reductions), and
    # softplus's exp / log1p may round differently on the device.
    if soft and mining == "all":
        pytest.skip("soft margin is for hard / semihard")
    emb, labels = batch(300, n_classes, D=32, dtype=torch.float32)
    dist = torch.cdist(emb, emb)
    outs = []
    for dev in ["cpu", "cuda"]:
        out = torch.ops.ssml_fast.triplet_margin_loss_from_dist(dist.to(dev), labels.to(dev), labels.to(dev), exclude,
                                                                0.3, mining, "mean_nonzero", soft)
        outs.append([t.cpu() for t in out])
    (lc, ac, tc, gc), (lg, ag, tg, gg) = outs
    assert (int(ac), int(tc)) == (int(ag), int(tg))
    torch.testing.assert_close(lg, lc, rtol=1e-6, atol=0)
    if soft:
        torch.testing.assert_close(gg, gc, rtol=1e-6, atol=1e-9)
    else:
        assert torch.equal(gg, gc)


@requires_cuda
@pytest.mark.parametrize("distance", ["euclidean", "sqeuclidean", "cosine"])
def test_cuda_pairwise_distance_matches_cpu(distance):
    # Two different float32 GEMMs: equal up to rounding, not bit for bit.
    x, _ = batch(300, D=32, dtype=torch.float32)
    y, _ = batch(200, D=32, seed=1, dtype=torch.float32)
    torch.testing.assert_close(ops.pairwise_distance(x.cuda(), y.cuda(), distance).cpu(),
                               ops.pairwise_distance(x, y, distance), rtol=1e-4, atol=1e-4)


@pytest.mark.parametrize("distance", ["euclidean", "sqeuclidean", "cosine"])
@pytest.mark.parametrize("dtype", [torch.float64, torch.float32, torch.float16])
def test_self_distance_diagonal_is_exactly_zero(distance, dtype):
    x = (torch.randn(50, 7, dtype=torch.float64) * 10 + 3).to(dtype).requires_grad_(True)
    d = ops.pairwise_distance(x, distance=distance)
    assert (d.diagonal() == 0).all()
    assert torch.equal(d, ops.pairwise_distance(x, x, distance))
    d.sum().backward()
    assert torch.isfinite(x.grad).all()


def test_self_distance_gradcheck_with_zero_diagonal():
    x = torch.randn(6, 3, dtype=torch.float64, requires_grad=True)
    for distance in ["sqeuclidean", "cosine"]:
        assert torch.autograd.gradcheck(lambda a: ops.pairwise_distance(a, distance=distance), (x,))


def test_int32_labels_passed_as_ref_labels_too():
    from ssml_fast import losses, miners

    emb, labels = batch(12, 3, dtype=torch.float32)
    lab32 = labels.int()
    base = ops.triplet_margin_loss(emb, labels)
    assert torch.equal(ops.triplet_margin_loss(emb, lab32, ref_emb=emb, ref_labels=lab32), base)
    assert torch.equal(losses.TripletMarginLoss()(emb, lab32, ref_emb=emb, ref_labels=lab32),
                       losses.TripletMarginLoss()(emb, labels))
    a = miners.BatchHardMiner()(emb, lab32, emb, lab32)
    b = miners.BatchHardMiner()(emb, labels)
    assert all(torch.equal(x, y) for x, y in zip(a, b))
    with pytest.raises(ValueError, match="ref_labels"):
        ops.triplet_margin_loss(emb, labels, ref_emb=emb, ref_labels=labels.flip(0))
