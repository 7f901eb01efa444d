"""ssml_fast: fast, exact deep metric learning for PyTorch, with and without labels.

`import ssml_fast` loads torch, the compiled core and the op wrappers (so `torch.ops.ssml_fast.*` are registered
with their autograd, fake and autocast rules), nothing else. Every other subpackage loads on first access
(`ssml_fast.losses`, `from ssml_fast import miners`, ...), so faiss, scikit-learn, matplotlib and tensorboard
are imported only by the code that uses them.
"""
import importlib

import torch  # noqa: F401  (must load before _C: the extension links against libtorch)

from . import _C
from . import ops

__version__ = _C.build_info()["version"]

# Public subpackages, imported on first attribute access (PEP 562).
_LAZY_SUBMODULES = (
    "distances",
    "reducers",
    "regularizers",
    "losses",
    "memory",
    "miners",
    "samplers",
    "neighbors",
    "evaluation",
)
# Above the library (networks, data, methods, the trainer, the retrieval service, torchrun support): lazy
# too, but left out of __all__ so `from ssml_fast import *` stays the library.
_LAZY_UPPER = (
    "nn",
    "models",
    "data",
    "methods",
    "train",
    "search",
    "distributed",
)


def __getattr__(name: str):
    if name in _LAZY_SUBMODULES or name in _LAZY_UPPER:
        module = importlib.import_module(f".{name}", __name__)
        globals()[name] = module  # later accesses skip __getattr__
        return module
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


def __dir__():
    return sorted(set(globals()) | set(_LAZY_SUBMODULES) | set(_LAZY_UPPER))


def build_info() -> dict:
    """How the compiled core was built: version, CUDA (and architectures), OpenMP, threads."""
    return dict(_C.build_info())


__all__ = ["ops", *_LAZY_SUBMODULES, "build_info", "__version__"]
