"""Plain references for the losses and miners: Python loops over anchors and pairs, read off the formulas.

Small B only. Every function takes float64 tensors and returns a 0-d tensor built with autograd, so the
tests can compare values and gradients.
"""
import math

import torch
import torch.nn.functional as F


def cos(x, y=None):
    y = x if y is None else y
    return F.normalize(x, dim=1) @ F.normalize(y, dim=1).T


def dist(x, y, kind):
    if kind == "cosine":
        return 1 - cos(x, y)
    sq = ((x[:, None, :] - y[None, :, :]) ** 2).sum(-1)
    if kind == "sqeuclidean":
        return sq
    # sqrt with a zero-safe gradient on the diagonal
    safe = torch.where(sq > 0, sq, torch.ones_like(sq))
    return torch.where(sq > 0, safe.sqrt(), torch.zeros_like(sq))


def pairs_from_labels(labels, ref_labels=None):
    """Lists of (i, j) positive and negative pairs; the diagonal is excluded in the self case."""
    self_ref = ref_labels is None
    ref = labels if self_ref else ref_labels
    pos, neg = [], []
    for i in range(len(labels)):
        for j in range(len(ref)):
            if self_ref and i == j:
                continue
            (pos if labels[i] == ref[j] else neg).append((i, j))
    return pos, neg


def mean_or_zero(terms, anchor):
    return torch.stack(terms).mean() if terms else anchor.sum() * 0


def contrastive(x, labels, form="margin", pos_margin=0.0, neg_margin=1.0, distance="euclidean",
                reduction="mean_nonzero", ref=None, ref_labels=None, pairs=None):
    y = x if ref is None else ref
    pos, neg = pairs if pairs is not None else pairs_from_labels(labels, ref_labels)
    if form == "cosine":
        s = cos(x, y)
        lp = [torch.relu(pos_margin - s[i, j]) for i, j in pos]
        ln = [torch.relu(s[i, j] - neg_margin) for i, j in neg]
    else:
        d = dist(x, y, distance)
        lp = [torch.relu(d[i, j] - pos_margin) for i, j in pos]
        ln = [torch.relu(neg_margin - d[i, j]) for i, j in neg]
        if form == "hadsell":
            lp = [0.5 * v ** 2 for v in lp]
            ln = [0.5 * v ** 2 for v in ln]

    def red(ls):
        if reduction == "sum":
            return torch.stack(ls).sum() if ls else x.sum() * 0
        if reduction == "mean":
            return mean_or_zero(ls, x)
        return mean_or_zero([v for v in ls if v > 0], x)

    return red(lp) + red(ln)


def ntxent(x, labels, temperature=0.07, ref=None, ref_labels=None):
    y = x if ref is None else ref
    s = cos(x, y) / temperature
    pos, neg = pairs_from_labels(labels, ref_labels)
    terms = []
    for a, p in pos:
        negs = [s[a, n] for (a2, n) in neg if a2 == a]
        den = torch.exp(s[a, p]) + sum(torch.exp(v) for v in negs)
        terms.append(-torch.log(torch.exp(s[a, p]) / den))
    return mean_or_zero(terms, x)


def multi_similarity(x, labels, alpha=2.0, beta=50.0, base=0.5):
    s = cos(x)
    B = len(labels)
    total = []
    for i in range(B):
        P = [k for k in range(B) if k != i and labels[k] == labels[i]]
        N = [k for k in range(B) if labels[k] != labels[i]]
        lp = torch.log(1 + sum(torch.exp(-alpha * (s[i, k] - base)) for k in P)) / alpha if P else x.sum() * 0
        ln = torch.log(1 + sum(torch.exp(beta * (s[i, k] - base)) for k in N)) / beta if N else x.sum() * 0
        total.append(lp + ln)
    return torch.stack(total).mean()


def lifted(x, labels, neg_margin=1.0, pos_margin=0.0, distance="euclidean"):
    d = dist(x, x, distance)
    pos, neg = pairs_from_labels(labels)
    terms = []
    for i, j in pos:
        negs = [neg_margin - d[a, n] for (a, n) in neg if a in (i, j)]
        lse = torch.log(sum(torch.exp(v) for v in negs)) if negs else x.sum() * 0
        terms.append(torch.relu(lse + d[i, j] - pos_margin) ** 2 / 2)
    return mean_or_zero(terms, x)


def lifted_generalized(x, labels, neg_margin=1.0, pos_margin=0.0, distance="euclidean"):
    d = dist(x, x, distance)
    B = len(labels)
    terms = []
    for i in range(B):
        P = [k for k in range(B) if k != i and labels[k] == labels[i]]
        N = [k for k in range(B) if labels[k] != labels[i]]
        lp = torch.log(sum(torch.exp(d[i, k] - pos_margin) for k in P)) if P else x.sum() * 0
        ln = torch.log(sum(torch.exp(neg_margin - d[i, k]) for k in N)) if N else x.sum() * 0
        terms.append(torch.relu(lp + ln))
    return torch.stack(terms).mean()


def npair_all(x, labels):
    """Eq 2.4 over every positive pair (i, j): log(1 + sum_{k in N_i} e^{S_ik - S_ij})."""
    s = cos(x)
    pos, neg = pairs_from_labels(labels)
    terms = []
    for i, j in pos:
        terms.append(torch.log(1 + sum((torch.exp(s[i, k] - s[i, j]) for (a, k) in neg if a == i), x.sum() * 0)))
    return mean_or_zero(terms, x)


def npair_one_per_class(x, labels):
    B = len(labels)
    chosen = {}
    for a in range(B):
        ps = [j for j in range(B) if j != a and labels[j] == labels[a]]
        if ps and int(labels[a]) not in chosen:
            chosen[int(labels[a])] = (a, ps[0])
    if not chosen:
        return x.sum() * 0
    pairs = list(chosen.values())
    s = cos(x[[a for a, _ in pairs]], x[[p for _, p in pairs]])
    terms = []
    for i in range(len(pairs)):
        terms.append(torch.log(1 + sum(torch.exp(s[i, k] - s[i, i]) for k in range(len(pairs)) if k != i)))
    return torch.stack(terms).mean()


def proxy_nca(x, labels, proxies, softmax_scale=1.0, exclude_positive=False):
    d = dist(F.normalize(x, dim=1), F.normalize(proxies, dim=1), "sqeuclidean")
    terms = []
    for i in range(len(labels)):
        y = int(labels[i])
        num = torch.exp(-softmax_scale * d[i, y])
        den = sum(torch.exp(-softmax_scale * d[i, c]) for c in range(len(proxies)) if not (exclude_positive and c == y))
        terms.append(-torch.log(num / den))
    return torch.stack(terms).mean()


def proxy_anchor(x, labels, proxies, margin=0.1, alpha=32.0):
    s = cos(x, proxies)
    C = len(proxies)
    with_pos = [c for c in range(C) if (labels == c).any()]
    pos = sum(torch.log(1 + sum(torch.exp(-alpha * (s[i, c] - margin)) for i in range(len(labels)) if labels[i] == c))
              for c in with_pos)
    neg = sum(torch.log(1 + sum(torch.exp(alpha * (s[i, c] + margin)) for i in range(len(labels)) if labels[i] != c))
              for c in range(C))
    return pos / max(len(with_pos), 1) + neg / C


def smooth_ap(x, labels, temperature=0.01, include_query=False):
    s = cos(x)
    B = len(labels)
    G = lambda v: torch.sigmoid(v / temperature)  # noqa: E731
    terms = []
    for q in range(B):
        P = [j for j in range(B) if labels[j] == labels[q] and (include_query or j != q)]
        Omega = [j for j in range(B) if include_query or j != q]
        if not P:
            continue
        ap = 0
        for i in P:
            rp = 1 + sum((G(s[q, j] - s[q, i]) for j in P if j != i), x.sum() * 0)
            ra = 1 + sum((G(s[q, j] - s[q, i]) for j in Omega if j != i), x.sum() * 0)
            ap = ap + rp / ra
        terms.append(1 - ap / len(P))
    return mean_or_zero(terms, x)


def histogram(x, labels, n_bins=100):
    s = cos(x)
    B = len(labels)
    delta = 2.0 / n_bins
    pos, neg = [], []
    for i in range(B):
        for j in range(i + 1, B):
            (pos if labels[i] == labels[j] else neg).append(s[i, j])
    if not pos or not neg:
        return x.sum() * 0

    def hist(vals):
        h = [x.sum() * 0 for _ in range(n_bins + 1)]
        for v in vals:
            for r in range(n_bins + 1):
                t = -1 + r * delta
                w = torch.relu(1 - torch.abs(v - t) / delta)  # triangular kernel = linear interpolation
                h[r] = h[r] + w
        return [hr / len(vals) for hr in h]

    hp, hn = hist(pos), hist(neg)
    total, cum = 0, 0
    for r in range(n_bins + 1):
        cum = cum + hp[r]
        total = total + hn[r] * cum
    return total


def spreading(x, x_aug, temperature=0.1):
    y = F.normalize(torch.cat([x, x_aug]), dim=1)
    n = len(y)
    B = n // 2
    yd = y.detach()
    J = 0
    for i in range(n):
        logits = [y[i] @ yd[k] / temperature for k in range(n)]
        den = sum(torch.exp(logits[k]) for k in range(n) if k != i)
        pi = (i + B) % n
        J = J - torch.log(torch.exp(logits[pi]) / den)
        for j in range(n):
            if j not in (i, pi):
                J = J - torch.log(1 - torch.exp(logits[j]) / den)
    return J / n


def relative_distance(x):
    n = len(x)
    d = dist(x, x, "euclidean")
    out = [[None] * n for _ in range(n)]
    for i in range(n):
        mean = sum(d[i, k] for k in range(n)) / n
        for j in range(n):
            out[i][j] = d[i, j] / mean
    return out


def relaxed_contrastive(x, w, delta=1.0):
    n = len(x)
    d = relative_distance(x)
    total = 0
    for i in range(n):
        for j in range(n):
            if i != j:
                total = total + w[i, j] * d[i][j] ** 2 + (1 - w[i, j]) * torch.relu(delta - d[i][j]) ** 2
    return total / n


def self_distillation_kl(f, g):
    n = len(f)
    df = relative_distance(f)
    dg = relative_distance(g.detach())
    total = 0
    for i in range(n):
        js = [j for j in range(n) if j != i]
        zf = sum(torch.exp(-df[i][j]) for j in js)
        zg = sum(torch.exp(-dg[i][j]) for j in js)
        for j in js:
            q = torch.exp(-dg[i][j]) / zg
            p = torch.exp(-df[i][j]) / zf
            total = total + q * torch.log(q / p)
    return total / n


def insclr(x, labels, lambda_=0.4, ref=None, ref_labels=None):
    y = x if ref is None else ref
    s = cos(x, y)
    pos, neg = pairs_from_labels(labels, ref_labels)
    total = x.sum() * 0
    for i, j in pos:
        total = total + (1 - s[i, j])
    for i, j in neg:
        if s[i, j] > lambda_:
            total = total + s[i, j]
    return total


def distance_weighted_probs(x, labels, cutoff=0.5, nonzero_loss_cutoff=1.4):
    """Per anchor, the sampling distribution over negatives (list of dicts), straight from Wu et al."""
    xn = F.normalize(x, dim=1)
    D = x.shape[1]
    out = []
    for a in range(len(x)):
        w = {}
        for n in range(len(x)):
            if labels[n] == labels[a]:
                continue
            d = float((xn[a] - xn[n]).norm())
            if d >= nonzero_loss_cutoff:
                continue
            dc = max(d, cutoff)
            inv_q = dc ** (2 - D) * (1 - dc * dc / 4) ** ((3 - D) / 2)
            if math.isfinite(inv_q):
                w[n] = inv_q
        z = sum(w.values())
        out.append({k: v / z for k, v in w.items()} if z > 0 else {})
    return out
