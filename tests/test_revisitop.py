"""revisitop_map / average_precision / landmark_map_at_k against plain re-statements of the official
revisitop compute_ap + compute_map (Radenovic et al. 2018), hand cases and the thesis's Figure 19."""
import math

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from ssml_fast.evaluation import average_precision, landmark_map_at_k, revisitop_map


# ---------------------------------------------------------------- plain reference of the official code
def official_ap(pos, nres):
    """Trapezoids under the precision-recall curve; pos = sorted 0-based ranks of the positives."""
    ap = 0.0
    for j, rank in enumerate(pos):
        precision_before = 1.0 if rank == 0 else j / rank
        precision_after = (j + 1) / (rank + 1)
        ap += (precision_before + precision_after) / 2 / nres
    return ap


def official_map(ranks_db_by_q, gnd_ok_junk, kappas=()):
    """ranks_db_by_q: (n_db, n_queries) like the official code; gnd: [{'ok': ..., 'junk': ...}]."""
    aps, prs = [], []
    for i, g in enumerate(gnd_ok_junk):
        ok, junk = list(g["ok"]), list(g["junk"])
        if not ok:
            continue
        column = list(ranks_db_by_q[:, i])
        pos = [p for p, img in enumerate(column) if img in ok]
        junk_pos = [p for p, img in enumerate(column) if img in junk]
        # Each positive moves up by the number of junk images ranked before it.
        pos = [p - sum(1 for jp in junk_pos if jp < p) for p in pos]
        aps.append(official_ap(pos, len(ok)))
        one_based = [p + 1 for p in pos]
        row = []
        for kappa in kappas:
            if not one_based:  # the official code fails here (max of nothing); we score 0
                row.append(0.0)
                continue
            kq = min(max(one_based), kappa)
            row.append(sum(1 for p in one_based if p <= kq) / kq)
        prs.append(row)
    mean = sum(aps) / len(aps) if aps else float("nan")
    mp = [sum(r[j] for r in prs) / len(prs) for j in range(len(kappas))] if prs else []
    return mean, mp


def protocol_gnd(gnd, protocol):
    """As in the official example_evaluate.py."""
    out = []
    for g in gnd:
        easy, hard, junk = list(g.get("easy", [])), list(g.get("hard", [])), list(g.get("junk", []))
        if protocol == "easy":
            out.append({"ok": easy, "junk": junk + hard})
        elif protocol == "medium":
            out.append({"ok": easy + hard, "junk": junk})
        else:
            out.append({"ok": hard, "junk": junk + easy})
    return out


# ---------------------------------------------------------------- the thesis's worked example (Figure 19)
def test_thesis_figure_19_map_053():
    # Figure 19 (thesis 4.3): query 1 has 5 relevant images found at ranks 1, 3, 6, 9, 10, query 2 has 3
    # at ranks 2, 5, 7: AP1 = (1 + 2/3 + 3/6 + 4/9 + 5/10) / 5 = 0.62, AP2 = (1/2 + 2/5 + 3/7) / 3 = 0.44,
    # mAP = 0.53. That is the "average of precision values at the ranks of the relevant images" (step AP).
    ap1 = average_precision([0, 2, 5, 8, 9], 5, interpolation="step")
    ap2 = average_precision([1, 4, 6], 3, interpolation="step")
    assert round(ap1, 2) == 0.62 and round(ap2, 2) == 0.44
    assert round((ap1 + ap2) / 2, 2) == 0.53

    # The same two rankings through revisitop_map (positives as "easy", nothing ignored).
    db = 10
    ranks = np.array([np.arange(db), np.arange(db)])
    gnd = [{"easy": [0, 2, 5, 8, 9]}, {"easy": [1, 4, 6]}]
    out, per_query = revisitop_map(ranks, gnd, ("easy",), interpolation="step", return_per_query=True)
    np.testing.assert_allclose(per_query["easy"], [ap1, ap2])
    assert round(out["easy"], 2) == 0.53
    # The official revisitop AP interpolates trapezoids and so scores the same rankings lower.
    trapezoid = revisitop_map(ranks, gnd, ("easy",))["easy"]
    assert trapezoid == pytest.approx((official_ap([0, 2, 5, 8, 9], 5) + official_ap([1, 4, 6], 3)) / 2)
    assert trapezoid < out["easy"]


# ---------------------------------------------------------------- hand-built revisited ground truth
# 12 database images, 4 queries.
GND = [
    {"easy": [0, 3], "hard": [5], "junk": [1, 7]},
    {"easy": [2], "hard": [4, 9], "junk": []},
    {"easy": [6, 8, 10], "hard": [], "junk": [11]},   # no hard positive: left out of Hard
    {"easy": [], "hard": [], "junk": [0]},             # no positive at all: left out everywhere
]
RANKS = np.array([
    [1, 0, 7, 5, 2, 3, 4, 6, 8, 9, 10, 11],
    [4, 2, 0, 1, 3, 5, 6, 7, 8, 9, 10, 11],
    [11, 6, 0, 8, 1, 2, 10, 3, 4, 5, 7, 9],
    [0, 1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11],
])


def test_hand_case_first_query_by_hand():
    # Query 0, Easy: junk = {1, 7} and hard {5} are skipped, so the ranking is 0, 2, 3, ... with
    # positives 0 and 3 at cleaned ranks 0 and 2 -> trapezoid AP = ((1 + 1) / 2 + (1/2 + 2/3) / 2) / 2.
    out, aps = revisitop_map(RANKS[:1], GND[:1], ("easy",), return_per_query=True)
    assert aps["easy"][0] == pytest.approx(((1 + 1) / 2 + (1 / 2 + 2 / 3) / 2) / 2)
    # Medium: positives 0, 5, 3 at cleaned ranks (junk 1, 7 removed) 0, 1, 3.
    med = revisitop_map(RANKS[:1], GND[:1], ("medium",))["medium"]
    assert med == pytest.approx(official_ap([0, 1, 3], 3))


@pytest.mark.parametrize("protocol", ["easy", "medium", "hard"])
def test_hand_case_matches_official(protocol):
    out, aps = revisitop_map(RANKS, GND, (protocol,), kappas=(1, 5, 10), return_per_query=True)
    want, want_mp = official_map(RANKS.T, protocol_gnd(GND, protocol), (1, 5, 10))
    assert out[protocol] == pytest.approx(want)
    for kappa, value in zip((1, 5, 10), want_mp):
        assert out[f"{protocol}_mP@{kappa}"] == pytest.approx(value)
    assert math.isnan(aps[protocol][3])
    assert math.isnan(aps[protocol][2]) == (protocol == "hard")


def test_ignored_images_are_skipped_not_counted_as_misses():
    # Putting junk (or, for Easy, hard positives) in front of the positives does not change the AP.
    clean = revisitop_map(np.array([[0, 3, 2]]), [{"easy": [0, 3]}], ("easy",))["easy"]
    noisy = revisitop_map(np.array([[1, 5, 0, 7, 3, 2]]), [{"easy": [0, 3], "hard": [5], "junk": [1, 7]}],
                          ("easy",))["easy"]
    assert clean == pytest.approx(1.0) and noisy == pytest.approx(1.0)


def test_no_positive_anywhere_gives_nan_and_accepts_tensors():
    out = revisitop_map(torch.arange(4).view(1, 4), [{"junk": [1]}])
    assert all(math.isnan(v) for v in out.values())


@settings(max_examples=40, deadline=None)
@given(data=st.data(), n_db=st.integers(1, 30), n_q=st.integers(1, 6), truncate=st.booleans())
def test_property_matches_official(data, n_db, n_q, truncate):
    rng = np.random.default_rng(data.draw(st.integers(0, 2**31 - 1)))
    gnd = []
    for _ in range(n_q):
        perm = rng.permutation(n_db)
        a, b, c = sorted(rng.integers(0, n_db + 1, 3))
        gnd.append({"easy": perm[:a].tolist(), "hard": perm[a:b].tolist(), "junk": perm[b:c].tolist()})
    ranks = np.stack([rng.permutation(n_db) for _ in range(n_q)])
    if truncate:  # a top-n ranking: positives never retrieved count as misses
        ranks = ranks[:, : max(1, n_db // 2)]
    out, aps = revisitop_map(ranks, gnd, kappas=(1, 5), return_per_query=True)
    for protocol in ("easy", "medium", "hard"):
        pg = protocol_gnd(gnd, protocol)
        full = np.zeros((n_db, n_q), dtype=np.int64) - 1
        full[: ranks.shape[1]] = ranks.T
        want, want_mp = official_map(full, pg, (1, 5))
        if math.isnan(want):
            assert math.isnan(out[protocol])
        else:
            assert out[protocol] == pytest.approx(want, abs=1e-12)
            assert [out[f"{protocol}_mP@1"], out[f"{protocol}_mP@5"]] == pytest.approx(want_mp, abs=1e-12)
        for q in range(n_q):
            if pg[q]["ok"]:
                assert aps[protocol][q] == pytest.approx(official_map(full[:, q:q + 1], pg[q:q + 1])[0], abs=1e-12)
                assert 0.0 <= aps[protocol][q] <= 1.0 + 1e-12


def test_average_precision_bounds_and_step_vs_trapezoid():
    assert average_precision([0, 1, 2], 3) == pytest.approx(1.0)
    assert average_precision([0, 1, 2], 3, "step") == pytest.approx(1.0)
    assert average_precision([], 4) == 0.0
    assert average_precision([0], 2) == pytest.approx(0.5)


# ---------------------------------------------------------------- GLDv2 mAP@100
def reference_map_at_k(ranks, positives, k):
    aps = []
    for row, pos in zip(ranks, positives):
        if not pos:
            continue
        hits, total = 0, 0.0
        for i, img in enumerate(row[:k]):
            if img in pos:
                hits += 1
                total += hits / (i + 1)
        aps.append(total / min(len(pos), k))
    return sum(aps) / len(aps) if aps else float("nan")


def test_landmark_map_at_k_hand_case():
    ranks = np.array([[5, 1, 2, 3], [0, 1, 2, 3], [0, 1, 2, 3]])
    positives = [[1, 3], [], [9]]  # query 1 has no landmark: left out; query 2 retrieves nothing
    # Query 0: hits at ranks 2 and 4 -> (1/2 + 2/4) / 2 = 0.5; query 2: 0.
    assert landmark_map_at_k(ranks, positives, k=100) == pytest.approx(0.25)
    # At k = 2 only the first hit counts, normalised by min(m, k) = 2.
    assert landmark_map_at_k(ranks, positives, k=2) == pytest.approx((0.5 / 2 + 0) / 2)


@settings(max_examples=30, deadline=None)
@given(data=st.data(), n_db=st.integers(1, 150), n_q=st.integers(1, 5), k=st.integers(1, 120))
def test_landmark_map_at_k_matches_reference(data, n_db, n_q, k):
    rng = np.random.default_rng(data.draw(st.integers(0, 2**31 - 1)))
    ranks = np.stack([rng.permutation(n_db) for _ in range(n_q)])
    positives = [rng.choice(n_db, rng.integers(0, n_db + 1), replace=False).tolist() for _ in range(n_q)]
    want = reference_map_at_k(ranks.tolist(), [set(p) for p in positives], k)
    got = landmark_map_at_k(ranks, positives, k=k)
    assert (math.isnan(got) and math.isnan(want)) or got == pytest.approx(want, abs=1e-12)


# ---------------------------------------------------------------- bad input
def test_bad_input():
    with pytest.raises(ValueError, match="pass ranks.T"):
        revisitop_map(np.zeros((12, 4), dtype=np.int64), GND)
    with pytest.raises(ValueError, match="ranks"):
        revisitop_map(np.arange(12), GND[:1])
    with pytest.raises(TypeError, match="ranks"):
        revisitop_map(RANKS.astype(float), GND)
    with pytest.raises(ValueError, match="repeated"):
        revisitop_map(np.array([[0, 0, 1]]), [{"easy": [0]}])
    with pytest.raises(ValueError, match="protocols"):
        revisitop_map(RANKS, GND, ("extreme",))
    with pytest.raises(TypeError, match="gnd"):
        revisitop_map(RANKS, {"easy": [0]})
    with pytest.raises(ValueError, match="interpolation"):
        average_precision([0], 1, "linear")
    with pytest.raises(ValueError, match="num_positives"):
        average_precision([0, 1], 1)
    with pytest.raises(ValueError, match="k must"):
        landmark_map_at_k(RANKS, [[0]] * 4, k=0)
