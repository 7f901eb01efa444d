"""One validation-split run of bench/select_presets.py's protocol (train 0-2, validate 3-4), for the second
seeds the time budget of a selection left out. Run: .venv/bin/python bench/_one_run.py METHOD SEED [k=v ...]"""
import ast
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).parent))
from select_presets import train_and_validate, validation_split  # noqa: E402

if __name__ == "__main__":
    torch.set_num_threads(1)
    name, seed = sys.argv[1], int(sys.argv[2])
    ov = {}
    for a in sys.argv[3:]:
        k, v = a.split("=", 1)
        try:
            ov[k] = ast.literal_eval(v)
        except (ValueError, SyntaxError):
            ov[k] = v
    t = time.perf_counter()
    r, _ = train_and_validate(name, ov, seed, validation_split())
    print(f"{name} {ov or '(preset)'} seed {seed}: val MAP@R {r['map_at_r']:.4f} R@1 {r['recall@1']:.4f} "
          f"NMI {r['nmi']:.3f} {time.perf_counter() - t:.0f} s", flush=True)
