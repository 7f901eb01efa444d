import pytest
import torch

import ssml_fast  # noqa: F401  (loads the extension and registers the ops)

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
