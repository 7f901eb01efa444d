"""Training methods, one file each, behind the hook interface of `base.Method`; a registry by name."""
from __future__ import annotations

from ..config import ConfigError, apply_overrides
from .base import Batch, DataInfo, Method, MethodConfig, Stage, StepOutput
from .barlow_twins import BarlowTwins
from .byol import BYOL
from .dino import DINO
from .insclr import InsCLR
from .moco import MoCo
from .simclr import SimCLR
from .simsiam import SimSiam
from .spreading import Spreading
from .stml import STML
from .stml_memory import STMLMemory
from .supervised import Supervised
from .vicreg import VICReg

# The thesis's methods first, then the SSL baselines of the blog post / thesis 2.4; compare runs them in
# this order.
METHODS: dict[str, type] = {m.name: m for m in (Supervised, Spreading, SimCLR, STML, STMLMemory, InsCLR,
                                                MoCo, BYOL, SimSiam, DINO, BarlowTwins, VICReg)}


def register_method(cls: type) -> type:
    """Adds a Method subclass to the registry (usable as a decorator); `compare` runs every entry."""
    if not (isinstance(cls, type) and issubclass(cls, Method) and cls.name):
        raise TypeError("register_method expects a Method subclass with a name")
    METHODS[cls.name] = cls
    return cls


def available_methods() -> list[str]:
    return list(METHODS)


def split_spec(spec: str) -> tuple[str, str | None]:
    """"supervised:arcface" -> ("supervised", "arcface"); a plain name -> (name, None)."""
    name, sep, option = spec.partition(":")
    return name, (option if sep else None)


def _spec_overrides(cls: type, spec: str, option: str) -> dict:
    """The config overrides a `method:option` spec means; the method's classmethod spec_overrides decides
    (Supervised: option = the loss)."""
    fn = getattr(cls, "spec_overrides", None)
    if fn is None:
        raise ConfigError(f"method spec {spec!r}: method {cls.name!r} takes no ':<option>'")
    if not option:
        raise ConfigError(f"method spec {spec!r}: nothing after ':'")
    return fn(option, spec)


def get_method(name: str) -> type:
    """The method class of a name or of a spec `method:option` (e.g. supervised:arcface, checked here)."""
    base, option = split_spec(name)
    try:
        cls = METHODS[base]
    except KeyError:
        raise ConfigError(f"unknown method {base!r}; available: {', '.join(METHODS)}") from None
    if option is not None:
        _spec_overrides(cls, name, option)
    return cls


def make_config(name: str, preset: str | None = None, overrides=(), ) -> MethodConfig:
    """The method's config: official defaults, then `preset`, then a spec's option (`supervised:arcface`:
    loss=arcface), then each (source, dict) of `overrides`."""
    cls = get_method(name)
    config = cls.Config()
    if preset is not None:
        if preset not in cls.presets:
            raise ConfigError(f"unknown preset {preset!r} for method {name!r}; available: {', '.join(cls.presets)}")
        config = apply_overrides(config, cls.presets[preset], f"preset {preset}")
    _, option = split_spec(name)
    if option is not None:
        config = apply_overrides(config, _spec_overrides(cls, name, option), f"method spec {name!r}")
    for source, values in overrides:
        config = apply_overrides(config, values, source)
    return config


__all__ = ["BYOL", "Batch", "BarlowTwins", "DINO", "DataInfo", "InsCLR", "METHODS", "Method", "MethodConfig",
           "MoCo", "SimCLR", "SimSiam", "VICReg", "STML", "STMLMemory", "Spreading", "Stage",
           "StepOutput", "Supervised", "available_methods", "get_method", "make_config", "register_method",
           "split_spec"]
