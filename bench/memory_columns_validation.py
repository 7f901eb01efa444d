"""Where should stml_memory's memory enter the student's terms? Both validation splits of issue 9.

Run: .venv/bin/python bench/memory_columns_validation.py [default|swapped|both] [seeds] [candidates, ";"-separated]
(1 thread, ~20-25 s per run; "both" with the defaults: 48 runs, ~18 minutes, and writes
bench/results_memory_columns.md; a single split only prints)

Splits: "default" is select_presets.py's (classes 0-4 only: fit 0-2, validate 3-4), "swapped" is
swapped_validation.py's (classes 5-9 only: fit 5-7, validate 8-9); the test classes of the split in question
are never loaded. Candidates differ from the stml_memory small preset in `memory_columns` only (see the
stml_memory module docstring): "all" (batch rows against batch ∪ memory in every term), "pull" (memory
columns only in the relaxed contrastive's pull part and the KL), "context" (memory only in the teacher's
contextual similarity), two variants of "pull", and plain stml as the control without memory. Scores:
validation MAP@R of the model after the last epoch, the method's evaluation embedding.
"""
import statistics
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).parent))
from _machine import machine  # noqa: E402
from select_presets import train_and_validate, validation_split  # noqa: E402
from swapped_validation import swapped_validation_split  # noqa: E402

CANDIDATES = {"stml": ("stml", {}),
              "all": ("stml_memory", {"memory_columns": "all"}),
              "pull": ("stml_memory", {"memory_columns": "pull"}),
              "context": ("stml_memory", {"memory_columns": "context"}),
              "pull,M=1024": ("stml_memory", {"memory_columns": "pull", "memory_size": 1024}),
              "pull,warmup=50": ("stml_memory", {"memory_columns": "pull", "memory_warmup": 50})}
SPLITS = {"default": (validation_split, "fit 0-2, validate 3-4 (5-9 never loaded)"),
          "swapped": (swapped_validation_split, "fit 5-7, validate 8-9 (0-4 never loaded)")}
RESULTS = Path(__file__).with_name("results_memory_columns.md")


def run(which, seeds, names):
    split = SPLITS[which][0]()
    scores = {}
    for seed in seeds:
        for label in names:
            method, ov = CANDIDATES[label]
            t = time.perf_counter()
            r, _ = train_and_validate(method, ov, seed, split)
            scores.setdefault(label, []).append(r["map_at_r"])
            print(f"{which} {label} seed {seed}: val MAP@R {r['map_at_r']:.4f} R@1 {r['recall@1']:.4f} "
                  f"NMI {r['nmi']:.3f} {time.perf_counter() - t:.0f} s", flush=True)
    for label, v in scores.items():
        print(f"{which} {label}: mean val MAP@R {statistics.mean(v):.4f} over seeds {seeds} "
              f"({', '.join(f'{x:.4f}' for x in v)})", flush=True)
    return scores


def report(results, seeds, names, command, minutes):
    lines = ["# stml_memory: where the memory enters the student's terms (bench/memory_columns_validation.py)", "",
             f"Command: `{command}`", f"{time.strftime('%Y-%m-%d %H:%M UTC', time.gmtime())}; {machine()}; "
             f"{minutes:.1f} min.", "",
             "Every candidate is the stml_memory small preset with the overrides named (stml: the stml small "
             "preset, no memory). Validation MAP@R on the split's validation classes, model after the last "
             "epoch. \"vs all\": mean and count of the same-seed differences against memory_columns=all.", ""]
    for which, scores in results.items():
        lines += [f"## {which} validation split: {SPLITS[which][1]}", "",
                  "| candidate | " + " | ".join(f"seed {s}" for s in seeds) + " | mean | vs all (same seed) |",
                  "|---|" + "---|" * (len(seeds) + 2)]
        for label in names:
            v = scores[label]
            diff = [a - b for a, b in zip(v, scores["all"])] if "all" in scores else []
            vs = "-" if label == "all" or not diff else (
                f"{statistics.mean(diff):+.4f} ({sum(d > 0 for d in diff)} of {len(diff)} above)")
            lines.append(f"| {label} | " + " | ".join(f"{x:.4f}" for x in v) +
                         f" | {statistics.mean(v):.4f} | {vs} |")
        lines.append("")
    RESULTS.write_text("\n".join(lines))


if __name__ == "__main__":
    torch.set_num_threads(1)
    which = sys.argv[1] if len(sys.argv) > 1 else "both"
    seeds = [int(s) for s in (sys.argv[2] if len(sys.argv) > 2 else "0,1,2,3").split(",")]
    names = sys.argv[3].split(";") if len(sys.argv) > 3 else list(CANDIDATES)
    t0 = time.perf_counter()
    results = {w: run(w, seeds, names) for w in (SPLITS if which == "both" else [which])}
    if which == "both":
        report(results, seeds, names, "python " + " ".join(["bench/memory_columns_validation.py", *sys.argv[1:]]),
               (time.perf_counter() - t0) / 60)
