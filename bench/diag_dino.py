"""DINO collapse diagnostics on the validation split of the training classes (train 0-2, validate 3-4).

Run: nice -n 10 .venv/bin/python bench/diag_dino.py [--seed 0] [key=value overrides of the small preset ...]

Per epoch it prints what the DINO paper (section 5.3, Fig. 7) uses to tell the two collapses apart:
- H(q): mean entropy of the teacher's output distribution per sample (log K = uniform collapse; -> 0 with
  one dimension dominating for every sample = one-hot collapse);
- H(mean q): entropy of the batch-mean teacher distribution (small = every sample points to the same
  prototype, i.e. one-hot collapse);
- KL = CE - H(q) between teacher and student (-> 0 for either collapse: the student just copies);
plus the validation MAP@R of the teacher trunk (the evaluation embedding) and of the student trunk.
Classes 5-9 are never loaded (bench/select_presets.validation_split).
"""
from __future__ import annotations

import ast
import math
import sys
import time
from pathlib import Path

import torch
import torch.nn.functional as F

sys.path.insert(0, str(Path(__file__).parent))
from select_presets import validation_split  # noqa: E402

from ssml_fast.evaluation import retrieval_metrics  # noqa: E402
from ssml_fast.methods import make_config  # noqa: E402
from ssml_fast.methods.dino import DINO, dino_loss  # noqa: E402
from ssml_fast.train import RunConfig, Trainer, data_info  # noqa: E402
from ssml_fast.train.evaluate import embed_images  # noqa: E402


class DiagDINO(DINO):
    """DINO with per-step diagnostics in the logs (no change to the training itself)."""

    val = None  # (images, labels) of the validation classes, set by main

    def training_step(self, batch):
        out = super().training_step(batch)
        with torch.no_grad():
            c = self.config
            t = self._teacher_out
            q = F.softmax((t - self.center) / self.teacher_temp(), dim=1)
            h_q = -(q * torch.log(q.clamp_min(1e-30))).sum(1).mean()
            qm = q.mean(0)
            h_mean = -(qm * torch.log(qm.clamp_min(1e-30))).sum()
            out.logs.update({"H_q": h_q, "H_mean_q": h_mean, "KL": out.loss.detach() - h_q,
                             "max_q": q.max(1).values.mean(), "center_norm": self.center.norm()})
        return out

    def on_epoch_end(self, epoch, ctx):
        images, labels = self.val
        for name, fn in (("teacher", self.embed), ("student", lambda x: F.normalize(self.student.trunk(x), dim=1))):
            emb = embed_images(fn, self, images, "cpu")
            m = retrieval_metrics(emb, labels, metric="cosine", nmi=False)
            print(f"    epoch {epoch + 1}: {name} trunk val MAP@R {m['map_at_r']:.4f}", flush=True)


def main(argv):
    seed = 0
    overrides = {}
    for a in argv:
        k, v = a.split("=", 1)
        if k == "--seed":
            seed = int(v)
            continue
        try:
            overrides[k] = ast.literal_eval(v)
        except (ValueError, SyntaxError):
            overrides[k] = v
    torch.set_num_threads(1)
    split = validation_split()
    cfg = make_config("dino", "small", [("diag", overrides)])
    torch.manual_seed(seed)
    method = DiagDINO(cfg, data_info(split))
    DiagDINO.val = (split.test_images, split.test_labels)
    print(f"dino small + {overrides} seed {seed}; log K = {math.log(cfg.out_dim):.3f}", flush=True)
    t0 = time.perf_counter()
    res = Trainer(method, split, RunConfig(seed=seed, quiet=True, eval_every=0, device="cpu")).fit()
    for row in res["history"]:
        print("  " + "  ".join(f"{k} {v:.4g}" if isinstance(v, float) else f"{k} {v}" for k, v in row.items()
                               if k in ("epoch", "loss", "H_q", "H_mean_q", "KL", "max_q", "center_norm",
                                        "teacher_temp", "momentum")), flush=True)
    r = res["test"]
    print(f"final teacher-trunk val MAP@R {r['map_at_r']:.4f} NMI {r.get('nmi', float('nan')):.4f} "
          f"({time.perf_counter() - t0:.0f} s)", flush=True)


if __name__ == "__main__":
    main(sys.argv[1:])
