"""Finding images in a folder, decoding them, and the evaluation transform a trained model expects.

The evaluation transform follows the checkpoint (transform_for):
  - models trained on a dataset on disk (cub, cars196, sop, ..., folder; ssml_fast.data.files): that
    dataset's own evaluation pipeline, ssml_fast.data.transforms.preset("eval" | "thesis_eval") at the run's
    image_size from resize 256: RGB, shorter side (official) or both sides (thesis) resized to 256, centre
    crop, [0, 1] (ssml_fast.data.transforms.build_transform: the transform the model was evaluated with);
  - the bundled small grey models (28 x 28 mnist5k, 8 x 8 digits) and any other DataInfo.image_shape (C, H, W):
    channels C = 1 -> greyscale ("L"), C = 3 -> RGB; min(H, W) < 128: the whole image resized to exactly
    H x W (bilinear, antialiased), as those models saw whole, centred images; min(H, W) >= 128: shorter side
    to round(S * 256 / 224) for crop side S, centre crop H x W. Pixels in [0, 1].
Every model normalises its input itself (the trunks: ImageNet statistics for pretrained weights, the split's
mean / std otherwise), so nothing here subtracts a mean.
Transparent pixels are composited on white before the conversion.
"""
from __future__ import annotations

import os
import warnings
from pathlib import Path
from typing import Sequence

import numpy as np
import torch

IMAGE_EXTENSIONS = (".jpg", ".jpeg", ".png", ".bmp", ".webp")
LARGE_INPUT = 128           # min(H, W) from which the resize + centre-crop pipeline is used
RESIZE_RATIO = 256 / 224    # resize side / crop side of the standard evaluation pipeline


def is_image_file(path: str | os.PathLike) -> bool:
    return str(path).lower().endswith(IMAGE_EXTENSIONS)


def list_images(root: str | os.PathLike, arg: str = "images") -> list[Path]:
    """Image files under `root`, recursively (symlinked folders followed), sorted, as absolute paths.
    Hidden files and folders (a leading dot) are skipped. A missing or image-less folder is a ValueError
    naming `arg`."""
    root = Path(root)
    if not root.exists():
        raise ValueError(f"{arg}: folder {root} does not exist")
    if not root.is_dir():
        raise ValueError(f"{arg}: {root} is not a folder")
    found = []
    for dirpath, dirnames, filenames in os.walk(root, followlinks=True):
        dirnames[:] = sorted(d for d in dirnames if not d.startswith("."))
        found.extend(Path(dirpath, f).resolve() for f in filenames if not f.startswith(".") and is_image_file(f))
    if not found:
        raise ValueError(f"{arg}: no images ({', '.join(IMAGE_EXTENSIONS)}) under {root}")
    return sorted(set(found))


FILE_PIPELINES = ("eval", "thesis_eval")


def transform_spec(state: dict, image_shape: Sequence[int]) -> dict:
    """The evaluation transform's record for a checkpoint dict (kept in the index's meta.json)."""
    from ..data import is_file_dataset

    run = state.get("run_config") or {}
    spec = {"image_shape": [int(v) for v in image_shape], "pipeline": None, "resize": None}
    if isinstance(run, dict) and is_file_dataset(str(run.get("dataset"))):
        spec["pipeline"] = "thesis_eval" if run.get("pipeline") == "thesis" else "eval"
        spec["resize"] = int(run.get("resize", 256))
    return spec


class EvalTransform:
    """PIL image -> (C, H, W) float32 tensor for a model trained on `image_shape` inputs (module docstring):
    `pipeline` None -> [0, 1] pixels resized for the model; "eval" / "thesis_eval" -> the file-backed
    datasets' evaluation view from `resize` ([0, 1] too). A picklable object (DataLoader workers get a copy)."""

    def __init__(self, image_shape: Sequence[int], pipeline: str | None = None, resize: int | None = None):
        if len(image_shape) != 3:
            raise ValueError(f"image_shape must be (C, H, W), got {tuple(image_shape)}")
        c, h, w = (int(v) for v in image_shape)
        if c not in (1, 3):
            raise ValueError(f"image_shape has {c} channels; images can be read as 1 (grey) or 3 (RGB)")
        if pipeline is not None and (pipeline not in FILE_PIPELINES or c != 3 or h != w):
            raise ValueError(f"pipeline {pipeline!r} needs square RGB inputs and one of {FILE_PIPELINES}")
        self.channels, self.height, self.width = c, h, w
        self.mode = "L" if c == 1 else "RGB"
        self.pipeline = pipeline
        self._views = None
        if pipeline is not None:
            self.crop, self.resize = True, int(resize or 256)
        else:
            self.crop = min(h, w) >= LARGE_INPUT
            self.resize = round(min(h, w) * RESIZE_RATIO) if self.crop else None

    @classmethod
    def of(cls, spec: dict) -> "EvalTransform":
        return cls(spec["image_shape"], spec.get("pipeline"), spec.get("resize"))

    def describe(self) -> str:
        if self.pipeline is not None:
            how = "shorter side" if self.pipeline == "eval" else "both sides"
            return (f"RGB, {how} resized to {self.resize}, centre crop {self.height}x{self.width}, [0, 1] "
                    f"(the dataset's {self.pipeline!r} view)")
        if self.crop:
            return (f"{self.mode}, shorter side resized to {self.resize}, centre crop {self.height}x{self.width}, "
                    "[0, 1]")
        return f"{self.mode}, resized to {self.height}x{self.width}, [0, 1]"

    def _convert(self, img):
        from PIL import Image

        if img.mode in ("RGBA", "LA", "PA", "La", "RGBa") or (img.mode == "P" and "transparency" in img.info):
            # transparent pixels become white, not whatever colour the file stores under them
            rgba = img.convert("RGBA")
            flat = Image.new("RGB", rgba.size, (255, 255, 255))
            flat.paste(rgba, mask=rgba.getchannel("A"))
            img = flat
        return img.convert(self.mode) if img.mode != self.mode else img

    def __call__(self, img) -> torch.Tensor:
        from PIL import Image

        img = self._convert(img)
        if self.pipeline is not None:
            if self._views is None:
                from ..data.transforms import build_transform, preset

                self._views = build_transform(preset(self.pipeline, self.height, self.resize))
            return self._views(img)
        if self.crop:
            w, h = img.size
            scale = self.resize / min(w, h)
            size = (max(self.width, round(w * scale)), max(self.height, round(h * scale)))
            img = img.resize(size, Image.BILINEAR, reducing_gap=None)
            left, top = (size[0] - self.width) // 2, (size[1] - self.height) // 2
            img = img.crop((left, top, left + self.width, top + self.height))
        else:
            img = img.resize((self.width, self.height), Image.BILINEAR)
        a = np.array(img, dtype=np.uint8)  # a writable copy (torch.from_numpy warns on read-only arrays)
        a = a[None] if a.ndim == 2 else a.transpose(2, 0, 1)
        return torch.from_numpy(np.ascontiguousarray(a)).float().div_(255.0)


def open_image(path: str | os.PathLike, transform: EvalTransform) -> torch.Tensor:
    """Decodes `path` fully (a truncated file fails here, not later) and applies `transform`.
    Raises OSError / ValueError / PIL errors for unreadable files."""
    from PIL import Image

    with warnings.catch_warnings():
        warnings.simplefilter("error", Image.DecompressionBombWarning)
        with Image.open(path) as img:
            if img.format == "JPEG":  # decode at reduced scale when the file is much larger than needed
                target = transform.resize or max(transform.height, transform.width)
                img.draft(transform.mode, (target, target))
            img.load()
            return transform(img)
