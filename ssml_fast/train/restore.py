"""Rebuilding a trained method from a checkpoint written by `ssml-fast train` / `compare`.

Two entry points, for two consumers:
  restore_method(path): the method and its DataInfo, nothing else. The DataInfo is read from the
    checkpoint's `model_info` record (written by `train` and `compare`), so no dataset is loaded; only a
    checkpoint without that record falls back to rebuilding the split it was trained on. The retrieval
    service (ssml_fast.search) uses this.
  load_trained(path): the method, the split it was trained on and the checkpoint dict (`ssml-fast eval`).

A missing, unreadable or foreign file raises CheckpointError (a ValueError) naming the path, before any
network is built.
"""
from __future__ import annotations

import dataclasses
import hashlib
import os
from pathlib import Path

from ..methods.base import DataInfo
from .checkpoint import load_checkpoint

REQUIRED_KEYS = ("method_name", "method_config", "run_config", "method")


class CheckpointError(ValueError):
    """The file is missing, not a torch file, or not a checkpoint of `ssml-fast train`."""


def read_checkpoint(path: str | os.PathLike) -> dict:
    """The checkpoint dict at `path` (weights_only load), checked to hold REQUIRED_KEYS."""
    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"checkpoint {path} does not exist (train one with `ssml-fast train`)")
    try:
        state = load_checkpoint(path)
    except Exception as e:  # empty, text, random or truncated files, pickles with foreign objects
        first = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
        raise CheckpointError(f"{path} is not a readable ssml-fast checkpoint ({type(e).__name__}: {first[:160]})") from None
    if not isinstance(state, dict) or any(k not in state for k in REQUIRED_KEYS):
        missing = [k for k in REQUIRED_KEYS if not isinstance(state, dict) or k not in state]
        raise CheckpointError(f"{path} is not a checkpoint written by `ssml-fast train` (missing {missing})")
    return state


def file_sha256(path: str | os.PathLike, chunk: int = 1 << 20) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while block := f.read(chunk):
            h.update(block)
    return h.hexdigest()


def _split_of(state: dict):
    from ..data import load_dataset

    run = state["run_config"]
    files = ({"root": run["data_root"], "image_size": run.get("image_size", 224),
              "pipeline": run.get("pipeline", "official")} if run.get("data_root") else {})  # datasets on disk
    return load_dataset(run["dataset"], run["train_classes"], val_mode=run["val_mode"],
                        val_fraction=run["val_fraction"], seed=run["seed"], **files)


def data_info_from_record(record: dict) -> DataInfo:
    """DataInfo from its asdict() record (lists back to tuples; fields this version does not know dropped)."""
    names = {f.name for f in dataclasses.fields(DataInfo)}
    values = {k: (tuple(v) if isinstance(v, list) else v) for k, v in record.items() if k in names}
    missing = names - values.keys()
    if missing:
        raise CheckpointError(f"the checkpoint's model_info lacks {sorted(missing)}")
    return DataInfo(**values)


def build_method(state: dict, info: DataInfo, path: str | os.PathLike = "checkpoint"):
    """The method of `state` built for `info`, with the checkpoint's weights loaded (CPU, eval mode)."""
    from ..methods import get_method, make_config

    cls = get_method(state["method_name"])
    config = make_config(state["method_name"], None, [("checkpoint", state["method_config"])])
    from ..models import skip_pretrained_loading

    with skip_pretrained_loading():  # the checkpoint holds the weights: no ImageNet file needed here
        method = cls(config, info)
    try:
        method.load_state_dict(state["method"])
    except RuntimeError as e:
        raise CheckpointError(f"{path}: the weights do not fit method {cls.name!r} ({str(e).splitlines()[0]})") from None
    return method.eval()


def restore_method(path_or_state, path: str | os.PathLike | None = None):
    """(method, DataInfo, checkpoint dict) from a checkpoint path or an already read checkpoint dict."""
    if isinstance(path_or_state, dict):
        state = path_or_state
    else:
        path = path_or_state
        state = read_checkpoint(path)
    if isinstance(state.get("model_info"), dict):
        info = data_info_from_record(state["model_info"])
    else:  # checkpoints without the record: the split it was trained on gives the DataInfo
        from .loop import data_info

        info = data_info(_split_of(state))
    return build_method(state, info, path or "checkpoint"), info, state


def load_trained(path: str | os.PathLike):
    """(method, split, checkpoint dict) from a checkpoint written by `ssml-fast train` / `compare`."""
    from .loop import data_info

    state = read_checkpoint(path)
    split = _split_of(state)
    return build_method(state, data_info(split), path), split, state
