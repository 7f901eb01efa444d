"""Embedding a set of images with a method's evaluation embedding, and retrieval metrics on it."""
from __future__ import annotations

import torch


@torch.no_grad()
def embed_images(fn, module: torch.nn.Module, images: torch.Tensor, device, batch_size: int = 512) -> torch.Tensor:
    """(N, C, H, W) -> (N, D) float32 on the CPU, via `fn` (e.g. method.embed) with `module` in eval mode;
    the train/eval mode is restored afterwards. `images` may also be file-backed (`ssml_fast.data.ImageFiles`):
    then it is streamed through a DataLoader with its evaluation transform, in file order."""
    was_training = module.training
    module.eval()
    try:
        if not isinstance(images, torch.Tensor):
            from ..data.pipeline import eval_loader

            out = [fn(x.to(device, non_blocking=True)).float().cpu()
                   for x in eval_loader(images, batch_size=min(batch_size, 128))]
        else:
            out = [fn(images[i:i + batch_size].to(device)).float().cpu() for i in range(0, len(images), batch_size)]
    finally:
        module.train(was_training)
    return torch.cat(out) if out else torch.zeros(0, 0)


def evaluate_method(method, images, labels, device, *, nmi: bool = True, ks=(1, 2, 4, 8), embed=None) -> dict:
    """Recall@k, MAP@R, R-precision, precision@1 (and NMI) of method.embed on (images, labels)."""
    from ..evaluation import retrieval_metrics

    # embed: embed_images or a drop-in with its signature (the trainer's, sharded over ranks under torchrun)
    emb = (embed or embed_images)(method.embed, method, images, device)
    gallery = getattr(images, "gallery_mask", None)
    # A small image folder's validation split may hold fewer images than the largest k: report the k it has.
    size = int(gallery.sum()) if gallery is not None else len(emb) - 1
    ks = tuple(k for k in ks if k <= size) or tuple(ks)
    if gallery is not None:  # a query / gallery test set (In-Shop): queries search the gallery only
        labels = torch.as_tensor(labels)
        return retrieval_metrics(emb[~gallery], labels[~gallery], ks=ks, metric=method.eval_metric, nmi=nmi,
                                 gallery=emb[gallery], gallery_labels=labels[gallery])
    return retrieval_metrics(emb, labels, ks=ks, metric=method.eval_metric, nmi=nmi)
