"""Self-supervised baselines (moco, byol, simsiam, dino, barlow_twins, vicreg): each loss against a plain
reference (values and float64 gradients), the EMA / centre / schedule updates against hand computations,
MoCo's queue after wrap-around, one training step, and bit-identical mid-epoch resume with the EMA
networks, step counters, centres and queues restored."""
import math
import os
import signal

import pytest
import torch
import torch.nn.functional as F

import ssml_fast.methods as methods
from ssml_fast.data import load_dataset
from ssml_fast.methods import Batch, get_method, make_config
from ssml_fast.methods._ssl import StepCounter, cosine_ramp, ema_parameters_, mlp
from ssml_fast.methods.barlow_twins import BarlowTwins, barlow_twins_loss
from ssml_fast.methods.byol import BYOL, byol_loss
from ssml_fast.methods.dino import DINO, dino_loss, teacher_temperature
from ssml_fast.methods.moco import MoCo, moco_infonce
from ssml_fast.methods.simsiam import SimSiam, simsiam_loss
from ssml_fast.methods.vicreg import VICReg, vicreg_loss
from ssml_fast.train import RunConfig, Trainer, TrainingInterrupted, data_info

SSL = (MoCo, BYOL, SimSiam, DINO, BarlowTwins, VICReg)
for _cls in SSL:
    methods.register_method(_cls)  # idempotent by name

NAMES = [c.name for c in SSL]
# Tiny networks for the 8 x 8 digits, so the whole file stays fast; every code path is kept.
TINY = {
    "moco": {"queue_size": 64},
    "byol": {"hidden_dim": 32, "projection_dim": 16},
    "simsiam": {"projection_dim": 32, "predictor_dim": 8},
    "dino": {"out_dim": 64, "hidden_dim": 32, "bottleneck_dim": 16, "pool": "gap", "n_local": 2, "local_size": 8,
             "warmup_teacher_temp_epochs": 2, "freeze_last_layer": 1},
    "barlow_twins": {"projector_dim": 32},
    "vicreg": {"expander_dim": 32},
}


@pytest.fixture(scope="module")
def split():
    return load_dataset("digits", seed=0)


def _method(name, split, **kw):
    cfg = make_config(name, "small", [("test", {"epochs": 2, "batch_size": 32, **TINY[name], **kw})])
    torch.manual_seed(0)
    return get_method(name)(cfg, data_info(split))


def _gradcheck_pair(fn, reference, *shapes, seed=0, **kw):
    """Values and gradients of fn against reference on float64 tensors of `shapes`."""
    g = torch.Generator().manual_seed(seed)
    xs = [torch.randn(*s, generator=g, dtype=torch.float64) for s in shapes]
    a = [x.clone().requires_grad_() for x in xs]
    b = [x.clone().requires_grad_() for x in xs]
    va, vb = fn(*a, **kw), reference(*b, **kw)
    torch.testing.assert_close(va, vb)
    ga = torch.autograd.grad(va, a, allow_unused=True)
    gb = torch.autograd.grad(vb, b, allow_unused=True)
    for x, y in zip(ga, gb):
        if x is None or y is None:
            assert x is None or torch.count_nonzero(x) == 0
            assert y is None or torch.count_nonzero(y) == 0
        else:
            torch.testing.assert_close(x, y)
    assert torch.autograd.gradcheck(lambda *t: fn(*t, **kw), [x.clone().requires_grad_() for x in xs])


# ---------------------------------------------------------------------------------------------------
# Losses against plain references
# ---------------------------------------------------------------------------------------------------
def _moco_reference(q, k, queue, temperature):
    # The official MoCo forward: logits = cat([l_pos, l_neg]) / T, labels = 0.
    l_pos = torch.einsum("nc,nc->n", q, k).unsqueeze(-1)
    l_neg = torch.einsum("nc,kc->nk", q, queue)
    logits = torch.cat([l_pos, l_neg], dim=1) / temperature
    return F.cross_entropy(logits, torch.zeros(q.shape[0], dtype=torch.long))


@pytest.mark.parametrize("queue_len", [0, 1, 37])
def test_moco_infonce_matches_the_official_formulation(queue_len):
    def fn(q, k, queue):
        return moco_infonce(F.normalize(q, dim=1), F.normalize(k, dim=1), F.normalize(queue, dim=1), 0.2)

    def ref(q, k, queue):
        return _moco_reference(F.normalize(q, dim=1), F.normalize(k, dim=1), F.normalize(queue, dim=1), 0.2)

    _gradcheck_pair(fn, ref, (5, 4), (5, 4), (queue_len, 4))


def test_moco_infonce_bad_arguments():
    with pytest.raises(ValueError, match="temperature"):
        moco_infonce(torch.randn(3, 4), torch.randn(3, 4), torch.randn(5, 4), 0.0)
    with pytest.raises(ValueError, match="queue"):
        moco_infonce(torch.randn(3, 4), torch.randn(3, 4), torch.randn(5, 3), 0.2)
    with pytest.raises(ValueError, match="q and k"):
        moco_infonce(torch.randn(3, 4), torch.randn(2, 4), torch.randn(5, 4), 0.2)


def test_byol_loss_is_two_minus_two_cosine():
    def ref(p, z):
        pn, zn = p / p.norm(dim=1, keepdim=True), z / z.norm(dim=1, keepdim=True)
        return ((pn - zn) ** 2).sum(1).mean()  # = 2 - 2 cos

    _gradcheck_pair(byol_loss, ref, (6, 5), (6, 5))
    p = torch.randn(4, 3)
    torch.testing.assert_close(byol_loss(p, 3 * p), torch.tensor(0.0), atol=1e-6, rtol=0)
    torch.testing.assert_close(byol_loss(p, -p), torch.tensor(4.0))


def test_simsiam_loss_is_negative_cosine_with_stop_gradient():
    p, z = torch.randn(6, 5, dtype=torch.float64, requires_grad=True), torch.randn(6, 5, dtype=torch.float64,
                                                                                   requires_grad=True)
    loss = simsiam_loss(p, z)
    ref = -((p / p.norm(dim=1, keepdim=True)) * (z / z.norm(dim=1, keepdim=True))).sum(1).mean()
    torch.testing.assert_close(loss, ref)
    gp, = torch.autograd.grad(ref, p, retain_graph=True)
    loss.backward()
    torch.testing.assert_close(p.grad, gp)
    assert z.grad is None  # the stop-gradient


def _dino_reference(student, teacher, center, n_global, student_temp, teacher_temp):
    # The official DINOLoss.forward (double loop over crops), without the centre update.
    ncrops = student.shape[0] // (teacher.shape[0] // n_global)
    student_out = (student / student_temp).chunk(ncrops)
    teacher_out = F.softmax((teacher - center) / teacher_temp, dim=-1).chunk(n_global)
    total, n = 0, 0
    for iq, q in enumerate(teacher_out):
        for v in range(len(student_out)):
            if v == iq:
                continue
            total = total + torch.sum(-q * F.log_softmax(student_out[v], dim=-1), dim=-1).mean()
            n += 1
    return total / n


@pytest.mark.parametrize("n_global, n_crops", [(2, 2), (2, 6), (1, 3)])
def test_dino_loss_matches_the_official_double_loop(n_global, n_crops):
    b, k = 3, 7

    def fn(s, t, c):
        return dino_loss(s, t, c, n_global, 0.1, 0.05)

    def ref(s, t, c):
        return _dino_reference(s, t, c, n_global, 0.1, 0.05)

    _gradcheck_pair(fn, ref, (n_crops * b, k), (n_global * b, k), (1, k))


def test_dino_loss_bad_arguments():
    with pytest.raises(ValueError, match="n_global"):
        dino_loss(torch.randn(12, 5), torch.randn(5, 5), torch.zeros(1, 5), 2, 0.1, 0.04)
    with pytest.raises(ValueError, match="student rows"):
        dino_loss(torch.randn(7, 5), torch.randn(6, 5), torch.zeros(1, 5), 2, 0.1, 0.04)


def _barlow_reference(z1, z2, lambd):
    # The official BarlowTwins.forward: BatchNorm1d(affine=False) in train mode, c / B, on + lambd * off.
    bn = torch.nn.BatchNorm1d(z1.shape[1], affine=False).double()
    c = bn(z1).T @ bn(z2) / z1.shape[0]
    on_diag = torch.diagonal(c).add_(-1).pow_(2).sum()
    n = c.shape[0]
    off = c.flatten()[:-1].view(n - 1, n + 1)[:, 1:].flatten()
    return on_diag + lambd * off.pow(2).sum()


def test_barlow_twins_loss_matches_the_official_code():
    _gradcheck_pair(barlow_twins_loss, _barlow_reference, (8, 5), (8, 5), lambd=0.0051)
    _gradcheck_pair(barlow_twins_loss, _barlow_reference, (6, 3), (6, 3), seed=1, lambd=0.5)
    _gradcheck_pair(barlow_twins_loss, _barlow_reference, (4, 9), (4, 9), seed=2, lambd=0.5)  # B < D: Gram path
    with pytest.raises(ValueError, match="z1 and z2"):
        barlow_twins_loss(torch.randn(1, 3), torch.randn(1, 3))


def _vicreg_reference(x, y, sim_coeff=25.0, std_coeff=25.0, cov_coeff=1.0):
    # The official VICReg.forward, with an explicit loop over the off-diagonal covariance entries.
    b, d = x.shape
    repr_loss = ((x - y) ** 2).sum() / (b * d)
    x, y = x - x.mean(dim=0), y - y.mean(dim=0)
    std_x = torch.sqrt(x.var(dim=0) + 0.0001)
    std_y = torch.sqrt(y.var(dim=0) + 0.0001)
    std_loss = torch.mean(F.relu(1 - std_x)) / 2 + torch.mean(F.relu(1 - std_y)) / 2
    cov_x, cov_y = (x.T @ x) / (b - 1), (y.T @ y) / (b - 1)
    off = sum(cov_x[i, j] ** 2 + cov_y[i, j] ** 2 for i in range(d) for j in range(d) if i != j)
    return sim_coeff * repr_loss + std_coeff * std_loss + cov_coeff * off / d


def test_vicreg_loss_matches_the_official_code():
    # Small values so that some per-dimension stds are below 1 and the hinge is active.
    g = torch.Generator().manual_seed(3)
    for scale, (b, d) in ((0.3, (9, 4)), (2.0, (9, 4)), (0.3, (4, 9))):  # (4, 9): B < D, the Gram path
        x = (torch.randn(b, d, generator=g, dtype=torch.float64) * scale).requires_grad_()
        y = (torch.randn(b, d, generator=g, dtype=torch.float64) * scale).requires_grad_()
        va, vb = vicreg_loss(x, y), _vicreg_reference(x, y)
        torch.testing.assert_close(va, vb)
        ga, gb = torch.autograd.grad(va, (x, y)), torch.autograd.grad(vb, (x, y))
        for a, b in zip(ga, gb):
            torch.testing.assert_close(a, b)
    torch.testing.assert_close(vicreg_loss(x, y, 1.0, 2.0, 3.0), _vicreg_reference(x, y, 1.0, 2.0, 3.0))


# ---------------------------------------------------------------------------------------------------
# EMA, schedules, centre
# ---------------------------------------------------------------------------------------------------
def test_ema_parameters_matches_hand_computation_and_leaves_buffers():
    torch.manual_seed(0)
    online, target = mlp(3, 4, 2), mlp(3, 4, 2)
    online(torch.randn(8, 3))  # moves the online BN statistics
    before = {k: v.clone() for k, v in target.state_dict().items()}
    ema_parameters_(target, online, 0.9)
    params = dict(online.named_parameters())
    for k, v in target.state_dict().items():
        if k in params:
            torch.testing.assert_close(v, 0.9 * before[k] + 0.1 * params[k].detach())
        else:
            assert torch.equal(v, before[k])  # BN running statistics are the target's own
    with pytest.raises(ValueError, match="momentum"):
        ema_parameters_(target, online, 1.5)
    with pytest.raises(ValueError, match="same parameters"):
        ema_parameters_(target, mlp(3, 5, 2), 0.5)


def test_cosine_ramp_and_teacher_temperature_schedules():
    # BYOL: tau_k = 1 - (1 - tau_base) (cos(pi k / K) + 1) / 2
    for k in (0, 3, 5, 10, 12):
        expect = 1 - (1 - 0.996) * (math.cos(math.pi * min(k, 10) / 10) + 1) / 2
        assert cosine_ramp(0.996, 1.0, k, 10) == pytest.approx(expect, abs=1e-15)
    assert cosine_ramp(0.99, 1.0, 0, 10) == pytest.approx(0.99)
    assert cosine_ramp(0.99, 1.0, 5, 10) == pytest.approx(0.995)
    # DINO: np.linspace(0.04, 0.07, 30) then 0.07
    for e in (0, 1, 15, 29, 30, 99):
        expect = 0.04 + (0.07 - 0.04) * e / 29 if e < 30 else 0.07
        assert teacher_temperature(e, 0.04, 0.07, 30) == pytest.approx(expect)
    assert teacher_temperature(0, 0.04, 0.07, 0) == 0.07
    assert teacher_temperature(0, 0.04, 0.07, 1) == 0.04
    s = StepCounter(4, 3)
    assert s.total == 12 and s.epoch == 0
    for _ in range(5):
        s.tick()
    assert s.step == 5 and s.epoch == 1.25


def _one_step(m, split, trainer, idx=None):
    g = torch.Generator().manual_seed(0)
    idx = torch.arange(m.config.batch_size) if idx is None else idx
    batch = Batch(m.views(split.train_images[idx], g), None, idx)
    out = m.training_step(batch)
    trainer.optimizer.zero_grad()
    out.loss.backward()
    m.after_backward()
    trainer.optimizer.step()
    return batch, out


def test_dino_centre_and_teacher_updates_match_hand_computation(split):
    m = _method("dino", split, center_momentum=0.8, momentum_teacher=0.9)
    t = Trainer(m, split, RunConfig(seed=0, quiet=True, eval_every=0))
    m.center.normal_()
    c0 = m.center.clone()
    teacher0 = {k: v.clone() for k, v in m.teacher.named_parameters()}
    batch, out = _one_step(m, split, t)
    with torch.no_grad():
        t_out = m.teacher(torch.cat(batch.views[:2]))  # the teacher has not moved yet
    torch.testing.assert_close(t_out, m._teacher_out)
    tau = m.momentum()
    assert tau == pytest.approx(0.9)  # step 0 of the cosine ramp
    student = dict(m.student.named_parameters())
    m.after_step(batch, out)
    torch.testing.assert_close(m.center, 0.8 * c0 + 0.2 * t_out.mean(0, keepdim=True))
    for k, v in m.teacher.named_parameters():
        torch.testing.assert_close(v, tau * teacher0[k] + (1 - tau) * student[k].detach())
    assert int(m.steps.done) == 1
    # Epoch 0 with freeze_last_layer=1: the last layer was not updated, the rest was.
    assert torch.equal(m.student.head.last_layer.weight, teacher0["head.last_layer.weight"])
    k0 = next(k for k in student if k.startswith("trunk."))
    assert not torch.equal(student[k0], teacher0[k0])


def test_dino_views_are_global_then_local_crops_at_the_local_size():
    from ssml_fast.methods import DataInfo

    data = DataInfo(image_shape=(1, 28, 28), mean=0.1, std=0.3, num_train=64, train_classes=(0, 1))
    cfg = make_config("dino", "small", [("test", {"batch_size": 16, "pool": "gap", "n_local": 3, "local_size": 12})])
    m = DINO(cfg, data)
    views = m.views(torch.rand(4, 1, 28, 28), torch.Generator().manual_seed(0))
    assert [tuple(v.shape[-2:]) for v in views] == [(28, 28)] * 2 + [(12, 12)] * 3
    out = m.training_step(Batch(views, None, torch.arange(4)))
    assert torch.isfinite(out.loss)
    with pytest.raises(ValueError, match="local_size=7"):
        DINO(make_config("dino", "small", [("test", {"batch_size": 16, "pool": "gap", "n_local": 2, "local_size": 7})]),
             data)
    assert m.global_augment.scale == pytest.approx((1.0, 1 / math.sqrt(0.5)))
    assert m.local_augment.scale == pytest.approx((1 / math.sqrt(0.3), 1 / math.sqrt(0.2)))


def test_dino_small_preset_teacher_output_is_not_uniform_after_centring(split):
    # Regression (issue 13): without BN in the head the small CNN's features (pairwise cosine ~0.97) gave
    # nearly identical teacher logits, so after centring the teacher distribution was close to uniform at
    # init and training collapsed to it (entropy -> log K). The preset's BN head keeps it well below log K.
    def centred_entropy(**kw):
        torch.manual_seed(0)
        m = DINO(make_config("dino", "small", [("test", {"batch_size": 64, **kw})]), data_info(split)).train()
        with torch.no_grad():
            t = m.teacher(split.train_images[:64])
            q = F.softmax((t - t.mean(0)) / m.teacher_temp(), dim=1)
        return float(-(q * q.clamp_min(1e-30).log()).sum(1).mean()), math.log(t.shape[1])

    h, log_k = centred_entropy()
    assert h < log_k - 2.0
    h_no_bn, _ = centred_entropy(use_bn_in_head=False)
    assert h_no_bn > log_k - 1.2


@pytest.mark.parametrize("name, momentum_field", [("byol", "tau_base"), ("moco", "moco_momentum")])
def test_target_is_ema_of_online_after_the_optimizer_step(name, momentum_field, split):
    m = _method(name, split, **{momentum_field: 0.7})
    t = Trainer(m, split, RunConfig(seed=0, quiet=True, eval_every=0))
    online, target = (m.online, m.target) if name == "byol" else (m.encoder, m.key_encoder)
    before = {k: v.clone() for k, v in target.named_parameters()}
    assert all(torch.equal(v, dict(online.named_parameters())[k]) for k, v in before.items())  # starts a copy
    batch, out = _one_step(m, split, t)
    assert all(torch.equal(v, before[k]) for k, v in target.named_parameters())  # not moved by backward/step
    tau = m.tau() if name == "byol" else 0.7
    assert tau == pytest.approx(0.7)
    m.after_step(batch, out)
    for k, v in target.named_parameters():
        torch.testing.assert_close(v, tau * before[k] + (1 - tau) * dict(online.named_parameters())[k].detach())
        assert v.grad is None
    if name == "byol":
        assert m.tau() == pytest.approx(cosine_ramp(0.7, 1.0, 1, m.steps.total))


def test_moco_queue_holds_the_last_keys_in_order_after_wrap_around(split):
    m = _method("moco", split, queue_size=80, queue_init="empty")
    t = Trainer(m, split, RunConfig(seed=0, quiet=True, eval_every=0))
    assert len(m.queue) == 0
    keys = []
    for step in range(4):  # 4 x 32 = 128 keys into 80 slots
        batch, out = _one_step(m, split, t, torch.arange(step * 32, (step + 1) * 32))
        keys.append(m._keys.clone())
        m.after_step(batch, out)
    emb, _, _ = m.queue.get()
    torch.testing.assert_close(emb, torch.cat(keys)[-80:])
    assert m.queue.ptr == 128 % 80 and len(m.queue) == 80
    torch.testing.assert_close(emb.norm(dim=1), torch.ones(80))


def test_moco_random_queue_init_is_full_of_unit_vectors(split):
    m = _method("moco", split)
    assert len(m.queue) == 64
    torch.testing.assert_close(m.queue.get()[0].norm(dim=1), torch.ones(64))


# ---------------------------------------------------------------------------------------------------
# The trainer: one step, resume
# ---------------------------------------------------------------------------------------------------
@pytest.mark.parametrize("name", NAMES)
def test_one_step_changes_parameters_and_gives_finite_loss(name, split):
    m = _method(name, split)
    assert not m.uses_labels
    before = {k: v.clone() for k, v in m.state_dict().items() if isinstance(v, torch.Tensor)}
    t = Trainer(m, split, RunConfig(seed=0, quiet=True, eval_every=0))
    batch, out = _one_step(m, split, t)
    assert out.loss.dim() == 0 and math.isfinite(out.loss.item())
    m.after_step(batch, out)
    changed = [k for k, v in m.state_dict().items()
               if isinstance(v, torch.Tensor) and v.is_floating_point() and not torch.equal(v, before[k])]
    assert any("trunk" in k for k in changed), changed
    emb = m.embed(split.test_images[:5])
    assert emb.shape[0] == 5 and torch.isfinite(emb).all()


def _equal_states(a, b):
    assert a.keys() == b.keys()
    for k in a:
        if isinstance(a[k], torch.Tensor):
            assert torch.equal(a[k], b[k]), k
        else:
            assert a[k] == b[k], k  # FeatureQueue's extra state (ptr, count)


@pytest.mark.parametrize("name", NAMES)
def test_mid_epoch_resume_is_bit_identical(name, split, tmp_path):
    import dataclasses

    # 320 training images: 5 steps of 64 per epoch, interrupted after the 3rd (CI time).
    split = dataclasses.replace(split, train_images=split.train_images[:320], train_labels=split.train_labels[:320])
    run = RunConfig(seed=0, quiet=True, eval_every=0)
    straight = Trainer(_method(name, split, batch_size=64, epochs=1), split, run, tmp_path / "a")
    res_a = straight.fit()

    t = Trainer(_method(name, split, batch_size=64, epochs=1), split, run, tmp_path / "b")
    calls = {"n": 0}
    original = t.method.after_step

    def after_step(batch, out):
        original(batch, out)
        calls["n"] += 1
        if calls["n"] == 3:  # of the 5 steps of the epoch
            os.kill(os.getpid(), signal.SIGINT)  # the trainer finishes the step, saves and stops

    t.method.after_step = after_step
    with pytest.raises(TrainingInterrupted):
        t.fit()
    resumed = Trainer(_method(name, split, batch_size=64, epochs=1), split, run, tmp_path / "b")
    res_b = resumed.fit(resume=True)
    a, b = straight.method.state_dict(), resumed.method.state_dict()
    _equal_states(a, b)
    assert res_a["test"] == res_b["test"]
    ema_prefix = {"moco": "key_encoder.", "byol": "target.", "dino": "teacher."}.get(name)
    if ema_prefix:
        assert any(k.startswith(ema_prefix) for k in a)
    if name == "moco":
        assert a["queue._extra_state"] == b["queue._extra_state"]
    if name == "dino":
        assert not torch.equal(a["center"], torch.zeros_like(a["center"]))
    if name in ("byol", "dino"):
        assert int(b["steps.done"]) == split.train_images.shape[0] // 64


@pytest.mark.parametrize("name, kw, message", [
    ("moco", {"queue_size": 0}, "queue_size"), ("moco", {"temperature": 0.0}, "temperature"),
    ("moco", {"queue_init": "zeros"}, "queue_init"), ("moco", {"head": "deep"}, "head"),
    ("byol", {"tau_base": 1.5}, "tau_base"),
    ("dino", {"pool": "flatten", "n_local": 2}, "global pool"), ("dino", {"local_area": (0.5, 0.2)}, "local_area"),
    ("dino", {"n_global": 1, "n_local": 0}, "n_global"), ("dino", {"teacher_temp": 0.0}, "teacher_temp"),
    ("barlow_twins", {"lambd": -1.0}, "lambd"), ("vicreg", {"std_coeff": -1.0}, "std_coeff"),
])
def test_bad_config(name, kw, message):
    from ssml_fast.config import ConfigError

    with pytest.raises((ValueError, ConfigError), match=message):
        make_config(name, "small", [("test", kw)])
