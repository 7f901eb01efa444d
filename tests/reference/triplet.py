"""Plain references for the triplet ops: explicit distances and explicit triplet lists, no cleverness."""
import torch
import torch.nn.functional as F


def plain_distance(x, y, distance):
    """(B, D), (R, D) -> (B, R) by broadcasting the definition."""
    if distance == "cosine":
        return 1 - F.normalize(x, dim=1) @ F.normalize(y, dim=1).T
    sq = ((x[:, None, :] - y[None, :, :]) ** 2).sum(-1)
    return sq if distance == "sqeuclidean" else sq.clamp_min(0).sqrt()


def mine_triplets(dist, labels, ref_labels, mining, margin, exclude_self):
    """List of (a, p, n) exactly as the op documents: hardest ties go to the lower index."""
    B, R = dist.shape
    d = dist.detach()
    out = []
    for a in range(B):
        pos = [j for j in range(R) if ref_labels[j] == labels[a] and not (exclude_self and j == a)]
        neg = [j for j in range(R) if ref_labels[j] != labels[a]]
        if mining == "all":
            out += [(a, p, n) for p in pos for n in neg]
        elif mining == "hard":
            if pos and neg:
                p = min(pos, key=lambda j: (-d[a, j].item(), j))
                n = min(neg, key=lambda j: (d[a, j].item(), j))
                out.append((a, p, n))
        else:  # semihard
            for p in pos:
                farther = [j for j in neg if d[a, j] > d[a, p]]
                if not farther:
                    continue
                n = min(farther, key=lambda j: (d[a, j].item(), j))
                if d[a, n] < d[a, p] + margin:
                    out.append((a, p, n))
    return out


def brute_force_triplet_loss(emb, labels, margin=0.2, mining="all", distance="euclidean",
                             reduction="mean_nonzero", ref_emb=None, ref_labels=None, soft=False):
    """Returns (loss, num_active, num_triplets)."""
    exclude_self = ref_emb is None
    if exclude_self:
        ref_emb, ref_labels = emb, labels
    dist = plain_distance(emb, ref_emb, distance)
    trip = mine_triplets(dist, labels.tolist(), ref_labels.tolist(), mining, margin, exclude_self)
    if not trip:
        return dist.sum() * 0, 0, 0
    a, p, n = (torch.tensor(t) for t in zip(*trip))
    # Batch-all (hinge) is defined on q = d_ap + margin: active iff d_an < q, loss q - d_an (the op sums
    # those from sorted q's); the other minings on d_ap - d_an + margin. The two orders round differently at
    # a 1-ulp tie (e.g. cosine d_ap = 2^-53, d_an = margin = 1: q rounds to 1, not active).
    v = (dist[a, p] + margin) - dist[a, n] if mining == "all" and not soft else dist[a, p] - dist[a, n] + margin
    losses = F.softplus(v) if soft else torch.relu(v)
    active = losses > 0
    n_active = int(active.sum())
    if reduction == "sum":
        loss = losses.sum()
    elif reduction == "mean":
        loss = losses.mean()
    else:
        loss = losses[active].mean() if n_active else losses.sum() * 0
    return loss, n_active, len(trip)
