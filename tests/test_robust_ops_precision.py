"""The ops' GEMMs run in full float32 whatever the user's TF32 / bf16 matmul settings (issue 16), and those
settings are left as the user set them. On the CPU this checks the settings' round trip and that the numbers do
not move; tests/test_robust_ops_cuda.py checks the TF32 case on a GPU."""
import contextlib

import pytest
import torch

from ssml_fast import ops
from ssml_fast.ops import contextual_similarity, kreciprocal_rerank


def state():
    return (torch.get_float32_matmul_precision(), torch.backends.cuda.matmul.allow_tf32,
            torch.backends.cuda.matmul.fp32_precision, torch.backends.mkldnn.matmul.fp32_precision)


@contextlib.contextmanager
def user_setting(kind):
    before = state()
    try:
        if kind == "high":
            torch.set_float32_matmul_precision("high")
        elif kind == "medium":
            torch.set_float32_matmul_precision("medium")
        elif kind == "allow_tf32":
            torch.backends.cuda.matmul.allow_tf32 = True
        yield
    finally:
        torch.set_float32_matmul_precision(before[0])
        torch.backends.cuda.matmul.allow_tf32 = before[1]
        torch.backends.cuda.matmul.fp32_precision = before[2]
        torch.backends.mkldnn.matmul.fp32_precision = before[3]
    assert state() == before


def compute(x):
    return (ops.pairwise_distance(x, x[:50]), ops.triplet_margin_loss(x, torch.arange(200) % 10, 0.2),
            contextual_similarity(x, 8), kreciprocal_rerank(x[:40], x[40:]))


@pytest.mark.parametrize("kind", ["high", "medium", "allow_tf32"])
def test_settings_survive_and_numbers_do_not_move(kind):
    x = torch.randn(200, 64, generator=torch.Generator().manual_seed(0))
    want = compute(x)
    with user_setting(kind):
        inside = state()
        got = compute(x)
        assert state() == inside  # the op restored exactly what the user had
    for a, b in zip(got, want):
        assert torch.equal(a, b)
