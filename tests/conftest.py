import pytest
import torch

import ssml_fast  # noqa: F401  (loads the extension and registers the ops)

DEVICES = ["cpu"] + (["cuda"] if torch.cuda.is_available() else [])

requires_cuda = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")


@pytest.fixture(params=DEVICES)
def device(request):
    """Every test taking `device` runs on the CPU, and on CUDA when a GPU is present."""
    return torch.device(request.param)
