"""Plain reference for contextual_similarity (STML, thesis eqs 3.15-3.20): one formula per line, loops over rows."""
import torch


def reference(emb, k, sigma=3.0, ids=None):
    """Dense float64, one formula per line, Python loops over rows. Returns (w, w_p, w_c)."""
    t = emb.detach().double().cpu()
    t = t / t.norm(dim=1, keepdim=True).clamp_min(1e-12)
    n = t.shape[0]
    d2 = ((t[:, None, :] - t[None, :, :]) ** 2).sum(-1)
    w_p = torch.exp(-d2 / sigma)  # (3.15)

    def order_key(i, j):  # i itself, then rows sharing its id, then by distance; ties to the lower index
        group = 0 if j == i else (1 if ids is not None and int(ids[j]) == int(ids[i]) else 2)
        return (group, float(d2[i, j]), j)

    N = [sorted(range(n), key=lambda j: order_key(i, j))[:k] for i in range(n)]
    R = [{j for j in N[i] if i in N[j]} for i in range(n)]  # (3.16)
    w_tilde = torch.zeros(n, n, dtype=torch.float64)
    for i in range(n):
        for j in R[i]:
            w_tilde[i, j] = len(R[i] & R[j]) / len(R[i])  # (3.17)
    m = max(1, round(k / 2))  # Python's round is half to even, like numpy; k = 1 keeps i itself
    w_hat = torch.stack([w_tilde[N[i][:m]].mean(0) for i in range(n)])  # (3.18)
    w_c = (w_hat + w_hat.T) / 2  # (3.19)
    return (w_p + w_c) / 2, w_p, w_c  # (3.20)


def dyadic(n, d=16, seed=0, levels=None):
    """Rows of +-0.25 over 16 dims: unit norm exactly, every distance exact in float32 -> exact ties."""
    g = torch.Generator().manual_seed(seed)
    x = (torch.randint(0, 2, (n, d), generator=g) * 2 - 1).float() * 0.25
    if levels is not None:  # fewer distinct rows -> many duplicates
        x = x[torch.randint(0, levels, (n,), generator=g)]
    return x
