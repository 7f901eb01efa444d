import sys
from pathlib import Path

import pytest
import torch

_ROOT = Path(__file__).resolve().parents[1]


def _import_ssml_fast():
    """Imports the package under test (loading the extension and registering the ops).

    `python -m pytest` from the repo root puts the root first on sys.path, so `import ssml_fast` finds the
    source folder. With an editable install (scripts/setup.sh) that is the package itself and this is a plain
    import; after a regular `pip install .` the source folder has no compiled `_C`, and the installed copy is
    imported instead (the root leaves sys.path, so every test imports that one copy)."""
    try:
        import ssml_fast
    except ImportError as e:
        if "_C" not in str(e) and getattr(e, "name", None) != "ssml_fast._C":
            raise
        sys.path[:] = [p for p in sys.path if Path(p or ".").resolve() != _ROOT]
        for name in [m for m in sys.modules if m == "ssml_fast" or m.startswith("ssml_fast.")]:
            del sys.modules[name]
        import ssml_fast
    return ssml_fast


ssml_fast = _import_ssml_fast()

DEVICES = ["cpu"] + (["cuda"] if torch.cuda.is_available() else [])

requires_cuda = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")


@pytest.fixture(params=DEVICES)
def device(request):
    """Every test taking `device` runs on the CPU, and on CUDA when a GPU is present."""
    return torch.device(request.param)


def interrupt_after(trainer, n_steps):
    """Sends SIGINT to this process after the trainer's n-th optimiser step (from method.after_step): the
    trainer finishes the step, writes a mid-epoch checkpoint and raises TrainingInterrupted."""
    import os
    import signal

    calls = {"n": 0}
    original = trainer.method.after_step

    def after_step(batch, out):
        original(batch, out)
        calls["n"] += 1
        if calls["n"] == n_steps:
            os.kill(os.getpid(), signal.SIGINT)

    trainer.method.after_step = after_step
