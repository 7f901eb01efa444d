"""Peak extra resident memory of one call, measured in a fresh process.

The CPU allocator keeps no statistics and ru_maxrss never goes down, so each measurement runs in its own
interpreter: a small warm-up call, then the inputs, then one call; we report max RSS minus RSS before it.
"""
from __future__ import annotations

import json
import os
import subprocess
import sys

_CHILD = r"""
import json, resource, sys, importlib
sys.path.insert(0, {bench_dir!r})
mod = importlib.import_module({module!r})
kwargs = json.loads({kwargs!r})
# Warm up on a small problem so one-time allocations (thread pools, BLAS buffers) are not counted.
mod.make_workload(**dict(kwargs, B=64))()
fn = mod.make_workload(**kwargs)
before = int(open('/proc/self/statm').read().split()[1]) * resource.getpagesize() / 2**20
fn()
peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
print(json.dumps(max(0.0, peak - before)))
"""


def peak_extra_mb(module: str, **kwargs) -> float | None:
    """Runs `module.make_workload(**kwargs)()` in a child process; None when it fails."""
    code = _CHILD.format(bench_dir=os.path.dirname(__file__), module=module, kwargs=json.dumps(kwargs))
    res = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=600)
    if res.returncode != 0:
        return None
    return round(float(res.stdout.strip().splitlines()[-1]), 1)
