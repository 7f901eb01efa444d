"""Round-robin timing (SPEC section 9): implementations alternate call by call in one process, so a change
of load on this shared 2-core machine hits all of them alike and their ratio stays meaningful."""
from __future__ import annotations

import statistics
import time
from typing import Callable, Dict


def round_robin_medians(fns: Dict[str, Callable[[], object]], rounds: int, warmup: int = 1) -> Dict[str, float]:
    """Median seconds per call of each callable, after `warmup` untimed round-robin rounds."""
    for _ in range(warmup):
        for fn in fns.values():
            fn()
    times = {name: [] for name in fns}
    for _ in range(rounds):
        for name, fn in fns.items():
            t = time.perf_counter()
            fn()
            times[name].append(time.perf_counter() - t)
    return {name: statistics.median(v) for name, v in times.items()}
