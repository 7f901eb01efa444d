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


def get_method(name: str) -> type:
    try:
        return METHODS[name]
    except KeyError:
        raise ConfigError(f"unknown method {name!r}; available: {', '.join(METHODS)}") from None


def make_config(name: str, preset: str | None = None, overrides=(), ) -> MethodConfig:
    """The method's config: official defaults, then `preset`, then each (source, dict) of `overrides`."""
    cls = get_method(name)
    config = cls.Config()
    if preset is not None:
        if preset not in cls.presets:
            raise ConfigError(f"unknown preset {preset!r} for method {name!r}; available: {', '.join(cls.presets)}")
        config = apply_overrides(config, cls.presets[preset], f"preset {preset}")
    for source, values in overrides:
        config = apply_overrides(config, values, source)
    return config


__all__ = ["BYOL", "Batch", "BarlowTwins", "DINO", "DataInfo", "InsCLR", "METHODS", "Method", "MethodConfig",
           "MoCo", "SimCLR", "SimSiam", "VICReg", "STML", "STMLMemory", "Spreading", "Stage",
           "StepOutput", "Supervised", "available_methods", "get_method", "make_config", "register_method"]
