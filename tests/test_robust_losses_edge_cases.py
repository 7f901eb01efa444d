"""Issue 16, losses / miners / memory: empty batches, degenerate batches and validation gaps, swept over
every exported loss and miner (see test_robust_losses_cases for the registry)."""
from __future__ import annotations

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from ssml_fast import losses as L
from ssml_fast import miners as M
from ssml_fast.evaluation.revisitop import revisitop_map
from ssml_fast.memory import CrossBatchMemory
from tests.test_robust_losses_cases import (C, D, LOSS_CASES, MINER_CASES, PML_LOSS_CASES, by_id,
                                            labelled_batch)

EMPTY_LONG = torch.zeros(0, dtype=torch.long)


def assert_zero_with_zero_grads(out, *inputs):
    assert out.dim() == 0 and torch.isfinite(out) and float(out.detach()) == 0.0
    out.backward()
    for t in inputs:
        assert t.grad is not None, "the zero must be connected to every input"
        assert t.grad.shape == t.shape and torch.count_nonzero(t.grad) == 0


# ---------------------------------------------------------------- empty batches

def _empty_batch_params():
    known = {}  # loss id -> reason, for a known gap marked xfail
    return [pytest.param(c, id=c.id, marks=[pytest.mark.xfail(strict=False, reason=known[c.id])] if c.id in known
                         else []) for c in LOSS_CASES]


@pytest.mark.parametrize("case", _empty_batch_params())
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_empty_batch_is_a_connected_zero(case, dtype):
    loss = case.make().to(dtype)
    x = torch.zeros(0, D, dtype=dtype, requires_grad=True)
    out = case.call(loss, x, EMPTY_LONG)
    assert out.dtype == dtype
    assert_zero_with_zero_grads(out, x, *loss.parameters())


@by_id(PML_LOSS_CASES)
def test_empty_batch_with_empty_indices_tuple(case):
    x = torch.zeros(0, D, requires_grad=True)
    for arity in (3, 4):
        assert_zero_with_zero_grads(case.make()(x, EMPTY_LONG, (EMPTY_LONG,) * arity), x)
        x.grad = None


@by_id(PML_LOSS_CASES)
def test_empty_reference_is_a_connected_zero_or_rejected(case):
    x, y = labelled_batch(6)
    x.requires_grad_(True)
    ref = torch.zeros(0, D, requires_grad=True)
    loss = case.make()
    if not case.supports_ref_emb(loss):
        # the same clear error as for a non-empty reference, not a silent zero
        with pytest.raises(ValueError, match="ref_emb"):
            loss(x, y, None, ref, EMPTY_LONG)
        with pytest.raises(ValueError, match="ref_emb"):
            loss(x, y, None, torch.randn(3, D), torch.tensor([0, 1, 2]))
        return
    assert_zero_with_zero_grads(loss(x, y, None, ref, EMPTY_LONG), x, ref)
    # both empty
    x0 = torch.zeros(0, D, requires_grad=True)
    assert_zero_with_zero_grads(case.make()(x0, EMPTY_LONG, None, ref.detach(), EMPTY_LONG), x0)


def test_triplet_counts_are_reset_on_an_empty_batch():
    loss = L.TripletMarginLoss()
    x, y = labelled_batch(6)
    loss(x, y)
    assert int(loss.num_triplets) > 0
    loss(torch.zeros(0, D), EMPTY_LONG)
    assert int(loss.num_triplets) == 0 and int(loss.num_active) == 0


@by_id(MINER_CASES)
def test_empty_batch_or_reference_gives_empty_index_tuples(case):
    miner = case.make()
    x, y = labelled_batch(6)
    for args in [(torch.zeros(0, D), EMPTY_LONG), (x, y, torch.zeros(0, D), EMPTY_LONG),
                 (torch.zeros(0, D), EMPTY_LONG, x, y)]:
        out = miner(*args)
        assert isinstance(out, tuple) and len(out) == miner.tuple_size
        for t in out:
            assert t.dtype == torch.long and t.shape == (0,) and t.device == x.device
    # what the miner returns is a valid indices_tuple for the losses
    out = miner(torch.zeros(0, D), EMPTY_LONG)
    xe = torch.zeros(0, D, requires_grad=True)
    assert_zero_with_zero_grads(L.ContrastiveLoss()(xe, EMPTY_LONG, out), xe)


def test_empty_batch_in_cross_batch_memory():
    for loss in (L.TripletMarginLoss(), L.NTXentLoss(), L.MultiSimilarityLoss(), L.SmoothAPLoss()):
        xbm = CrossBatchMemory(loss, memory_size=16)
        x, y = labelled_batch(6)
        xbm(x, y)
        x0 = torch.zeros(0, D, requires_grad=True)
        out = xbm(x0, EMPTY_LONG)
        assert torch.isfinite(out) and float(out.detach()) == 0.0
        out.backward()
        assert x0.grad is not None


# ---------------------------------------------------------------- degenerate batches

def _degenerate(kind, dtype):
    x, _ = labelled_batch(8, dtype=dtype)
    return {
        "single": (x[:1], torch.zeros(1, dtype=torch.long)),
        "one_class": (x, torch.zeros(8, dtype=torch.long)),
        "all_distinct": (x, torch.arange(8) % C),  # 8 > C for the proxy losses: first 4 distinct, then repeats
        "distinct_only": (x[:C], torch.arange(C)),
        "collapsed": (x[:1].repeat(8, 1), torch.arange(8) % 2),  # every embedding identical
        "collapsed_one_class": (x[:1].repeat(8, 1), torch.zeros(8, dtype=torch.long)),
        "two": (x[:2], torch.tensor([0, 1])),
        "pair": (x[:2], torch.tensor([1, 1])),
    }[kind]


DEGENERATE = ["single", "one_class", "all_distinct", "distinct_only", "collapsed", "collapsed_one_class", "two", "pair"]


@by_id(LOSS_CASES)
@pytest.mark.parametrize("kind", DEGENERATE)
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_degenerate_batches_are_finite(case, kind, dtype):
    x, y = _degenerate(kind, dtype)
    x = x.clone().requires_grad_(True)
    loss = case.make().to(dtype)
    out = case.call(loss, x, y)
    assert out.dim() == 0 and torch.isfinite(out), f"{case.id} on {kind}: {out}"
    out.backward()
    assert torch.isfinite(x.grad).all(), f"{case.id} on {kind}: non-finite gradient"
    for p in loss.parameters():
        assert p.grad is None or torch.isfinite(p.grad).all()


@by_id(PML_LOSS_CASES)
@pytest.mark.parametrize("kind", ["collapsed", "one_class"])
def test_degenerate_reference_sets_are_finite(case, kind):
    loss = case.make()
    if not case.supports_ref_emb(loss):
        return
    x, y = _degenerate(kind, torch.float32)
    x = x.clone().requires_grad_(True)
    ref = x.detach()[:1].repeat(5, 1) if kind == "collapsed" else torch.randn(5, D)
    out = loss(x, y, None, ref, torch.tensor([0, 1, 0, 1, 0]))
    assert torch.isfinite(out)
    out.backward()
    assert torch.isfinite(x.grad).all()


@by_id(MINER_CASES)
@pytest.mark.parametrize("kind", DEGENERATE)
def test_miners_on_degenerate_batches_give_valid_tuples(case, kind):
    x, y = _degenerate(kind, torch.float32)
    out = case.make()(x, y)
    assert len(out) in (3, 4)
    for t in out:
        assert t.dtype == torch.long and t.dim() == 1
        assert t.numel() == 0 or (0 <= int(t.min()) and int(t.max()) < x.shape[0])
    xg = x.clone().requires_grad_(True)
    value = (L.TripletMarginLoss() if len(out) == 3 else L.MultiSimilarityLoss())(xg, y, out)
    assert torch.isfinite(value)
    value.backward()
    assert torch.isfinite(xg.grad).all()


# ---------------------------------------------------------------- indices_tuple validation (every loss)

BAD_TUPLES = {
    "negative": (torch.tensor([0, 1]), torch.tensor([-1, 3]), torch.tensor([2, 4])),
    "float": (torch.tensor([0.0, 1.0]), torch.tensor([1.0, 0.0]), torch.tensor([2.0, 3.0])),
    "float_positive": (torch.tensor([0, 1]), torch.tensor([1.5, 0.0]), torch.tensor([2, 3])),
    "bool": (torch.tensor([True, False]), torch.tensor([1, 0]), torch.tensor([2, 3])),
    "too_large": (torch.tensor([0, 1]), torch.tensor([1, 0]), torch.tensor([2, 6])),
    "anchor_too_large": (torch.tensor([6, 1]), torch.tensor([1, 0]), torch.tensor([2, 3])),
    "lengths": (torch.tensor([0, 1]), torch.tensor([1]), torch.tensor([2, 3])),
    "two_d": (torch.tensor([[0, 1]]), torch.tensor([[1, 0]]), torch.tensor([[2, 3]])),
    "pairs_negative": (torch.tensor([0]), torch.tensor([1]), torch.tensor([-2]), torch.tensor([3])),
    "arity": (torch.tensor([0]), torch.tensor([1])),
}


@by_id(PML_LOSS_CASES)
@pytest.mark.parametrize("bad", sorted(BAD_TUPLES))
def test_bad_indices_tuple_is_rejected_naming_it(case, bad):
    x, y = labelled_batch(6)
    with pytest.raises(ValueError, match="indices_tuple"):
        case.make()(x, y, BAD_TUPLES[bad])


def test_triplet_negative_index_no_longer_wraps():
    """The issue's probe: a -1 positive used to pick row 5 silently."""
    x, y = labelled_batch(6)
    loss = L.TripletMarginLoss()
    with pytest.raises(ValueError, match=r"indices_tuple\[1\].*outside \[0, 6\)"):
        loss(x, y, (torch.tensor([0]), torch.tensor([-1]), torch.tensor([1])))
    with pytest.raises(ValueError, match=r"indices_tuple\[0\].*integer"):
        loss(x, y, (torch.tensor([0.7]), torch.tensor([3]), torch.tensor([1])))


def test_indices_tuple_positives_are_checked_against_the_reference():
    """With ref_emb, positives / negatives index the R reference rows and anchors the B batch rows."""
    x, y = labelled_batch(4)
    ref, ry = labelled_batch(10, seed=1)
    ok = (torch.tensor([0, 1]), torch.tensor([9, 3]), torch.tensor([2, 8]))
    for case in PML_LOSS_CASES:
        loss = case.make()
        if not case.supports_ref_emb(loss):
            continue
        assert torch.isfinite(loss(x, y, ok, ref, ry)), case.id
        with pytest.raises(ValueError, match=r"indices_tuple\[0\]"):
            loss(x, y, (torch.tensor([5]), torch.tensor([1]), torch.tensor([2])), ref, ry)
        with pytest.raises(ValueError, match=r"indices_tuple\[2\]"):
            loss(x, y, (torch.tensor([0]), torch.tensor([1]), torch.tensor([10])), ref, ry)


# ---------------------------------------------------------------- SmoothAP with ref_emb / CrossBatchMemory

def plain_smooth_ap(x, labels, ref, ref_labels, temperature, skip_self):
    """Loop reference of 1 - smoothed AP with an explicit reference set; skip_self drops reference row q
    for query q (the batch is the first block of the reference, as in CrossBatchMemory)."""
    s = F.normalize(x, dim=1) @ F.normalize(ref, dim=1).T
    terms = []
    for q in range(x.shape[0]):
        cols = [j for j in range(ref.shape[0]) if not (skip_self and j == q)]
        P = [j for j in cols if ref_labels[j] == labels[q]]
        if not P:
            continue
        ap = 0
        for i in P:
            g = lambda j: torch.sigmoid((s[q, j] - s[q, i]) / temperature)  # noqa: E731
            rank_pos = 1 + sum(g(j) for j in P if j != i)
            rank_all = 1 + sum(g(j) for j in cols if j != i)
            ap = ap + rank_pos / rank_all
        terms.append(1 - ap / len(P))
    return torch.stack(terms).mean() if terms else x.sum() * 0


def test_smooth_ap_accepts_a_valid_indices_tuple_with_ref_emb():
    x, y = labelled_batch(5, dtype=torch.float64)
    ref, ry = labelled_batch(9, dtype=torch.float64, seed=2)
    pos = (y[:, None] == ry[None, :])
    a1, p = pos.nonzero(as_tuple=True)
    a2, n = (~pos).nonzero(as_tuple=True)
    assert int(p.max()) >= 5  # positives beyond B: what used to be rejected
    got = L.SmoothAPLoss(0.1)(x, y, (a1, p, a2, n), ref, ry)
    torch.testing.assert_close(got, plain_smooth_ap(x, y, ref, ry, 0.1, skip_self=False))
    torch.testing.assert_close(got, L.SmoothAPLoss(0.1)(x, y, None, ref, ry))


def test_smooth_ap_inside_cross_batch_memory_matches_the_plain_formula():
    torch.manual_seed(0)
    xbm = CrossBatchMemory(L.SmoothAPLoss(0.1), memory_size=20, reference_grad=True)  # the plain formula differentiates the batch rows of the reference too
    memory_x, memory_y = [], []
    for step in range(3):
        x, y = labelled_batch(6, dtype=torch.float64, seed=step)
        x.requires_grad_(True)
        ref = torch.cat([x.detach()] + memory_x)
        ry = torch.cat([y] + memory_y)
        expected_x = x.detach().clone().requires_grad_(True)
        expected = plain_smooth_ap(expected_x, y, torch.cat([expected_x] + memory_x), ry, 0.1, skip_self=True)
        got = xbm(x, y)
        torch.testing.assert_close(got, expected)
        got.backward()
        expected.backward()
        torch.testing.assert_close(x.grad, expected_x.grad)
        memory_x.append(x.detach())  # the queue is read in storage order: oldest first until it wraps
        memory_y.append(y)
        assert ref.shape[0] == 6 * (step + 1)


@by_id([c for c in PML_LOSS_CASES if c.id not in ("HistogramLoss",)])
@pytest.mark.parametrize("with_miner", [False, True])
def test_every_ref_emb_loss_runs_inside_cross_batch_memory(case, with_miner):
    loss = case.make()
    if not case.supports_ref_emb(loss):
        return
    triplets_only = isinstance(loss, L.TripletMarginLoss)
    miner = (M.BatchHardMiner() if triplets_only else M.MultiSimilarityMiner()) if with_miner else None
    xbm = CrossBatchMemory(loss, memory_size=16, miner=miner)
    for step in range(3):
        x, y = labelled_batch(6, seed=step)
        x.requires_grad_(True)
        out = xbm(x, y, ids=torch.arange(6) + 6 * step)
        assert torch.isfinite(out), (case.id, step)
        out.backward()
        assert torch.isfinite(x.grad).all()


# ---------------------------------------------------------------- revisitop kappas

def test_revisitop_rejects_non_integer_kappas():
    ranks = np.array([[0, 1, 2, 3]])
    gnd = [{"easy": [1], "hard": [2], "junk": []}]
    with pytest.raises(TypeError, match="kappas"):
        revisitop_map(ranks, gnd, kappas=(2.7,))
    with pytest.raises(TypeError, match="kappas"):
        revisitop_map(ranks, gnd, kappas=(3.0,))
    with pytest.raises(TypeError, match="kappas"):
        revisitop_map(ranks, gnd, kappas=(True,))
    with pytest.raises(TypeError, match="kappas"):
        revisitop_map(ranks, gnd, kappas=5)
    with pytest.raises(TypeError, match="kappas"):
        revisitop_map(ranks, gnd, kappas="5")
    with pytest.raises(ValueError, match="kappas"):
        revisitop_map(ranks, gnd, kappas=(0,))
    a = revisitop_map(ranks, gnd, kappas=(np.int64(2), 3))
    b = revisitop_map(ranks, gnd, kappas=[2, 3])
    assert a == b and set(a) >= {"easy_mP@2", "medium_mP@3"}
    assert revisitop_map(ranks, gnd, kappas=np.array([1, 2])) == revisitop_map(ranks, gnd, kappas=(1, 2))
