"""Same numbers as pytorch-metric-learning 2.9 where it has the same configuration."""
import pytest
import torch

pml_losses = pytest.importorskip("pytorch_metric_learning.losses")
from pytorch_metric_learning import distances, miners, reducers  # noqa: E402

from ssml_fast import ops  # noqa: E402

PML_DISTANCE = {
    "euclidean": lambda: distances.LpDistance(normalize_embeddings=False, p=2, power=1),
    "sqeuclidean": lambda: distances.LpDistance(normalize_embeddings=False, p=2, power=2),
    "cosine": lambda: distances.CosineSimilarity(),  # similarity: s_an - s_ap == d_ap - d_an
}


def batch(B, n_classes, D=16, seed=0):
    g = torch.Generator().manual_seed(seed)
    return torch.randn(B, D, generator=g), torch.randint(0, n_classes, (B,), generator=g)


def pml_loss(distance, margin, miner=None, smooth=False):
    loss = pml_losses.TripletMarginLoss(margin=margin, distance=PML_DISTANCE[distance](),
                                        reducer=reducers.AvgNonZeroReducer(), smooth_loss=smooth)

    def run(emb, labels, ref_emb=None, ref_labels=None):
        idx = miner(emb, labels, ref_emb, ref_labels) if miner else None
        return loss(emb, labels, idx, ref_emb, ref_labels)

    return run


def assert_same(ours_fn, pml_fn, emb):
    a = emb.clone().requires_grad_(True)
    b = emb.clone().requires_grad_(True)
    la, lb = ours_fn(a), pml_fn(b)
    la.backward()
    lb.backward()
    torch.testing.assert_close(la, lb, rtol=1e-4, atol=1e-5)
    torch.testing.assert_close(a.grad, b.grad, rtol=1e-3, atol=1e-5)


@pytest.mark.parametrize("distance", ["euclidean", "sqeuclidean", "cosine"])
@pytest.mark.parametrize("B,n_classes", [(64, 16), (100, 3)])
def test_batch_all_matches_pml(distance, B, n_classes):
    emb, labels = batch(B, n_classes)
    margin = 0.1 if distance == "cosine" else 0.5
    assert_same(lambda e: ops.triplet_margin_loss(e, labels, margin, "all", distance),
                lambda e: pml_loss(distance, margin)(e, labels), emb)


@pytest.mark.parametrize("distance", ["euclidean", "cosine"])
def test_batch_hard_matches_pml_batch_hard_miner(distance):
    emb, labels = batch(96, 12, seed=1)
    margin = 0.2
    miner = miners.BatchHardMiner(distance=PML_DISTANCE[distance]())
    assert_same(lambda e: ops.triplet_margin_loss(e, labels, margin, "hard", distance),
                lambda e: pml_loss(distance, margin, miner)(e, labels), emb)


def test_batch_hard_soft_matches_pml_smooth_loss():
    emb, labels = batch(64, 8, seed=2)
    miner = miners.BatchHardMiner(distance=PML_DISTANCE["euclidean"]())
    assert_same(lambda e: ops.triplet_margin_loss(e, labels, 0.1, "hard", soft=True),
                lambda e: pml_loss("euclidean", 0.1, miner, smooth=True)(e, labels), emb)


def test_cross_batch_reference_matches_pml():
    emb, labels = batch(32, 5, seed=3)
    ref, ref_labels = batch(80, 5, seed=4)
    assert_same(lambda e: ops.triplet_margin_loss(e, labels, 0.5, ref_emb=ref, ref_labels=ref_labels),
                lambda e: pml_loss("euclidean", 0.5)(e, labels, ref, ref_labels), emb)


def test_module_matches_pml():
    from ssml_fast.distances import LpDistance
    from ssml_fast.losses import TripletMarginLoss

    emb, labels = batch(48, 6, seed=5)
    # The module's default distance is PML's (L2-normalised embeddings); pml_loss uses raw euclidean.
    assert_same(lambda e: TripletMarginLoss(margin=0.3, distance=LpDistance(normalize_embeddings=False))(e, labels),
                lambda e: pml_loss("euclidean", 0.3)(e, labels), emb)
