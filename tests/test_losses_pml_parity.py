"""Same numbers (values and gradients) as pytorch-metric-learning 2.9 for every loss and miner it also has,
with PML configured to the same distance."""
import pytest
import torch

pml_losses = pytest.importorskip("pytorch_metric_learning.losses")
from pytorch_metric_learning import distances, miners as pml_miners, reducers  # noqa: E402

from ssml_fast import losses as L  # noqa: E402
from ssml_fast import miners as M  # noqa: E402

EUCLID = lambda: distances.LpDistance(normalize_embeddings=False, p=2, power=1)  # noqa: E731
SQEUCLID = lambda: distances.LpDistance(normalize_embeddings=False, p=2, power=2)  # noqa: E731


def batch(B=48, n_classes=8, D=16, seed=0):
    g = torch.Generator().manual_seed(seed)
    return torch.randn(B, D, generator=g), torch.randint(0, n_classes, (B,), generator=g)


def per_class(n_classes, m, D=16, seed=0):
    """m samples of each class, grouped (what an MPerClassSampler batch looks like)."""
    g = torch.Generator().manual_seed(seed)
    return torch.randn(n_classes * m, D, generator=g), torch.arange(n_classes).repeat_interleave(m)


def assert_same(ours, pml, *inputs, rtol=1e-4, atol=1e-5):
    a = [t.clone().requires_grad_(True) for t in inputs]
    b = [t.clone().requires_grad_(True) for t in inputs]
    la, lb = ours(*a), pml(*b)
    torch.testing.assert_close(la.detach(), lb.detach().to(la.dtype), rtol=rtol, atol=atol)
    ga = torch.autograd.grad(la, a, allow_unused=True)
    gb = torch.autograd.grad(lb, b, allow_unused=True)
    for x, y, t in zip(ga, gb, a):
        x = torch.zeros_like(t) if x is None else x
        y = torch.zeros_like(t) if y is None else y
        torch.testing.assert_close(x, y, rtol=rtol * 10, atol=atol)


# ---------------------------------------------------------------- contrastive

@pytest.mark.parametrize("distance,pml_dist,pm,nm", [("euclidean", EUCLID, 0.5, 6.0),
                                                     ("sqeuclidean", SQEUCLID, 10.0, 40.0)])
def test_contrastive_matches_pml(distance, pml_dist, pm, nm):
    x, y = batch()
    ours = L.ContrastiveLoss(pm, nm, distance=distance)
    pml = pml_losses.ContrastiveLoss(pos_margin=pm, neg_margin=nm, distance=pml_dist())
    assert_same(lambda e: ours(e, y), lambda e: pml(e, y), x)


def test_contrastive_cosine_matches_pml_cosine_similarity():
    x, y = batch()
    pml = pml_losses.ContrastiveLoss(pos_margin=0.8, neg_margin=0.2, distance=distances.CosineSimilarity())
    assert_same(lambda e: L.ContrastiveLoss(0.8, 0.2, form="cosine")(e, y), lambda e: pml(e, y), x)
    # the same thing through the cosine distance d = 1 - s: margins 1 - 0.8 and 1 - 0.2
    assert_same(lambda e: L.ContrastiveLoss(0.2, 0.8, distance="cosine")(e, y), lambda e: pml(e, y), x)


def test_contrastive_ref_emb_and_mined_triplets_match_pml():
    x, y = batch(32, 4)
    r, ry = batch(20, 4, seed=1)
    ours = L.ContrastiveLoss(0.5, 6.0, distance="euclidean")
    pml = pml_losses.ContrastiveLoss(pos_margin=0.5, neg_margin=6.0, distance=EUCLID())
    assert_same(lambda e, m: ours(e, y, ref_emb=m, ref_labels=ry), lambda e, m: pml(e, y, ref_emb=m, ref_labels=ry),
                x, r)
    idx = pml_miners.TripletMarginMiner(margin=1.0, distance=EUCLID())(x, y)  # triplets: repeated pairs
    assert len(idx[0]) > 0
    assert_same(lambda e: ours(e, y, idx), lambda e: pml(e, y, idx), x)


# ---------------------------------------------------------------- NT-Xent, multi-similarity

@pytest.mark.parametrize("m", [2, 4])
def test_ntxent_matches_pml(m):
    x, y = per_class(12, m)
    assert_same(lambda e: L.NTXentLoss(0.1)(e, y), lambda e: pml_losses.NTXentLoss(0.1)(e, y), x)


def test_ntxent_random_labels_ref_emb_and_indices_match_pml():
    x, y = batch(40, 6)
    r, ry = batch(30, 6, seed=2)
    assert_same(lambda e, m: L.NTXentLoss(0.2)(e, y, ref_emb=m, ref_labels=ry),
                lambda e, m: pml_losses.NTXentLoss(0.2)(e, y, ref_emb=m, ref_labels=ry), x, r)
    idx = pml_miners.MultiSimilarityMiner(0.1)(x, y)
    assert_same(lambda e: L.NTXentLoss(0.2)(e, y, idx), lambda e: pml_losses.NTXentLoss(0.2)(e, y, idx), x)


def test_multi_similarity_matches_pml_with_and_without_miner():
    x, y = batch(48, 6)
    ours, pml = L.MultiSimilarityLoss(2, 40, 0.5), pml_losses.MultiSimilarityLoss(2, 40, 0.5)
    assert_same(lambda e: ours(e, y), lambda e: pml(e, y), x)
    idx = M.MultiSimilarityMiner(0.1)(x, y)
    idx_pml = pml_miners.MultiSimilarityMiner(0.1)(x, y)
    assert_same(lambda e: ours(e, y, idx), lambda e: pml(e, y, idx_pml), x)


# ---------------------------------------------------------------- lifted, n-pair

@pytest.mark.parametrize("generalized", [False, True])
def test_lifted_matches_pml(generalized):
    x, y = batch(40, 6, D=8)
    cls = pml_losses.GeneralizedLiftedStructureLoss if generalized else pml_losses.LiftedStructureLoss
    pml = cls(neg_margin=5.0, pos_margin=0.5, distance=EUCLID())
    ours = L.LiftedStructureLoss(5.0, 0.5, "euclidean", generalized=generalized)
    assert_same(lambda e: ours(e, y), lambda e: pml(e, y), x)


def test_lifted_with_mined_pairs_matches_pml():
    x, y = batch(40, 6, D=8)
    idx = pml_miners.MultiSimilarityMiner(0.5, distance=EUCLID())(x, y)
    pml = pml_losses.LiftedStructureLoss(neg_margin=5.0, pos_margin=0.5, distance=EUCLID())
    assert_same(lambda e: L.LiftedStructureLoss(5.0, 0.5, "euclidean")(e, y, idx), lambda e: pml(e, y, idx), x)


@pytest.mark.parametrize("similarity", ["cosine", "dot"])
def test_npair_matches_pml(similarity):
    x, y = batch(40, 8)
    pml = pml_losses.NPairsLoss(distance=distances.DotProductSimilarity(normalize_embeddings=similarity == "cosine"))
    assert_same(lambda e: L.NPairLoss(similarity=similarity)(e, y), lambda e: pml(e, y), x)
    idx = pml_miners.BatchHardMiner(distance=EUCLID())(x, y)
    assert_same(lambda e: L.NPairLoss(similarity=similarity)(e, y, idx), lambda e: pml(e, y, idx), x)


# ---------------------------------------------------------------- proxies

def test_proxy_nca_matches_pml():
    x, y = batch(40, 10, D=16)
    pml = pml_losses.ProxyNCALoss(num_classes=10, embedding_size=16, softmax_scale=5.0)
    ours = L.ProxyNCALoss(10, 16, softmax_scale=5.0)
    ours.proxies.data.copy_(pml.proxies.data)
    a, b = x.clone().requires_grad_(True), x.clone().requires_grad_(True)
    la, lb = ours(a, y), pml(b, y)
    la.backward()
    lb.backward()
    torch.testing.assert_close(la, lb, rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(a.grad, b.grad, rtol=1e-4, atol=1e-6)
    torch.testing.assert_close(ours.proxies.grad, pml.proxies.grad, rtol=1e-4, atol=1e-6)


@pytest.mark.parametrize("use_miner", [False, True])
def test_proxy_anchor_matches_pml(use_miner):
    x, y = batch(40, 12, D=16)  # some classes absent from the batch
    pml = pml_losses.ProxyAnchorLoss(num_classes=12, embedding_size=16, margin=0.1, alpha=32)
    ours = L.ProxyAnchorLoss(12, 16, margin=0.1, alpha=32)
    ours.proxies.data.copy_(pml.proxies.data)
    idx = pml_miners.BatchHardMiner(distance=EUCLID())(x, y) if use_miner else None
    a, b = x.clone().requires_grad_(True), x.clone().requires_grad_(True)
    la, lb = ours(a, y, idx), pml(b, y, idx)
    la.backward()
    lb.backward()
    torch.testing.assert_close(la, lb, rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(a.grad, b.grad, rtol=1e-4, atol=1e-6)
    torch.testing.assert_close(ours.proxies.grad, pml.proxies.grad, rtol=1e-4, atol=1e-6)


# ---------------------------------------------------------------- smooth-AP, histogram

def test_smooth_ap_matches_pml_with_include_query():
    # PML 2.9 reshapes the batch as (B // n_classes, n_classes, D), i.e. it takes runs of n_classes
    # consecutive samples as a class: only right when n_classes == samples per class, hence 5 x 5.
    x, y = per_class(5, 5)
    assert_same(lambda e: L.SmoothAPLoss(0.05, include_query=True)(e, y),
                lambda e: pml_losses.SmoothAPLoss(temperature=0.05)(e, y), x)


@pytest.mark.filterwarnings("ignore:Using a non-tuple sequence")  # inside PML's HistogramLoss
@pytest.mark.parametrize("n_bins", [10, 100])
def test_histogram_matches_pml(n_bins):
    x, y = batch(40, 5)
    assert_same(lambda e: L.HistogramLoss(n_bins)(e, y), lambda e: pml_losses.HistogramLoss(n_bins=n_bins)(e, y), x)


# ---------------------------------------------------------------- miners (+ the triplet loss fed by them)

@pytest.mark.parametrize("distance,pml_dist", [("euclidean", EUCLID), ("cosine", distances.CosineSimilarity)])
def test_batch_hard_miner_matches_pml(distance, pml_dist):
    x, y = batch(48, 6)
    ours = M.BatchHardMiner(distance)(x, y)
    pml = pml_miners.BatchHardMiner(distance=pml_dist())(x, y)
    for a, b in zip(ours, pml):
        assert torch.equal(a, b)


def test_batch_hard_miner_ref_emb_matches_pml():
    x, y = batch(20, 4)
    r, ry = batch(30, 4, seed=5)
    ours = M.BatchHardMiner("euclidean")(x, y, r, ry)
    pml = pml_miners.BatchHardMiner(distance=EUCLID())(x, y, r, ry)
    for a, b in zip(ours, pml):
        assert torch.equal(a, b)


def test_triplet_loss_with_batch_hard_miner_matches_pml():
    x, y = batch(48, 6)
    pml_loss = pml_losses.TripletMarginLoss(margin=0.5, distance=EUCLID(), reducer=reducers.AvgNonZeroReducer())
    pml_miner = pml_miners.BatchHardMiner(distance=EUCLID())
    ours_loss, ours_miner = L.TripletMarginLoss(0.5, distance="euclidean"), M.BatchHardMiner("euclidean")
    assert_same(lambda e: ours_loss(e, y, ours_miner(e, y)), lambda e: pml_loss(e, y, pml_miner(e, y)), x)


@pytest.mark.parametrize("distance,pml_dist,margin", [("euclidean", EUCLID, 0.5),
                                                      ("cosine", distances.CosineSimilarity, 0.1)])
def test_semi_hard_miner_matches_pml_triplet_margin_miner(distance, pml_dist, margin):
    x, y = batch(40, 5)
    ours = M.SemiHardMiner(margin, distance)(x, y)
    pml = pml_miners.TripletMarginMiner(margin=margin, type_of_triplets="semihard", distance=pml_dist())(x, y)
    assert len(ours[0]) > 0
    for a, b in zip(ours, pml):
        assert torch.equal(a, b)
    pml_loss = pml_losses.TripletMarginLoss(margin=margin, distance=pml_dist(), reducer=reducers.AvgNonZeroReducer())
    assert_same(lambda e: L.TripletMarginLoss(margin, distance=distance)(e, y, ours),
                lambda e: pml_loss(e, y, pml), x)


@pytest.mark.parametrize("with_ref", [False, True])
def test_multi_similarity_miner_matches_pml_as_sets(with_ref):
    x, y = batch(40, 5)
    r, ry = (batch(25, 5, seed=9) if with_ref else (None, None))
    ours = M.MultiSimilarityMiner(0.1)(x, y, r, ry)
    pml = pml_miners.MultiSimilarityMiner(0.1)(x, y, r, ry)
    for (a, b), (c, d) in [((ours[0], ours[1]), (pml[0], pml[1])), ((ours[2], ours[3]), (pml[2], pml[3]))]:
        assert sorted(zip(a.tolist(), b.tolist())) == sorted(zip(c.tolist(), d.tolist()))


def test_distance_weighted_miner_negatives_follow_pml_distribution():
    """Sampling differs (PML draws random positives; we enumerate them), so compare the per-anchor
    negative distributions: the empirical frequencies of both over many draws are close."""
    x, y = batch(16, 4, D=4, seed=3)
    torch.manual_seed(0)
    ours_m = M.DistanceWeightedMiner(cutoff=0.5, nonzero_loss_cutoff=1.4)
    pml_m = pml_miners.DistanceWeightedMiner(cutoff=0.5, nonzero_loss_cutoff=1.4)
    counts_ours = torch.zeros(16, 16)
    counts_pml = torch.zeros(16, 16)
    for _ in range(300):
        a, p, n = ours_m(x, y)
        counts_ours.index_put_((a, n), torch.ones(len(a)), accumulate=True)
        a, p, n = pml_m(x, y)
        counts_pml.index_put_((a, n), torch.ones(len(a)), accumulate=True)
    f_ours = counts_ours / counts_ours.sum(1, keepdim=True).clamp_min(1)
    f_pml = counts_pml / counts_pml.sum(1, keepdim=True).clamp_min(1)
    assert (f_ours - f_pml).abs().max() < 0.06
    # and both match the exact distribution of the miner's weights
    w = ours_m.weights(x, y)
    assert (f_ours - w).abs().max() < 0.05
