"""Miners against plain loops over anchors / pairs, degenerate batches, bad input, hypothesis sweeps."""
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from ssml_fast import losses as L
from ssml_fast import miners as M
from reference import losses as ref


def batch(B, n_classes, D=4, seed=0, dtype=torch.float64):
    g = torch.Generator().manual_seed(seed)
    return torch.randn(B, D, generator=g, dtype=dtype), torch.randint(0, n_classes, (B,), generator=g)


def plain_batch_hard(x, y, distance, r=None, ry=None):
    d = ref.dist(x, x if r is None else r, distance)
    ref_y = y if ry is None else ry
    out = []
    for a in range(len(y)):
        pos = [j for j in range(len(ref_y)) if ref_y[j] == y[a] and not (r is None and j == a)]
        neg = [j for j in range(len(ref_y)) if ref_y[j] != y[a]]
        if pos and neg:
            out.append((a, min(pos, key=lambda j: (-d[a, j].item(), j)), min(neg, key=lambda j: (d[a, j].item(), j))))
    return out


def plain_semihard(x, y, margin, distance, nearest):
    d = ref.dist(x, x, distance)
    out = []
    for a in range(len(y)):
        for p in range(len(y)):
            if p == a or y[p] != y[a]:
                continue
            ns = [n for n in range(len(y)) if y[n] != y[a] and d[a, p] < d[a, n] <= d[a, p] + margin]
            if nearest:
                ns = [min(ns, key=lambda n: (d[a, n].item(), n))] if ns else []
            out += [(a, p, n) for n in ns]
    return out


def plain_multi_similarity(x, y, eps):
    s = ref.cos(x)
    pos, neg = ref.pairs_from_labels(y)
    P, N = [], []
    for a in range(len(y)):
        sp = [s[a, j] for (i, j) in pos if i == a]
        sn = [s[a, j] for (i, j) in neg if i == a]
        P += [(a, j) for (i, j) in pos if i == a and sn and s[a, j] - eps < max(sn)]
        N += [(a, j) for (i, j) in neg if i == a and sp and s[a, j] + eps > min(sp)]
    return P, N


def triplets(t):
    return list(zip(*(v.tolist() for v in t)))


@pytest.mark.parametrize("distance", ["euclidean", "sqeuclidean", "cosine"])
def test_batch_hard_matches_loops(distance):
    x, y = batch(20, 4)
    assert triplets(M.BatchHardMiner(distance)(x, y)) == plain_batch_hard(x, y, distance)
    r, ry = batch(13, 4, seed=1)
    assert triplets(M.BatchHardMiner(distance)(x, y, r, ry)) == plain_batch_hard(x, y, distance, r, ry)


def test_batch_hard_ties_go_to_the_lowest_index():
    x = torch.tensor([[0.0], [1.0], [1.0], [-1.0], [-1.0]])  # p 1/2 tie, n 3/4 tie for anchor 0
    y = torch.tensor([0, 0, 0, 1, 1])
    a, p, n = M.BatchHardMiner()(x, y)
    assert (int(a[0]), int(p[0]), int(n[0])) == (0, 1, 3)


@pytest.mark.parametrize("nearest", [False, True])
@pytest.mark.parametrize("distance", ["euclidean", "cosine"])
def test_semihard_matches_loops(nearest, distance):
    x, y = batch(18, 3)
    margin = 0.6 if distance == "euclidean" else 0.15
    got = M.SemiHardMiner(margin, distance, mode="nearest" if nearest else "all")(x, y)
    assert triplets(got) == plain_semihard(x, y, margin, distance, nearest)


def test_multi_similarity_miner_matches_loops():
    x, y = batch(20, 4)
    a1, p, a2, n = M.MultiSimilarityMiner(0.1)(x, y)
    P, N = plain_multi_similarity(x, y, 0.1)
    assert list(zip(a1.tolist(), p.tolist())) == P
    assert list(zip(a2.tolist(), n.tolist())) == N


def test_distance_weighted_weights_match_formula_and_samples_are_valid():
    x, y = batch(16, 4, D=5, seed=2)
    miner = M.DistanceWeightedMiner(cutoff=0.5, nonzero_loss_cutoff=1.4, generator=torch.Generator().manual_seed(0))
    w = miner.weights(x, y)
    probs = ref.distance_weighted_probs(x, y, 0.5, 1.4)
    for a in range(16):
        for n in range(16):
            assert float(w[a, n]) == pytest.approx(probs[a].get(n, 0.0), rel=1e-9, abs=1e-12)
    a, p, n = miner(x, y)
    assert len(a) > 0
    assert (y[a] == y[p]).all() and (a != p).all() and (y[a] != y[n]).all()
    assert (w[a, n] > 0).all()
    # every positive pair of an anchor with a non-zero weight row appears exactly once
    expected = sorted((i, j) for i in range(16) for j in range(16)
                      if i != j and y[i] == y[j] and probs[i])
    assert sorted(zip(a.tolist(), p.tolist())) == expected


def test_distance_weighted_is_reproducible_with_a_generator():
    x, y = batch(24, 4, D=8)
    t1 = M.DistanceWeightedMiner(generator=torch.Generator().manual_seed(5))(x, y)
    t2 = M.DistanceWeightedMiner(generator=torch.Generator().manual_seed(5))(x, y)
    for u, v in zip(t1, t2):
        assert torch.equal(u, v)


@pytest.mark.parametrize("miner", [M.BatchHardMiner(), M.SemiHardMiner(), M.SemiHardMiner(mode="nearest"),
                                   M.MultiSimilarityMiner(), M.DistanceWeightedMiner()])
@pytest.mark.parametrize("labels", [[0, 0, 0, 0], [0, 1, 2, 3], [0]])
def test_degenerate_batches_give_empty_or_valid_tuples(miner, labels):
    y = torch.tensor(labels)
    x, _ = batch(len(labels), 1)
    out = miner(x, y)
    assert len(out) in (3, 4) and all(t.dtype == torch.long for t in out)
    if len(out) == 3:
        assert len(out[0]) == 0
    # and a loss fed with it stays finite
    e = x.clone().requires_grad_(True)
    val = L.ContrastiveLoss()(e, y, out)
    assert torch.isfinite(val)


def test_miners_bad_input():
    x, y = batch(6, 2)
    with pytest.raises(ValueError, match="embeddings"):
        M.BatchHardMiner()(x[0], y)
    with pytest.raises(ValueError, match="labels"):
        M.MultiSimilarityMiner()(x, y[:2])
    with pytest.raises(ValueError, match="ref_labels"):
        M.BatchHardMiner()(x, y, ref_emb=x[:3])
    with pytest.raises(ValueError, match="distance"):
        M.BatchHardMiner("manhattan")
    with pytest.raises(ValueError, match="mode"):
        M.SemiHardMiner(mode="hardest")
    with pytest.raises(ValueError, match="margin"):
        M.SemiHardMiner(margin=-1.0)


def test_miner_output_has_no_gradient_and_feeds_losses():
    x, y = batch(16, 4)
    e = x.clone().requires_grad_(True)
    idx = M.MultiSimilarityMiner()(e, y)
    assert not any(t.requires_grad for t in idx)
    for loss in (L.ContrastiveLoss(), L.NTXentLoss(), L.MultiSimilarityLoss(), L.LiftedStructureLoss(),
                 L.InsCLRContrastiveLoss()):
        (g,) = torch.autograd.grad(loss(e, y, idx), e)
        assert torch.isfinite(g).all()


@settings(max_examples=30, deadline=None)
@given(labels=st.integers(1, 16).flatmap(lambda B: st.lists(st.integers(0, 3), min_size=B, max_size=B)),
       seed=st.integers(0, 10_000), margin=st.floats(0.0, 2.0))
def test_hypothesis_miners_match_loops(labels, seed, margin):
    y = torch.tensor(labels)
    x, _ = batch(len(labels), 1, seed=seed)
    assert triplets(M.BatchHardMiner("euclidean")(x, y)) == plain_batch_hard(x, y, "euclidean")
    assert triplets(M.SemiHardMiner(margin, "euclidean")(x, y)) == plain_semihard(x, y, margin, "euclidean", False)
    assert triplets(M.SemiHardMiner(margin, "euclidean", mode="nearest")(x, y)) == \
        plain_semihard(x, y, margin, "euclidean", True)
    a1, p, a2, n = M.MultiSimilarityMiner(0.1)(x, y)
    P, N = plain_multi_similarity(x, y, 0.1)
    assert list(zip(a1.tolist(), p.tolist())) == P and list(zip(a2.tolist(), n.tolist())) == N
