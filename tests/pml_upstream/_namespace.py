"""Copied next to the rewritten upstream tests as `tests_pml_upstream_ns`: PML's modules with the classes
ssml_fast mirrors replaced by ssml_fast's (a test's `from pytorch_metric_learning import losses`)."""
import importlib
import types

MODE = "__MODE__"
_UNDER_TEST = ("losses",) if MODE == "class" else ("losses", "miners", "distances", "reducers", "regularizers")


def _mixed(name):
    pml = importlib.import_module(f"pytorch_metric_learning.{name}")
    ours = importlib.import_module(f"ssml_fast.{name}")
    ns = types.ModuleType(f"tests_pml_upstream_ns.{name}")
    for attr in dir(pml):
        if not attr.startswith("_"):
            setattr(ns, attr, getattr(ours, attr) if hasattr(ours, attr) else getattr(pml, attr))
    return ns


for _name in ("losses", "miners", "distances", "reducers", "regularizers"):
    if _name in _UNDER_TEST:
        try:
            globals()[_name] = _mixed(_name)
            continue
        except ImportError:
            pass
    globals()[_name] = importlib.import_module(f"pytorch_metric_learning.{_name}")
