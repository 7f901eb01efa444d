"""Per-epoch logs: CSV and JSONL files, TensorBoard when installed, and a tqdm progress bar."""
from __future__ import annotations

import csv
import json
import math
import sys
from pathlib import Path
from typing import Optional


class RunLogger:
    """Writes one row per epoch to `metrics.csv` and `log.jsonl` in `out_dir` (both rewritten from the
    full history, so a resumed run's files are the same as an uninterrupted run's) and to TensorBoard
    (`tb/`) when the tensorboard package is importable."""

    def __init__(self, out_dir: Optional[Path], quiet: bool = False, tensorboard: bool = True):
        self.out_dir = Path(out_dir) if out_dir is not None else None
        self.quiet = quiet
        self._tb = None
        if self.out_dir is not None and tensorboard:
            try:
                from torch.utils.tensorboard import SummaryWriter

                self._tb = SummaryWriter(str(self.out_dir / "tb"))
            except Exception:  # tensorboard missing or broken: files only
                self._tb = None

    def progress(self, total: int, desc: str):
        """A tqdm bar on an interactive terminal; otherwise (CI, pipes, --quiet) nothing."""
        if self.quiet or not sys.stderr.isatty():
            return None
        try:
            from tqdm import tqdm
        except ImportError:
            return None
        return tqdm(total=total, desc=desc, leave=False, dynamic_ncols=True, unit="step")

    def epoch(self, history: list[dict], message: str) -> None:
        if self.out_dir is not None:
            self._write_files(history)
            if self._tb is not None:
                row = history[-1]
                for k, v in row.items():
                    if isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v):
                        self._tb.add_scalar(k, v, row["global_step"])
                self._tb.flush()
        if not self.quiet:
            print(message, flush=True)

    def _write_files(self, history: list[dict]) -> None:
        keys: list[str] = []
        for row in history:
            keys += [k for k in row if k not in keys]
        with open(self.out_dir / "metrics.csv", "w", newline="") as f:
            w = csv.DictWriter(f, fieldnames=keys)
            w.writeheader()
            w.writerows(history)
        with open(self.out_dir / "log.jsonl", "w") as f:
            for row in history:
                f.write(json.dumps(row) + "\n")

    def close(self) -> None:
        if self._tb is not None:
            self._tb.close()
