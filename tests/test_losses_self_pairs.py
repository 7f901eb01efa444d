"""The loss base class's self-pair exclusion (`ref_starts_with_batch=True`: rows [0, B) of ref_emb are the batch):
every loss equals the same loss given every pair of the reference but the self pairs, written out by hand;
TripletMarginLoss's fused diagonal exclusion equals its general path; a given tuple loses its self pairs."""
import pytest
import torch

from ssml_fast import losses as L


def batch_and_memory(b=6, m=5, dim=4, seed=0):
    g = torch.Generator().manual_seed(seed)
    emb = torch.randn(b, dim, generator=g, dtype=torch.float64)
    labels = torch.randint(0, 3, (b,), generator=g)
    mem = torch.randn(m, dim, generator=g, dtype=torch.float64)
    mem_labels = torch.randint(0, 3, (m,), generator=g)
    return emb, labels, torch.cat([emb, mem]), torch.cat([labels, mem_labels])


def hand_pairs(labels, ref_labels):
    """(a1, p, a2, n) by loops: positives j != i of anchor i's label, every negative."""
    pos = [(i, j) for i in range(len(labels)) for j in range(len(ref_labels)) if ref_labels[j] == labels[i] and j != i]
    neg = [(i, j) for i in range(len(labels)) for j in range(len(ref_labels)) if ref_labels[j] != labels[i]]
    t = lambda v: torch.tensor(v, dtype=torch.long)  # noqa: E731
    return t([a for a, _ in pos]), t([p for _, p in pos]), t([a for a, _ in neg]), t([n for _, n in neg])


LOSSES = {
    "contrastive": lambda: L.ContrastiveLoss(),
    "multi_similarity": lambda: L.MultiSimilarityLoss(),
    "ntxent": lambda: L.NTXentLoss(0.3),
    "triplet_general": lambda: L.TripletMarginLoss(0.2, swap=True),
    "lifted": lambda: L.GeneralizedLiftedStructureLoss(),
}


@pytest.mark.parametrize("name", sorted(LOSSES))
def test_equals_the_loss_on_hand_written_self_free_pairs(name):
    emb, labels, ref, ref_labels = batch_and_memory(seed=len(name))
    loss = LOSSES[name]()
    x, y = emb.clone().requires_grad_(True), emb.clone().requires_grad_(True)
    rx = torch.cat([x, ref[len(emb):]])
    ry = torch.cat([y, ref[len(emb):]])
    got = loss(x, labels, None, rx, ref_labels, ref_starts_with_batch=True)
    want = loss(y, labels, hand_pairs(labels, ref_labels), ry, ref_labels)
    torch.testing.assert_close(got, want, atol=1e-12, rtol=0)
    got.backward()
    want.backward()
    torch.testing.assert_close(x.grad, y.grad, atol=1e-12, rtol=0)


@pytest.mark.parametrize("distance", [None, "euclidean", "cosine"])
def test_triplet_fused_diagonal_exclusion_equals_general_path(distance):
    emb, labels, ref, ref_labels = batch_and_memory(b=8, m=7, seed=3)
    loss = L.TripletMarginLoss(0.3) if distance is None else L.TripletMarginLoss(0.3, distance=distance)
    assert loss._fused_config() is not None
    got = loss(emb, labels, None, ref, ref_labels, ref_starts_with_batch=True)
    a1, p, a2, n = hand_pairs(labels, ref_labels)
    trip = [(int(a), int(pp), int(nn)) for a, pp in zip(a1, p) for a_, nn in zip(a2, n) if int(a_) == int(a)]
    want = loss(emb, labels, tuple(torch.tensor(c) for c in zip(*trip)), ref, ref_labels)
    torch.testing.assert_close(got, want, atol=1e-12, rtol=0)


def test_given_tuple_loses_its_self_pairs():
    emb, labels, ref, ref_labels = batch_and_memory(seed=4)
    loss = L.ContrastiveLoss()
    with_self = (torch.tensor([0, 1, 1]), torch.tensor([0, 1, 7]), torch.tensor([2]), torch.tensor([3]))
    without = (torch.tensor([1]), torch.tensor([7]), torch.tensor([2]), torch.tensor([3]))
    torch.testing.assert_close(loss(emb, labels, with_self, ref, ref_labels, ref_starts_with_batch=True),
                               loss(emb, labels, without, ref, ref_labels))
    trip = (torch.tensor([0, 2]), torch.tensor([0, 9]), torch.tensor([1, 3]))
    tl = L.TripletMarginLoss(0.2)
    torch.testing.assert_close(tl(emb, labels, trip, ref, ref_labels, ref_starts_with_batch=True),
                               tl(emb, labels, tuple(t[1:] for t in trip), ref, ref_labels))


def test_errors():
    emb, labels, ref, ref_labels = batch_and_memory()
    loss = L.ContrastiveLoss()
    torch.testing.assert_close(loss(emb, labels, ref_starts_with_batch=True), loss(emb, labels))  # batch = reference
    with pytest.raises(ValueError, match="fewer than the batch"):
        loss(emb, labels, None, ref[:3], ref_labels[:3], ref_starts_with_batch=True)
    with pytest.raises(TypeError, match="must be a bool"):
        loss(emb, labels, None, ref, ref_labels, ref_starts_with_batch=1)
    with pytest.raises(ValueError, match="ref_labels"):
        loss(emb, labels, None, ref, None, ref_starts_with_batch=True)
