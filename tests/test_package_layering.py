"""Package structure: every op registered for every dispatch key it should have, `import ssml_fast` light
(no faiss / scikit-learn / matplotlib / tensorboard), the public subpackages reachable lazily, one validation
module, hand-written backward passes once-differentiable."""
import subprocess
import sys

import pytest
import torch

import ssml_fast
from ssml_fast.ops._autocast import FUNCTIONAL_OPS

# Every schema of csrc/ops.cpp: (op, has a CUDA kernel when built with CUDA, private CPU twin of a CUDA path).
OPS = {
    "pairwise_distance": True,
    "pairwise_distance_backward": True,
    "triplet_margin_loss_from_dist": True,
    "_triplet_margin_loss_from_dist_sorted": False,
    "queue_enqueue_": True,
    "queue_enqueue_many_": True,
    "bank_momentum_update_": True,
    "contextual_similarity": True,
    "_contextual_similarity_gpu_algorithm": False,
    "_contextual_expansion_rows": False,
    "_contextual_cache_neighbours": False,
    "kreciprocal_rerank": True,
    "kreciprocal_rerank_topk": True,
    "_kreciprocal_rerank_gpu_algorithm": False,
    "_kreciprocal_rerank_gpu_algorithm_topk": False,
    "row_relative": True,
    "row_relative_backward": True,
    "relaxed_contrastive_rows": True,
    "self_distillation_kl_rows": True,
}
KEYS = ("CPU", "CUDA", "Meta", "AutocastCPU", "AutocastCUDA")


def test_ops_table_is_complete():
    registered = {name.split("::")[1] for name in torch._C._dispatch_get_all_op_names() if name.startswith("ssml_fast::")}
    assert registered == set(OPS)
    assert set(FUNCTIONAL_OPS) <= set(OPS)


@pytest.mark.parametrize("key", KEYS)
@pytest.mark.parametrize("op", sorted(OPS))
def test_registration(op, key):
    has = torch._C._dispatch_has_kernel_for_dispatch_key(f"ssml_fast::{op}", key)
    if key == "CPU":
        want = True
    elif key == "CUDA":
        want = OPS[op] and ssml_fast.build_info()["cuda"]
    elif key == "Meta":  # the fake kernels (torch.library.register_fake) serve meta tensors and torch.compile
        want = True
        has = torch._C._dispatch_has_kernel_for_dispatch_key(f"ssml_fast::{op}", "Meta") or \
            torch.library.get_kernel is not None and _has_fake(op)
    else:  # autocast rules for the functional ops; never for the in-place memory ops
        want = op in FUNCTIONAL_OPS
    assert has == want, (op, key, has)


def _has_fake(op):
    from torch._library.simple_registry import singleton

    return singleton.find(f"ssml_fast::{op}").fake_impl.kernel is not None


def test_import_is_light_and_faiss_loads_where_used():
    """One subprocess: the modules loaded by `import ssml_fast`, then by importing the subpackages (samplers,
    memory, evaluation, losses, miners, neighbors: none loads faiss or scikit-learn before a search runs)."""
    code = ("import sys\nimport ssml_fast\nprint(' '.join(sorted(sys.modules)))\n"
            "import ssml_fast.samplers, ssml_fast.memory, ssml_fast.evaluation, ssml_fast.losses, ssml_fast.miners, "
            "ssml_fast.neighbors\nprint(' '.join(sorted(sys.modules)))\n")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    first, second = (set(line.split()) for line in out.stdout.splitlines())
    heavy = {m for m in first if m.split(".")[0] in ("faiss", "sklearn", "matplotlib", "tensorboard", "scipy")}
    assert not heavy, sorted(heavy)
    assert "ssml_fast.losses" not in first and "ssml_fast.evaluation" not in first
    assert not {m for m in second if m.split(".")[0] in ("faiss", "sklearn")}


def test_lazy_subpackages():
    for name in ssml_fast._LAZY_SUBMODULES:
        assert getattr(ssml_fast, name).__name__ == f"ssml_fast.{name}"
    from ssml_fast import losses, miners  # noqa: F401
    assert set(ssml_fast._LAZY_SUBMODULES) <= set(dir(ssml_fast))
    with pytest.raises(AttributeError, match="no attribute 'nope'"):
        ssml_fast.nope


def test_one_validation_module():
    from ssml_fast import _validation
    from ssml_fast.ops import _checks, triplet

    assert _checks.check_int is _validation.check_int and triplet.REDUCTIONS is _validation.REDUCTIONS
    np = pytest.importorskip("numpy")
    assert _validation.check_int("k", np.int64(3)) == 3 and type(_validation.check_int("k", np.int32(3))) is int
    assert _validation.check_real("m", np.float32(0.5)) == 0.5 and _validation.check_size("n", np.uint8(4)) == 4
    for bad in (True, np.bool_(True), 2.0, "3"):
        with pytest.raises(TypeError, match="k must be an int"):
            _validation.check_int("k", bad)
    with pytest.raises(ValueError, match="finite"):
        _validation.check_real("m", float("nan"))


@pytest.mark.parametrize("fn", ["pairwise_distance", "triplet_margin_loss"])
def test_double_backward_raises(fn):
    x = torch.randn(8, 3, dtype=torch.float64, requires_grad=True)
    labels = torch.arange(8) % 3
    out = ssml_fast.ops.pairwise_distance(x).sum() if fn == "pairwise_distance" else \
        ssml_fast.ops.triplet_margin_loss(x, labels, 0.5)
    (g,) = torch.autograd.grad(out, x, create_graph=True)
    with pytest.raises(RuntimeError, match="once_differentiable|twice|does not require grad"):
        g.sum().backward()
