"""Pretrained weights from local files only: nothing here downloads.

Where a backbone's ImageNet weights are looked for, in order:
  * `weights=PATH` (`--weights PATH`): that file (a state dict, or a dict holding one under
    "state_dict" / "model"; "module." prefixes of DDP checkpoints are stripped);
  * torchvision backbones: `torch.hub.get_dir()/checkpoints/<file name of torchvision's URL>` (the file
    torchvision itself would have downloaded there; `$TORCH_HOME/hub/checkpoints`, default
    ~/.cache/torch/hub/checkpoints), also under the older torchvision file names of the same weights;
  * timm backbones: the Hugging Face cache (`$HF_HUB_CACHE`, else `$HF_HOME/hub`, else
    ~/.cache/huggingface/hub) `models--timm--<name>/snapshots/*/model.safetensors` (or
    pytorch_model.bin), then the torch hub checkpoints directory for the model's URL.
A missing file is a FileNotFoundError naming the file and the directory to put it in.
"""
from __future__ import annotations

import contextlib
import contextvars
import os
from pathlib import Path
from typing import Iterable, Optional

import torch

_SKIP = contextvars.ContextVar("ssml_fast_skip_pretrained", default=False)


@contextlib.contextmanager
def skip_pretrained_loading():
    """Within this block, trunks are built with the architecture (and input normalisation) of their
    `pretrained` setting but without reading any weight file: for rebuilding a model whose weights come
    from a checkpoint next (`ssml-fast eval`, the index), on a machine without the ImageNet file."""
    token = _SKIP.set(True)
    try:
        yield
    finally:
        _SKIP.reset(token)


def loading_skipped() -> bool:
    return _SKIP.get()


def torch_hub_checkpoints() -> Path:
    return Path(torch.hub.get_dir()) / "checkpoints"


def hf_hub_cache() -> Path:
    if os.environ.get("HF_HUB_CACHE"):
        return Path(os.environ["HF_HUB_CACHE"])
    if os.environ.get("HF_HOME"):
        return Path(os.environ["HF_HOME"]) / "hub"
    return Path.home() / ".cache" / "huggingface" / "hub"


def find_torch_hub_file(file_names: Iterable[str]) -> tuple[Optional[Path], Path]:
    """(the first of `file_names` present in the torch hub checkpoints directory or None, that directory)."""
    d = torch_hub_checkpoints()
    for name in file_names:
        if (d / name).is_file():
            return d / name, d
    return None, d


def find_hf_file(repo_id: str) -> tuple[Optional[Path], Path]:
    """(model.safetensors or pytorch_model.bin of `repo_id` in the HF cache or None, the repo's cache dir)."""
    d = hf_hub_cache() / ("models--" + repo_id.replace("/", "--"))
    snaps = sorted((d / "snapshots").glob("*"), key=lambda p: p.stat().st_mtime, reverse=True) \
        if (d / "snapshots").is_dir() else []
    for snap in snaps:
        for name in ("model.safetensors", "pytorch_model.bin"):
            if (snap / name).is_file():
                return snap / name, d
    return None, d


def read_state_dict(path, arg: str = "weights") -> dict[str, torch.Tensor]:
    """A state dict from a local .pth / .pt / .bin / .safetensors file (tensors only: weights_only)."""
    p = Path(path)
    if not p.is_file():
        raise FileNotFoundError(f"{arg}: weight file {str(p)!r} does not exist")
    try:
        if p.suffix == ".safetensors":
            try:
                from safetensors.torch import load_file
            except ImportError:
                raise ImportError(f"{arg}: {p.name} is a safetensors file; pip install safetensors") from None
            obj = load_file(str(p), device="cpu")
        else:
            obj = torch.load(p, map_location="cpu", weights_only=True)
    except (ImportError, FileNotFoundError):
        raise
    except Exception as e:
        raise ValueError(f"{arg}: {p} is not a readable state dict ({type(e).__name__}: "
                         f"{str(e).splitlines()[0][:160] if str(e) else ''})") from None
    for key in ("state_dict", "model", "model_state_dict"):
        if isinstance(obj, dict) and isinstance(obj.get(key), dict):
            obj = obj[key]
            break
    if not isinstance(obj, dict) or not all(isinstance(k, str) and torch.is_tensor(v) for k, v in obj.items()):
        raise ValueError(f"{arg}: {p} does not hold a state dict (a mapping of parameter names to tensors)")
    if obj and all(k.startswith("module.") for k in obj):
        obj = {k[len("module."):]: v for k, v in obj.items()}
    return obj


def load_into(model: torch.nn.Module, state: dict, source: str, ignore_prefixes: tuple[str, ...] = ()) -> None:
    """Loads `state` into `model` strictly except for keys under `ignore_prefixes` (classifier heads the
    trunk drops); a mismatch names the first missing / unexpected keys and the source file."""
    state = {k: v for k, v in state.items() if not k.startswith(ignore_prefixes)}
    own = model.state_dict()
    missing = [k for k in own if k not in state]
    unexpected = [k for k in state if k not in own]
    shapes = [k for k in state if k in own and tuple(state[k].shape) != tuple(own[k].shape)]
    if missing or unexpected or shapes:
        parts = []
        if missing:
            parts.append(f"missing {missing[:3]}{' ...' if len(missing) > 3 else ''}")
        if unexpected:
            parts.append(f"unexpected {unexpected[:3]}{' ...' if len(unexpected) > 3 else ''}")
        if shapes:
            k = shapes[0]
            parts.append(f"shape of {k!r}: file {tuple(state[k].shape)} vs model {tuple(own[k].shape)}")
        raise ValueError(f"weights from {source} do not fit this backbone ({'; '.join(parts)})")
    model.load_state_dict(state, strict=False)
