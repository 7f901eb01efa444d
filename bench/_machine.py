"""One line describing the machine a bench ran on, for results_*.md (shared by the benches)."""
from __future__ import annotations

import os
import platform
from pathlib import Path

import torch


def machine() -> str:
    cpu = "unknown CPU"
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    return (f"{os.cpu_count()}-core VM ({cpu}), no GPU used, {platform.system()} {platform.release()}, "
            f"Python {platform.python_version()}, torch {torch.__version__}, intra-op threads "
            f"{torch.get_num_threads()}")
