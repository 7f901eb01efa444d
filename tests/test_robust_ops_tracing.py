"""Tracing the ops (issue 16): meta tensors, torch.compile(fullgraph=True), opcheck with odd strides."""
import pytest
import torch
import torch.nn.functional as F

from ssml_fast import ops
from ssml_fast.ops import bank_momentum_update_, kreciprocal_rerank, topk_neighbors


def test_rerank_on_meta_tensors():
    q, g = torch.empty(5, 4, device="meta"), torch.empty(9, 4, device="meta")
    out = kreciprocal_rerank(q, g, k1=4, k2=2)
    assert out.shape == (5, 9) and out.dtype == torch.float32 and out.device.type == "meta"
    d, i = torch.empty(14, 6, device="meta"), torch.empty(14, 6, dtype=torch.long, device="meta")
    out = kreciprocal_rerank((d, i), k1=4, k2=2, num_query=5)
    assert out.shape == (5, 9)


def test_bank_update_on_meta_tensors():
    bank = torch.empty(10, 4, device="meta")
    bank_momentum_update_(bank, torch.empty(3, dtype=torch.long, device="meta"), torch.empty(3, 4, device="meta"), 0.5)


def test_rerank_compiles_with_fullgraph():
    x = torch.randn(40, 6, generator=torch.Generator().manual_seed(0))

    def features(a, b):
        return kreciprocal_rerank(a, b, k1=8, k2=3)

    def lists(d, i):
        return kreciprocal_rerank((d, i), k1=8, k2=3, num_query=10)

    compiled = torch.compile(features, backend="aot_eager", fullgraph=True)
    assert torch.equal(compiled(x[:10], x[10:]), features(x[:10], x[10:]))
    d, i = topk_neighbors(x, 12)
    compiled = torch.compile(lists, backend="aot_eager", fullgraph=True)
    assert torch.equal(compiled(d, i), lists(d, i))


def test_bank_update_compiles_with_fullgraph():
    bank = F.normalize(torch.randn(10, 4), dim=1)
    ids, feats = torch.tensor([1, 5, 1]), torch.randn(3, 4)
    want = bank.clone()
    bank_momentum_update_(want, ids, feats, 0.4)

    def step(b, i, f):
        bank_momentum_update_(b, i, f, 0.4)
        return b.sum()

    torch.compile(step, backend="aot_eager", fullgraph=True)(bank, ids, feats)
    assert torch.equal(bank, want)


@pytest.mark.parametrize("mining", ["all", "hard", "semihard"])
def test_triplet_opcheck_with_a_transposed_dist(mining):
    g = torch.Generator().manual_seed(1)
    emb = torch.randn(10, 3, generator=g)
    labels = torch.randint(0, 3, (10,), generator=g)
    dist = torch.cdist(emb, emb).T.requires_grad_(True)  # non-contiguous
    assert not dist.is_contiguous()
    torch.library.opcheck(torch.ops.ssml_fast.triplet_margin_loss_from_dist.default,
                          (dist, labels, labels, True, 0.3, mining, "mean_nonzero", False))


def test_pairwise_and_rerank_opcheck_with_transposed_inputs():
    x = torch.randn(6, 9).T  # (9, 6), non-contiguous
    torch.library.opcheck(torch.ops.ssml_fast.pairwise_distance.default, (x, x[:4], "euclidean"))
    torch.library.opcheck(torch.ops.ssml_fast.kreciprocal_rerank.default, (x[:3], x[3:], 4, 2, 0.3))
    torch.library.opcheck(torch.ops.ssml_fast.contextual_similarity.default, (x, 3, 1.0, None))
