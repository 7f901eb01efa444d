"""FeatureQueue and the queue_enqueue_ op against a plain FIFO reference (Python list of rows)."""
import io
import os
import socket

import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp
from hypothesis import given, settings, strategies as st

import ssml_fast
from ssml_fast.memory import FeatureQueue
from ssml_fast.ops import queue_enqueue_, queue_enqueue_many_

from conftest import requires_cuda


def ref_ring(buffer, rows, ptr):
    """One row at a time: row k into slot ptr + k, wrapping."""
    out = buffer.clone()
    for k in range(rows.shape[0]):
        out[(ptr + k) % out.shape[0]] = rows[k]
    return out


def ref_fifo(batches, size):
    """The last `size` rows of everything enqueued, oldest first."""
    rows = [r for b in batches for r in b]
    return rows[-size:] if rows else []


# ---------------------------------------------------------------- the op

@pytest.mark.parametrize("dtype", [torch.float32, torch.float64, torch.float16, torch.int64, torch.uint8])
@pytest.mark.parametrize("size,n,ptr", [(7, 3, 0), (7, 3, 5), (7, 7, 4), (7, 16, 2), (7, 0, 3), (1, 5, 0)])
def test_enqueue_op_matches_row_by_row(device, dtype, size, n, ptr):
    g = torch.Generator().manual_seed(size * 100 + n * 10 + ptr)
    buffer = (torch.rand(size, 5, generator=g) * 100).to(dtype).to(device)
    rows = (torch.rand(n, 5, generator=g) * 100).to(dtype).to(device)
    expected = ref_ring(buffer, rows, ptr)
    new_ptr = queue_enqueue_(buffer, rows, ptr)
    assert torch.equal(buffer, expected)
    assert new_ptr == (ptr + n) % size


def test_enqueue_op_odd_row_width_and_1d(device):
    # 3-byte rows (no wide copy unit fits) and 1-D buffers (labels / ids).
    buffer = torch.zeros(5, 3, dtype=torch.uint8, device=device)
    rows = torch.arange(24, dtype=torch.uint8, device=device).view(8, 3)
    expected = ref_ring(buffer, rows, 4)
    queue_enqueue_(buffer, rows, 4)
    assert torch.equal(buffer, expected)
    ids = torch.full((4,), -1, dtype=torch.long, device=device)
    queue_enqueue_(ids, torch.tensor([10, 11, 12], device=device), 3)
    assert ids.tolist() == [11, 12, -1, 10]


def test_enqueue_non_contiguous_rows(device):
    buffer = torch.zeros(6, 4, device=device)
    rows = torch.arange(32.0, device=device).view(4, 8)[:, ::2]
    expected = ref_ring(buffer, rows, 5)
    queue_enqueue_(buffer, rows, 5)
    assert torch.equal(buffer, expected)


def test_enqueue_many_matches_one_ring_at_a_time(device):
    g = torch.Generator().manual_seed(5)
    for n, ptr in [(3, 6), (20, 2), (0, 1)]:
        rings = [torch.randn(7, 4, generator=g).to(device), torch.arange(7, device=device),
                 torch.zeros(7, 3, dtype=torch.uint8, device=device)]
        rows = [torch.randn(n, 4, generator=g).to(device), torch.arange(n, device=device) + 100,
                torch.full((n, 3), 9, dtype=torch.uint8, device=device)]
        expected = [ref_ring(b, r, ptr) for b, r in zip(rings, rows)]
        assert queue_enqueue_many_(rings, rows, ptr) == (ptr + n) % 7
        for got, exp in zip(rings, expected):
            assert torch.equal(got, exp)


@pytest.mark.parametrize(
    "buffers,rows,match",
    [
        ([torch.zeros(4, 2), torch.zeros(5)], [torch.zeros(1, 2), torch.zeros(1)], "slots"),
        ([torch.zeros(4, 2), torch.zeros(4)], [torch.zeros(1, 2), torch.zeros(2)], "rows"),
        ([torch.zeros(4, 2)], [torch.zeros(1, 2), torch.zeros(1)], "length"),
        ([], [], "buffers"),
    ],
)
def test_enqueue_many_bad_input(buffers, rows, match):
    with pytest.raises(ValueError, match=match):
        queue_enqueue_many_(buffers, rows, 0)
    if buffers:
        with pytest.raises((ValueError, RuntimeError)):
            torch.ops.ssml_fast.queue_enqueue_many_(buffers, rows, 0)


def test_enqueue_opcheck():
    rings = [torch.zeros(5, 3), torch.zeros(5, dtype=torch.long)]
    for n, ptr in [(3, 4), (8, 1), (0, 0)]:
        torch.library.opcheck(torch.ops.ssml_fast.queue_enqueue_many_.default,
                              (rings, [torch.randn(n, 3), torch.arange(n)], ptr))
    buffer = torch.zeros(5, 3)
    for rows, ptr in [(torch.randn(3, 3), 4), (torch.randn(8, 3), 1), (torch.randn(0, 3), 0)]:
        torch.library.opcheck(torch.ops.ssml_fast.queue_enqueue_.default, (buffer, rows, ptr))


@pytest.mark.parametrize(
    "buffer,rows,ptr,match",
    [
        (torch.zeros(0, 3), torch.zeros(1, 3), 0, "buffer"),
        (torch.zeros(4, 3), torch.zeros(2, 5), 0, "rows"),
        (torch.zeros(4, 3), torch.zeros(2, 3, dtype=torch.float64), 0, "rows"),
        (torch.zeros(4, 3), torch.zeros(2, 3), 4, "ptr"),
        (torch.zeros(4, 3), torch.zeros(2, 3), -1, "ptr"),
        (torch.zeros(3, 4).T, torch.zeros(2, 3), 0, "buffer"),
    ],
)
def test_enqueue_op_bad_input(buffer, rows, ptr, match):
    with pytest.raises((ValueError, TypeError), match=match):
        queue_enqueue_(buffer, rows, ptr)
    # The raw op refuses too (no out-of-bounds write when called directly).
    with pytest.raises((ValueError, TypeError, RuntimeError), match=match):
        torch.ops.ssml_fast.queue_enqueue_(buffer, rows, ptr)


# ---------------------------------------------------------------- FeatureQueue

def check_queue(q, batches, size):
    rows = ref_fifo(batches, size)
    emb, labels, ids = q.get()
    assert len(q) == len(rows) and q.is_full == (len(rows) == size)
    if rows:
        ref = torch.stack(rows)
        assert torch.equal(emb, ref[:, :-2])
        assert torch.equal(labels, ref[:, -2].long())
        assert torch.equal(ids, ref[:, -1].long())
    else:
        assert emb.shape == (0, q.dim) and labels.shape == ids.shape == (0,)


def random_batch(g, n, dim, start):
    emb = torch.randn(n, dim, generator=g, dtype=torch.float64)
    labels = torch.randint(0, 5, (n,), generator=g)
    ids = torch.arange(start, start + n)
    return emb, labels, ids


def test_fifo_over_many_batch_sizes(device):
    size, dim = 16, 3
    g = torch.Generator().manual_seed(0)
    q = FeatureQueue(size, dim, dtype=torch.float64, device=device)
    batches, seen = [], 0
    # Smaller than, equal to and larger than the queue, and empty batches.
    for n in [0, 5, 16, 3, 40, 1, 15, 16, 17, 0, 7, 33, 2]:
        emb, labels, ids = random_batch(g, n, dim, seen)
        seen += n
        q.enqueue(emb.to(device), labels.to(device), ids.to(device))
        batches.append(torch.cat([emb, labels[:, None].double(), ids[:, None].double()], 1))
        check_queue(q, batches, size)


@settings(max_examples=30, deadline=None)
@given(size=st.integers(1, 12), sizes=st.lists(st.integers(0, 30), min_size=1, max_size=8))
def test_fifo_property(size, sizes):
    g = torch.Generator().manual_seed(size)
    q = FeatureQueue(size, 2, dtype=torch.float64)
    batches, seen = [], 0
    for n in sizes:
        emb, labels, ids = random_batch(g, n, 2, seen)
        seen += n
        q.enqueue(emb, labels, ids)
        batches.append(torch.cat([emb, labels[:, None].double(), ids[:, None].double()], 1))
    check_queue(q, batches, size)
    # view() holds the same entries in storage order.
    emb_v, _, ids_v = q.view()
    emb_g, _, ids_g = q.get()
    assert sorted(ids_v.tolist()) == sorted(ids_g.tolist())


def test_missing_labels_and_ids_are_minus_one():
    q = FeatureQueue(4, 2)
    q.enqueue(torch.ones(3, 2))
    _, labels, ids = q.get()
    assert labels.tolist() == [-1, -1, -1] and ids.tolist() == [-1, -1, -1]


def test_enqueue_casts_to_queue_dtype_and_detaches():
    q = FeatureQueue(4, 2, dtype=torch.float16)
    x = torch.randn(3, 2, requires_grad=True)
    q.enqueue(x * 2)
    emb, _, _ = q.get()
    assert emb.dtype == torch.float16 and not emb.requires_grad
    assert torch.equal(emb, (x * 2).detach().half())


def test_storage_allocated_once():
    q = FeatureQueue(8, 3)
    ptrs = [q.embeddings.data_ptr(), q.labels.data_ptr(), q.ids.data_ptr()]
    for n in [3, 9, 20, 1]:
        q.enqueue(torch.randn(n, 3), torch.zeros(n, dtype=torch.long), torch.arange(n))
    assert [q.embeddings.data_ptr(), q.labels.data_ptr(), q.ids.data_ptr()] == ptrs


def test_state_dict_round_trip_is_bit_identical():
    g = torch.Generator().manual_seed(1)
    a = FeatureQueue(10, 4)
    for n in [3, 4, 6]:
        a.enqueue(torch.randn(n, 4, generator=g), torch.randint(0, 3, (n,), generator=g), torch.arange(n))
    buf = io.BytesIO()
    torch.save(a.state_dict(), buf)
    buf.seek(0)
    b = FeatureQueue(10, 4)
    b.load_state_dict(torch.load(buf))
    assert (b.ptr, b.count) == (a.ptr, a.count)
    for n in [5, 12, 2]:  # continuing from the checkpoint gives the same queue
        emb = torch.randn(n, 4, generator=g)
        labels, ids = torch.randint(0, 3, (n,), generator=g), torch.arange(n)
        a.enqueue(emb, labels, ids)
        b.enqueue(emb, labels, ids)
        for x, y in zip(a.get(), b.get()):
            assert torch.equal(x, y)
        assert (b.ptr, b.count) == (a.ptr, a.count)


def test_load_state_dict_rejects_inconsistent_state():
    state = FeatureQueue(4, 2).state_dict()
    state["_extra_state"] = {"ptr": 1, "count": 3}
    with pytest.raises(ValueError, match="ptr"):
        FeatureQueue(4, 2).load_state_dict(state)


def test_topk_excludes_own_id():
    g = torch.Generator().manual_seed(2)
    q = FeatureQueue(20, 4, dtype=torch.float64)
    emb = torch.nn.functional.normalize(torch.randn(20, 4, generator=g, dtype=torch.float64), dim=1)
    q.enqueue(emb, torch.arange(20) % 3, torch.arange(20) + 100)
    query = emb[:5]
    scores, ids, labels = q.topk(query, 4, exclude_ids=torch.arange(5) + 100)
    full = query @ emb.T
    full[torch.arange(5), torch.arange(5)] = float("-inf")
    ref_s, ref_i = full.sort(dim=1, descending=True)
    assert torch.allclose(scores, ref_s[:, :4])
    assert torch.equal(ids, ref_i[:, :4] + 100)
    assert torch.equal(labels, ref_i[:, :4] % 3)


@pytest.mark.parametrize(
    "make,match",
    [
        (lambda: FeatureQueue(0, 4), "size"),
        (lambda: FeatureQueue(4, 0), "dim"),
        (lambda: FeatureQueue(4.5, 4), "size"),
        (lambda: FeatureQueue(4, 4, dtype=torch.int64), "dtype"),
        (lambda: FeatureQueue(4, 4).enqueue(torch.zeros(2, 3)), "emb"),
        (lambda: FeatureQueue(4, 4).enqueue(torch.zeros(4)), "emb"),
        (lambda: FeatureQueue(4, 4).enqueue(torch.zeros(2, 4), labels=torch.zeros(3, dtype=torch.long)), "labels"),
        (lambda: FeatureQueue(4, 4).enqueue(torch.zeros(2, 4), ids=torch.zeros(2)), "ids"),
        (lambda: FeatureQueue(4, 4).topk(torch.zeros(2, 4), 1), "k"),
    ],
)
def test_bad_input(make, match):
    with pytest.raises((ValueError, TypeError), match=match):
        make()


# ---------------------------------------------------------------- CUDA

def test_cuda_kernel_registered_when_built():
    if ssml_fast.build_info()["cuda"]:
        assert torch._C._dispatch_has_kernel_for_dispatch_key("ssml_fast::queue_enqueue_", "CUDA")


@requires_cuda
@pytest.mark.parametrize("dtype", [torch.float32, torch.float16, torch.int64, torch.uint8])
def test_cuda_matches_cpu(dtype):
    for size, n, ptr, width in [(64, 10, 60, 128), (64, 200, 3, 128), (33, 7, 30, 3)]:
        buffer = (torch.rand(size, width) * 100).to(dtype)
        rows = (torch.rand(n, width) * 100).to(dtype)
        gpu = buffer.cuda()
        queue_enqueue_(buffer, rows, ptr)
        queue_enqueue_(gpu, rows.cuda(), ptr)
        assert torch.equal(gpu.cpu(), buffer)


# ---------------------------------------------------------------- torch.distributed

def _free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _rank_batch(rank, step):
    # Different batch sizes per rank and step, empty on one rank and on all, one larger than the queue.
    n = [[3, 5], [0, 4], [0, 0], [12, 2], [6, 6]][step][rank]
    emb = torch.full((n, 2), float(rank)) + torch.arange(n, dtype=torch.float32)[:, None] * 0.01 + step
    return emb, torch.full((n,), rank), torch.arange(n) + 1000 * rank + 100 * step


def _worker(rank, world, port, out_dir):
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
    dist.init_process_group("gloo", rank=rank, world_size=world)
    try:
        torch.set_num_threads(1)
        q = FeatureQueue(10, 2)
        for step in range(5):
            q.enqueue(*_rank_batch(rank, step))
        torch.save(q.get(), os.path.join(out_dir, f"rank{rank}.pt"))
    finally:
        dist.destroy_process_group()


def test_distributed_ranks_hold_identical_queue(tmp_path):
    world = 2
    mp.spawn(_worker, args=(world, _free_port(), str(tmp_path)), nprocs=world, join=True)
    got = [torch.load(tmp_path / f"rank{r}.pt") for r in range(world)]
    for x, y in zip(*got):
        assert torch.equal(x, y)
    # Reference: each step's rows of rank 0, then of rank 1, pushed through a plain FIFO.
    rows = []
    for step in range(5):
        for r in range(world):
            emb, labels, ids = _rank_batch(r, step)
            rows += [(e, l, i) for e, l, i in zip(emb, labels, ids)]
    rows = rows[-10:]
    assert torch.equal(got[0][0], torch.stack([e for e, _, _ in rows]))
    assert got[0][1].tolist() == [int(l) for _, l, _ in rows]
    assert got[0][2].tolist() == [int(i) for _, _, i in rows]
