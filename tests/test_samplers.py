"""Sampler properties: P x K batches, valid indices, coverage, determinism, neighbour correctness."""
from collections import Counter

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from torch.utils.data import DataLoader, TensorDataset

from ssml_fast.samplers import CandidatePoolSampler, MPerClassSampler, NearestNeighborBatchSampler


def labels_from_sizes(sizes, seed=0):
    labels = np.concatenate([np.full(n, 10 * c + 3) for c, n in enumerate(sizes)])  # non-contiguous ids
    return np.random.default_rng(seed).permutation(labels)


def check_m_per_class_epoch(sampler, labels, p, k):
    """Every batch: P distinct classes x K indices, all valid; returns the batches."""
    batches = list(sampler)
    assert len(batches) == len(sampler)
    for b in batches:
        assert len(b) == p * k
        assert all(0 <= i < len(labels) for i in b)
        blocks = [b[j * k:(j + 1) * k] for j in range(p)]
        block_classes = [set(labels[blk].tolist()) for blk in blocks]
        assert all(len(c) == 1 for c in block_classes)  # each K-block is one class
        assert len({c.pop() for c in block_classes}) == p  # P distinct classes
    return batches


# ---------------------------------------------------------------- MPerClassSampler
def test_m_per_class_epoch_length_and_coverage():
    sizes = [7, 4, 4, 9, 2, 5]
    labels = labels_from_sizes(sizes)
    s = MPerClassSampler(labels, m=2, batch_size=6, seed=0)
    chunks = sum(-(-n // 2) for n in sizes)  # 4 + 2 + 2 + 5 + 1 + 3 = 17
    assert len(s) == -(-chunks // 3) == 6
    batches = check_m_per_class_epoch(s, labels, 3, 2)
    assert set(i for b in batches for i in b) == set(range(len(labels)))


def test_m_per_class_small_classes_repeat_evenly():
    labels = labels_from_sizes([2, 1, 6, 5])
    s = MPerClassSampler(labels, m=5, classes_per_batch=2, seed=3)
    for b in check_m_per_class_epoch(s, labels, 2, 5):
        for j in range(2):
            block = b[j * 5:(j + 1) * 5]
            n_c = int((labels == labels[block[0]]).sum())
            counts = Counter(block).values()
            if n_c >= 5:
                assert max(counts) == 1  # no repeats when the class has K samples
            else:
                assert set(counts) <= {5 // n_c, -(-5 // n_c)}  # floor/ceil(K / n_c) copies each


def test_m_per_class_determinism_and_epochs():
    labels = labels_from_sizes([5, 6, 7, 8, 3, 4])
    a = MPerClassSampler(labels, m=2, batch_size=4, seed=11)
    b = MPerClassSampler(labels, m=2, batch_size=4, seed=11)
    first_a, first_b = list(a), list(b)
    assert first_a == first_b
    second = list(a)
    assert second != first_a  # the next pass is a new epoch
    a.set_epoch(0)
    assert list(a) == first_a  # epochs can be replayed
    assert list(MPerClassSampler(labels, m=2, batch_size=4, seed=12)) != first_a
    g1, g2 = torch.Generator().manual_seed(5), torch.Generator().manual_seed(5)
    assert list(MPerClassSampler(labels, m=2, batch_size=4, generator=g1)) == \
        list(MPerClassSampler(labels, m=2, batch_size=4, generator=g2))
    torch.manual_seed(0)
    c = list(MPerClassSampler(labels, m=2, batch_size=4, batches=True))
    torch.manual_seed(0)
    assert list(MPerClassSampler(labels, m=2, batch_size=4, batches=True)) == c


def test_m_per_class_capped_dominant_class():
    # Class 0 holds 40 of 46 samples: at most one chunk per batch, so it is capped at B chunks.
    labels = labels_from_sizes([40, 2, 2, 2])
    s = MPerClassSampler(labels, m=2, batch_size=4, seed=0)
    batches = check_m_per_class_epoch(s, labels, 2, 2)
    assert len(batches) == -(-(20 + 3) // 2)


def test_m_per_class_as_dataloader_batch_sampler():
    labels = torch.tensor(labels_from_sizes([4, 4, 4, 4]))
    ds = TensorDataset(torch.arange(16), labels)
    loader = DataLoader(ds, batch_sampler=MPerClassSampler(labels, m=2, batch_size=4, seed=0))
    seen = 0
    for idx, y in loader:
        assert idx.shape == (4,) and len(set(y.tolist())) == 2
        seen += 1
    assert seen == len(loader) == 4


@settings(max_examples=40, deadline=None)
@given(
    sizes=st.lists(st.integers(1, 12), min_size=1, max_size=10),
    k=st.integers(1, 4),
    data=st.data(),
)
def test_m_per_class_property_sweep(sizes, k, data):
    p = data.draw(st.integers(1, len(sizes)))
    seed = data.draw(st.integers(0, 2**31 - 1))
    labels = labels_from_sizes(sizes, seed)
    s = MPerClassSampler(labels, m=k, classes_per_batch=p, seed=seed)
    batches = check_m_per_class_epoch(s, labels, p, k)
    n_batches = len(batches)
    assert n_batches == -(-sum(-(-n // k) for n in sizes) // p)
    seen = Counter(i for b in batches for i in b)
    for c, n in enumerate(sizes):
        members = np.flatnonzero(labels == 10 * c + 3)
        if -(-n // k) <= n_batches:  # not capped: every sample of the class is used
            assert all(seen[i] >= 1 for i in members)
    assert list(MPerClassSampler(labels, m=k, classes_per_batch=p, seed=seed)) == batches


def test_m_per_class_bad_input():
    labels = labels_from_sizes([3, 3])
    with pytest.raises(ValueError, match="multiple of m"):
        MPerClassSampler(labels, m=2, batch_size=5, batches=True)
    with pytest.raises(ValueError, match="classes_per_batch"):
        MPerClassSampler(labels, m=2, batch_size=6, batches=True)
    with pytest.raises(ValueError, match="exactly one"):
        MPerClassSampler(labels, m=2, batches=True)
    with pytest.raises(TypeError, match="labels"):
        MPerClassSampler(labels.astype(float), m=2, batch_size=4, batches=True)
    with pytest.raises(ValueError, match="labels"):
        MPerClassSampler([], m=2, batch_size=4, batches=True)
    with pytest.raises(ValueError, match="m must"):
        MPerClassSampler(labels, m=0, batch_size=4, batches=True)
    with pytest.raises(ValueError, match="seed or generator"):
        MPerClassSampler(labels, m=1, batch_size=2, seed=1, generator=torch.Generator())


# ---------------------------------------------------------------- NearestNeighborBatchSampler
def brute_force_neighbours(x, k, metric):
    x = torch.as_tensor(x, dtype=torch.float64)
    if metric == "cosine":
        x = torch.nn.functional.normalize(x, dim=1)
        score = x @ x.T
    else:
        score = -torch.cdist(x, x)
    score.fill_diagonal_(float("-inf"))
    return score.topk(k).indices


@pytest.mark.parametrize("metric", ["cosine", "euclidean"])
def test_nn_sampler_batches_are_anchor_plus_true_neighbours(metric):
    x = torch.randn(120, 8, generator=torch.Generator().manual_seed(0))
    s = NearestNeighborBatchSampler(120, anchors_per_batch=4, k=3, metric=metric, seed=0)
    with pytest.raises(RuntimeError, match="set_embeddings"):
        next(iter(s))
    s.set_embeddings(x)
    nn = brute_force_neighbours(x, 3, metric)
    batches = list(s)
    assert len(batches) == len(s) == 120 // 16
    anchors = []
    for b in batches:
        assert len(b) == 16
        for t in range(4):
            a, neigh = b[t * 4], b[t * 4 + 1:(t + 1) * 4]
            assert neigh == nn[a].tolist()
            anchors.append(a)
    assert len(set(anchors)) == len(anchors)  # no anchor twice in an epoch


def test_nn_sampler_rebuild_determinism_and_long_epochs():
    g = torch.Generator().manual_seed(1)
    x1, x2 = torch.randn(30, 4, generator=g), torch.randn(30, 4, generator=g)
    s = NearestNeighborBatchSampler(30, 5, 2, seed=3, num_batches=10, embeddings=x1)
    t = NearestNeighborBatchSampler(30, 5, 2, seed=3, num_batches=10, embeddings=x1)
    first = list(s)
    assert first == list(t) and len(first) == 10  # 50 anchors > 30 samples: a second permutation
    s.set_embeddings(x2)
    s.set_epoch(0)
    rebuilt = list(s)
    assert [b[0::3] for b in rebuilt] == [b[0::3] for b in first]  # same anchors, new neighbours
    assert torch.equal(s.neighbours, brute_force_neighbours(x2, 2, "cosine"))


def test_nn_sampler_bad_input():
    with pytest.raises(ValueError, match="k=5"):
        NearestNeighborBatchSampler(5, 2, 5)
    s = NearestNeighborBatchSampler(10, 2, 2)
    with pytest.raises(ValueError, match="num_samples"):
        s.set_embeddings(torch.randn(11, 3))
    with pytest.raises(ValueError, match="emb|query"):
        s.set_embeddings(torch.full((10, 3), float("nan")))
    with pytest.raises(ValueError, match="metric"):
        NearestNeighborBatchSampler(10, 2, 2, metric="hamming")


# ---------------------------------------------------------------- CandidatePoolSampler
def test_candidate_pool_sampler_insclr_batches():
    g = torch.Generator().manual_seed(2)
    x = torch.randn(200, 6, generator=g)
    s = CandidatePoolSampler(200, anchors_per_batch=16, k=3, pool_size=20, seed=0)
    with pytest.raises(RuntimeError, match="build_pool"):
        next(iter(s))
    s.build_pool(x)
    assert s.candidate_pool.shape == (200, 20)
    assert torch.equal(s.candidate_pool, brute_force_neighbours(x, 20, "cosine"))
    b = next(iter(s))
    assert len(b) == 64 and len(s) == 200 // 64
    for t in range(16):  # before new embeddings: the k nearest of the pool
        assert b[t * 4 + 1:(t + 1) * 4] == s.candidate_pool[b[t * 4], :3].tolist()

    # New (current) embeddings: the k nearest *within the pool* under them.
    y = torch.randn(200, 6, generator=g)
    s.set_embeddings(y)
    yn = torch.nn.functional.normalize(y.double(), dim=1)
    for b in s:
        for t in range(16):
            a, chosen = b[t * 4], b[t * 4 + 1:(t + 1) * 4]
            pool = s.candidate_pool[a]
            sims = yn[pool] @ yn[a]
            assert chosen == pool[sims.argsort(descending=True)[:3]].tolist()
            assert set(chosen) <= set(pool.tolist())


def test_candidate_pool_precomputed_pool_skips_self():
    pool = torch.stack([torch.tensor([i, (i + 1) % 6, (i + 2) % 6]) for i in range(6)])
    s = CandidatePoolSampler(6, anchors_per_batch=2, k=2, pool_size=3, seed=0)
    s.set_candidate_pool(pool)
    for b in s:
        for t in range(2):
            a = b[t * 3]
            assert b[t * 3 + 1:(t + 1) * 3] == [(a + 1) % 6, (a + 2) % 6]
    with pytest.raises(ValueError, match="outside"):
        s.set_candidate_pool(pool + 6)
    with pytest.raises(ValueError, match="fewer than k"):
        s.set_candidate_pool(pool[:, :1])
    with pytest.raises(ValueError, match="pool_size"):
        CandidatePoolSampler(6, 2, 3, pool_size=2)
    with pytest.raises(ValueError, match="pool_size"):
        CandidatePoolSampler(6, 2, 3, pool_size=6)


# ---------------------------------------------------------------- MPerClassSampler, PML mode
def test_m_per_class_pml_mode_is_an_index_sampler_with_pml_lengths():
    g = torch.Generator().manual_seed(0)
    labels = torch.randint(0, 10, (500,), generator=g)
    s = MPerClassSampler(labels, 4, 32, 1000)  # PML's positional signature
    assert not s.batches and len(s) == 992  # rounded down to a multiple of batch_size
    idx = list(s)
    assert len(idx) == len(s) and all(isinstance(i, int) for i in idx)
    for b in range(0, len(idx), 32):
        _, counts = torch.unique(labels[idx[b:b + 32]], return_counts=True)
        assert len(counts) == 8 and bool((counts == 4).all())
    assert len(MPerClassSampler(labels, m=5, length_before_new_iter=1234)) == 1200  # multiple of m x #classes
    ds = torch.utils.data.TensorDataset(torch.arange(500), labels)
    for _, y in DataLoader(ds, batch_size=32, sampler=s):
        assert bool((torch.unique(y, return_counts=True)[1] == 4).all())


def test_m_per_class_pml_mode_small_class_with_replacement_and_errors():
    labels = np.array([0, 0, 1, 1, 1, 1, 2, 2, 2, 2])
    idx = list(MPerClassSampler(labels, m=3, batch_size=6, length_before_new_iter=60))
    assert len(idx) == 60 and set(idx) <= set(range(10))
    for bad in [dict(batch_size=7), dict(batch_size=12), dict(batch_size=6, length_before_new_iter=5)]:
        with pytest.raises(AssertionError):  # PML's error type (ours is also a ValueError)
            MPerClassSampler(labels, m=3, **bad)
        with pytest.raises(ValueError):
            MPerClassSampler(labels, m=3, **bad)
