"""CrossBatchMemory against a plain reference: a Python-list FIFO memory, the reference set
[batch; memory entries whose id is not in the batch] built by hand, and the loss written as explicit
loops over triplets / pairs with the anchor's own row excluded."""
import io

import pytest
import torch

from ssml_fast.losses import ContrastiveLoss, TripletMarginLoss
from ssml_fast.memory import CrossBatchMemory


def plain_dist(x, y, distance):
    rows = []
    for a in x:
        row = []
        for b in y:
            if distance == "cosine":
                row.append(1 - (a @ b) / (a.norm() * b.norm()))
            else:
                sq = ((a - b) ** 2).sum()
                if distance == "euclidean":  # the self distance is 0: keep its (unused) gradient finite
                    sq = sq.sqrt() if sq > 0 else sq * 0
                row.append(sq)
        rows.append(torch.stack(row))
    return torch.stack(rows)


def reduce(terms, reduction):
    """terms: per-triplet losses (all counted triplets)."""
    if not terms:
        return torch.zeros((), dtype=torch.float64)
    t = torch.stack(terms)
    if reduction == "sum":
        return t.sum()
    if reduction == "mean":
        return t.mean()
    active = t[t > 0]
    return active.mean() if len(active) else t.sum() * 0


def plain_triplet(emb, labels, ref, ref_labels, margin, mining, distance, reduction):
    """Anchor i is row i of the reference (the batch comes first): j == i is never a positive."""
    d = plain_dist(emb, ref, distance)
    terms = []
    for i in range(len(emb)):
        pos = [j for j in range(len(ref)) if ref_labels[j] == labels[i] and j != i]
        neg = [j for j in range(len(ref)) if ref_labels[j] != labels[i]]
        if mining == "all":
            terms += [torch.relu(d[i, p] - d[i, n] + margin) for p in pos for n in neg]
        elif mining == "hard" and pos and neg:
            terms.append(torch.relu(max(d[i, p] for p in pos) - min(d[i, n] for n in neg) + margin))
        elif mining == "semihard":
            for p in pos:
                farther = [d[i, n] for n in neg if d[i, n] > d[i, p]]
                if farther and min(farther) < d[i, p] + margin:
                    terms.append(d[i, p] - min(farther) + margin)
    return reduce(terms, reduction)


def plain_contrastive_sum(emb, labels, ref, ref_labels, pos_margin=0.0, neg_margin=1.0):
    d = plain_dist(emb, ref, "euclidean")
    total = torch.zeros((), dtype=torch.float64)
    for i in range(len(emb)):
        for j in range(len(ref)):
            if ref_labels[j] == labels[i] and j != i:
                total = total + torch.relu(d[i, j] - pos_margin)
            elif ref_labels[j] != labels[i]:
                total = total + torch.relu(neg_margin - d[i, j])
    return total


class PlainMemory:
    """FIFO of (embedding, label, id) as a Python list."""

    def __init__(self, size):
        self.size, self.rows = size, []

    def reference(self, emb, labels, ids):
        # PML's memory_size counts the batch too: the newest size - B past rows, minus the batch's ids
        keep = max(0, self.size - len(emb))
        recent = self.rows[max(0, len(self.rows) - keep):] if keep else []
        kept = [r for r in recent if ids is None or int(r[2]) not in ids.tolist()]
        ref = torch.cat([emb] + [r[0][None] for r in kept])
        ref_labels = torch.cat([labels, torch.tensor([int(r[1]) for r in kept], dtype=torch.long)])
        return ref, ref_labels

    def enqueue(self, emb, labels, ids):
        for k in range(len(emb)):
            self.rows.append((emb[k].detach().clone(), labels[k], -1 if ids is None else ids[k]))
        self.rows = self.rows[-self.size:]


def batches(steps, b=6, dim=4, n_ids=14, seed=0):
    """Small batches whose ids repeat across steps, so the memory holds stale copies of batch samples."""
    g = torch.Generator().manual_seed(seed)
    for _ in range(steps):
        emb = torch.randn(b, dim, generator=g, dtype=torch.float64)
        labels = torch.randint(0, 3, (b,), generator=g)
        ids = torch.randperm(n_ids, generator=g)[:b]
        yield emb, labels, ids


@pytest.mark.parametrize("mining", ["all", "hard", "semihard"])
@pytest.mark.parametrize("distance,reduction", [("euclidean", "mean_nonzero"), ("sqeuclidean", "mean"),
                                                 ("cosine", "sum")])
def test_triplet_equals_plain_loss_on_batch_plus_memory(mining, distance, reduction):
    margin = 0.5 if distance != "sqeuclidean" else 2.0
    xbm = CrossBatchMemory(TripletMarginLoss(margin, mining=mining, distance=distance, reduction=reduction), memory_size=10,
                           reference_grad=True)
    plain = PlainMemory(10)
    for emb, labels, ids in batches(6):  # 36 rows through a 10-slot memory: wraps several times
        x = emb.clone().requires_grad_(True)
        got = xbm(x, labels, ids=ids)
        got.backward()
        y = emb.clone().requires_grad_(True)
        ref, ref_labels = plain.reference(y, labels, ids)
        expected = plain_triplet(y, labels, ref, ref_labels, margin, mining, distance, reduction)
        expected.backward()
        plain.enqueue(emb, labels, ids)
        assert torch.allclose(got, expected, atol=1e-10), (got, expected)
        assert torch.allclose(x.grad, y.grad, atol=1e-10)


def test_triplet_equals_the_loss_given_explicit_self_free_triplets():
    # The same value through the loss's own indices_tuple path, with every (a, p, n), p != a, listed.
    loss = TripletMarginLoss(0.3, mining="all", distance="euclidean")
    xbm = CrossBatchMemory(TripletMarginLoss(0.3, mining="all", distance="euclidean"), memory_size=8)
    plain = PlainMemory(8)
    for emb, labels, ids in batches(4, seed=1):
        ref, ref_labels = plain.reference(emb, labels, ids)
        trip = [(i, p, n) for i in range(len(emb)) for p in range(len(ref)) for n in range(len(ref))
                if ref_labels[p] == labels[i] and p != i and ref_labels[n] != labels[i]]
        a, p, n = (torch.tensor(t, dtype=torch.long) for t in zip(*trip))
        expected = loss(emb, labels, (a, p, n), ref, ref_labels)
        assert torch.allclose(xbm(emb, labels, ids=ids), expected, atol=1e-12)
        plain.enqueue(emb, labels, ids)


def test_repeated_batch_with_ids_equals_in_batch_loss():
    # The memory's copies of the batch are superseded by the fresh rows: only the batch is left.
    loss = TripletMarginLoss(0.2, mining="all", distance="euclidean")
    xbm = CrossBatchMemory(TripletMarginLoss(0.2, mining="all", distance="euclidean"), memory_size=32)
    emb, labels, ids = next(batches(1, b=8, n_ids=8))
    for _ in range(3):
        assert torch.allclose(xbm(emb, labels, ids=ids), loss(emb, labels), atol=1e-12)
    assert len(xbm.queue) == 24


def test_without_ids_memory_is_used_whole():
    xbm = CrossBatchMemory(TripletMarginLoss(0.5, mining="hard", distance="euclidean"), memory_size=20)
    plain = PlainMemory(20)
    for emb, labels, _ in batches(3, seed=2):
        ref, ref_labels = plain.reference(emb, labels, None)
        expected = plain_triplet(emb, labels, ref, ref_labels, 0.5, "hard", "euclidean", "mean_nonzero")
        assert torch.allclose(xbm(emb, labels), expected, atol=1e-10)
        plain.enqueue(emb, labels, None)


def test_generic_pair_loss_excludes_self_pairs():
    xbm = CrossBatchMemory(ContrastiveLoss(reduction="sum", distance="euclidean"), memory_size=9, reference_grad=True)
    plain = PlainMemory(9)
    for step, (emb, labels, ids) in enumerate(batches(4, seed=3)):
        x = emb.clone().requires_grad_(True)
        got = xbm(x, labels, ids=ids)
        got.backward()
        y = emb.clone().requires_grad_(True)
        ref, ref_labels = plain.reference(y, labels, ids)
        expected = plain_contrastive_sum(y, labels, ref, ref_labels)
        expected.backward()
        assert torch.allclose(got, expected, atol=1e-10)
        assert torch.allclose(x.grad, y.grad, atol=1e-10)
        if step == 0:  # empty memory: exactly the loss on the batch alone
            assert torch.allclose(got, ContrastiveLoss(reduction="sum", distance="euclidean")(emb, labels), atol=1e-12)
        plain.enqueue(emb, labels, ids)


def test_miner_output_loses_its_self_pairs():
    def all_triplets_including_self(emb, labels, ref, ref_labels):
        same = labels[:, None] == ref_labels[None, :]
        t = [(i, p, n) for i in range(len(emb)) for p in range(len(ref)) for n in range(len(ref))
             if same[i, p] and not same[i, n]]
        return tuple(torch.tensor(c, dtype=torch.long) for c in zip(*t))

    xbm = CrossBatchMemory(TripletMarginLoss(0.4, mining="all", distance="euclidean"), memory_size=10, miner=all_triplets_including_self)
    plain = PlainMemory(10)
    for emb, labels, ids in batches(3, seed=4):
        ref, ref_labels = plain.reference(emb, labels, ids)
        expected = plain_triplet(emb, labels, ref, ref_labels, 0.4, "all", "euclidean", "mean_nonzero")
        assert torch.allclose(xbm(emb, labels, ids=ids), expected, atol=1e-10)
        plain.enqueue(emb, labels, ids)


def test_state_dict_round_trip_continues_identically():
    a = CrossBatchMemory(TripletMarginLoss(), memory_size=10)  # lazily allocated memory
    data = list(batches(6, seed=5))
    for emb, labels, ids in data[:3]:
        a(emb.float(), labels, ids=ids)
    buf = io.BytesIO()
    torch.save(a.state_dict(), buf)
    buf.seek(0)
    b = CrossBatchMemory(TripletMarginLoss(), memory_size=10)
    b.load_state_dict(torch.load(buf))
    for emb, labels, ids in data[3:]:
        assert torch.equal(a(emb.float(), labels, ids=ids), b(emb.float(), labels, ids=ids))
    for x, y in zip(a.queue.get(), b.queue.get()):
        assert torch.equal(x, y)


def test_memory_is_allocated_once_and_holds_detached_rows():
    xbm = CrossBatchMemory(TripletMarginLoss(), memory_size=12, embedding_size=4)
    ptr = xbm.queue.embeddings.data_ptr()
    for emb, labels, ids in batches(5, seed=6):
        xbm(emb.float().requires_grad_(True), labels, ids=ids)
    assert xbm.queue.embeddings.data_ptr() == ptr and not xbm.queue.embeddings.requires_grad


@pytest.mark.parametrize(
    "call,match",
    [
        (lambda: CrossBatchMemory(TripletMarginLoss(), memory_size=0), "size"),
        (lambda: CrossBatchMemory("triplet", memory_size=4), "loss"),
        (lambda: CrossBatchMemory(TripletMarginLoss(), memory_size=4)(torch.randn(3, 2), torch.zeros(2, dtype=torch.long)),
         "labels"),
        (lambda: CrossBatchMemory(TripletMarginLoss(), memory_size=4)(torch.randn(3, 2), torch.zeros(3, dtype=torch.long),
                                                          ids=torch.zeros(4, dtype=torch.long)), "ids"),
        (lambda: CrossBatchMemory(TripletMarginLoss(), memory_size=4, embedding_size=5)(torch.randn(3, 2), torch.zeros(3, dtype=torch.long)),
         "dimension"),
    ],
)
def test_bad_input(call, match):
    with pytest.raises((ValueError, TypeError), match=match):
        call()


# ---------------------------------------------------------------- PML's CrossBatchMemory, same numbers

@pytest.mark.parametrize("use_mask", [False, True])
@pytest.mark.parametrize("which", ["triplet", "contrastive", "ntxent", "triplet_miner", "lifted", "generalized_lifted"])
def test_matches_pml_cross_batch_memory(which, use_mask):
    """PML's signature and forward (embeddings, labels, indices_tuple=None, enqueue_mask=None), and its
    memory_size (the batch included): the same losses and gradients step after step, the memory wrapping."""
    pml_losses = pytest.importorskip("pytorch_metric_learning.losses")
    from pytorch_metric_learning import miners as pml_miners

    from ssml_fast import losses as L
    from ssml_fast import miners as M

    ours_loss, pml_loss = {"triplet": (L.TripletMarginLoss(0.2), pml_losses.TripletMarginLoss(0.2)),
                           "triplet_miner": (L.TripletMarginLoss(0.2), pml_losses.TripletMarginLoss(0.2)),
                           "contrastive": (L.ContrastiveLoss(), pml_losses.ContrastiveLoss()),
                           "ntxent": (L.NTXentLoss(0.3), pml_losses.NTXentLoss(0.3)),
                           # the per-pair form reads reference row numbers: ours runs on PML's slot layout
                           "lifted": (L.LiftedStructureLoss(), pml_losses.LiftedStructureLoss()),
                           "generalized_lifted": (L.GeneralizedLiftedStructureLoss(),
                                                  pml_losses.GeneralizedLiftedStructureLoss())}[which]
    miners = (M.MultiSimilarityMiner(0.2), pml_miners.MultiSimilarityMiner(0.2)) if which == "triplet_miner" \
        else (None, None)
    ours = CrossBatchMemory(ours_loss, 4, memory_size=14, miner=miners[0])  # reference_grad=False: PML's, the default
    theirs = pml_losses.CrossBatchMemory(pml_loss, 4, memory_size=14, miner=miners[1])
    g = torch.Generator().manual_seed(3)
    for step in range(6):
        emb = torch.randn(6, 4, generator=g, dtype=torch.float64)
        labels = torch.randint(0, 3, (6,), generator=g)
        mask = (torch.arange(6) % 2 == 0) if use_mask else None
        theirs.embedding_memory = theirs.embedding_memory.double()
        x, y = emb.clone().requires_grad_(True), emb.clone().requires_grad_(True)
        a, b = ours(x, labels, enqueue_mask=mask), theirs(y, labels, enqueue_mask=mask)
        torch.testing.assert_close(a, b.to(a.dtype), rtol=1e-7, atol=1e-10, msg=f"step {step}")
        a.backward()
        b.backward()
        torch.testing.assert_close(x.grad, y.grad, rtol=1e-6, atol=1e-9)


def test_pml_call_shape_errors():
    xbm = CrossBatchMemory(TripletMarginLoss(), 4, memory_size=8)
    emb, labels = torch.randn(6, 4), torch.randint(0, 2, (6,))
    with pytest.raises(TypeError, match="ids="):
        xbm(emb, labels, torch.arange(6))  # the old positional ids
    with pytest.raises(ValueError, match="exclusive"):
        xbm(emb, labels, (torch.tensor([0]), torch.tensor([1]), torch.tensor([2])), torch.ones(6, dtype=torch.bool))
    with pytest.raises(ValueError, match="memory_size"):
        xbm(torch.randn(9, 4), torch.zeros(9, dtype=torch.long))


def test_reference_grad_default_detaches_the_batch_copy_as_pml():
    """Default (PML, XBM paper): the batch's rows in the reference are constants, so the gradient is the
    plain loss's with the reference detached; reference_grad=True adds the reference-side gradient."""
    emb, labels, ids = next(batches(1, b=8, n_ids=8, seed=7))
    loss = TripletMarginLoss(0.5, distance="euclidean")
    for flag in (False, True):
        xbm = CrossBatchMemory(TripletMarginLoss(0.5, distance="euclidean"), memory_size=16, reference_grad=flag)
        x, y = emb.clone().requires_grad_(True), emb.clone().requires_grad_(True)
        xbm(x, labels).backward()
        loss(y, labels, None, y if flag else y.detach(), labels, ref_starts_with_batch=True).backward()
        torch.testing.assert_close(x.grad, y.grad, atol=1e-12, rtol=0)
    assert CrossBatchMemory(loss).reference_grad is False
    with pytest.raises(TypeError, match="reference_grad"):
        CrossBatchMemory(loss, reference_grad=1)


@pytest.mark.parametrize("use_mask", [False, True])
@pytest.mark.parametrize("name", ["ContrastiveLoss", "LiftedStructureLoss"])
def test_foreign_loss_gets_explicit_self_free_pairs(name, use_mask):
    """A loss that is not an ssml_fast MetricLoss (here PML's) gets the pairs as an indices_tuple on PML's
    slot layout: the same numbers as PML's own CrossBatchMemory (LiftedStructureLoss reads the row numbers)."""
    pml_losses = pytest.importorskip("pytorch_metric_learning.losses")
    ours = CrossBatchMemory(getattr(pml_losses, name)(), 4, memory_size=14)
    theirs = pml_losses.CrossBatchMemory(getattr(pml_losses, name)(), 4, memory_size=14)
    g = torch.Generator().manual_seed(8)
    for step in range(6):  # 36 (or 18) rows through 14 slots: the slots wrap
        emb = torch.randn(6, 4, generator=g, dtype=torch.float64)
        labels = torch.randint(0, 3, (6,), generator=g)
        mask = (torch.arange(6) % 2 == 1) if use_mask else None
        torch.testing.assert_close(ours(emb, labels, enqueue_mask=mask), theirs(emb, labels, enqueue_mask=mask),
                                   msg=f"step {step}")
        assert ours.queue_idx == theirs.queue_idx and ours.has_been_filled == theirs.has_been_filled
        assert torch.equal(ours.embedding_memory, theirs.embedding_memory)
        assert torch.equal(ours.label_memory, theirs.label_memory)


def test_slot_layout_with_ids_drops_the_stale_copies():
    """PML's layout (a foreign loss) with our ids: a batch seen again pairs only with its fresh rows, as the
    batch-first layout does: the in-batch loss."""
    pml_losses = pytest.importorskip("pytorch_metric_learning.losses")
    xbm = CrossBatchMemory(pml_losses.ContrastiveLoss(), memory_size=32)
    emb, labels, ids = next(batches(1, b=8, n_ids=8))
    for _ in range(3):
        torch.testing.assert_close(xbm(emb, labels, ids=ids), pml_losses.ContrastiveLoss()(emb, labels))
    assert xbm.queue_idx == 24 and len(xbm.queue) == 24


def test_caller_tuple_is_merged_after_self_pair_removal():
    """As PML: the self pairs leave the all pairs, then the caller's tuple is appended as given; its
    positives / negatives name memory slots (the memory once this batch is written at curr_batch_idx), so
    a self pair the caller lists stays. Same numbers as PML's CrossBatchMemory."""
    pml_losses = pytest.importorskip("pytorch_metric_learning.losses")
    ours = CrossBatchMemory(ContrastiveLoss(), 4, memory_size=14)
    theirs = pml_losses.CrossBatchMemory(pml_losses.ContrastiveLoss(), 4, memory_size=14)
    theirs.embedding_memory = theirs.embedding_memory.double()
    for step, (emb, labels, _) in enumerate(batches(4, b=6, dim=4, seed=9)):
        extra = (torch.tensor([0, 1]), torch.tensor([0, 2]), torch.tensor([3]), torch.tensor([4]))
        torch.testing.assert_close(ours(emb, labels, extra), theirs(emb, labels, extra).to(emb.dtype),
                                   msg=f"step {step}")
        assert ours.queue_idx == theirs.queue_idx and torch.equal(ours.curr_batch_idx, theirs.curr_batch_idx)
    with pytest.raises(ValueError, match="memory slot"):
        ours(emb, labels, (torch.tensor([0]), torch.tensor([14]), torch.tensor([0])))


def test_pml_attributes_are_views_of_the_queue():
    xbm = CrossBatchMemory(ContrastiveLoss(), 3, memory_size=5)
    assert torch.equal(xbm.label_memory, torch.zeros(5, dtype=torch.long)) and not xbm.has_been_filled
    assert xbm.embedding_memory is xbm.queue.embeddings and xbm.label_memory is xbm.queue.labels
    emb, labels = torch.randn(3, 3, dtype=torch.float64), torch.tensor([1, 2, 1])
    xbm(emb, labels)  # float64 batch into the empty float32 memory: the memory follows (as PML's)
    assert xbm.embedding_memory.dtype == torch.float64 and xbm.queue_idx == 3
    assert torch.equal(xbm.curr_batch_idx, torch.tensor([0, 1, 2]))
    assert torch.equal(xbm.embedding_memory[:3], emb) and torch.equal(xbm.label_memory[:3], labels)
    xbm.add_to_memory(emb, labels, 3)
    assert torch.equal(xbm.curr_batch_idx, torch.tensor([3, 4, 0])) and xbm.has_been_filled and xbm.queue_idx == 1
    from ssml_fast.memory.cross_batch import remove_self_comparisons
    a, p, n = remove_self_comparisons((torch.tensor([0, 1, 2, 2]), torch.tensor([3, 3, 0, 1]), torch.zeros(4, dtype=torch.long)),
                                      xbm.curr_batch_idx)
    assert a.tolist() == [1, 2] and p.tolist() == [3, 1]
    xbm.reset_queue()
    assert xbm.queue_idx == 0 and not xbm.has_been_filled and not xbm.embedding_memory.any() and not xbm.label_memory.any()
    assert "ContrastiveLoss" in CrossBatchMemory.supported_losses()
    with pytest.raises(ValueError, match="not supported"):
        CrossBatchMemory.check_loss_support("ProxyAnchorLoss")
    with pytest.raises(ValueError, match="embedding_memory"):
        xbm.embedding_memory = torch.zeros(4, 3)
