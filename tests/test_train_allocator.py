"""keep_freed_memory (ssml_fast/train/allocator.py): glibc keeps freed blocks, so a repeated step stops
page-faulting; the Trainer applies it by default and the option turns it off. Each check that changes the
process's malloc runs in a subprocess, so the rest of the suite keeps glibc's defaults."""
import subprocess
import sys
import textwrap

import pytest

from ssml_fast.train import RunConfig, keep_freed_memory
from ssml_fast.train.allocator import freed_memory_setting

glibc = pytest.mark.skipif(not sys.platform.startswith("linux"), reason="glibc malloc (Linux) only")


def _run(code: str) -> str:
    out = subprocess.run([sys.executable, "-c", textwrap.dedent(code)], capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, out.stderr
    return out.stdout.strip()


@glibc
def test_repeated_allocations_stop_page_faulting():
    code = """
        import resource, torch
        from ssml_fast.train import keep_freed_memory
        def faults():
            r0 = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
            for _ in range(20):
                a = torch.empty(600_000).fill_(1.0)  # 2.4 MB: above glibc's initial mmap threshold
                b = torch.empty(3_000_000).fill_(1.0)
                del a, b
            return resource.getrusage(resource.RUSAGE_SELF).ru_minflt - r0
        before = faults()
        ok = keep_freed_memory()
        faults()  # the first round after the change maps the blocks once
        print(before, ok, faults())
    """
    before, ok, after = _run(code).split()
    assert ok == "True"
    assert int(before) > 1000  # each 12 MB block mapped afresh every time
    assert int(after) < 100


@glibc
def test_trainer_applies_it_unless_turned_off():
    code = """
        import torch
        from ssml_fast.data import load_dataset
        from ssml_fast.methods import get_method, make_config
        from ssml_fast.train import RunConfig, Trainer, data_info, freed_memory_setting
        split = load_dataset("digits", seed=0)
        cfg = make_config("supervised", "small", [("t", {"epochs": 1})])
        for keep in (False, True):
            Trainer(get_method("supervised")(cfg, data_info(split)), split, RunConfig(dataset="digits", quiet=True,
                    keep_freed_memory=keep))
            print(freed_memory_setting())
    """
    assert _run(code).splitlines() == ["None", "(32, 256)"]


def test_bad_arguments_name_themselves():
    with pytest.raises(ValueError, match="mmap_mb must be at most 32"):
        keep_freed_memory(mmap_mb=64)
    with pytest.raises(ValueError, match="trim_mb"):
        keep_freed_memory(trim_mb=-1)
    with pytest.raises(ValueError, match="keep_freed_memory must be True or False"):
        RunConfig(keep_freed_memory="yes")
    assert freed_memory_setting() in (None, (32, 256))
