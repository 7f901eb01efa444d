"""The PML drop-in surface against pytorch-metric-learning itself: for every mirrored loss and miner,
random configurations of distance (ours and PML's objects), reducer, regularizer, margins, ref_emb and
mined indices give the same values and gradients as PML with the same configuration. Both fused paths
(default reducers, known distances) and the general paths (any other reducer / distance) are covered."""
from __future__ import annotations

import random

import pytest
import torch

pml = pytest.importorskip("pytorch_metric_learning")
from pytorch_metric_learning import distances as pd  # noqa: E402
from pytorch_metric_learning import losses as pl  # noqa: E402
from pytorch_metric_learning import miners as pm  # noqa: E402
from pytorch_metric_learning import reducers as pr  # noqa: E402
from pytorch_metric_learning import regularizers as preg  # noqa: E402

from ssml_fast import distances as od  # noqa: E402
from ssml_fast import losses as ol  # noqa: E402
from ssml_fast import miners as om  # noqa: E402
from ssml_fast import reducers as orr  # noqa: E402
from ssml_fast import regularizers as oreg  # noqa: E402

SEEDS = range(8)

DISTANCES = {  # name -> (constructor kwargs, class name)
    "lp": ("LpDistance", {}),
    "lp_sq": ("LpDistance", {"power": 2}),
    "lp_raw": ("LpDistance", {"normalize_embeddings": False}),
    "lp1": ("LpDistance", {"p": 1}),
    "cos": ("CosineSimilarity", {}),
    "dot_raw": ("DotProductSimilarity", {"normalize_embeddings": False}),
}
REDUCERS = {  # name -> (class name, args)
    "default": None,
    "mean": ("MeanReducer", {}),
    "sum": ("SumReducer", {}),
    "avg_nonzero": ("AvgNonZeroReducer", {}),
    "threshold": ("ThresholdReducer", {"low": 0.05}),
    "threshold_high": ("ThresholdReducer", {"high": 1.0}),
}


def make(module, spec):
    if spec is None:
        return None
    name, kw = spec
    return getattr(module, name)(**kw)


def pair(spec_d, spec_r, *, ours_gets_pml_objects=False):
    """(ours kwargs, PML kwargs) for a distance / reducer configuration."""
    dk, rk = {}, {}
    if spec_d is not None:
        dk["distance"] = make(pd if ours_gets_pml_objects else od, DISTANCES[spec_d])
        rk["distance"] = make(pd, DISTANCES[spec_d])
    if spec_r is not None and REDUCERS[spec_r] is not None:
        dk["reducer"] = make(pr if ours_gets_pml_objects else orr, REDUCERS[spec_r])
        rk["reducer"] = make(pr, REDUCERS[spec_r])
    return dk, rk


def batch(B, n_classes, D=8, seed=0, dtype=torch.float64):
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(B, D, generator=g, dtype=dtype)
    y = torch.randint(0, n_classes, (B,), generator=g)
    y[:n_classes] = torch.arange(n_classes)  # every class present
    return x, y


def assert_same(ours, theirs, *inputs, rtol=1e-6, atol=1e-8):
    a = [t.clone().requires_grad_(True) for t in inputs]
    b = [t.clone().requires_grad_(True) for t in inputs]
    la, lb = ours(*a), theirs(*b)
    torch.testing.assert_close(la.detach(), lb.detach().to(la.dtype), rtol=rtol, atol=atol)
    if not (la.requires_grad and lb.requires_grad):
        return
    ga = torch.autograd.grad(la, a, allow_unused=True)
    gb = torch.autograd.grad(lb, b, allow_unused=True)
    for x, y, t in zip(ga, gb, a):
        x = torch.zeros_like(t) if x is None else x
        y = torch.zeros_like(t) if y is None else y
        torch.testing.assert_close(x, y, rtol=rtol * 100, atol=atol * 100)


def config(seed, distances, reducers):
    rnd = random.Random(seed)
    return rnd, rnd.choice(distances), rnd.choice(reducers), rnd.random() < 0.5, rnd.random() < 0.3


def indices_for(rnd, x, y, r=None, ry=None):
    """A PML miner's output (pairs or triplets) for the batch, or None."""
    kind = rnd.choice([None, "ms", "triplet"])
    if kind == "ms":
        return pm.MultiSimilarityMiner(0.3)(x, y, r, ry)
    if kind == "triplet":
        return pm.TripletMarginMiner(0.3, distance=pd.LpDistance())(x, y, r, ry)
    return None


def call(loss, x, y, idx, r, ry):
    return loss(x, y, idx, r, ry) if r is not None else loss(x, y, idx)


# ---------------------------------------------------------------- pair and triplet losses

PAIR_LOSSES = {
    # name -> (ours factory, PML factory, distances, reducers, ref_emb allowed)
    "triplet": (lambda kw, c: ol.TripletMarginLoss(**c, **kw), lambda kw, c: pl.TripletMarginLoss(**c, **kw),
                ["lp", "lp_sq", "lp_raw", "cos", "dot_raw", "lp1"], list(REDUCERS), True),
    "contrastive": (lambda kw, c: ol.ContrastiveLoss(**c, **kw), lambda kw, c: pl.ContrastiveLoss(**c, **kw),
                    ["lp", "lp_sq", "lp_raw", "cos", "lp1"], list(REDUCERS), True),
    "ntxent": (lambda kw, c: ol.NTXentLoss(**c, **kw), lambda kw, c: pl.NTXentLoss(**c, **kw),
               ["cos", "lp", "dot_raw"], ["default", "sum", "avg_nonzero", "threshold_high"], True),
    "multi_similarity": (lambda kw, c: ol.MultiSimilarityLoss(**c, **kw),
                         lambda kw, c: pl.MultiSimilarityLoss(**c, **kw),
                         ["cos", "lp", "dot_raw"], ["default", "sum", "avg_nonzero"], True),
    "lifted": (lambda kw, c: ol.LiftedStructureLoss(**c, **kw), lambda kw, c: pl.LiftedStructureLoss(**c, **kw),
               ["lp", "lp_raw", "cos"], ["default", "sum", "avg_nonzero"], True),
    "generalized_lifted": (lambda kw, c: ol.GeneralizedLiftedStructureLoss(**c, **kw),
                           lambda kw, c: pl.GeneralizedLiftedStructureLoss(**c, **kw),
                           ["lp", "lp_raw", "cos"], ["default", "sum", "avg_nonzero"], True),
}


def constants(name, rnd, inverted):
    if name == "triplet":
        return dict(margin=rnd.choice([0.05, 0.2, 0.5, -0.1, 0.0]), swap=rnd.random() < 0.3,
                    smooth_loss=rnd.random() < 0.3)
    if name == "contrastive":
        return dict(pos_margin=0.8, neg_margin=0.3) if inverted else dict(pos_margin=0.1, neg_margin=1.2)
    if name == "ntxent":
        return dict(temperature=rnd.choice([0.07, 0.5]))
    if name == "multi_similarity":
        return dict(alpha=2.0, beta=rnd.choice([10.0, 40.0]), base=0.5)
    return dict(neg_margin=rnd.choice([0.5, 1.0]), pos_margin=rnd.choice([0.0, 0.2]))


@pytest.mark.parametrize("seed", SEEDS)
@pytest.mark.parametrize("name", list(PAIR_LOSSES))
def test_pair_losses_match_pml(name, seed):
    ours_f, pml_f, dists, reds, ref_ok = PAIR_LOSSES[name]
    rnd, dist, red, use_ref, pml_objects = config(seed, dists, reds)
    x, y = batch(12, 3, seed=seed)
    r = ry = None
    if use_ref and ref_ok:
        r, ry = batch(9, 4, seed=seed + 100)
    if name == "triplet" and r is not None:
        pass  # swap with a separate reference: PML indexes its B x R matrix by the positive (a PML quirk)
    c = constants(name, rnd, DISTANCES[dist][0] != "LpDistance")
    if name == "triplet" and r is not None:
        c["swap"] = False
    idx = indices_for(rnd, x, y, r, ry)
    dk, rk = pair(dist, red, ours_gets_pml_objects=pml_objects)
    ours, theirs = ours_f(dk, c), pml_f(rk, c)
    assert_same(lambda e, *m: call(ours, e, y, idx, *(m or (None,)), ry),
                lambda e, *m: call(theirs, e, y, idx, *(m or (None,)), ry), x, *([r] if r is not None else []))


@pytest.mark.parametrize("seed", SEEDS)
def test_ntxent_per_anchor_reducer_matches_pml(seed):
    x, y = batch(12, 3, seed=seed)
    ours = ol.NTXentLoss(0.2, reducer=orr.PerAnchorReducer(orr.AvgNonZeroReducer()))
    theirs = pl.NTXentLoss(0.2, reducer=pr.PerAnchorReducer(pr.AvgNonZeroReducer()))
    assert_same(lambda e: ours(e, y), lambda e: theirs(e, y), x)
    ours_c = ol.ContrastiveLoss(reducer=orr.PerAnchorReducer())
    theirs_c = pl.ContrastiveLoss(reducer=pr.PerAnchorReducer())
    assert_same(lambda e: ours_c(e, y), lambda e: theirs_c(e, y), x)


@pytest.mark.parametrize("seed", SEEDS)
def test_class_weighted_and_do_nothing_reducers_match_pml(seed):
    x, y = batch(12, 3, seed=seed)
    w = torch.rand(3, generator=torch.Generator().manual_seed(seed), dtype=torch.float64) + 0.5
    ours = ol.TripletMarginLoss(0.3, reducer=orr.ClassWeightedReducer(w))
    theirs = pl.TripletMarginLoss(0.3, reducer=pr.ClassWeightedReducer(w))
    assert_same(lambda e: ours(e, y), lambda e: theirs(e, y), x)
    a = ol.ContrastiveLoss(reducer=orr.DoNothingReducer())(x, y)
    b = pl.ContrastiveLoss(reducer=pr.DoNothingReducer())(x, y)
    assert set(a) == set(b)
    for k in a:
        torch.testing.assert_close(a[k]["losses"], b[k]["losses"])
        assert a[k]["reduction_type"] == b[k]["reduction_type"]


@pytest.mark.parametrize("seed", SEEDS)
def test_embedding_regularizer_matches_pml(seed):
    rnd = random.Random(seed)
    x, y = batch(12, 3, seed=seed)
    p, power, weight = rnd.choice([1, 2]), rnd.choice([1, 2]), rnd.choice([1.0, 0.3])
    for ours_cls, pml_cls in [(ol.TripletMarginLoss, pl.TripletMarginLoss), (ol.NPairsLoss, pl.NPairsLoss),
                              (ol.ContrastiveLoss, pl.ContrastiveLoss), (ol.NTXentLoss, pl.NTXentLoss)]:
        reg_o = oreg.LpRegularizer(p=p, power=power) if rnd.random() < 0.5 else preg.LpRegularizer(p=p, power=power)
        ours = ours_cls(embedding_regularizer=reg_o, embedding_reg_weight=weight)
        theirs = pml_cls(embedding_regularizer=preg.LpRegularizer(p=p, power=power), embedding_reg_weight=weight)
        assert_same(lambda e: ours(e, y), lambda e: theirs(e, y), x)


# ---------------------------------------------------------------- N-pairs, proxies, histogram

@pytest.mark.parametrize("seed", SEEDS)
def test_npairs_matches_pml(seed):
    rnd, dist, red, _, pml_objects = config(seed, ["default", "cos", "lp", "dot_raw"], ["default", "sum"])
    x, y = batch(16, 5, seed=seed)
    idx = indices_for(rnd, x, y)
    dk, rk = pair(None if dist == "default" else dist, red, ours_gets_pml_objects=pml_objects)
    assert_same(lambda e: ol.NPairsLoss(**dk)(e, y, idx), lambda e: pl.NPairsLoss(**rk)(e, y, idx), x)


@pytest.mark.parametrize("seed", SEEDS)
def test_proxy_nca_matches_pml(seed):
    rnd, dist, red, _, pml_objects = config(seed, ["default", "lp", "cos", "lp_sq"], ["default", "sum"])
    x, y = batch(16, 5, seed=seed)
    idx = indices_for(rnd, x, y)
    dk, rk = pair(None if dist == "default" else dist, red, ours_gets_pml_objects=pml_objects)
    scale = rnd.choice([1.0, 5.0])
    theirs = pl.ProxyNCALoss(6, 8, softmax_scale=scale, **rk).double()
    ours = ol.ProxyNCALoss(6, 8, softmax_scale=scale, **dk).double()
    ours.proxies.data.copy_(theirs.proxies.data)
    assert_same(lambda e: ours(e, y, idx), lambda e: theirs(e, y, idx), x)
    torch.testing.assert_close(ours.get_logits(x), theirs.get_logits(x))


def test_proxy_nca_weights_by_anchor_occurrence_as_pml():
    """The issue's case: mined pairs where samples occur as positives / negatives more often than as anchors."""
    x, y = batch(16, 4, seed=3)
    idx = pm.MultiSimilarityMiner(0.5)(x, y)
    theirs = pl.ProxyNCALoss(4, 8, softmax_scale=3.0).double()
    ours = ol.ProxyNCALoss(4, 8, softmax_scale=3.0).double()
    ours.proxies.data.copy_(theirs.proxies.data)
    assert_same(lambda e: ours(e, y, idx), lambda e: theirs(e, y, idx), x, rtol=1e-10, atol=1e-12)


@pytest.mark.parametrize("seed", SEEDS)
def test_proxy_anchor_matches_pml(seed):
    rnd, dist, red, _, pml_objects = config(seed, ["default", "cos", "lp"], ["default", "mean", "sum"])
    x, y = batch(16, 5, seed=seed)
    idx = indices_for(rnd, x, y)
    dk, rk = pair(None if dist == "default" else dist, red, ours_gets_pml_objects=pml_objects)
    margin, alpha = rnd.choice([0.1, 0.3]), rnd.choice([8.0, 32.0])
    theirs = pl.ProxyAnchorLoss(7, 8, margin=margin, alpha=alpha, **rk).double()
    ours = ol.ProxyAnchorLoss(7, 8, margin=margin, alpha=alpha, **dk).double()
    ours.proxies.data.copy_(theirs.proxies.data)
    assert_same(lambda e: ours(e, y, idx), lambda e: theirs(e, y, idx), x)
    torch.testing.assert_close(ours.get_logits(x), theirs.get_logits(x))


@pytest.mark.parametrize("seed", SEEDS)
def test_histogram_matches_pml(seed):
    rnd = random.Random(seed)
    x, y = batch(24, 4, seed=seed)
    n_bins = rnd.choice([10, 20, 50])
    kw = rnd.choice([dict(n_bins=n_bins), dict(delta=2 / n_bins), dict(n_bins=n_bins, delta=2 / n_bins)])
    idx = pm.TripletMarginMiner(0.2)(x, y) if rnd.random() < 0.5 else None
    assert_same(lambda e: ol.HistogramLoss(**kw)(e, y, idx), lambda e: pl.HistogramLoss(**kw)(e, y, idx), x)


def test_histogram_inconsistent_bins_raise_like_pml():
    for kw in (dict(n_bins=1, delta=0.5), dict(n_bins=10, delta=0.4)):
        with pytest.raises(AssertionError):
            pl.HistogramLoss(**kw)
        with pytest.raises(AssertionError):
            ol.HistogramLoss(**kw)
        with pytest.raises(ValueError):
            ol.HistogramLoss(**kw)


@pytest.mark.parametrize("seed", range(4))
def test_self_supervised_wrapper_matches_pml(seed):
    rnd = random.Random(seed)
    x, _ = batch(10, 2, seed=seed)
    v, _ = batch(10, 2, seed=seed + 50)
    symmetric = rnd.random() < 0.5
    for ours_loss, pml_loss in [(ol.TripletMarginLoss(), pl.TripletMarginLoss()), (ol.NTXentLoss(), pl.NTXentLoss()),
                                (ol.ContrastiveLoss(), pl.ContrastiveLoss())]:
        ours = ol.SelfSupervisedLoss(ours_loss, symmetric=symmetric)
        theirs = pl.SelfSupervisedLoss(pml_loss, symmetric=symmetric)
        assert_same(lambda a, b: ours(a, b), lambda a, b: theirs(a, b), x, v)


# ---------------------------------------------------------------- miners

def as_set(t):
    return set(zip(*(x.tolist() for x in t)))


@pytest.mark.parametrize("seed", SEEDS)
def test_miners_match_pml(seed):
    rnd = random.Random(seed)
    x, y = batch(14, 3, seed=seed)
    r = ry = None
    if rnd.random() < 0.4:
        r, ry = batch(10, 4, seed=seed + 7)
    dist = rnd.choice(["lp", "lp_sq", "lp_raw", "cos", "dot_raw"])
    od_, pd_ = make(od, DISTANCES[dist]), make(pd, DISTANCES[dist])
    margin = rnd.choice([-0.05, 0.0, 0.1, 0.3])
    for kind in ("all", "hard", "semihard", "easy"):
        a = om.TripletMarginMiner(margin, kind, distance=od_)(x, y, r, ry)
        b = pm.TripletMarginMiner(margin, kind, distance=pd_)(x, y, r, ry)
        assert as_set(a) == as_set(b), kind
    eps = rnd.choice([0.05, 0.1, 0.3])
    a = om.MultiSimilarityMiner(eps, distance=od_)(x, y, r, ry)
    b = pm.MultiSimilarityMiner(eps, distance=pd_)(x, y, r, ry)
    assert as_set(a[:2]) == as_set(b[:2]) and as_set(a[2:]) == as_set(b[2:])
    a = om.BatchHardMiner(distance=od_)(x, y, r, ry)
    b = pm.BatchHardMiner(distance=pd_)(x, y, r, ry)
    assert as_set(a) == as_set(b)
    # our miner with PML's distance object
    assert as_set(om.BatchHardMiner(distance=pd_)(x, y, r, ry)) == as_set(b)


# ---------------------------------------------------------------- the surface itself

def test_pml_signatures_and_defaults():
    import inspect

    for name in ["TripletMarginLoss", "ContrastiveLoss", "MultiSimilarityLoss", "NTXentLoss", "LiftedStructureLoss",
                 "GeneralizedLiftedStructureLoss", "HistogramLoss", "ProxyNCALoss", "ProxyAnchorLoss"]:
        ours, theirs = inspect.signature(getattr(ol, name)), inspect.signature(getattr(pl, name))
        pml_pos = [p for p in theirs.parameters.values() if p.kind == p.POSITIONAL_OR_KEYWORD]
        ours_pos = [p for p in ours.parameters.values() if p.kind == p.POSITIONAL_OR_KEYWORD]
        assert [p.name for p in ours_pos[:len(pml_pos)]] == [p.name for p in pml_pos], name
        for p, q in zip(ours_pos, pml_pos):
            if q.default is not inspect.Parameter.empty and name != "ContrastiveLoss":
                assert p.default == q.default, (name, p.name)
    assert ol.TripletMarginLoss().margin == 0.05 and ol.TripletMarginLoss().triplets_per_anchor == "all"
    assert isinstance(ol.TripletMarginLoss().distance, od.LpDistance) and ol.TripletMarginLoss().distance.normalize_embeddings
    assert (ol.ContrastiveLoss().pos_margin, ol.ContrastiveLoss().neg_margin) == (0, 1)
    for name in ["BatchHardMiner", "MultiSimilarityMiner", "TripletMarginMiner", "DistanceWeightedMiner"]:
        ours, theirs = inspect.signature(getattr(om, name)), inspect.signature(getattr(pm, name))
        pml_pos = [p.name for p in theirs.parameters.values() if p.kind == p.POSITIONAL_OR_KEYWORD]
        assert [p for p in ours.parameters][:len(pml_pos)] == pml_pos, name
    with pytest.raises(TypeError, match="swap"):
        ol.TripletMarginLoss(0.2, "hard")  # the old positional mining is caught, not read as swap=True


def test_fused_path_is_taken_for_fused_configurations(monkeypatch):
    """The configurations the issue names run the fused triplet op, others the general path."""
    from ssml_fast import ops

    calls = []
    real = ops.triplet_margin_loss
    monkeypatch.setattr(ops, "triplet_margin_loss", lambda *a, **k: calls.append(1) or real(*a, **k))
    x, y = batch(12, 3)
    for kw in [{}, dict(distance=pd.LpDistance(power=2)), dict(distance=od.CosineSimilarity()),
               dict(reducer=pr.MeanReducer()), dict(reducer=orr.SumReducer()), dict(distance="euclidean")]:
        calls.clear()
        ol.TripletMarginLoss(0.2, **kw)(x, y)
        assert calls, kw
    for kw in [dict(swap=True), dict(smooth_loss=True), dict(margin=-0.1), dict(distance=od.LpDistance(p=1)),
               dict(reducer=orr.ThresholdReducer(low=0.1))]:
        calls.clear()
        kw = {"margin": 0.2, **kw}
        ol.TripletMarginLoss(**kw)(x, y)
        assert not calls, kw
