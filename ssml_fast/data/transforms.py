"""Image pipelines for file-backed datasets (torchvision.transforms.v2), as the official codes build them.

A `ViewSpec` describes one view; `build_transform(spec)` turns it into a v2 pipeline from a PIL RGB image
to a float32 (3, H, W) tensor in [0, 1]; the trunk normalises it (ssml_fast.models: ImageNet statistics for
pretrained weights, the split's mean / std from scratch). Kinds:
- "rrc": RandomResizedCrop(size, scale, ratio) [+ flip] [+ colour jitter p, grayscale p, blur p, solarize p];
- "crop": Resize((resize, resize)) (square, aspect not kept) + RandomCrop(size) [+ flip]: the thesis's and
  the Spreading code's pre-resized 256 x 256 images;
- "center": Resize(resize) (short side) + CenterCrop(size): the usual evaluation transform;
- "square_center": Resize((resize, resize)) + CenterCrop(size): the thesis's evaluation transform;
- "resize": Resize((size, size)) only (InsCLR's no-augmentation features at 512 x 512);
- "revisitop": no resize here: the image (query: its box) is already capped to `size` on the long side.

Presets (`preset(name, size, resize)`), with the source of each (METHODS.md):
  dml          rrc, scale (0.16, 1), flip                          STML train (both views), supervised
  spreading    crop 256 -> size, flip                             Spreading code, thesis (every method)
  spreading_center  square_center                                 Spreading's unaugmented anchor
  insclr       rrc scale (0.75, 1.33), ratio (0.75, 1.33), flip   InsCLR GLDv2 base stages
  insclr_impr  rrc 2 x size, scale (0.4, 1), flip                 InsCLR impr stage (448 for 224)
  insclr_noaug resize 512 x 512                                   InsCLR's in-batch selection features
  simclr       rrc (0.08, 1), flip, jitter (0.4, 0.4, 0.4, 0.1) p 0.8, grayscale p 0.2, blur p 0.5
                                                                  SimCLR / MoCo v2 / BYOL / SimSiam / BT / VICReg
  dino_global  rrc (0.4, 1), flip, jitter (0.4, 0.4, 0.2, 0.1) p 0.8, grayscale p 0.2, blur p 0.5
  dino_local   rrc at 96 / 224 of size, (0.05, 0.4), same colour, blur p 0.5     DINO multi-crop
  eval / thesis_eval / revisitop  the evaluation transforms above
BYOL's and DINO's asymmetric blur / solarisation probabilities per view are simplified to one setting.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Optional

import torch

KINDS = ("rrc", "crop", "center", "square_center", "resize", "revisitop")


@dataclass(frozen=True)
class ViewSpec:
    kind: str
    size: int
    resize: int = 256
    scale: tuple = (0.08, 1.0)
    ratio: tuple = (3 / 4, 4 / 3)
    hflip: bool = False
    jitter: Optional[tuple] = None     # (brightness, contrast, saturation, hue)
    jitter_p: float = 0.8
    grayscale_p: float = 0.0
    blur_p: float = 0.0
    blur_sigma: tuple = (0.1, 2.0)
    solarize_p: float = 0.0

    def __post_init__(self):
        if self.kind not in KINDS:
            raise ValueError(f"kind must be one of {', '.join(KINDS)}, got {self.kind!r}")
        if isinstance(self.size, bool) or not isinstance(self.size, int) or self.size < 1:
            raise ValueError(f"size must be a positive int, got {self.size!r}")
        if not (0 < self.scale[0] <= self.scale[1]):
            raise ValueError(f"scale must be (lo, hi) with 0 < lo <= hi, got {self.scale}")
        for arg in ("jitter_p", "grayscale_p", "blur_p", "solarize_p"):
            if not 0 <= getattr(self, arg) <= 1:
                raise ValueError(f"{arg} must be a probability, got {getattr(self, arg)}")


def _colour(**kw) -> dict:
    return dict(jitter=(0.4, 0.4, 0.4, 0.1), jitter_p=0.8, grayscale_p=0.2, blur_p=0.5, **kw)


def preset(name: str, size: int = 224, resize: int = 256) -> ViewSpec:
    """The view `name` (module docstring) at crop `size` (224 / 227) from `resize` (256)."""
    table = {
        "dml": lambda: ViewSpec("rrc", size, resize, scale=(0.16, 1.0), hflip=True),
        "spreading": lambda: ViewSpec("crop", size, resize, hflip=True),
        "spreading_center": lambda: ViewSpec("square_center", size, resize),
        "insclr": lambda: ViewSpec("rrc", size, resize, scale=(0.75, 1.33), ratio=(0.75, 1.33), hflip=True),
        "insclr_impr": lambda: ViewSpec("rrc", 2 * size, resize, scale=(0.4, 1.0), ratio=(0.75, 1.33), hflip=True),
        "insclr_noaug": lambda: ViewSpec("resize", 512, resize),
        "simclr": lambda: ViewSpec("rrc", size, resize, scale=(0.08, 1.0), hflip=True, **_colour()),
        "dino_global": lambda: ViewSpec("rrc", size, resize, scale=(0.4, 1.0), hflip=True,
                                        **{**_colour(), "jitter": (0.4, 0.4, 0.2, 0.1)}),
        "dino_local": lambda: ViewSpec("rrc", max(8, round(size * 96 / 224)), resize, scale=(0.05, 0.4), hflip=True,
                                       **{**_colour(), "jitter": (0.4, 0.4, 0.2, 0.1)}),
        "eval": lambda: ViewSpec("center", size, resize),
        "thesis_eval": lambda: ViewSpec("square_center", size, resize),
        "revisitop": lambda: ViewSpec("revisitop", size, resize),
    }
    if name not in table:
        raise ValueError(f"view preset {name!r} is unknown; available: {', '.join(table)}")
    return table[name]()


PRESETS = ("dml", "spreading", "spreading_center", "insclr", "insclr_impr", "insclr_noaug", "simclr",
           "dino_global", "dino_local", "eval", "thesis_eval", "revisitop")
# The thesis (4.2): Resize(256 x 256) + RandomCrop + flip for every method's augmented views; the
# unaugmented views keep their own presets.
THESIS_REPLACES = ("dml", "insclr", "simclr", "dino_global", "spreading")


def thesis_view(spec_name: str) -> str:
    return "spreading" if spec_name in THESIS_REPLACES else spec_name


def build_transform(spec: ViewSpec):
    """PIL RGB image -> (3, H, W) float32 tensor in [0, 1], through torchvision.transforms.v2."""
    from torchvision.transforms import v2

    ops = [v2.ToImage()]
    if spec.kind == "rrc":
        ops.append(v2.RandomResizedCrop(spec.size, scale=spec.scale, ratio=spec.ratio, antialias=True))
    elif spec.kind == "crop":
        ops += [v2.Resize((spec.resize, spec.resize), antialias=True), v2.RandomCrop(spec.size)]
    elif spec.kind == "center":
        ops += [v2.Resize(spec.resize, antialias=True), v2.CenterCrop(spec.size)]
    elif spec.kind == "square_center":
        ops += [v2.Resize((spec.resize, spec.resize), antialias=True), v2.CenterCrop(spec.size)]
    elif spec.kind == "resize":
        ops.append(v2.Resize((spec.size, spec.size), antialias=True))
    if spec.hflip:
        ops.append(v2.RandomHorizontalFlip())
    if spec.jitter is not None:
        ops.append(v2.RandomApply([v2.ColorJitter(*spec.jitter)], p=spec.jitter_p))
    if spec.grayscale_p:
        ops.append(v2.RandomGrayscale(p=spec.grayscale_p))
    if spec.blur_p:
        k = max(3, int(0.1 * spec.size) // 2 * 2 + 1)  # SimCLR: a kernel of 10 % of the side, odd
        ops.append(v2.RandomApply([v2.GaussianBlur(k, sigma=spec.blur_sigma)], p=spec.blur_p))
    if spec.solarize_p:
        ops.append(v2.RandomSolarize(128, p=spec.solarize_p))
    ops.append(v2.ToDtype(torch.float32, scale=True))
    return v2.Compose(ops)


def eval_spec(files) -> ViewSpec:
    """The evaluation view of an `ImageFiles` (its eval_pipeline at its image_size / resize)."""
    return preset(files.eval_pipeline, files.image_size, files.resize)


def revisitop_scale(width: int, height: int, max_size: int) -> float:
    """The factor that brings a (width, height) image to at most `max_size` on its long side (never > 1)."""
    return min(1.0, max_size / max(width, height))

