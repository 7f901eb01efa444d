"""retrieval_metrics(rerank=...) ranks by the k-reciprocal re-ranked distance."""
import numpy as np
import pytest
import torch

from ssml_fast.evaluation import retrieval_metrics
from ssml_fast.ops import kreciprocal_rerank


def clustered(n_classes=8, per_class=15, dim=12, seed=0):
    g = torch.Generator().manual_seed(seed)
    labels = torch.arange(n_classes).repeat_interleave(per_class)
    x = (torch.randn(n_classes, dim, generator=g) * 2)[labels] + torch.randn(len(labels), dim, generator=g) * 1.5
    return x, labels


def plain_metrics(dist, q_labels, g_labels, ks):
    order = np.argsort(dist, axis=1, kind="stable")
    same = g_labels[order] == q_labels[:, None]
    out = {f"recall@{k}": same[:, :k].any(1).mean() for k in ks}
    r = (g_labels[None, :] == q_labels[:, None]).sum(1)
    ap = [(np.cumsum(s[:ri]) / np.arange(1, ri + 1) * s[:ri]).sum() / ri for s, ri in zip(same, r)]
    out["map_at_r"] = float(np.mean(ap))
    return out


@pytest.mark.parametrize("params", [True, {"k1": 8, "k2": 3, "lambda_value": 0.5}])
def test_leave_one_out_matches_ranking_the_reranked_matrix(params):
    x, labels = clustered()
    kw = {} if params is True else params
    dist = kreciprocal_rerank(x, x, **kw).numpy()
    np.fill_diagonal(dist, np.inf)
    lab, n = labels.numpy(), len(labels)
    order = np.argsort(dist, axis=1, kind="stable")[:, : n - 1]
    same = lab[order] == lab[:, None]
    r = np.bincount(lab)[lab] - 1
    expected_map = np.mean([(np.cumsum(s[:ri]) / np.arange(1, ri + 1) * s[:ri]).sum() / ri for s, ri in zip(same, r)])
    got = retrieval_metrics(x, labels, ks=(1, 4), nmi=False, rerank=params)
    assert got["recall@1"] == pytest.approx(same[:, 0].mean())
    assert got["recall@4"] == pytest.approx(same[:, :4].any(1).mean())
    assert got["map_at_r"] == pytest.approx(expected_map)


def test_query_gallery_split():
    x, labels = clustered(seed=1)
    q, g = x[::3], x
    ql, gl = labels[::3], labels
    got = retrieval_metrics(q, ql, ks=(1, 2), gallery=g, gallery_labels=gl, nmi=False, rerank={"k1": 10, "k2": 4})
    ref = plain_metrics(kreciprocal_rerank(q, g, k1=10, k2=4).numpy(), ql.numpy(), gl.numpy(), (1, 2))
    for key in ("recall@1", "recall@2", "map_at_r"):
        assert got[key] == pytest.approx(ref[key])


def test_rerank_bad_argument_is_named():
    x, labels = clustered()
    with pytest.raises(ValueError, match="k2"):
        retrieval_metrics(x, labels, nmi=False, rerank={"k1": 3, "k2": 5})
