"""Decode + augment throughput of the file-backed data path (ssml_fast.data.pipeline), images per second.

Generates N JPEGs of CUB's typical size (500 x 375, noise + gradients so JPEG decoding does real work) in a
temporary folder, then times one pass of the training DataLoader (two views, the "dml" and "simclr"
pipelines at 224) and of the evaluation loader, for each --workers value. Usage:

    python bench/bench_data_pipeline.py [--images 256] [--workers 0,2] [--batch 64]
"""
from __future__ import annotations

import argparse
import tempfile
import time
from pathlib import Path

import numpy as np
import torch
from PIL import Image


def make_images(root: Path, n: int) -> None:
    rng = np.random.default_rng(0)
    yy, xx = np.mgrid[0:375, 0:500]
    for i in range(n):
        base = (xx * (i % 7 + 1) // 5 + yy // 3) % 256
        a = np.clip(base[..., None] + rng.normal(0, 25, (375, 500, 3)), 0, 255).astype(np.uint8)
        d = root / f"c{i % 8}"
        d.mkdir(exist_ok=True)
        Image.fromarray(a).save(d / f"{i}.jpg", quality=90)


def main() -> None:
    p = argparse.ArgumentParser()
    p.add_argument("--images", type=int, default=256)
    p.add_argument("--workers", default="0,2")
    p.add_argument("--batch", type=int, default=64)
    args = p.parse_args()
    from ssml_fast.data import load_dataset
    from ssml_fast.data.pipeline import eval_loader, train_loader
    from ssml_fast.data.transforms import preset

    torch.set_num_threads(1)
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        make_images(root, args.images)
        split = load_dataset("folder", root=root, train_classes=list(range(8))[:7], val_mode="none")
        files = split.train_images
        n = len(files) // args.batch * args.batch
        batches = [list(range(i, i + args.batch)) for i in range(0, n, args.batch)]
        for nw in (int(w) for w in args.workers.split(",")):
            f = files.with_loader(nw, False)
            for name in ("dml", "simclr"):
                loader = train_loader(f, [preset(name, 224), preset(name, 224)])
                loader.batch_sampler.reset(batches, 0, 0, 0)
                next(iter(loader))  # worker start-up and imports outside the timing
                t0 = time.perf_counter()
                for _ in loader:
                    pass
                dt = time.perf_counter() - t0
                print(f"train {name:6s} x2 views, {nw} workers: {n / dt:7.1f} images/s ({2 * n / dt:7.1f} views/s)")
            t0 = time.perf_counter()
            for _ in eval_loader(f, batch_size=args.batch):
                pass
            dt = time.perf_counter() - t0
            print(f"eval resize 256 + centre crop 224, {nw} workers: {len(f) / dt:7.1f} images/s")


if __name__ == "__main__":
    main()
