"""Peak extra resident memory of one call, measured in this process (Linux).

During the call glibc is told to serve every allocation above 64 KiB with mmap, so freed tensors go straight
back to the OS and RSS follows the live tensor bytes (importing this module changes nothing: it once set that
threshold at import, which silently undid a keep_freed_memory() called before the import); the kernel's high-water mark
(VmHWM) is reset through /proc/self/clear_refs right before the call. The result is max RSS during the
call minus RSS before it: the transient memory of forward + backward (inputs and parameters excluded).
tracemalloc cannot do this (it does not see tensor storage) and the CPU allocator keeps no statistics.
"""
from __future__ import annotations

import ctypes
import gc

_M_TRIM_THRESHOLD = -1
_M_MMAP_THRESHOLD = -3
try:
    _LIBC = ctypes.CDLL("libc.so.6")
except OSError:  # not glibc: the numbers will over-count reused heap, but still run
    _LIBC = None


def _measuring(on: bool) -> None:
    """The 64 KiB mmap threshold for a measurement; afterwards back to what the process had (a bench that
    keeps freed memory as the Trainer does, ssml_fast.train.keep_freed_memory, gets its setting back)."""
    if _LIBC is None:
        return
    if on:
        _LIBC.mallopt(_M_MMAP_THRESHOLD, 64 * 1024)
        _LIBC.mallopt(_M_TRIM_THRESHOLD, 128 * 1024)
        _LIBC.malloc_trim(0)  # free heap pages back to the kernel: reusing them shows in RSS again
        return
    from ssml_fast.train import freed_memory_setting

    kept = freed_memory_setting()
    if kept is not None:
        _LIBC.mallopt(_M_MMAP_THRESHOLD, kept[0] << 20)
        _LIBC.mallopt(_M_TRIM_THRESHOLD, kept[1] << 20)


def _status_kb(key: str) -> int:
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith(key + ":"):
                return int(line.split()[1])
    raise RuntimeError(f"{key} not in /proc/self/status")


def peak_extra_mb(fn) -> float:
    """Runs fn() (already warmed up by the caller) once and returns its peak extra RSS in MB."""
    gc.collect()
    _measuring(True)
    try:
        before = _status_kb("VmRSS")
        with open("/proc/self/clear_refs", "w") as f:
            f.write("5")
        fn()
        return round(max(0, _status_kb("VmHWM") - before) / 1024, 1)
    finally:
        _measuring(False)


_CHILD = r"""
import json, sys, time
sys.path.insert(0, {bench_dir!r})
import importlib
from _rss_peak import peak_extra_mb

mod = importlib.import_module({module!r})
mod.make_workload(**{warmup!r})()  # warm-up: thread pools, BLAS buffers
fn = mod.make_workload(**{kwargs!r})
t = time.perf_counter()
mb = peak_extra_mb(fn)
print(json.dumps([mb, time.perf_counter() - t]))
"""


def peak_extra_mb_in_child(module: str, kwargs: dict, warmup: dict, timeout: float = 3600):
    """(peak extra MB, seconds) of one `module.make_workload(**kwargs)()` call in a fresh interpreter,
    after a small warm-up call; None when the child fails. In a long-lived process (a pytest-benchmark
    session) memory freed late by earlier cases can lower RSS during the call and hide its peak."""
    import json
    import os
    import subprocess
    import sys

    code = _CHILD.format(bench_dir=os.path.dirname(os.path.abspath(__file__)), module=module,
                         kwargs=kwargs, warmup=warmup)
    res = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=timeout)
    if res.returncode != 0:
        return None
    mb, seconds = json.loads(res.stdout.strip().splitlines()[-1])
    return round(mb, 1), round(seconds, 2)
