"""Two gloo processes on the CPU: losses, gradients, memories and teachers equal one process on the
concatenated batch.

One spawned run (2 processes, one process group) performs every check and reports a dict; the tests
below read it. The single-process reference is computed inside each rank on the full (concatenated)
batch, so nothing depends on comparing across processes except where the check is "identical on all
ranks" (then the states are all-gathered and compared bitwise).
"""
from __future__ import annotations

import copy
import os
import tempfile
import traceback

import pytest
import torch
import torch.multiprocessing as mp
from torch import nn

WORLD = 2
RTOL = 1e-6


# ---------------------------------------------------------------------------------------------------
# helpers run inside the spawned processes
def _rel(a: torch.Tensor, b: torch.Tensor) -> float:
    """Relative difference ||a - b|| / max(||b||, tiny)."""
    a, b = a.detach().double().flatten(), b.detach().double().flatten()
    return float((a - b).norm() / b.norm().clamp_min(1e-30))


def _grads(module: nn.Module) -> list:
    return [p.grad.detach().clone() if p.grad is not None else torch.zeros_like(p) for p in module.parameters()
            if p.requires_grad]


def _max_rel(gs, hs) -> float:
    """Worst per-tensor relative difference; a tensor whose reference is ~0 (the bias of a head under a
    translation-invariant loss: its gradient is rounding noise) is measured against the whole gradient."""
    total = torch.cat([h.detach().double().flatten() for h in hs]).norm()
    return max(float((g.detach().double() - h.detach().double()).norm()
                     / torch.maximum(h.detach().double().norm(), total * 1e-6).clamp_min(1e-30))
               for g, h in zip(gs, hs))


def _same_on_all_ranks(tensors) -> bool:
    """Bitwise equality of a list of tensors across the ranks."""
    from ssml_fast.distributed import all_gather_object

    mine = [t.detach().cpu() if torch.is_tensor(t) else t for t in tensors]
    everyone = all_gather_object(mine)
    same = lambda a, b: torch.equal(a, b) if torch.is_tensor(a) else a == b  # noqa: E731
    return all(all(same(a, b) for a, b in zip(everyone[0], other)) for other in everyone[1:])


def _global_batch(seed: int, n: int, d: int, classes: int):
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(n, d, generator=g, dtype=torch.float64)
    labels = torch.arange(n) % classes
    labels = labels[torch.randperm(n, generator=g)]
    return x, labels


def _local(t: torch.Tensor, rank: int, sizes) -> torch.Tensor:
    start = sum(sizes[:rank])
    return t[start:start + sizes[rank]]


def _model(d_in=6, d_out=8):
    torch.manual_seed(0)
    return nn.Sequential(nn.Linear(d_in, 12), nn.Tanh(), nn.Linear(12, d_out)).double()


def _check_loss(rank, name, make_loss, make_miner=None, *, sizes=(8, 8), classes=4, ids_as_labels=False):
    """DDP(model) -> DistributedLossWrapper(loss, miner) vs loss(model(x_all)) in one process."""
    from torch.nn.parallel import DistributedDataParallel as DDP

    from ssml_fast.distributed import DistributedLossWrapper, all_reduce_mean

    n = sum(sizes)
    x, labels = _global_batch(1, n, 6, classes)
    if ids_as_labels:  # NT-Xent: two "views" share an id
        labels = torch.arange(n // 2).repeat(2)
    ref = _model()
    loss_ref_fn, miner_ref = make_loss(), (make_miner() if make_miner else None)
    emb = ref(x)
    idx = miner_ref(emb, labels) if miner_ref is not None else None
    value_ref = loss_ref_fn(emb, labels, idx) if idx is not None else loss_ref_fn(emb, labels)
    value_ref.backward()
    g_ref = _grads(ref)

    net = DDP(_model())
    wrapped = DistributedLossWrapper(make_loss(), make_miner() if make_miner else None)
    value = wrapped(net(_local(x, rank, sizes)), _local(labels, rank, sizes))
    value.backward()
    g = _grads(net.module)
    return {"loss_rel": _rel(value, value_ref), "grad_rel": _max_rel(g, g_ref),
            "loss_mean_rel": _rel(all_reduce_mean(value.detach()), value_ref),
            "nonzero": float(value_ref.detach().abs()), "grad_norm": float(sum(t.norm() for t in g_ref))}


def _check_stml(rank):
    from torch.nn.parallel import DistributedDataParallel as DDP

    from ssml_fast.distributed import DistributedLossWrapper
    from ssml_fast.losses import STMLLoss

    class Student(nn.Module):
        def __init__(self):
            super().__init__()
            torch.manual_seed(0)
            self.trunk = nn.Sequential(nn.Linear(6, 10), nn.Tanh()).double()
            self.f, self.g = nn.Linear(10, 5).double(), nn.Linear(10, 7).double()

        def forward(self, x):
            h = self.trunk(x)
            return self.f(h), self.g(h)

    n_img, views = 12, 2
    x, _ = _global_batch(2, n_img * views, 6, 3)
    ids = torch.arange(n_img).repeat(views)          # global layout [view1 of all; view2 of all]
    teacher = torch.randn(n_img * views, 7, generator=torch.Generator().manual_seed(3), dtype=torch.float64)
    # The concatenated batch: rank r's rows are its images' two views.
    sizes = [n_img // WORLD] * WORLD
    order = torch.cat([torch.cat([torch.arange(s, s + sizes[r]) + v * n_img for v in range(views)])
                       for r, s in enumerate([0, sizes[0]])])
    x_cat, ids_cat, t_cat = x[order], ids[order], teacher[order]
    local = slice(rank * n_img, (rank + 1) * n_img)  # each rank holds n_img rows (its images x 2 views)

    ref = Student()
    f, g = ref(x_cat)
    loss_ref = STMLLoss(sigma=3.0, k=4)(f, g, t_cat, ids_cat)
    loss_ref.backward()
    net = DDP(Student())
    f, g = net(x_cat[local])
    loss = DistributedLossWrapper(STMLLoss(sigma=3.0, k=4))(f, g, t_cat[local], ids_cat[local])
    loss.backward()
    return {"loss_rel": _rel(loss, loss_ref), "grad_rel": _max_rel(_grads(net.module), _grads(ref))}


def _moco_method(queue_size):
    from ssml_fast.methods import get_method, make_config
    from ssml_fast.methods.base import DataInfo

    cfg = make_config("moco", "small", [("test", {"batch_size": 8, "queue_size": queue_size, "projection_dim": 8,
                                                  "head": "linear", "queue_init": "random"})])
    info = DataInfo(image_shape=(1, 8, 8), mean=0.0, std=1.0, num_train=64, train_classes=())
    torch.manual_seed(0)
    return get_method("moco")(cfg, info).double()


def _check_moco(rank):
    """MoCo: local InfoNCE against the shared queue; DDP averaging + SyncBatchNorm + rank-ordered enqueue =
    the single-process run on the global batch, over steps that wrap the queue around."""
    from ssml_fast.distributed import all_reduce_mean, convert_sync_batchnorm, gathered, wrap_ddp
    from ssml_fast.methods.base import Batch

    B, steps = 8, 4
    ref = _moco_method(queue_size=12)  # 12 = 1.5 global batches: wraps at the second enqueue
    dist_m = convert_sync_batchnorm(copy.deepcopy(ref))
    ddp = wrap_ddp(dist_m, torch.device("cpu"))
    opt_ref = torch.optim.SGD([p for p in ref.parameters() if p.requires_grad], lr=0.5)
    opt = torch.optim.SGD([p for p in dist_m.parameters() if p.requires_grad], lr=0.5)
    worst = {"loss_rel": 0.0, "grad_rel": 0.0, "queue_rel": 0.0, "key_rel": 0.0}
    g = torch.Generator().manual_seed(5)
    for _ in range(steps):
        v1 = torch.randn(B, 1, 8, 8, generator=g, dtype=torch.float64)
        v2 = v1 + 0.3 * torch.randn(B, 1, 8, 8, generator=g, dtype=torch.float64)
        idx = torch.arange(B)
        full = Batch(views=[v1, v2], labels=None, index=idx)
        with gathered():  # the reference already holds the global batch: its queue must not gather
            out_ref = ref.training_step(full)
            opt_ref.zero_grad()
            out_ref.loss.backward()
            g_ref = _grads(ref)
            opt_ref.step()
            ref.after_step(full, out_ref)

        sl = slice(rank * B // WORLD, (rank + 1) * B // WORLD)
        part = Batch(views=[v1[sl], v2[sl]], labels=None, index=idx[sl])
        out = ddp(part)
        opt.zero_grad()
        out.loss.backward()
        g_d = _grads(dist_m)
        opt.step()
        dist_m.after_step(part, out)
        worst["loss_rel"] = max(worst["loss_rel"], _rel(all_reduce_mean(out.loss.detach()), out_ref.loss))
        worst["grad_rel"] = max(worst["grad_rel"], _max_rel(g_d, g_ref))
        worst["queue_rel"] = max(worst["queue_rel"], _rel(dist_m.queue.embeddings, ref.queue.embeddings))
        worst["key_rel"] = max(worst["key_rel"], _max_rel(list(dist_m.key_encoder.state_dict().values()),
                                                          list(ref.key_encoder.state_dict().values())))
    worst["queue_ptr_same"] = (dist_m.queue.ptr, dist_m.queue.count) == (ref.queue.ptr, ref.queue.count)
    worst["identical_on_ranks"] = _same_on_all_ranks(list(dist_m.state_dict().values()))
    return worst


def _check_memories(rank):
    """FeatureQueue and MemoryBank filled with different row counts per rank, past wrap-around: identical
    on both ranks and equal to one process fed the concatenation."""
    from ssml_fast.distributed import gathered
    from ssml_fast.memory import FeatureQueue, MemoryBank

    sizes = (3, 5)
    q, q_ref = FeatureQueue(10, 4), FeatureQueue(10, 4)
    bank, bank_ref = MemoryBank(20, 4), MemoryBank(20, 4)
    g = torch.Generator().manual_seed(7)
    for step in range(5):  # 40 rows through a 10-slot ring
        emb = torch.randn(sum(sizes), 4, generator=g)
        labels = torch.randint(0, 3, (sum(sizes),), generator=g)
        ids = torch.randint(0, 20, (sum(sizes),), generator=g)
        with gathered():  # the single-process references: no gather
            q_ref.enqueue(emb, labels, ids)
            bank_ref.update(ids, emb, 0.5)
        q.enqueue(_local(emb, rank, sizes), _local(labels, rank, sizes), _local(ids, rank, sizes))
        bank.update(_local(ids, rank, sizes), _local(emb, rank, sizes), 0.5)
    same_ref = all(torch.equal(a, b) for a, b in zip(q.get(), q_ref.get())) and torch.equal(bank.bank, bank_ref.bank)
    return {"queue_equals_single": same_ref, "pointer": (q.ptr, q.count) == (q_ref.ptr, q_ref.count),
            "identical_on_ranks": _same_on_all_ranks([*q.get(), bank.bank])}


def _check_cross_batch(rank):
    """CrossBatchMemory inside DistributedLossWrapper: the memory holds the global batches once, and the
    loss / gradient equal one process over three steps (the memory wraps)."""
    from torch.nn.parallel import DistributedDataParallel as DDP

    from ssml_fast.distributed import DistributedLossWrapper, gathered
    from ssml_fast.losses import ContrastiveLoss
    from ssml_fast.memory import CrossBatchMemory

    sizes = (6, 6)
    ref, net = _model(), DDP(_model())
    xbm_ref = CrossBatchMemory(ContrastiveLoss(), 8, memory_size=20)
    xbm = DistributedLossWrapper(CrossBatchMemory(ContrastiveLoss(), 8, memory_size=20))
    worst = {"loss_rel": 0.0, "grad_rel": 0.0}
    for step in range(3):
        x, labels = _global_batch(10 + step, sum(sizes), 6, 3)
        ref.zero_grad()
        with gathered():
            v_ref = xbm_ref(ref(x), labels)
        v_ref.backward()
        net.zero_grad()
        v = xbm(net(_local(x, rank, sizes)), _local(labels, rank, sizes))
        v.backward()
        worst["loss_rel"] = max(worst["loss_rel"], _rel(v, v_ref))
        worst["grad_rel"] = max(worst["grad_rel"], _max_rel(_grads(net.module), _grads(ref)))
    # The memory stores the batch's dtype (float64 here, as PML's): the DDP shards' forward on 6 rows and the
    # single process's on 12 round differently in the last bit, so the stored rows are compared to the single
    # process within RTOL (labels / ids exactly), and bitwise across the ranks.
    (emb, *rest), (emb_ref, *rest_ref) = xbm.loss.queue.get(), xbm_ref.queue.get()
    worst["memory_rel"] = _rel(emb, emb_ref)
    worst["memory_dtype"] = emb.dtype == emb_ref.dtype == torch.float64
    worst["memory_labels_ids_equal"] = all(torch.equal(a, b) for a, b in zip(rest, rest_ref))
    worst["memory_identical_on_ranks"] = _same_on_all_ranks([*xbm.loss.queue.get(), xbm.loss.queue.ptr,
                                                             xbm.loss.queue.count])
    return worst


def _check_gather(rank):
    """Unequal row counts: gathered rows in rank order, gradient = the sum over ranks of dL_r/dz_r."""
    from ssml_fast.distributed import gather_batch, sharded_rows

    sizes = (2, 5)
    full = torch.arange(sum(sizes) * 3, dtype=torch.float64).view(-1, 3)
    mine = _local(full, rank, sizes).clone().requires_grad_(True)
    ids = _local(torch.arange(sum(sizes)), rank, sizes)
    z, zi = gather_batch(mine, ids)
    w = torch.linspace(-1, 1, z.numel(), dtype=torch.float64).view_as(z) * (rank + 1)  # rank-dependent loss
    (w * z).sum().backward()
    expected = _local(torch.linspace(-1, 1, z.numel(), dtype=torch.float64).view_as(z) * 3, rank, sizes)
    emb = sharded_rows(lambda s, e: full[s:e] * 2, len(full))
    return {"rows": torch.equal(z.detach(), full), "ids": torch.equal(zi, torch.arange(sum(sizes))),
            "grad": torch.allclose(mine.grad, expected), "sharded": torch.equal(emb, full * 2)}


def _check_stml_teacher(rank):
    """STML under DDP without SyncBatchNorm: BN statistics averaged after each backward, then the EMA: the
    teachers (parameters and BN buffers) stay bitwise identical on both ranks."""
    from ssml_fast.distributed import average_batchnorm_buffers, wrap_ddp
    from ssml_fast.methods import get_method, make_config
    from ssml_fast.methods.base import Batch, DataInfo

    cfg = make_config("stml", "small", [("test", {"batch_size": 8, "neighbours_per_query": 2, "embedding_dim": 8,
                                                  "g_dim": 8})])
    torch.manual_seed(0)
    m = get_method("stml")(cfg, DataInfo(image_shape=(1, 8, 8), mean=0.0, std=1.0, num_train=32, train_classes=()))
    ddp = wrap_ddp(m, torch.device("cpu"))
    opt = torch.optim.SGD([p for p in m.parameters() if p.requires_grad], lr=0.1)
    g = torch.Generator().manual_seed(11 + rank)  # different data on each rank
    for _ in range(3):
        v = [torch.randn(4, 1, 8, 8, generator=g) for _ in range(2)]
        out = ddp(Batch(views=v, labels=None, index=torch.arange(4) + 4 * rank))
        opt.zero_grad()
        out.loss.backward()
        average_batchnorm_buffers(m)
        m.after_backward()
        opt.step()
    return {"teacher_identical": _same_on_all_ranks(list(m.teacher.state_dict().values())),
            "student_identical": _same_on_all_ranks(list(m.state_dict().values()))}


def _check_stml_memory(rank):
    """stml_memory on two ranks (each a shard of the global batch) against one process on the whole batch:
    the loss over the gathered batch ∪ the memory, the memory and its cached teacher Gram / neighbour lists,
    through enough steps to fill and wrap the memory. Eval mode (BN running statistics) and one view, so a
    shard's rows are the global batch's rows in the same (rank) order."""
    from ssml_fast.distributed import gathered
    from ssml_fast.methods import get_method, make_config
    from ssml_fast.methods.base import Batch, DataInfo

    cfg = make_config("stml_memory", "small", [("test", {
        "batch_size": 8, "neighbours_per_query": 2, "views": 1, "embedding_dim": 8, "g_dim": 8,
        "memory_size": 20, "memory_warmup": 1})])
    torch.manual_seed(0)
    m = get_method("stml_memory")(cfg, DataInfo(image_shape=(1, 8, 8), mean=0.0, std=1.0, num_train=64,
                                                train_classes=()))
    ref = copy.deepcopy(m)
    ref.memory.gather = False  # the single process inside this rank
    m.eval(), ref.eval()
    g = torch.Generator().manual_seed(5)
    loss_rel, grad_rel = 0.0, 0.0
    for _ in range(6):
        x = torch.randn(8, 1, 8, 8, generator=g)
        idx = torch.randperm(64, generator=g)[:8]
        local = slice(4 * rank, 4 * rank + 4)
        out = m.training_step(Batch(views=[x[local]], labels=None, index=idx[local]))
        with gathered():  # the reference is one process: its batch is already the global one
            out_ref = ref.training_step(Batch(views=[x], labels=None, index=idx))
        loss_rel = max(loss_rel, _rel(out.loss, out_ref.loss))
        ga = torch.autograd.grad(out.loss, list(m.head_f.parameters()))
        gb = torch.autograd.grad(out_ref.loss, list(ref.head_f.parameters()))
        # What DDP does with the parameter gradients: the mean over the ranks.
        import torch.distributed as dist

        ga = [t.clone() for t in ga]
        for t in ga:
            dist.all_reduce(t)
            t /= WORLD
        grad_rel = max(grad_rel, _max_rel(ga, gb))
        m.after_step(None, out)
        ref.after_step(None, out_ref)
    mem = [m.memory.embeddings, m.memory.ids, m.cache.gram, m.cache.nbr_idx, m.cache.nbr_val, m.cache.nbr_cut]
    return {"loss_rel": loss_rel, "grad_rel": grad_rel, "used": float(out.logs["memory_used"]),
            "memory_rel": _rel(m.memory.embeddings, ref.memory.embeddings),
            "ids_equal": torch.equal(m.memory.ids, ref.memory.ids),
            "cache_rel": _rel(m.cache.gram, ref.cache.gram),
            "lists_equal": torch.equal(m.cache.nbr_idx, ref.cache.nbr_idx),
            "identical_on_ranks": _same_on_all_ranks(mem)}


def _check_gathered_method(rank, name, overrides):
    """A two-view method whose loss uses batch statistics or in-batch negatives (spreading, barlow_twins,
    vicreg): two ranks, each a shard of the global batch, against one process on the whole batch. Loss and
    the DDP-averaged gradient of every parameter; eval mode (BN running statistics) so a shard's rows are
    the global batch's rows."""
    import torch.distributed as dist

    from ssml_fast.distributed import gathered
    from ssml_fast.methods import get_method, make_config
    from ssml_fast.methods.base import Batch, DataInfo

    cfg = make_config(name, "small", [("test", {"batch_size": 8, **overrides})])
    torch.manual_seed(0)
    m = get_method(name)(cfg, DataInfo(image_shape=(1, 8, 8), mean=0.0, std=1.0, num_train=64, train_classes=()))
    ref = copy.deepcopy(m)
    m.eval(), ref.eval()
    g = torch.Generator().manual_seed(9)
    views = [torch.randn(8, 1, 8, 8, generator=g) for _ in range(2)]
    idx = torch.arange(8)
    local = slice(4 * rank, 4 * rank + 4)
    out = m.training_step(Batch(views=[v[local] for v in views], labels=None, index=idx[local]))
    with gathered():
        out_ref = ref.training_step(Batch(views=views, labels=None, index=idx))
    params = [p for p in m.parameters() if p.requires_grad]
    ga = list(torch.autograd.grad(out.loss, params, allow_unused=True))
    ga = [torch.zeros_like(p) if t is None else t.clone() for t, p in zip(ga, params)]
    for t in ga:
        dist.all_reduce(t)
        t /= WORLD
    ref_params = [p for p in ref.parameters() if p.requires_grad]
    gb = [torch.zeros_like(p) if t is None else t
          for t, p in zip(torch.autograd.grad(out_ref.loss, ref_params, allow_unused=True), ref_params)]
    mean = out.loss.detach().clone()
    dist.all_reduce(mean)
    mean /= WORLD  # what the trainer logs (epoch sums averaged over the ranks)
    return {"loss_rel": _rel(out.loss, out_ref.loss), "loss_mean_rel": _rel(mean, out_ref.loss),
            "grad_rel": _max_rel(ga, gb)}


def _check_training_group(rank):
    """The trainer's per-step and per-epoch collectives: a Ctrl-C or a NaN on one rank is seen by every rank at
    the same step; epoch sums are averaged, images summed; a checkpoint error on rank 0 is raised everywhere."""
    from ssml_fast.distributed import TrainingGroup

    group = TrainingGroup(torch.device("cpu"))
    loss, stop = group.step_loss(torch.tensor(1.0 + rank), interrupt=(rank == 1))
    nan, _ = group.step_loss(torch.tensor(float("nan") if rank == 0 else 2.0), interrupt=False)
    sums, images = group.reduce_epoch({"loss": torch.tensor(2.0 * (rank + 1), dtype=torch.float64)}, 30 + rank)
    try:
        group.load_on_main(lambda: (_ for _ in ()).throw(FileNotFoundError("no checkpoint at x")))
        raised = False
    except FileNotFoundError as e:
        raised = "no checkpoint" in str(e)
    state = group.load_on_main(lambda: {"w": torch.arange(3)})
    seeds = group.gather_states(group.views_seed_parts())
    return {"loss": float(loss) == 1.5, "stop": stop, "nan": not bool(torch.isfinite(nan)),
            "sums": float(sums["loss"]) == 3.0, "images": images == 61, "raised": raised,
            "broadcast": torch.equal(state["w"], torch.arange(3)), "streams_differ": seeds[0] != seeds[1]}


def _checks():
    from ssml_fast import losses, miners

    return {
        "triplet_all": lambda r: _check_loss(r, "triplet_all", lambda: losses.TripletMarginLoss(margin=0.2)),
        "triplet_hard": lambda r: _check_loss(r, "triplet_hard", lambda: losses.TripletMarginLoss(margin=0.2),
                                              lambda: miners.BatchHardMiner()),
        "triplet_hard_fused": lambda r: _check_loss(r, "triplet_hard_fused",
                                                    lambda: losses.TripletMarginLoss(margin=0.2, mining="hard")),
        "triplet_unequal": lambda r: _check_loss(r, "triplet_unequal", lambda: losses.TripletMarginLoss(margin=0.2),
                                                 sizes=(5, 9)),
        "contrastive": lambda r: _check_loss(r, "contrastive", lambda: losses.ContrastiveLoss()),
        "ntxent": lambda r: _check_loss(r, "ntxent", lambda: losses.NTXentLoss(temperature=0.1), ids_as_labels=True),
        "multi_similarity": lambda r: _check_loss(r, "multi_similarity", lambda: losses.MultiSimilarityLoss(),
                                                  lambda: miners.MultiSimilarityMiner()),
        "stml": _check_stml,
        "moco": _check_moco,
        "memories": _check_memories,
        "cross_batch": _check_cross_batch,
        "gather": _check_gather,
        "stml_teacher": _check_stml_teacher,
        "stml_memory": _check_stml_memory,
        "spreading": lambda r: _check_gathered_method(r, "spreading", {}),
        "barlow_twins": lambda r: _check_gathered_method(r, "barlow_twins", {}),
        "vicreg": lambda r: _check_gathered_method(r, "vicreg", {}),
        "byol": lambda r: _check_gathered_method(r, "byol", {}),      # per-sample losses: exact without a gather
        "simsiam": lambda r: _check_gathered_method(r, "simsiam", {}),
        "training_group": _check_training_group,
    }


def _worker(rank: int, world: int, rdzv: str, out_dir: str) -> None:
    import torch.distributed as dist

    torch.set_num_threads(1)
    dist.init_process_group("gloo", init_method=f"file://{rdzv}", rank=rank, world_size=world)
    results = {}
    try:
        for name, fn in _checks().items():
            try:
                results[name] = fn(rank)
            except Exception:  # a failing check must not leave the other rank waiting in a collective
                results[name] = {"error": traceback.format_exc()}
                break
    finally:
        torch.save(results, os.path.join(out_dir, f"rank{rank}.pt"))
        dist.destroy_process_group()


@pytest.fixture(scope="module")
def results():
    # A failing check is caught inside the worker and reported (see _worker). A child killed by a signal is
    # something else: once in a full-suite run a rank aborted right after its first DDP backward with gloo's
    # "terminate called without an active exception" (not reproduced in 20 runs of this file alone). That
    # gets one retry, with a fresh rendezvous; a second signal death fails the tests.
    for attempt in range(2):
        with tempfile.TemporaryDirectory() as tmp:
            try:
                mp.spawn(_worker, args=(WORLD, os.path.join(tmp, "rdzv"), tmp), nprocs=WORLD, join=True)
            except mp.ProcessExitedException as e:
                if attempt == 1 or e.signal_name is None:
                    raise
                continue
            return [torch.load(os.path.join(tmp, f"rank{r}.pt"), weights_only=False) for r in range(WORLD)]


def _get(results, name):
    for r, res in enumerate(results):
        assert name in res, f"check {name} did not run on rank {r} (an earlier check failed: {res})"
        assert "error" not in res[name], f"rank {r}: {res[name]['error']}"
    return [res[name] for res in results]


@pytest.mark.parametrize("name", ["triplet_all", "triplet_hard", "triplet_hard_fused", "triplet_unequal",
                                  "contrastive", "ntxent", "multi_similarity"])
def test_wrapped_loss_and_ddp_gradient_equal_single_process(results, name):
    for r in _get(results, name):
        assert r["nonzero"] > 0 and r["grad_norm"] > 0  # a non-trivial case
        assert r["loss_rel"] < RTOL and r["loss_mean_rel"] < RTOL
        assert r["grad_rel"] < RTOL, r


def test_stml_loss_on_gathered_views_equals_single_process(results):
    for r in _get(results, "stml"):
        assert r["loss_rel"] < RTOL and r["grad_rel"] < RTOL, r


def test_moco_queue_ddp_syncbn_equals_single_process_through_wraparound(results):
    for r in _get(results, "moco"):
        assert r["loss_rel"] < RTOL and r["grad_rel"] < RTOL, r
        assert r["queue_rel"] < RTOL and r["key_rel"] < RTOL, r
        assert r["queue_ptr_same"] and r["identical_on_ranks"], r


def test_memory_queue_and_bank_identical_on_ranks_after_wraparound(results):
    for r in _get(results, "memories"):
        assert r["queue_equals_single"] and r["pointer"] and r["identical_on_ranks"], r


def test_cross_batch_memory_in_wrapper_equals_single_process(results):
    for r in _get(results, "cross_batch"):
        assert r["loss_rel"] < RTOL and r["grad_rel"] < RTOL and r["memory_rel"] < RTOL, r
        assert r["memory_dtype"] and r["memory_labels_ids_equal"] and r["memory_identical_on_ranks"], r


def test_gather_unequal_rows_rank_order_and_gradient(results):
    for r in _get(results, "gather"):
        assert all(r.values()), r


def test_stml_ema_teacher_identical_on_ranks(results):
    for r in _get(results, "stml_teacher"):
        assert r["teacher_identical"] and r["student_identical"], r


def test_stml_memory_gathered_batch_and_memory_equal_single_process(results):
    for r in _get(results, "stml_memory"):
        assert r["used"] > 0, r  # the memory took part
        assert r["loss_rel"] < RTOL and r["grad_rel"] < RTOL, r
        assert r["memory_rel"] < RTOL and r["ids_equal"] and r["cache_rel"] < RTOL and r["lists_equal"], r
        assert r["identical_on_ranks"], r


@pytest.mark.parametrize("name", ["spreading", "barlow_twins", "vicreg"])
def test_batch_statistic_methods_on_gathered_views_equal_single_process(results, name):
    for r in _get(results, name):
        assert r["loss_rel"] < RTOL and r["grad_rel"] < RTOL, r


@pytest.mark.parametrize("name", ["byol", "simsiam"])
def test_per_sample_methods_need_no_gather(results, name):
    """Per-sample losses: each rank's mean differs from the global one, but their average (what the trainer
    logs) and the DDP-averaged gradient equal one process on the whole batch."""
    for r in _get(results, name):
        assert r["loss_mean_rel"] < RTOL and r["grad_rel"] < RTOL, r


def test_trainer_collectives_keep_ranks_in_step(results):
    for r in _get(results, "training_group"):
        assert all(r.values()), r


# ---------------------------------------------------------------------------------------------------
# single-process checks (no process group)
def test_single_process_everything_is_identity():
    from ssml_fast.distributed import DistributedLossWrapper, gather_batch, sharded_rows, world
    from ssml_fast.losses import ContrastiveLoss

    x = torch.randn(6, 4, requires_grad=True)
    assert gather_batch(x) is x
    assert world().size == 1 and world().is_main
    labels = torch.tensor([0, 0, 1, 1, 2, 2])
    assert torch.equal(DistributedLossWrapper(ContrastiveLoss())(x, labels), ContrastiveLoss()(x, labels))
    assert torch.equal(sharded_rows(lambda s, e: x[s:e].detach(), 6), x.detach())


def test_wrapper_errors_name_the_argument():
    from ssml_fast.distributed import DistributedLossWrapper
    from ssml_fast.losses import ContrastiveLoss
    from ssml_fast.miners import BatchHardMiner

    with pytest.raises(TypeError, match="loss"):
        DistributedLossWrapper(3)
    w = DistributedLossWrapper(ContrastiveLoss(), BatchHardMiner())
    x, labels = torch.randn(4, 3), torch.tensor([0, 0, 1, 1])
    with pytest.raises(ValueError, match="indices_tuple"):
        w(x, labels, (torch.tensor([0]), torch.tensor([1]), torch.tensor([2])))
    assert w(x, labels).dim() == 0


def test_distributed_batch_sampler_shards_partition_every_batch():
    from ssml_fast.samplers import (CandidatePoolSampler, DistributedBatchSampler, MPerClassSampler,
                                    NearestNeighborBatchSampler, RandomBatchSampler)

    labels = torch.arange(60) % 6
    emb = torch.randn(60, 5, generator=torch.Generator().manual_seed(0))
    nn_s = NearestNeighborBatchSampler(60, 4, 2, seed=3, embeddings=emb)
    pool = CandidatePoolSampler(60, 4, 2, pool_size=10, seed=3)
    pool.build_pool(emb)
    makers = {
        "random": lambda: RandomBatchSampler(60, 12, seed=3),
        "pk": lambda: MPerClassSampler(labels, m=2, batch_size=12, seed=3),
        "nn": lambda: nn_s, "pool": lambda: pool,
    }
    for name, make in makers.items():
        for world in (2, 3):
            glob = make()
            glob.set_epoch(4)
            expected = list(glob)
            shards = []
            for rank in range(world):
                s = DistributedBatchSampler(make(), rank=rank, world_size=world)
                s.set_epoch(4)  # the same epoch seed on every rank
                shards.append(list(s))
                assert len(s) == len(expected)
            for step, batch in enumerate(expected):
                parts = [sh[step] for sh in shards]
                assert sum(parts, []) == list(batch), (name, world)  # disjoint positions, union = the batch
    s = DistributedBatchSampler(nn_s, rank=0, world_size=2)
    assert s.unit == 3 and s.aligned  # 12 / 2 = 6 = two whole (anchor + 2 neighbours) tuples
    assert not DistributedBatchSampler(nn_s, rank=0, world_size=3).aligned  # 4 positions: a tuple is cut
    with pytest.raises(ValueError, match="rank"):
        DistributedBatchSampler(RandomBatchSampler(60, 12, seed=0), rank=2, world_size=2)
    with pytest.raises(TypeError, match="index sampler"):
        DistributedBatchSampler(MPerClassSampler(labels, m=2), rank=0, world_size=2)


def test_sync_batchnorm_is_batchnorm_on_one_process():
    from ssml_fast.distributed import SyncBatchNorm, convert_sync_batchnorm

    torch.manual_seed(0)
    net = nn.Sequential(nn.Conv2d(1, 3, 3), nn.BatchNorm2d(3), nn.ReLU(), nn.Flatten(), nn.Linear(12, 4),
                        nn.BatchNorm1d(4))
    ref = copy.deepcopy(net)
    conv = convert_sync_batchnorm(net)
    assert isinstance(conv[1], SyncBatchNorm) and isinstance(conv[5], SyncBatchNorm)
    assert conv.state_dict().keys() == ref.state_dict().keys()
    x = torch.randn(5, 1, 4, 4)
    assert torch.allclose(conv(x), ref(x))
