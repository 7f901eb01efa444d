"""A restricted unpickler for data files from the internet (the revisitop gnd_*.pkl ground truth).

`pickle.load` runs whatever callables a file names, so a tampered gnd file could execute code. This
unpickler resolves only the globals that plain data needs (numpy arrays and scalars, and `_codecs.encode`
/ `bytes()`, which protocol-2 pickles use for the bytes inside numpy arrays; `bytes` is wrapped so that it
cannot be asked for a huge zero buffer); containers, strings and numbers need no global at all.
Any other global (os.system, builtins.eval, subprocess.Popen, ...) is refused with `UnsafePickleError`
before it is called.
"""
from __future__ import annotations

import io
import pickle

_ALLOWED = {
    ("numpy.core.multiarray", "_reconstruct"), ("numpy._core.multiarray", "_reconstruct"),
    ("numpy.core.multiarray", "scalar"), ("numpy._core.multiarray", "scalar"),
    ("numpy", "ndarray"), ("numpy", "dtype"),
    ("_codecs", "encode"),
}
# Python 2 names, as protocol <= 2 pickles spell them.
_PY2_MODULES = {"__builtin__": "builtins", "copy_reg": "copyreg"}


def _bytes(*args):
    """`bytes()` / `bytes(bytes-like)` / `bytes(str, encoding)` only: never `bytes(n)`."""
    if args and isinstance(args[0], int):
        raise UnsafePickleError("the pickle asks for bytes(n) (an n-byte zero buffer); refused")
    return bytes(*args)


class UnsafePickleError(pickle.UnpicklingError):
    """The file names a global outside the allow-list; nothing it names was called."""


class RestrictedUnpickler(pickle.Unpickler):
    def __init__(self, file, *, source: str = "<pickle>", **kw):
        super().__init__(file, **kw)
        self.source = source

    def find_class(self, module: str, name: str):
        module = _PY2_MODULES.get(module, module)
        if (module, name) == ("builtins", "bytes"):
            return _bytes
        if (module, name) in _ALLOWED:
            return super().find_class(module, name)
        raise UnsafePickleError(f"{self.source} refers to {module}.{name}, which a data file should not contain; "
                                "only dicts, lists, tuples, strings, numbers and numpy arrays are read (refused "
                                "without calling it)")


def restricted_load(path, *, encoding: str = "latin1"):
    """Unpickle `path` admitting only plain data (see the module docstring)."""
    with open(path, "rb") as f:
        data = f.read()
    return RestrictedUnpickler(io.BytesIO(data), source=str(path), encoding=encoding).load()
