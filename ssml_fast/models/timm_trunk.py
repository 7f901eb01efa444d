"""Any timm model as a trunk (backbone name "timm:<model name>", e.g. "timm:convnext_tiny"); timm is optional.

Weights: read by us from a local file (`weights=PATH`, else the Hugging Face cache entry of the model's
`hf_hub_id`, else the torch hub checkpoints directory for its URL) and handed to timm as a state dict
(`pretrained_cfg_overlay={"state_dict": ...}`), so timm applies its own checkpoint filter (e.g. ViT
position-embedding resizing) and drops the classifier, and never downloads.

Pooling: "gap" / "gmp" / "gap+gmp" / "gem" on the (B, C, h, w) map of `forward_features` (CNNs;
channels-last NHWC maps are permuted), or "model": the model's own pre-logits pooling (`model(x)` with
num_classes=0: the class token of a ViT, timm's default pool of a CNN) for token models.
Stages for `freeze_stages`: the modules up to each entry of the model's `feature_info` (ResNet: act1
(stem), layer1..layer4; ViT: each block, the patch embedding with the first).
"""
from __future__ import annotations

from typing import Optional, Sequence

import torch
from torch import nn

from . import weights as W
from .image_trunk import PRETRAINED, ImageTrunk
from .pooling import GLOBAL_POOLS

PREFIX = "timm:"


def _timm():
    try:
        import timm
    except ImportError:
        raise ImportError("timm backbones need the timm package: pip install timm (nothing else of ssml_fast "
                          "needs it)") from None
    return timm


def locate_weights(name: str, cfg: dict) -> W.Path:
    hf_id = cfg.get("hf_hub_id")
    tried = []
    if hf_id:
        path, directory = W.find_hf_file(hf_id)
        if path is not None:
            return path
        tried.append(f"{directory}/snapshots/<revision>/model.safetensors (Hugging Face cache of {hf_id})")
    url = cfg.get("url")
    if url:
        fname = url.rsplit("/", 1)[-1]
        path, directory = W.find_torch_hub_file([fname])
        if path is not None:
            return path
        tried.append(f"{directory}/{fname} (torch hub cache)")
    where = " or ".join(tried) if tried else "(timm lists no weights for it)"
    raise FileNotFoundError(
        f"pretrained='imagenet' for backbone {PREFIX}{name}: no local weight file; expected {where} "
        f"(nothing is downloaded). On a machine with internet, python -c \"import timm; "
        f"timm.create_model('{name}', pretrained=True)\" fills the Hugging Face cache (set HF_HOME to use "
        f"another one); or pass --weights PATH, or --pretrained none to train from scratch")


class TimmTrunk(ImageTrunk):
    """(B, C, H, W) in [0, 1] -> (B, out_dim) features of timm model `name` without its classifier."""

    def __init__(self, name: str, image_shape: Sequence[int], mean=0.0, std=1.0, *, pool: str = "gap",
                 pretrained: Optional[str] = "imagenet", weights: Optional[str] = None, freeze_stages: int = 0,
                 bn_freeze: bool = False, channels_last: bool = True, gem_p: float = 3.0):
        timm = _timm()
        if not isinstance(name, str) or not timm.is_model(name):
            raise ValueError(f"backbone {PREFIX}{name}: timm has no model {name!r} (timm.list_models() lists them)")
        pretrained = "imagenet" if pretrained is None else pretrained
        if pretrained not in ("none", "imagenet"):
            raise ValueError(f"pretrained must be 'imagenet' (timm's default weights for the name) or 'none' for "
                             f"timm backbones, got {pretrained!r}")
        if weights is not None and pretrained == "none":
            raise ValueError("weights: a weight file was given with pretrained='none'; drop one of them")
        if pool not in GLOBAL_POOLS + ("model",):
            raise ValueError(f"pool must be one of {', '.join(GLOBAL_POOLS + ('model',))} for timm backbones, "
                             f"got {pool!r}")
        kw = dict(num_classes=0) if pool == "model" else dict(num_classes=0, global_pool="")
        probe = timm.create_model(name, pretrained=False, **kw)
        cfg = dict(probe.pretrained_cfg)
        if pretrained == "none":
            m, s = mean, std
        else:
            m, s = cfg.get("mean", (0.485, 0.456, 0.406)), cfg.get("std", (0.229, 0.224, 0.225))
        super().__init__(image_shape, m, s, pool="gap" if pool == "model" else pool, gem_p=gem_p,
                         channels_last=channels_last)
        self.pool = pool
        self.name, self.pretrained = name, pretrained
        self.weights_source: Optional[str] = None
        if pretrained != "none" and not W.loading_skipped():
            path = W.Path(weights) if weights is not None else locate_weights(name, cfg)
            state = W.read_state_dict(path, "weights")
            try:
                net = timm.create_model(name, pretrained=True,
                                        pretrained_cfg_overlay={"state_dict": state, "source": ""}, **kw)
            except RuntimeError as e:
                raise ValueError(f"weights from {path} do not fit timm model {name!r} "
                                 f"({str(e).splitlines()[0][:200]})") from None
            self.weights_source = str(path)
        else:
            net = probe
        self.net = net
        self.out_dim = int(net.num_features)
        self._stages = self._split_stages(net)
        self._finish()
        self.configure_freezing(freeze_stages, bn_freeze)

    @staticmethod
    def _split_stages(net: nn.Module) -> list[list[nn.Module]]:
        # Childless modules with parameters or buffers, in registration order, cut after the last module
        # of each feature_info entry; what follows the last entry (a final norm) is never frozen. Tensors
        # held by modules that have children (a ViT's class token / position embedding) are not frozen.
        bounds = [f["module"] for f in getattr(net, "feature_info", [])]
        mods = list(net.named_modules())
        inside = lambda n, b: n == b or n.startswith(b + ".")  # noqa: E731
        last = [max((j for j, (n, _) in enumerate(mods) if inside(n, b)), default=-1) for b in bounds]
        stages: list[list[nn.Module]] = [[] for _ in bounds]
        for j, (_, m) in enumerate(mods):
            if next(m.children(), None) is not None:
                continue
            if not (any(True for _ in m.parameters(recurse=False)) or any(True for _ in m.buffers(recurse=False))):
                continue
            i = next((i for i, lj in enumerate(last) if j <= lj), None)
            if i is not None:
                stages[i].append(m)
        return [s for s in stages if s]

    def _stage_modules(self) -> list[list[nn.Module]]:
        return self._stages

    def forward_map(self, x: torch.Tensor) -> torch.Tensor:
        z = self.net.forward_features(self.prepare(x))
        if z.dim() == 4 and z.shape[1] != self.out_dim and z.shape[-1] == self.out_dim:
            z = z.permute(0, 3, 1, 2)  # NHWC models (e.g. Swin)
        return z

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.pool == "model":
            return self.net(self.prepare(x))
        z = self.forward_map(x)
        if z.dim() != 4:
            raise ValueError(f"timm model {self.name!r} gives {tuple(z.shape)} features, not a (B, C, h, w) map; "
                             "use pool='model' (its own pooling)")
        return self.global_pool(z)

    def extra_repr(self) -> str:
        return (f"name={self.name}, pretrained={self.pretrained}, pool={self.pool}, out_dim={self.out_dim}, "
                f"freeze_stages={self.freeze_stages}, bn_freeze={self.bn_freeze}")
