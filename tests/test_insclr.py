"""InsCLR: positive mining (thesis Algorithm 1 / METHODS.md 2.5 v2) against a plain loop reference and a
hand-made answer, memory columns and exclusions, batches, in-batch selection, stages, resume, bad config."""
import math

import pytest
import torch

from conftest import interrupt_after
from ssml_fast.config import ConfigError
from ssml_fast.data import load_dataset
from ssml_fast.evaluation.knn import knn_search
from ssml_fast.memory.positive_mining import (excluded_random_negatives, memory_columns, mine_positives,
                                              random_slots)
from ssml_fast.methods import Batch, make_config, register_method
from ssml_fast.methods.insclr import InsCLR, batch_pairs, select_neighbours
from ssml_fast.train import RunConfig, Trainer, TrainingInterrupted, data_info

register_method(InsCLR)


# ---- plain reference of the mining ------------------------------------------------------------
def reference_mine(pool_idx, pool_sim, members, accepted, feats, pt, nt, et, rounds, k, score, exclude_rejected):
    """METHODS.md 2.5 v2 with Python sets, one group at a time."""
    out = []
    for g in range(members.shape[0]):
        mem = members[g].tolist()
        acc = [m for m, a in zip(mem, accepted[g].tolist()) if a]
        excl = set(mem) if exclude_rejected else set(acc)

        def leading(m, t):
            n = 0
            for s in pool_sim[m].tolist():
                if s < t:
                    break
                n += 1
            return n

        p0, cand, neg = set(), set(), set()
        for m in acc:
            pb, nb = leading(m, pt), leading(m, nt)
            p0 |= set(pool_idx[m, :pb].tolist())
            cand |= set(pool_idx[m, pb:nb].tolist())
        for m in mem:
            neg |= set(pool_idx[m, leading(m, nt):].tolist())
        p0 -= excl
        cand -= excl | p0
        neg -= excl | p0 | cand
        queries = acc + sorted(p0)
        selected, per_round = [], []
        for _ in range(rounds):
            scored = []
            for c in sorted(cand - set(selected)):
                sims = [float(feats[c] @ feats[q]) for q in queries]
                if score == "thresholded_mean":
                    kept = [s for s in sims if s >= et]
                    if kept:
                        scored.append((sum(kept) / len(kept), c))
                else:
                    mean = sum(sims) / len(sims)
                    if mean >= et:
                        scored.append((mean, c))
            scored.sort(key=lambda t: (-t[0], t[1]))
            pick = [c for _, c in scored[:k]]
            per_round.append(pick)
            selected += pick
            queries += pick
        out.append(dict(initial=sorted(p0), rounds=per_round, candidates=sorted(cand), negatives=sorted(neg),
                        positives=sorted(p0) + selected))
    return out


def _rows(t):
    return [[v for v in row if v >= 0] for row in t.tolist()]


def _hand_made():
    """One group: anchor 0, accepted neighbour 1, rejected neighbour 2 (see the expected sets below)."""
    N, P = 8, 5
    pool = torch.zeros(N, P, dtype=torch.long)
    sim = torch.zeros(N, P)
    pool[0], sim[0] = torch.tensor([1, 3, 6, 4, 5]), torch.tensor([0.9, 0.8, 0.7, 0.6, 0.3])
    pool[1], sim[1] = torch.tensor([0, 2, 4, 7, 5]), torch.tensor([0.9, 0.7, 0.55, 0.2, 0.1])
    pool[2], sim[2] = torch.tensor([5, 7, 3, 6, 1]), torch.tensor([0.8, 0.7, 0.4, 0.3, 0.2])
    for i in range(3, N):
        pool[i] = torch.tensor([j for j in range(N) if j != i][:P])
        sim[i] = torch.linspace(0.9, 0.1, P)
    e = torch.eye(8, dtype=torch.float64)
    feats = torch.zeros(N, 8, dtype=torch.float64)
    feats[0], feats[1], feats[3], feats[2] = e[0], e[1], e[2], e[4]
    feats[6] = 0.7 * e[0] + 0.1 * e[3]        # 0.7 with the anchor: selected in round 1
    feats[4] = 0.5 * e[0] + 3.0 * e[3]        # 0.5 with Q0 (below 0.6), 0.65 with 6: selected in round 2
    feats[5], feats[7] = e[5], e[6]
    members = torch.tensor([[0, 1, 2]])
    accepted = torch.tensor([[True, True, False]])
    return pool, sim, members, accepted, feats


def test_algorithm1_on_a_hand_made_pool_with_known_answer():
    pool, sim, members, accepted, feats = _hand_made()
    kw = dict(positive_threshold=0.75, negative_threshold=0.5, expansion_threshold=0.6, rounds=3, k=1)
    m = mine_positives(pool, sim, members, accepted, feats, **kw)
    # pb(0) = 2, nb(0) = 4; pb(1) = 1, nb(1) = 3; the rejected member 2 contributes negatives only.
    assert _rows(m.initial) == [[3]]                 # {1, 3} U {0} minus the members
    assert _rows(m.candidates) == [[4, 6]]           # {6, 4} U {2, 4} minus members and P0
    assert _rows(m.negatives) == [[5, 7]]            # {5} U {7, 5} U {3, 6, 1} minus members, P0, C
    assert [_rows(r) for r in m.rounds] == [[[6]], [[4]], [[]]]   # 4 only once 6 is a query; then none left
    assert _rows(m.positives) == [[3, 6, 4]]
    # The official form lets the rejected neighbour back in as a candidate through member 1's pool.
    off = mine_positives(pool, sim, members, accepted, feats, exclude_rejected=False, **kw)
    assert _rows(off.candidates) == [[2, 4, 6]] and _rows(off.positives) == [[3, 6, 4]]
    # Thesis Algorithm 1 scores by the mean over the whole query set: 0.7 / 3 < 0.6, nothing is added.
    thesis = mine_positives(pool, sim, members, accepted, feats, score="mean", **kw)
    assert _rows(thesis.positives) == [[3]]
    # k larger than the eligible set: round 1 takes only 6 (4 is not eligible yet).
    wide = mine_positives(pool, sim, members, accepted, feats, **{**kw, "k": 5, "rounds": 1})
    assert _rows(wide.rounds[0]) == [[6]]
    ref = reference_mine(pool, sim, members, accepted, feats, 0.75, 0.5, 0.6, 3, 1, "thresholded_mean", True)[0]
    assert ref["positives"] == [3, 6, 4] and ref["negatives"] == [5, 7]


@pytest.mark.parametrize("score, et", [("thresholded_mean", 0.8), ("thresholded_mean", 0.9), ("mean", 0.55),
                                       ("mean", 0.75)])
@pytest.mark.parametrize("exclude_rejected", [True, False])
def test_vectorised_mining_matches_the_loop_reference(score, et, exclude_rejected):
    picked = unpicked = 0
    for seed in range(6):
        gen = torch.Generator().manual_seed(seed)
        N, P, D, G, M = 60, 12, 6, 5, 4
        feats = torch.nn.functional.normalize(torch.randn(N, D, generator=gen, dtype=torch.float64) + 0.8, dim=1)
        sims = feats @ feats.T
        sims.fill_diagonal_(-2)
        pool_sim, pool = sims.topk(P, dim=1)
        anchors = torch.randperm(N, generator=gen)[:G]
        members = torch.stack([torch.cat([a[None], pool[a, :M - 1]]) for a in anchors])
        accepted = torch.rand(G, M, generator=gen) < 0.7
        accepted[:, 0] = True
        kw = dict(positive_threshold=0.92, negative_threshold=0.75, expansion_threshold=et, rounds=3, k=2)
        m = mine_positives(pool, pool_sim, members, accepted, feats, score=score, exclude_rejected=exclude_rejected,
                           **kw)
        ref = reference_mine(pool, pool_sim, members, accepted, feats, 0.92, 0.75, et, 3, 2, score,
                             exclude_rejected)
        assert _rows(m.initial) == [r["initial"] for r in ref]
        assert _rows(m.candidates) == [r["candidates"] for r in ref]
        assert _rows(m.negatives) == [r["negatives"] for r in ref]
        for i in range(3):
            assert _rows(m.rounds[i]) == [r["rounds"][i] for r in ref]
        assert _rows(m.positives) == [r["positives"] for r in ref]
        n_sel = sum(len(x) for r in ref for x in r["rounds"])
        picked += n_sel
        unpicked += sum(len(r["candidates"]) for r in ref) - n_sel
    assert picked > 0 and unpicked > 0  # the sweep exercises both selection and rejection


def test_mining_with_more_groups_than_one_bitmap_word_and_none():
    # The N0 exclusion keeps one bit per group in 64-bit words: 70 groups need two words.
    gen = torch.Generator().manual_seed(3)
    N, P, D, G, M = 90, 15, 6, 70, 3
    feats = torch.nn.functional.normalize(torch.randn(N, D, generator=gen, dtype=torch.float64) + 0.8, dim=1)
    sims = feats @ feats.T
    sims.fill_diagonal_(-2)
    pool_sim, pool = sims.topk(P, dim=1)
    anchors = torch.randint(0, N, (G,), generator=gen)
    members = torch.stack([torch.cat([a[None], pool[a, :M - 1]]) for a in anchors])
    accepted = torch.rand(G, M, generator=gen) < 0.7
    accepted[:, 0] = True
    m = mine_positives(pool, pool_sim, members, accepted, feats, positive_threshold=0.92, negative_threshold=0.75,
                       expansion_threshold=0.8, rounds=2, k=2)
    ref = reference_mine(pool, pool_sim, members, accepted, feats, 0.92, 0.75, 0.8, 2, 2, "thresholded_mean", True)
    assert _rows(m.negatives) == [r["negatives"] for r in ref]
    assert _rows(m.positives) == [r["positives"] for r in ref]
    empty = mine_positives(pool, pool_sim, members[:0], accepted[:0], feats)
    assert empty.positives.shape[0] == empty.negatives.shape[0] == empty.negative_entries.shape[0] == 0


def test_mining_rejects_bad_arguments():
    pool, sim, members, accepted, feats = _hand_made()
    with pytest.raises(ValueError, match="positive_threshold"):
        mine_positives(pool, sim, members, accepted, feats, positive_threshold=1.5)
    with pytest.raises(ValueError, match="negative_threshold"):
        mine_positives(pool, sim, members, accepted, feats, positive_threshold=0.5, negative_threshold=0.6)
    with pytest.raises(ValueError, match="score"):
        mine_positives(pool, sim, members, accepted, feats, score="max")
    with pytest.raises(ValueError, match="accepted"):
        mine_positives(pool, sim, members, accepted.long(), feats)


def _mined(positives, negatives, candidates=None):
    from ssml_fast.memory.positive_mining import MinedPositives

    t = lambda rows: torch.tensor(rows, dtype=torch.long)  # noqa: E731
    pos = t(positives)
    return MinedPositives(initial=pos, rounds=[], positives=pos, negative_entries=t(negatives),
                          candidates=t(candidates) if candidates is not None else pos[:, :0])


def test_memory_columns_exclusions_and_labels():
    mined = _mined([[3, 4, 9], [4, 6, -1]], [[10, 11, 3], [12, 6, -1]], candidates=[[13, -1], [14, 15]])
    batch = torch.tensor([0, 1, 2, 9])
    cols = memory_columns(mined, 30, num_negatives=0, batch_index=batch)
    assert cols.positive_slots.tolist() == [3, 4, 6]             # 9 is a batch image: dropped
    assert cols.membership.tolist() == [[True, True, False], [False, True, True]]  # 4 is a positive of both
    assert cols.negative_slots.tolist() == [10, 11, 12]           # positives 3 and 6 are not negatives
    official = memory_columns(mined, 30, num_negatives=0, one_label_per_slot=True)
    assert official.positive_slots.tolist() == [3, 4, 6, 9]
    assert official.membership.tolist() == [[True, True, False, True], [False, False, True, False]]
    filled = torch.ones(30, dtype=torch.bool)
    filled[25:] = False
    for s in range(5):
        cols = memory_columns(mined, 30, num_negatives=12, filled=filled, batch_index=batch, exclude_candidates=True,
                              generator=torch.Generator().manual_seed(s))
        negs = set(cols.negative_slots.tolist())
        assert len(negs) == 12 and {10, 11, 12} <= negs
        assert not negs & {0, 1, 2, 9, 3, 4, 6, 13, 14, 15, 25, 26, 27, 28, 29}
    everything = memory_columns(mined, 30, num_negatives=1000, filled=filled, batch_index=batch)
    assert set(everything.negative_slots.tolist()) == set(range(25)) - {0, 1, 2, 9, 3, 4, 6}


def test_v1_random_negatives_exclude_the_pool_neighbours_and_unfilled_slots():
    filled = torch.zeros(100, dtype=torch.bool)
    filled[:80] = True
    exclude = torch.arange(0, 50, 2).view(5, 5)
    for s in range(5):
        got = excluded_random_negatives(100, 30, filled=filled, exclude=exclude,
                                        generator=torch.Generator().manual_seed(s))
        assert got.numel() == 30 and len(set(got.tolist())) == 30
        assert not set(got.tolist()) & set(exclude.flatten().tolist()) and int(got.max()) < 80
    assert excluded_random_negatives(100, 500, filled=filled, exclude=exclude).numel() == 80 - 25
    a = random_slots(filled, 10, torch.Generator().manual_seed(1))
    b = random_slots(filled, 10, torch.Generator().manual_seed(1))
    assert torch.equal(a, b)


# ---- batches, selection, pairs -----------------------------------------------------------------
def test_in_batch_selection_threshold():
    k1 = 4
    # Group of anchor e0 with neighbours at cosine 0.6 (kept), 0.5999 (rejected), 0.9 (kept).
    def unit(c):
        return torch.tensor([c, math.sqrt(1 - c * c)])
    f = torch.stack([torch.tensor([1.0, 0.0]), unit(0.6), unit(0.5999), unit(0.9),
                     torch.tensor([0.0, 1.0]), unit(0.0), unit(1.0), unit(0.8)]).double()
    acc = select_neighbours(f, k1, 0.6)
    # second group's anchor is e1: cos(e1, unit(0)) = 1, cos(e1, unit(1)) = 0, cos(e1, unit(0.8)) = 0.6
    assert acc.tolist() == [True, True, False, True, True, True, False, True]


def test_batch_pairs_official_and_fixed():
    # Two groups of 1 + 2; row 2 rejected, row 4 rejected, row 5 holds the same image as anchor 0.
    index = torch.tensor([7, 1, 2, 3, 4, 7])
    group = torch.tensor([0, 0, 0, 1, 1, 1])
    accepted = torch.tensor([True, True, False, True, False, True])

    def masks(pairs):
        pos, neg = torch.zeros(6, 6, dtype=torch.bool), torch.zeros(6, 6, dtype=torch.bool)
        pos[pairs[0], pairs[1]] = True
        neg[pairs[2], pairs[3]] = True
        return pos, neg

    pos, neg = masks(batch_pairs(index, group, accepted, fix_pitfalls=False))
    assert pos[0, 1] and pos[3, 5] and not pos[0, 2] and neg[0, 2]
    assert neg[0, 5]                                # official: the same image is its own negative
    pos_f, neg_f = masks(batch_pairs(index, group, accepted, fix_pitfalls=True))
    assert pos_f[0, 5] and pos_f[5, 0] and not neg_f[0, 5]
    assert pos_f[3, 5] and pos_f[0, 1] and neg_f[0, 2]
    assert not (pos_f & neg_f).any() and not pos_f.diagonal().any() and not neg_f.diagonal().any()
    # Rejected rows 2 and 4 have no positives in the fixed form (official: none here either, one each).
    assert not pos_f[2].any() and not pos_f[4].any()
    idx3 = torch.tensor([0, 1, 2, 3])
    g3, a3 = torch.zeros(4, dtype=torch.long), torch.tensor([True, False, False, True])
    off = batch_pairs(idx3, g3, a3, False)
    assert (1, 2) in set(zip(off[0].tolist(), off[1].tolist()))   # official: rejected neighbours are positives
    fixed = batch_pairs(idx3, g3, a3, True)
    assert (1, 2) in set(zip(fixed[2].tolist(), fixed[3].tolist()))  # fixed: negatives of each other


@pytest.fixture(scope="module")
def split():
    return load_dataset("digits", seed=0)


def _insclr(split, **kw):
    overrides = {"epochs": 2, "impr_epochs": 1, "batch_size": 60, "impr_batch_size": 40, "pool_size": 50,
                 "memory_get_step": 3, **kw}
    cfg = make_config("insclr", "small", [("test", overrides)])
    torch.manual_seed(0)
    return InsCLR(cfg, data_info(split))


def test_batches_are_anchors_with_their_first_pool_neighbours(split):
    m = _insclr(split)
    t = Trainer(m, split, RunConfig(seed=0, quiet=True, eval_every=0))
    stage = m.stages()[0]
    m.begin_stage(stage, t.ctx)
    sampler = m.batch_sampler(stage, t.ctx)
    batch = torch.as_tensor(next(iter(sampler))).view(-1, 4)
    assert batch.shape == (15, 4)
    for row in batch:
        assert row[1:].tolist() == m.pool_idx[row[0], :3].tolist()
    # Within a group: positives of each other; across groups: negatives.
    idx = batch.flatten()
    group = torch.arange(60) // 4
    a1, p, a2, n = batch_pairs(idx, group, torch.ones(60, dtype=torch.bool), True)
    assert all(group[i] == group[j] or idx[i] == idx[j] for i, j in zip(a1.tolist(), p.tolist()))
    assert all(group[i] != group[j] for i, j in zip(a2.tolist(), n.tolist()))
    assert len(a1) >= 15 * 12


def test_stage_pools_come_from_the_initial_trunk_then_the_previous_stage_model(split):
    m = _insclr(split, epochs=1)
    t = Trainer(m, split, RunConfig(seed=0, quiet=True, eval_every=0))
    seen = []
    original = m.begin_stage

    def spy(stage, ctx):
        i = stage.options["index"]
        fn = m._trunk_embedding if i == 0 else m.embed
        emb = ctx.embed_train(fn)
        original(stage, ctx)
        sim, idx = knn_search(torch.nn.functional.normalize(emb, dim=1), m.config.pool_size, metric="inner_product")
        seen.append((stage.name, m.pool_idx.clone(), m.pool_sim.clone(), idx, sim, emb))
        if stage.options["kind"] == "impr":
            assert bool(m.filled.all())
            torch.testing.assert_close(m.memory_noaug.bank, emb, atol=1e-5, rtol=0)
            torch.testing.assert_close(m.memory.bank, emb, atol=1e-5, rtol=0)
        else:
            assert not bool(m.filled.any()) and int(m.stage_step) == 0

    m.begin_stage = spy
    t.fit()
    assert [s[0] for s in seen] == ["base1", "base2", "impr"]
    for name, pool, psim, idx, sim, _ in seen:
        assert torch.equal(pool, idx), name
        torch.testing.assert_close(psim, sim)
    assert not torch.equal(seen[0][1], seen[1][1]) and not torch.equal(seen[1][1], seen[2][1])
    # Stage 0 uses the head-less trunk: identity head here, so the embedding of stage 1's pool is the
    # trained model's; with a linear head the two differ at initialisation.
    m2 = _insclr(split, head="norm_linear_norm")
    x = split.train_images[:16]
    assert not torch.allclose(m2._trunk_embedding(x), m2.embed(x))


def _run_step(m, split, stage_index):
    t = Trainer(m, split, RunConfig(seed=0, quiet=True, eval_every=0))
    stage = m.stages()[stage_index]
    m.begin_stage(stage, t.ctx)
    m.stage_step.fill_(10)  # past memory_get_step: the memory term is on
    sampler = m.batch_sampler(stage, t.ctx)
    m.on_epoch_start(0, sampler, t.ctx)
    idx = torch.as_tensor(next(iter(sampler)))
    batch = Batch(m.views(split.train_images[idx], torch.Generator().manual_seed(0)), None, idx)
    before = {k: v.clone() for k, v in m.state_dict().items()}
    if stage.options["kind"] == "base":
        m.memory.update(torch.arange(m.data.num_train), torch.randn(m.data.num_train, m.dim), 0.0)
        m.filled.fill_(True)
    out = m.training_step(batch)
    assert out.loss.dim() == 0 and math.isfinite(out.loss.item())
    assert "loss_memory" in out.logs
    t.optimizer.zero_grad()
    out.loss.backward()
    t.optimizer.step()
    m.after_step(batch, out)
    changed = [k for k, v in m.state_dict().items() if v.is_floating_point() and not torch.equal(v, before[k])]
    assert any(k.startswith("trunk.") for k in changed), changed
    return out


@pytest.mark.parametrize("stage_index", [0, 2])
def test_one_step_changes_parameters_with_a_finite_loss(split, stage_index):
    out = _run_step(_insclr(split), split, stage_index)
    if stage_index == 2:
        assert out.logs["memory_positives"] > 0 and out.logs["memory_negatives"] > 0


def test_official_network_gem_and_norm_linear_norm(split):
    m = _insclr(split, pool="gem", head="norm_linear_norm", embedding_dim=32)
    x = split.train_images[:8]
    z = m.embed(x)
    assert z.shape == (8, 32)
    torch.testing.assert_close(z.norm(dim=1), torch.ones(8))
    h = m.features(x)
    assert h.shape == (8, m.trunk.out_dim)
    fm = m.trunk.forward_map(x)
    torch.testing.assert_close(h, fm.clamp(min=1e-6).pow(3).mean((2, 3)).pow(1 / 3))
    assert m.head.bias is None
    _run_step(m, split, 2)


def test_official_defaults_and_stage_options():
    cfg = make_config("insclr")
    assert (cfg.pool_size, cfg.neighbours, cfg.batch_size, cfg.impr_batch_size) == (500, 3, 256, 64)
    assert (cfg.positive_threshold, cfg.negative_threshold, cfg.expansion_threshold) == (0.75, 0.5, 0.6)
    assert (cfg.expansion_rounds, cfg.expansion_k, cfg.selection_threshold, cfg.lambda_) == (4, 5, 0.6, 0.4)
    assert (cfg.optimizer, cfg.lr, cfg.impr_lr, cfg.weight_decay) == ("adam", 1e-4, 3e-5, 1e-4)
    assert (cfg.memory_start_step, cfg.memory_get_step, cfg.memory_negatives, cfg.memory_exclude_top) == \
        (2000, 4000, 100_000, 50)
    from ssml_fast.methods.base import DataInfo

    m = InsCLR(cfg, DataInfo((1, 8, 8), 0.3, 0.4, 1000, (0,)))
    stages = m.stages()
    assert [s.name for s in stages] == ["base1", "base2", "base3", "impr"]
    assert stages[-1].options["lr_scale"] == pytest.approx(0.3) and stages[-1].options["milestones"] == (2,)
    assert stages[0].options["milestones"] == (4,)
    groups = m.parameter_groups()
    assert groups[1]["weight_decay"] == 0.0 and all(p.dim() == 1 for p in groups[1]["params"])


# ---- resume ------------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def straight_run(split, tmp_path_factory):
    t = Trainer(_insclr(split), split, RunConfig(seed=0, quiet=True, eval_every=0),
                tmp_path_factory.mktemp("straight"))
    res = t.fit()
    return t, res


@pytest.mark.parametrize("where", ["base2", "impr"])
def test_resume_inside_a_stage_is_bit_identical(split, tmp_path, straight_run, where):
    straight, res_a = straight_run
    m = _insclr(split)
    t = Trainer(m, split, RunConfig(seed=0, quiet=True, eval_every=0), tmp_path)
    base_steps = len(m.batch_sampler(m.stages()[0], t.ctx))
    n = base_steps * 2 + 5 if where == "base2" else base_steps * 4 + 3  # epoch 1 of base2, or of impr
    interrupt_after(t, n)
    with pytest.raises(TrainingInterrupted):
        t.fit()
    resumed = Trainer(_insclr(split), split, RunConfig(seed=0, quiet=True, eval_every=0), tmp_path)
    seen = {}
    original = resumed.method.begin_stage

    def spy(stage, ctx):
        before = resumed.method.pool_idx.clone()
        original(stage, ctx)
        seen[stage.name] = (ctx.resuming, before, resumed.method.pool_idx.clone())

    resumed.method.begin_stage = spy
    res_b = resumed.fit(resume=True)
    resuming, before, after = seen[where]
    assert resuming and torch.equal(before, after)  # the checkpoint's pool is kept, not rebuilt
    assert list(seen)[0] == where
    a, b = straight.method.state_dict(), resumed.method.state_dict()
    assert a.keys() == b.keys()
    for k in a:
        assert torch.equal(a[k], b[k]), k
    strip = lambda h: [{k: v for k, v in r.items() if k not in ("seconds", "images_per_s")} for r in h]  # noqa: E731
    assert strip(res_a["history"]) == strip(res_b["history"])


# ---- bad config ------------------------------------------------------------------------------------
@pytest.mark.parametrize("kw, message", [
    (dict(neighbours=50, pool_size=50), "neighbours"),
    (dict(neighbours=60, pool_size=50, batch_size=61 * 2, impr_batch_size=61), "neighbours"),
    (dict(positive_threshold=1.2), "positive_threshold"),
    (dict(negative_threshold=-1.5), "negative_threshold"),
    (dict(selection_threshold=2.0), "selection_threshold"),
    (dict(expansion_threshold=float("nan")), "expansion_threshold"),
    (dict(positive_threshold=0.4, negative_threshold=0.5), "negative_threshold"),
    (dict(batch_size=62), "multiple of neighbours"),
    (dict(memory_exclude_top=500), "memory_exclude_top"),
    (dict(expansion_score="max"), "expansion_score"),
    (dict(base_stages=0, impr_epochs=0), "nothing to train"),
])
def test_bad_config_is_a_named_error(kw, message):
    with pytest.raises(ConfigError, match=message):
        make_config("insclr", "small", [("test", kw)])


def test_pool_larger_than_the_dataset_is_a_named_error(split):
    n = len(split.train_labels)
    with pytest.raises(ValueError, match=f"pool_size={n}"):
        _insclr(split, pool_size=n, memory_exclude_top=10)


def test_resume_from_the_end_of_a_stage_is_bit_identical(split, tmp_path):
    def mk():
        return _insclr(split, epochs=1, base_stages=2, schedule="cosine")

    straight = Trainer(mk(), split, RunConfig(seed=0, quiet=True, eval_every=0), tmp_path / "a")
    straight.fit()
    t = Trainer(mk(), split, RunConfig(seed=0, quiet=True, eval_every=0), tmp_path / "b")
    original = t.method.begin_stage

    def crash(stage, ctx):  # a crash after base1's last checkpoint, before base2 trains
        if stage.options["index"] == 1:
            raise RuntimeError("crash between stages")
        original(stage, ctx)

    t.method.begin_stage = crash
    with pytest.raises(RuntimeError, match="between stages"):
        t.fit()
    resumed = Trainer(mk(), split, RunConfig(seed=0, quiet=True, eval_every=0), tmp_path / "b")
    resumed.fit(resume=True)
    a, b = straight.method.state_dict(), resumed.method.state_dict()
    assert all(torch.equal(a[k], b[k]) for k in a)
