"""STML: the loss against a plain reference from METHODS.md 1.3, the EMA teacher, NN batches, resume."""
import pytest
import torch

from ssml_fast.data import load_dataset
from ssml_fast.losses import STMLLoss
from ssml_fast.methods import get_method, make_config
from ssml_fast.nn import ema_update_
from ssml_fast.train import RunConfig, Trainer, data_info

from conftest import interrupt_after
from test_contextual import reference as contextual_reference


def _rel(e):
    """Row-mean-normalised euclidean distance, the mean over all n columns (the zero self-distance too)."""
    n = e.shape[0]
    eye = torch.eye(n, dtype=torch.bool)
    sq = ((e[:, None, :] - e[None, :, :]) ** 2).sum(-1)
    d = torch.where(eye, 0.0, (sq + eye.double()).sqrt())  # sqrt is not differentiable at 0: keep it off
    return d / d.mean(dim=1, keepdim=True)


def stml_reference(f, g, t, ids, sigma, k, delta, T, form):
    """METHODS.md 1.3, one line per formula, Python loops over pairs."""
    w = contextual_reference(t, k, sigma, ids)[0]
    n = f.shape[0]

    def rc(e):
        d = _rel(e)
        total = 0.0
        for i in range(n):
            for j in range(n):
                if i != j:
                    total = total + w[i, j] * d[i, j] ** 2 + (1 - w[i, j]) * torch.relu(delta - d[i, j]) ** 2
        return total / (n * (n - 1) if form == "code" else n)

    df, dg = _rel(f), _rel(g).detach()
    kl = 0.0
    for i in range(n):
        cols = [j for j in range(n) if form == "code" or j != i]
        q = torch.softmax(-dg[i, cols] / T, 0)
        log_p = torch.log_softmax(-df[i, cols] / T, 0)
        kl = kl + (q * (q.log() - log_p)).sum()
    kl = kl / n * (T ** 2 if form == "code" else 1.0)
    return 0.5 * (rc(f) + rc(g)) + kl


@pytest.mark.parametrize("n, k", [(8, 2), (12, 4), (20, 10), (16, 16)])
@pytest.mark.parametrize("form", ["code", "thesis"])
@pytest.mark.parametrize("T", [1.0, 0.5])
def test_loss_matches_reference_values_and_gradients(n, k, form, T):
    gen = torch.Generator().manual_seed(n * 31 + k)
    f = torch.randn(n, 6, generator=gen, dtype=torch.float64, requires_grad=True)
    g = torch.randn(n, 9, generator=gen, dtype=torch.float64, requires_grad=True)
    t = torch.randn(n, 7, generator=gen, dtype=torch.float64)
    ids = torch.arange(n // 2).repeat(2)
    loss = STMLLoss(sigma=3.0, k=k, delta=1.0, temperature=T, form=form)
    ours = loss(f, g, t, ids)
    gf, gg = torch.autograd.grad(ours, (f, g))
    ref = stml_reference(f, g, t, ids, 3.0, k, 1.0, T, form)
    rf, rg = torch.autograd.grad(ref, (f, g))
    torch.testing.assert_close(ours, ref, rtol=1e-5, atol=1e-6)  # w is computed in float32 by the op
    torch.testing.assert_close(gf, rf, rtol=1e-4, atol=1e-6)
    torch.testing.assert_close(gg, rg, rtol=1e-4, atol=1e-6)
    p = loss.parts
    torch.testing.assert_close(p.total, 0.5 * (p.rc_f + p.rc_g) + p.kl)


def test_kl_trains_f_only_and_teacher_gets_no_gradient():
    n = 10
    f = torch.randn(n, 4, requires_grad=True)
    g = torch.randn(n, 4, requires_grad=True)
    t = torch.randn(n, 4, requires_grad=True)
    loss = STMLLoss(k=4)
    loss(f, g, t, torch.arange(n))
    kl = loss.kl(f, g)
    gf, gg = torch.autograd.grad(kl, (f, g), allow_unused=True)
    assert gf.abs().sum() > 0 and (gg is None or gg.abs().sum() == 0)
    total = loss(f, g, t, torch.arange(n))
    total.backward()
    assert t.grad is None


@pytest.mark.parametrize("kwargs, message", [
    (dict(sigma=0.0), "sigma"), (dict(sigma=-1.0), "sigma"), (dict(k=0), "k must be"), (dict(form="paper"), "form"),
])
def test_bad_arguments(kwargs, message):
    with pytest.raises(ValueError, match=message):
        STMLLoss(**kwargs)


def test_bad_call_arguments():
    loss = STMLLoss(k=10)
    f, g, t = torch.randn(8, 4), torch.randn(8, 4), torch.randn(8, 4)
    with pytest.raises(ValueError, match="k=10"):
        loss(f, g, t, torch.arange(8))
    with pytest.raises(ValueError, match="ids"):
        STMLLoss(k=2)(f, g, t, torch.arange(7))
    with pytest.raises(ValueError, match="teacher_g"):
        STMLLoss(k=2)(f, g, torch.randn(6, 4), torch.arange(8))


def test_ema_update_matches_hand_computation_including_bn_buffers():
    torch.manual_seed(0)
    student = torch.nn.Sequential(torch.nn.Linear(3, 4), torch.nn.BatchNorm1d(4))
    teacher = torch.nn.Sequential(torch.nn.Linear(3, 4), torch.nn.BatchNorm1d(4))
    student(torch.randn(16, 3))  # moves the student's running stats and num_batches_tracked
    before = {k: v.clone() for k, v in teacher.state_dict().items()}
    ema_update_(teacher, student, 0.9)
    for k, v in teacher.state_dict().items():
        s = student.state_dict()[k]
        if v.is_floating_point():
            torch.testing.assert_close(v, 0.9 * before[k] + 0.1 * s)
        else:
            assert torch.equal(v, s)  # num_batches_tracked is copied
    with pytest.raises(ValueError, match="no student entry"):
        ema_update_(torch.nn.Linear(2, 2), student, 0.5)


@pytest.fixture(scope="module")
def split():
    return load_dataset("digits", seed=0)


def _stml(split, **kw):
    cfg = make_config("stml", "small", [("test", {"epochs": 1, "batch_size": 40, **kw})])
    torch.manual_seed(0)
    return get_method("stml")(cfg, data_info(split))


def test_teacher_is_updated_after_backward_and_before_the_optimizer_step(split):
    m = _stml(split, momentum_ema=0.5)
    t = Trainer(m, split, RunConfig(seed=0, quiet=True, eval_every=0))
    seen = {}
    original_step = t.optimizer.step

    def step(*a, **k):
        # At optimizer.step the teacher is already 0.5 * old + 0.5 * the pre-step student.
        seen["teacher"] = m.teacher.head_g.weight.detach().clone()
        seen["student"] = m.head_g.weight.detach().clone()
        return original_step(*a, **k)

    old_teacher = m.teacher.head_g.weight.detach().clone()
    t.optimizer.step = step
    original_after = m.after_backward

    def after_backward():
        seen.setdefault("before_ema", m.teacher.head_g.weight.detach().clone())
        original_after()

    m.after_backward = after_backward
    sampler = m.batch_sampler(m.stages()[0], t.ctx)
    m.on_epoch_start(0, sampler, t.ctx)
    # One step by hand through the trainer's own epoch loop would run all; run a single epoch of 1 batch.
    from ssml_fast.methods import Batch

    idx = torch.as_tensor(next(iter(sampler)))
    batch = Batch(m.views(split.train_images[idx], torch.Generator().manual_seed(0)), None, idx)
    out = m.training_step(batch)
    out.loss.backward()
    m.after_backward()
    t.optimizer.step()
    torch.testing.assert_close(seen["teacher"], 0.5 * old_teacher + 0.5 * seen["student"])
    assert not m.teacher.training and not any(p.requires_grad for p in m.teacher.parameters())


def test_nn_batches_are_queries_with_their_neighbours_and_two_views_share_ids(split):
    m = _stml(split)
    t = Trainer(m, split, RunConfig(seed=0, quiet=True, eval_every=0))
    sampler = m.batch_sampler(m.stages()[0], t.ctx)
    m.on_epoch_start(0, sampler, t.ctx)
    emb = t.ctx.embed_train(m._student_g)
    batch = torch.as_tensor(next(iter(sampler))).view(-1, m.config.neighbours_per_query)
    assert batch.shape == (40 // 5, 5)
    for row in batch:
        q = row[0]
        d = ((emb - emb[q]) ** 2).sum(1)
        d[q] = float("inf")
        expected = d.topk(4, largest=False).indices
        assert set(row[1:].tolist()) == set(expected.tolist())  # the image itself first, then its 4 NN
    views = m.views(split.train_images[batch.flatten()], torch.Generator().manual_seed(0))
    assert len(views) == 2 and not torch.equal(views[0], views[1])
    assert torch.equal(m.neighbours, sampler.neighbours)


def test_resume_restores_teacher_and_neighbour_table(split, tmp_path):
    straight = Trainer(_stml(split, epochs=2), split, RunConfig(seed=0, quiet=True), tmp_path / "a")
    straight.fit()
    from ssml_fast.train import TrainingInterrupted

    t = Trainer(_stml(split, epochs=2), split, RunConfig(seed=0, quiet=True), tmp_path / "b")
    interrupt_after(t, 3)
    with pytest.raises(TrainingInterrupted):
        t.fit()
    resumed = Trainer(_stml(split, epochs=2), split, RunConfig(seed=0, quiet=True), tmp_path / "b")
    resumed.fit(resume=True)
    a, b = straight.method.state_dict(), resumed.method.state_dict()
    assert all(torch.equal(a[k], b[k]) for k in a)
    assert any(k.startswith("teacher.") for k in a)


@pytest.mark.parametrize("kw, message", [
    (dict(batch_size=42), "multiple of neighbours_per_query"),
    (dict(sigma=0.0), "sigma"),
    (dict(teacher_init="random"), "teacher_init"),
    (dict(eval_embedding="f"), "eval_embedding"),
])
def test_bad_config(kw, message):
    from ssml_fast.config import ConfigError

    with pytest.raises(ConfigError, match=message):
        make_config("stml", "small", [("test", kw)])


# ---- stml_memory ---------------------------------------------------------------------------------
@pytest.mark.parametrize("form", ["code", "thesis"])
def test_memory_terms_with_empty_memory_equal_the_batch_loss(form):
    gen = torch.Generator().manual_seed(3)
    n = 12
    f = torch.randn(n, 5, generator=gen, dtype=torch.float64, requires_grad=True)
    g = torch.randn(n, 7, generator=gen, dtype=torch.float64, requires_grad=True)
    t = torch.randn(n, 7, generator=gen, dtype=torch.float64)
    ids = torch.arange(n // 2).repeat(2)
    loss = STMLLoss(k=4, form=form)
    a = loss(f, g, t, ids)
    ga = torch.autograd.grad(a, (f, g))
    empty = (f[:0].detach(), g[:0].detach(), t[:0], ids[:0])
    b = loss.memory_terms(f, g, t, ids, *empty)
    gb = torch.autograd.grad(b, (f, g))
    torch.testing.assert_close(a, b)
    for x, y in zip(ga, gb):
        torch.testing.assert_close(x, y)


def _memory_case(seed, n, m, d_f, d_g):
    """float64 student f / g (with grad), teacher t, and memory rows mf / mg / mt for the memory-terms tests."""
    gen = torch.Generator().manual_seed(seed)
    f = torch.randn(n, d_f, generator=gen, dtype=torch.float64, requires_grad=True)
    g = torch.randn(n, d_g, generator=gen, dtype=torch.float64, requires_grad=True)
    t = torch.randn(n, d_g, generator=gen, dtype=torch.float64)
    mf, mg, mt = (torch.randn(m, d, generator=gen, dtype=torch.float64) for d in (d_f, d_g, d_g))
    return f, g, t, mf, mg, mt


@pytest.mark.parametrize("memory_push", [True, False])
def test_memory_terms_match_a_plain_reference(memory_push):
    """Rows of the batch against batch ∪ memory, written out with loops (code form); memory_push=False
    drops the push part of the memory columns (j >= n) and nothing else."""
    n, m, k = 8, 6, 4
    f, g, t, mf, mg, mt = _memory_case(5, n, m, 4, 5)
    ids, mids = torch.arange(n), torch.arange(n, n + m)
    ours = STMLLoss(k=k).memory_terms(f, g, t, ids, mf, mg, mt, mids, memory_push=memory_push)
    w = contextual_reference(torch.cat([t, mt]), k, 3.0, torch.cat([ids, mids]))[0][:n]
    c = n + m

    def rel(e, me):
        cols = torch.cat([e, me])
        d = torch.stack([torch.stack([((e[i] - cols[j]) ** 2).sum().clamp_min(1e-300).sqrt() if j != i
                                      else e[i].sum() * 0 for j in range(c)]) for i in range(n)])
        return d / d.mean(1, keepdim=True)

    df, dg = rel(f, mf), rel(g, mg)
    push = lambda j: memory_push or j < n
    rc = lambda d: sum(w[i, j] * d[i, j] ** 2 + push(j) * (1 - w[i, j]) * torch.relu(1 - d[i, j]) ** 2
                       for i in range(n) for j in range(c) if j != i) / (n * (c - 1))
    q, logp = torch.softmax(-dg.detach(), 1), torch.log_softmax(-df, 1)
    kl = (q * (q.log() - logp)).sum() / n
    ref = 0.5 * (rc(df) + rc(dg)) + kl
    torch.testing.assert_close(ours, ref, rtol=1e-5, atol=1e-7)
    for x in (f, g):
        torch.testing.assert_close(torch.autograd.grad(ours, x, retain_graph=True)[0],
                                   torch.autograd.grad(ref, x, retain_graph=True)[0], rtol=1e-4, atol=1e-7)


@pytest.mark.parametrize("form", ["code", "thesis"])
def test_memory_terms_gradcheck_and_given_weights(form):
    """The closed-form gradients of the memory terms (both heads) by gradcheck; precomputed weights (what
    stml_memory's ContextualCache passes) give the same loss as the fused op inside."""
    n, m, k = 6, 5, 3
    f, g, t, mf, mg, mt = _memory_case(7, n, m, 3, 4)
    ids, mids = torch.arange(n // 2).repeat(2), torch.arange(n, n + m)
    loss = STMLLoss(k=k, form=form, temperature=0.7)
    # f only: the KL's target side (g) is a stop-gradient, so the loss's g-gradient is by design not the
    # numerical derivative (it is checked against the autograd formulas in the plain-reference test).
    assert torch.autograd.gradcheck(lambda a: loss.memory_terms(a, g, t, ids, mf, mg, mt, mids), (f,))
    assert torch.autograd.gradcheck(lambda b: _rc_g_of(loss, f.detach(), b, t, ids, mf, mg, mt, mids), (g,))
    assert torch.autograd.gradcheck(lambda a: loss.memory_terms(a, g, t, ids, mf, mg, mt, mids, memory_push=False),
                                    (f,))
    w = contextual_reference(torch.cat([t, mt]), k, 3.0, torch.cat([ids, mids]))[0][:n]
    a = loss.memory_terms(f, g, t, ids, mf, mg, mt, mids)
    b = loss(f, g, t, ids, (mf, mg, mt, mids), weights=w)
    torch.testing.assert_close(a, b)
    with pytest.raises(ValueError, match="weights must have shape"):
        loss(f, g, t, ids, (mf, mg, mt, mids), weights=w[:, :-1])


def test_given_batch_weights_replace_the_teachers_contextual_similarity():
    """weights (N, N) without memory: the in-batch loss with those targets (what memory_columns="context"
    passes); the teacher's own w gives the plain loss back; a wrong shape is a named error."""
    n = 10
    f, g, t, *_ = _memory_case(11, n, 0, 4, 5)
    ids = torch.arange(n // 2).repeat(2)
    loss = STMLLoss(k=4)
    w = contextual_reference(t, 4, 3.0, ids)[0]
    torch.testing.assert_close(loss(f, g, t, ids, weights=w), loss(f, g, t, ids))
    other = torch.rand(n, n, dtype=torch.float64, generator=torch.Generator().manual_seed(1))
    a = loss(f, g, t * 0, ids, weights=other)
    assert torch.allclose(loss.parts.weights, other) and not torch.allclose(a, loss(f, g, t, ids))
    with pytest.raises(ValueError, match=r"weights must have shape \(10, 10\)"):
        loss(f, g, t, ids, weights=other[:, :-1])


def _rc_g_of(loss, f, g, t, ids, mf, mg, mt, mids):
    """RC(g) as a differentiable function of g (the memory terms' only dependence on g with a gradient)."""
    from ssml_fast.losses import relative_distance

    w = contextual_reference(torch.cat([t, mt]), loss.k, loss.sigma, torch.cat([ids, mids]))[0][: f.shape[0]]
    return loss.rc.from_distances(relative_distance(g, memory=mg), w)


def _stml_memory(split, **kw):
    cfg = make_config("stml_memory", "small", [("test", {"epochs": 1, "batch_size": 40, "memory_size": 200,
                                                          "memory_warmup": 2, **kw})])
    torch.manual_seed(0)
    return get_method("stml_memory")(cfg, data_info(split))


def test_memory_excludes_entries_sharing_an_id_with_the_batch(split):
    m = _stml_memory(split)
    m.steps_done.fill_(10)
    ids_old = torch.tensor([1, 2, 3, 4])
    m.memory.enqueue(torch.randn(4, sum(m._dims)), ids=ids_old)
    f, g, t, mids = m._memory_for(torch.tensor([2, 4, 9, 9]))
    assert mids.tolist() == [1, 3] and f.shape == (2, m.config.embedding_dim) and t.shape == (2, m.config.g_dim)
    m.steps_done.fill_(1)
    assert m._memory_for(torch.tensor([7])) is None  # still warming up


def test_memory_weight_blends_the_memory_loss_with_the_batch_loss(split):
    from ssml_fast.methods import Batch

    m = _stml_memory(split, memory_weight=0.25)
    m.steps_done.fill_(10)
    m.memory.enqueue(torch.randn(60, sum(m._dims)), ids=torch.arange(1000, 1060))
    x = split.train_images[:40]
    batch = Batch([x, x.flip(-1)], None, torch.arange(40))
    out = m.training_step(batch)
    xx, ids = torch.cat(batch.views), batch.index.repeat(2)
    with torch.no_grad():
        t = m.teacher(xx)
    f, g = m._student(xx)
    ref = 0.25 * m.loss_fn(f, g, t, ids, m._memory_for(ids)) + 0.75 * m.loss_fn(f, g, t, ids)
    torch.testing.assert_close(out.loss, ref)
    with pytest.raises(ValueError, match="memory_weight"):
        make_config("stml_memory", "small", [("test", {"memory_weight": 1.5})])


@pytest.mark.parametrize("cache", [True, False])
def test_memory_columns_context_and_pull(split, cache):
    """memory_columns="context": the in-batch loss with the batch block of the targets computed over batch ∪
    live memory; "pull": the memory terms without the memory columns' push part. Both against the loss
    called by hand, with and without the cached teacher Gram."""
    from ssml_fast.methods import Batch

    mems = {c: _stml_memory(split, memory_columns=c, memory_cache=cache) for c in ("context", "pull")}
    x = split.train_images[:40]
    batch = Batch([x, x.flip(-1)], None, torch.arange(40))
    xx, ids = torch.cat(batch.views), batch.index.repeat(2)
    past = torch.randn(60, sum(mems["pull"]._dims), generator=torch.Generator().manual_seed(2))
    past_ids = torch.arange(30, 90)  # ids 30-39 are in the batch: excluded
    for m in mems.values():
        m.steps_done.fill_(10)
        m.memory.enqueue(past, ids=past_ids)
        if m.cache is not None:
            m.cache.enqueued(0, 60, m.memory.view()[0][:, : m._dims[0]], (m.memory.ptr, m.memory.count))
    with torch.no_grad():
        t = mems["pull"].teacher(xx)
    ref_m = _stml_memory(split)
    live = ~torch.isin(past_ids, ids)
    mt = past[live, : ref_m._dims[0]]
    w = contextual_reference(torch.cat([t, mt]), ref_m.loss_fn.k, ref_m.loss_fn.sigma,
                             torch.cat([ids, past_ids[live]]))[0][: len(ids)]
    for c, m in mems.items():
        out = m.training_step(batch)
        f, g = m._student(xx)
        if c == "context":
            ref = m.loss_fn(f, g, t, ids, weights=w[:, : len(ids)].float())
        else:
            ref = m.loss_fn(f, g, t, ids, m._memory_for(ids), memory_push=False)
        torch.testing.assert_close(out.loss, ref, rtol=1e-4, atol=1e-6, msg=c)
        assert out.logs["memory_used"] == 50.0
    from ssml_fast.config import ConfigError

    with pytest.raises(ConfigError, match="memory_columns"):
        make_config("stml_memory", "small", [("test", {"memory_columns": "negatives"})])


def test_cached_teacher_gram_gives_the_fused_op_loss_step_after_step(split):
    """memory_cache=True (ContextualCache, incremental Gram) against False (the fused op over batch ∪ memory
    every step): the same losses and gradients over steps that fill, wrap and reuse ids."""
    from ssml_fast.methods import Batch

    a, b = _stml_memory(split, memory_warmup=0), _stml_memory(split, memory_warmup=0, memory_cache=False)
    b.load_state_dict(a.state_dict(), strict=False)
    assert a.cache is not None and b.cache is None
    gen = torch.Generator().manual_seed(0)
    for step in range(7):
        idx = torch.randint(0, 80, (40,), generator=gen)
        x = split.train_images[idx]
        batch = Batch([x, x.flip(-1)], None, idx)
        outs = []
        for m in (a, b):
            out = m.training_step(batch)
            grads = torch.autograd.grad(out.loss, list(m.head_f.parameters()))
            m.after_step(batch, out)
            outs.append((out.loss.detach(), grads))
        torch.testing.assert_close(outs[0][0], outs[1][0], msg=f"step {step}")
        for ga, gb in zip(outs[0][1], outs[1][1]):
            torch.testing.assert_close(ga, gb, rtol=1e-4, atol=1e-6)
    assert len(a.memory) == 200 and a.cache._state == (a.memory.ptr, a.memory.count)


def test_memory_is_used_after_warmup_and_resume_restores_it(split, tmp_path):
    from ssml_fast.train import TrainingInterrupted

    straight = Trainer(_stml_memory(split, epochs=2), split, RunConfig(seed=0, quiet=True), tmp_path / "a")
    res = straight.fit()
    assert res["history"][-1]["memory_used"] > 0
    t = Trainer(_stml_memory(split, epochs=2), split, RunConfig(seed=0, quiet=True), tmp_path / "b")
    interrupt_after(t, 25)
    with pytest.raises(TrainingInterrupted):
        t.fit()
    resumed = Trainer(_stml_memory(split, epochs=2), split, RunConfig(seed=0, quiet=True), tmp_path / "b")
    resumed.fit(resume=True)
    a, b = straight.method.state_dict(), resumed.method.state_dict()
    assert any(k.startswith("memory.") for k in a)
    for k in a:
        assert torch.equal(a[k], b[k]) if torch.is_tensor(a[k]) else a[k] == b[k], k
