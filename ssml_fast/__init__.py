"""ssml_fast: fast, exact deep metric learning for PyTorch, with and without labels."""
import torch  # noqa: F401  (must load before _C: the extension links against libtorch)

from . import _C
from . import ops
from . import distances
from . import reducers
from . import regularizers
from . import losses
from . import memory
from . import miners
from . import samplers
from . import evaluation

__version__ = _C.build_info()["version"]


def build_info() -> dict:
    """How the compiled core was built: version, CUDA (and architectures), OpenMP, threads."""
    return dict(_C.build_info())


__all__ = ["ops", "distances", "reducers", "regularizers", "losses", "memory", "miners", "samplers", "evaluation", "build_info", "__version__"]
