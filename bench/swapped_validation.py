"""The stml_memory preset question on the *swapped* split's own training classes (issue 9).

Run: .venv/bin/python bench/swapped_validation.py [seeds]   (default seeds 0,1; ~15 minutes at 1 thread)

The README's swapped compare (train 5-9, test 0-4) is where stml_memory's small preset falls below the
untrained network. Whether another of its candidates would do better there may only be asked of the training
classes of that split: mnist5k restricted to classes 5-9 (0-4, its test classes, are dropped before the split
is built), fit on 5-7, validate on 8-9, select_presets.py's protocol otherwise (same training code, 1 thread,
validation MAP@R), with its references (raw pixels, the untrained network). The stml preset runs as the
control without memory. Prints one line per run and a summary;
writes nothing.
"""
import statistics
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).parent))
from select_presets import DATASET, baselines, train_and_validate  # noqa: E402

USED, FIT, VAL = (5, 6, 7, 8, 9), (5, 6, 7), (8, 9)
CANDIDATES = [("stml", "preset", {}), ("stml_memory", "preset", {}),
              ("stml_memory", "memory_columns=all", {"memory_columns": "all"}),  # the preset before stop 23
              ("stml_memory", "memory_weight=0.5", {"memory_weight": 0.5}),
              ("stml_memory", "memory_size=256", {"memory_size": 256})]


def swapped_validation_split():
    from ssml_fast.data import dataset_info, split_by_class

    info = dataset_info(DATASET)
    images, labels = info.loader()
    keep = torch.isin(labels, torch.tensor(USED))
    split = split_by_class(images[keep], labels[keep], FIT, name=f"{DATASET}[classes 5-9]", mean=info.mean,
                           std=info.std, val_mode="none")
    assert split.test_classes == list(VAL) and split.train_classes == list(FIT), split.describe()
    for part in (split.train_labels, split.test_labels, split.val_labels):
        assert not torch.isin(part, torch.tensor([c for c in range(10) if c not in USED])).any()
    return split


if __name__ == "__main__":
    torch.set_num_threads(1)
    seeds = [int(s) for s in (sys.argv[1] if len(sys.argv) > 1 else "0,1").split(",")]
    split = swapped_validation_split()
    for k, v in baselines(split, seeds).items():
        print(f"{k}: val MAP@R {v['map_at_r']:.4f} R@1 {v['recall@1']:.4f}", flush=True)
    scores = {}
    for seed in seeds:
        for method, label, ov in CANDIDATES:
            t = time.perf_counter()
            r, _ = train_and_validate(method, ov, seed, split)
            scores.setdefault((method, label), []).append(r["map_at_r"])
            print(f"{method} {label} seed {seed}: val MAP@R {r['map_at_r']:.4f} R@1 {r['recall@1']:.4f} "
                  f"NMI {r['nmi']:.3f} {time.perf_counter() - t:.0f} s", flush=True)
    for (method, label), v in scores.items():
        print(f"{method} {label}: mean val MAP@R {statistics.mean(v):.4f} over seeds {seeds} ({', '.join(f'{x:.4f}' for x in v)})")
