"""MemoryBank and the bank_momentum_update_ op against a plain loop over the updated ids."""
import io

import pytest
import torch
import torch.nn.functional as F
from hypothesis import given, settings, strategies as st

import ssml_fast
from ssml_fast.memory import MemoryBank
from ssml_fast.neighbors import gemm as _topk
from ssml_fast.ops import bank_momentum_update_

from conftest import requires_cuda


def ref_update(bank, ids, feats, m):
    """bank[id] = normalise(m * bank[id] + (1 - m) * mean of the feats rows carrying id), in float64."""
    out = bank.double().clone()
    for i in sorted(set(ids.tolist())):
        f = feats.double()[ids == i].mean(0)
        out[i] = F.normalize(m * out[i] + (1 - m) * f, dim=0)
    return out.to(bank.dtype)


def random_bank(n, d, dtype, device, seed=0):
    g = torch.Generator().manual_seed(seed)
    return F.normalize(torch.randn(n, d, generator=g, dtype=torch.float64), dim=1).to(dtype).to(device)


TOL = {torch.float64: 1e-12, torch.float32: 1e-6, torch.float16: 2e-3, torch.bfloat16: 2e-2}


@pytest.mark.parametrize("dtype", [torch.float64, torch.float32, torch.float16, torch.bfloat16])
@pytest.mark.parametrize("m", [0.0, 0.5, 0.9])
def test_update_matches_reference(device, dtype, m):
    g = torch.Generator().manual_seed(1)
    bank = random_bank(50, 16, dtype, device)
    ids = torch.tensor([3, 7, 3, 49, 0, 7, 7, 12], device=device)  # duplicates included
    feats = torch.randn(8, 16, generator=g, dtype=torch.float64).to(dtype).to(device)
    expected = ref_update(bank, ids, feats, m)
    bank_momentum_update_(bank, ids, feats, m)
    assert torch.allclose(bank.double(), expected.double(), atol=TOL[dtype], rtol=0)


def test_untouched_slots_are_bit_identical(device):
    bank = random_bank(30, 8, torch.float32, device)
    before = bank.clone()
    ids = torch.tensor([4, 9, 4], device=device)
    bank_momentum_update_(bank, ids, torch.randn(3, 8, device=device), 0.3)
    other = torch.ones(30, dtype=torch.bool)
    other[[4, 9]] = False
    assert torch.equal(bank[other.to(device)], before[other.to(device)])


def test_duplicate_ids_use_the_mean():
    bank = torch.zeros(4, 2, dtype=torch.float64)
    bank[1] = torch.tensor([1.0, 0.0], dtype=torch.float64)
    feats = torch.tensor([[0.0, 2.0], [0.0, 4.0], [2.0, 0.0]], dtype=torch.float64)
    bank_momentum_update_(bank, torch.tensor([1, 1, 1]), feats, 0.5)
    # mean f = (2/3, 2); 0.5 * (1, 0) + 0.5 * f = (5/6, 1)
    assert torch.allclose(bank[1], F.normalize(torch.tensor([5 / 6, 1.0], dtype=torch.float64), dim=0))


def test_momentum_zero_overwrites_and_zero_vector_stays_finite():
    bank = random_bank(5, 3, torch.float32, "cpu")
    feats = torch.tensor([[3.0, 0.0, 4.0], [0.0, 0.0, 0.0]])
    bank_momentum_update_(bank, torch.tensor([2, 3]), feats, 0.0)
    assert torch.allclose(bank[2], torch.tensor([0.6, 0.0, 0.8]))
    assert torch.equal(bank[3], torch.zeros(3))


def test_deterministic_across_thread_counts():
    g = torch.Generator().manual_seed(3)
    ids = torch.randint(0, 40, (500,), generator=g)
    feats = torch.randn(500, 32, generator=g)
    results = []
    threads = torch.get_num_threads()
    try:
        for t in (1, 2):
            torch.set_num_threads(t)
            bank = random_bank(40, 32, torch.float32, "cpu")
            bank_momentum_update_(bank, ids, feats, 0.7)
            results.append(bank)
    finally:
        torch.set_num_threads(threads)
    assert torch.equal(results[0], results[1])


@settings(max_examples=30, deadline=None)
@given(n=st.integers(1, 20), b=st.integers(0, 25), d=st.integers(1, 9), m=st.floats(0, 0.999),
       seed=st.integers(0, 10**6))
def test_update_property(n, b, d, m, seed):
    g = torch.Generator().manual_seed(seed)
    bank = random_bank(n, d, torch.float64, "cpu", seed)
    ids = torch.randint(0, n, (b,), generator=g)
    feats = torch.randn(b, d, generator=g, dtype=torch.float64)
    expected = ref_update(bank, ids, feats, m)
    bank_momentum_update_(bank, ids, feats, m)
    assert torch.allclose(bank, expected, atol=1e-12, rtol=0)
    touched = torch.unique(ids)
    assert torch.allclose(bank[touched].norm(dim=1), torch.ones(len(touched), dtype=torch.float64))


def test_update_opcheck():
    bank = random_bank(10, 4, torch.float32, "cpu")
    for ids in [torch.tensor([1, 5, 1]), torch.tensor([], dtype=torch.long)]:
        feats = torch.randn(len(ids), 4)
        torch.library.opcheck(torch.ops.ssml_fast.bank_momentum_update_.default, (bank, ids, feats, 0.5))


def test_module_update_int32_ids_and_state_dict_round_trip():
    g = torch.Generator().manual_seed(4)
    a = MemoryBank(20, 6)
    a.update(torch.arange(20, dtype=torch.int32), torch.randn(20, 6, generator=g), momentum=0.0)
    a.update(torch.tensor([1, 2, 2]), torch.randn(3, 6, generator=g), momentum=0.5)
    buf = io.BytesIO()
    torch.save(a.state_dict(), buf)
    buf.seek(0)
    b = MemoryBank(20, 6)
    b.load_state_dict(torch.load(buf))
    assert torch.equal(a.bank, b.bank)
    ids, feats = torch.tensor([5, 1, 5]), torch.randn(3, 6, generator=g)
    a.update(ids, feats, 0.9)
    b.update(ids, feats, 0.9)
    assert torch.equal(a.bank, b.bank)


def test_storage_allocated_once():
    bank = MemoryBank(100, 8)
    ptr = bank.bank.data_ptr()
    for _ in range(3):
        bank.update(torch.randint(0, 100, (16,)), torch.randn(16, 8), 0.5)
    assert bank.bank.data_ptr() == ptr


# ---------------------------------------------------------------- top-k

def ref_topk(query, bank, k, exclude=None):
    s = query.double() @ bank.double().T
    if exclude is not None:
        for q, e in enumerate(exclude.tolist()):
            if e >= 0:
                s[q, e] = float("-inf")
    return s.sort(dim=1, descending=True, stable=True)


@pytest.mark.parametrize("chunk", [None, 7])
def test_topk_excludes_own_slot(device, monkeypatch, chunk):
    if chunk is not None:  # several chunks -> exercises the running merge
        monkeypatch.setattr(_topk, "_CHUNK_ELEMENTS", chunk * 6)
    bank = MemoryBank(40, 5, dtype=torch.float64, device=device)
    bank.update(torch.arange(40, device=device), random_bank(40, 5, torch.float64, device, 5), 0.0)
    query = bank.bank[[0, 3, 17, 39, 8, 8]]
    exclude = torch.tensor([0, 3, 17, 39, -1, 8], device=device)
    scores, ids = bank.topk(query, 6, exclude_ids=exclude)
    ref_s, ref_i = ref_topk(query.cpu(), bank.bank.cpu(), 6, exclude.cpu())
    assert torch.allclose(scores.cpu(), ref_s[:, :6])
    assert torch.equal(ids.cpu(), ref_i[:, :6])
    for q, e in enumerate(exclude.tolist()):
        assert e not in ids[q].tolist()
    assert ids[4, 0].item() == 8  # no exclusion: the query's own slot is its nearest


def test_topk_without_exclusion_matches_reference():
    bank = MemoryBank(30, 4, dtype=torch.float64)
    bank.update(torch.arange(30), random_bank(30, 4, torch.float64, "cpu", 6), 0.0)
    query = torch.randn(5, 4, dtype=torch.float64)
    scores, ids = bank.topk(query, 30)
    ref_s, ref_i = ref_topk(query, bank.bank, 30)
    assert torch.allclose(scores, ref_s) and torch.equal(ids, ref_i)


# ---------------------------------------------------------------- bad input

@pytest.mark.parametrize(
    "call,match",
    [
        (lambda b: b.update(torch.tensor([0, 1]), torch.randn(2, 3), 0.5), "feats"),
        (lambda b: b.update(torch.tensor([0, 10]), torch.randn(2, 4), 0.5), "ids"),
        (lambda b: b.update(torch.tensor([-1, 0]), torch.randn(2, 4), 0.5), "ids"),
        (lambda b: b.update(torch.tensor([0, 1, 2]), torch.randn(2, 4), 0.5), "ids"),
        (lambda b: b.update(torch.tensor([0.0, 1.0]), torch.randn(2, 4), 0.5), "ids"),
        (lambda b: b.update(torch.tensor([0, 1]), torch.randn(2, 4), 1.0), "momentum"),
        (lambda b: b.update(torch.tensor([0, 1]), torch.randn(2, 4), -0.1), "momentum"),
        (lambda b: b.update(torch.tensor([0, 1]), torch.randn(2, 4), float("nan")), "momentum"),
        (lambda b: b.update(torch.tensor([0, 1]), torch.randn(2, 4), True), "momentum"),
        (lambda b: b.topk(torch.randn(2, 4), 10, exclude_ids=torch.tensor([0, 1])), "k"),
        (lambda b: b.topk(torch.randn(2, 4), 0), "k"),
        (lambda b: b.topk(torch.randn(2, 5), 1), "query"),
        (lambda b: b.topk(torch.randn(2, 4), 1, exclude_ids=torch.tensor([0, 10])), "exclude_ids"),
    ],
)
def test_bad_input(call, match):
    with pytest.raises((ValueError, TypeError), match=match):
        call(MemoryBank(10, 4))


@pytest.mark.parametrize("args,match", [((0, 4), "num_items"), ((4, 0), "dim"), ((4, 4, torch.long), "dtype")])
def test_bad_construction(args, match):
    with pytest.raises((ValueError, TypeError), match=match):
        MemoryBank(*args)


def test_raw_op_rejects_out_of_range_ids():
    with pytest.raises(ValueError, match="ids"):
        torch.ops.ssml_fast.bank_momentum_update_(torch.zeros(5, 2), torch.tensor([5]), torch.ones(1, 2), 0.5)
    with pytest.raises(ValueError, match="momentum"):
        torch.ops.ssml_fast.bank_momentum_update_(torch.zeros(5, 2), torch.tensor([1]), torch.ones(1, 2), 1.5)


# ---------------------------------------------------------------- CUDA

def test_cuda_kernel_registered_when_built():
    if ssml_fast.build_info()["cuda"]:
        assert torch._C._dispatch_has_kernel_for_dispatch_key("ssml_fast::bank_momentum_update_", "CUDA")


@requires_cuda
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64, torch.float16, torch.bfloat16])
def test_cuda_matches_cpu(dtype):
    g = torch.Generator().manual_seed(7)
    for d in (3, 128, 300):
        bank = random_bank(200, d, dtype, "cpu")
        ids = torch.randint(0, 200, (64,), generator=g)
        feats = torch.randn(64, d, generator=g).to(dtype)
        gpu = bank.cuda()
        bank_momentum_update_(bank, ids, feats, 0.6)
        bank_momentum_update_(gpu, ids.cuda(), feats.cuda(), 0.6)
        assert torch.allclose(gpu.cpu().double(), bank.double(), atol=TOL[dtype] * 2, rtol=0)


def test_ops_trace_under_torch_compile():
    # The fake kernels let torch.compile trace the in-place ops (functionalised, then re-applied).
    def step(bank, ids, feats, rings, rows):
        torch.ops.ssml_fast.bank_momentum_update_(bank, ids, feats, 0.5)
        torch.ops.ssml_fast.queue_enqueue_many_(rings, rows, 3)
        return bank.sum()

    def make_args():
        return (random_bank(10, 4, torch.float32, "cpu"), torch.tensor([1, 1, 7]), torch.ones(3, 4),
                [torch.zeros(5, 4), torch.zeros(5, dtype=torch.long)], [torch.ones(2, 4), torch.arange(2)])

    compiled = torch.compile(step, backend="aot_eager", fullgraph=True)
    eager_args, compiled_args = make_args(), make_args()
    assert torch.allclose(step(*eager_args), compiled(*compiled_args))
    assert torch.equal(eager_args[0], compiled_args[0])
    for a, b in zip(eager_args[3], compiled_args[3]):
        assert torch.equal(a, b)
