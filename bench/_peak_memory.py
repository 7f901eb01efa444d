"""Peak extra resident memory of one call, measured in a fresh process.

The CPU allocator keeps no statistics, so each measurement runs in its own interpreter: a small warm-up
call, then the inputs, then the peak-RSS mark (VmHWM) is reset and one call runs; we report the new
peak minus the RSS before the call. (ru_maxrss would not do: a child inherits its parent's peak.)
"""
from __future__ import annotations

import json
import os
import subprocess
import sys

_CHILD = r"""
import json, sys, importlib
sys.path.insert(0, {bench_dir!r})


def status_mb(key):
    for line in open('/proc/self/status'):
        if line.startswith(key + ':'):
            return int(line.split()[1]) / 1024


mod = importlib.import_module({module!r})
kwargs = json.loads({kwargs!r})
# Warm up on a small problem so one-time allocations (thread pools, BLAS buffers) are not counted.
mod.make_workload(**dict(kwargs, B=64))()
fn = mod.make_workload(**kwargs)
with open('/proc/self/clear_refs', 'w') as f:
    f.write('5')  # resets this process's peak RSS (VmHWM) to its current RSS
before = status_mb('VmRSS')
fn()
print(json.dumps(max(0.0, status_mb('VmHWM') - before)))
"""


def peak_extra_mb(module: str, **kwargs) -> float | None:
    """Runs `module.make_workload(**kwargs)()` in a child process; None when it fails."""
    code = _CHILD.format(bench_dir=os.path.dirname(__file__), module=module, kwargs=json.dumps(kwargs))
    res = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=600)
    if res.returncode != 0:
        return None
    return round(float(res.stdout.strip().splitlines()[-1]), 1)
