"""Dataclass configs with presets, YAML files and `key=value` overrides, checked before any work starts.

A config class is a plain dataclass whose defaults are the official ones; `presets` (a class attribute,
name -> overrides) hold e.g. the small-image preset. Overrides are applied in order (preset, YAML file,
`--set`), and every key and value is checked against the dataclass: an unknown key or a value of the
wrong type raises `ConfigError` naming the key, so a typo fails before training rather than after.
"""
from __future__ import annotations

import dataclasses
import typing
from pathlib import Path
from typing import Any, Mapping


class ConfigError(ValueError):
    """A config key or value that does not fit its dataclass; the message names the key."""


def _field_types(cls) -> dict[str, Any]:
    hints = typing.get_type_hints(cls)
    return {f.name: hints[f.name] for f in dataclasses.fields(cls)}


def _coerce(key: str, value: Any, hint: Any, where: str) -> Any:
    """Converts `value` to the annotated type where that is lossless (int -> float, list -> tuple)."""
    origin = typing.get_origin(hint)
    args = typing.get_args(hint)
    if origin is typing.Union or (origin is not None and str(origin) == "<class 'types.UnionType'>"):
        if value is None and type(None) in args:
            return None
        errors = []
        for a in args:
            if a is type(None):
                continue
            try:
                return _coerce(key, value, a, where)
            except ConfigError as e:
                errors.append(str(e))
        raise ConfigError(errors[0] if errors else f"{where}{key}: invalid value {value!r}")
    if hint is Any:
        return value
    if hint is float:
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            raise ConfigError(f"{where}{key} must be a number, got {value!r}")
        return float(value)
    if hint is int:
        if isinstance(value, bool) or not isinstance(value, int):
            raise ConfigError(f"{where}{key} must be an integer, got {value!r}")
        return value
    if hint is bool:
        if not isinstance(value, bool):
            raise ConfigError(f"{where}{key} must be true or false, got {value!r}")
        return value
    if hint is str:
        if not isinstance(value, str):
            raise ConfigError(f"{where}{key} must be a string, got {value!r}")
        return value
    if origin in (tuple, list):
        if not isinstance(value, (list, tuple)):
            raise ConfigError(f"{where}{key} must be a list, got {value!r}")
        inner = args[0] if args else Any
        items = [_coerce(key, v, inner, where) for v in value]
        return tuple(items) if origin is tuple else items
    if origin is dict or hint is dict:
        if not isinstance(value, Mapping):
            raise ConfigError(f"{where}{key} must be a mapping, got {value!r}")
        return dict(value)
    return value


def apply_overrides(config, overrides: Mapping[str, Any], source: str = "") -> Any:
    """Returns a copy of `config` with `overrides` applied. Keys may be dotted into a dict field
    (`loss_kwargs.margin`). `source` ("--set", a file name) prefixes error messages."""
    cls = type(config)
    types = _field_types(cls)
    where = f"{source}: " if source else ""
    values = dataclasses.asdict(config)
    # A config may tie fields together: `defaults_when_set(key, value)` gives the fields that setting `key`
    # resets (supervised: a new `loss` resets `loss_kwargs` to that loss's defaults, so `loss=arcface` does not
    # inherit triplet's margin). Resets apply first, so dotted keys of the same source still land on top; a
    # field given whole in the same source wins.
    hook = getattr(cls, "defaults_when_set", None)
    if hook is not None:
        given = {str(k) for k in overrides}
        for key, value in overrides.items():
            for dep, dep_value in (hook(str(key), value) or {}).items():
                if dep not in given:
                    values[dep] = dep_value
    for key, value in overrides.items():
        head, _, rest = str(key).partition(".")
        if head not in types:
            raise ConfigError(f"{where}unknown config key {head!r} for {cls.__name__}; "
                              f"valid keys: {', '.join(sorted(types))}")
        if rest:
            current = values[head]
            if not isinstance(current, dict):
                raise ConfigError(f"{where}{head} is not a mapping, so {key!r} cannot be set")
            current = dict(current)
            current[rest] = value
            values[head] = current
        else:
            values[head] = _coerce(head, value, types[head], where)
    try:
        out = cls(**values)
    except (TypeError, ValueError) as e:  # __post_init__ checks name the key themselves
        raise ConfigError(f"{where}{e}") from None
    return out


def parse_set(items) -> dict[str, Any]:
    """['lr=1e-3', 'loss_kwargs.margin=0.3', 'milestones=[20,40]'] -> dict, values parsed as YAML."""
    import yaml

    out: dict[str, Any] = {}
    for item in items or []:
        key, eq, raw = str(item).partition("=")
        if not eq or not key.strip():
            raise ConfigError(f"--set expects key=value, got {item!r}")
        try:
            value = yaml.safe_load(raw) if raw.strip() else ""
        except yaml.YAMLError as e:
            raise ConfigError(f"--set {key}: cannot parse {raw!r} ({e.__class__.__name__})") from None
        # YAML reads 1e-3 as a string (it wants 1.0e-3); numbers are what such a value means here.
        if isinstance(value, str):
            try:
                value = float(value) if any(c in value for c in ".eE") else int(value)
            except ValueError:
                pass
        out[key.strip()] = value
    return out


def load_yaml(path) -> dict[str, Any]:
    """A YAML mapping of config keys; a missing or malformed file raises ConfigError naming it."""
    import yaml

    p = Path(path)
    if not p.is_file():
        raise ConfigError(f"--config: file {str(p)!r} does not exist")
    try:
        data = yaml.safe_load(p.read_text())
    except (yaml.YAMLError, UnicodeDecodeError) as e:
        raise ConfigError(f"--config {p}: not valid YAML ({e.__class__.__name__})") from None
    if data is None:
        return {}
    if not isinstance(data, dict):
        raise ConfigError(f"--config {p}: expected a mapping of keys to values, got {type(data).__name__}")
    return _floats_from_strings(data)


def _floats_from_strings(d: dict) -> dict:
    out = {}
    for k, v in d.items():
        if isinstance(v, str):
            try:
                v = float(v) if any(c in v for c in ".eE") and v.strip()[0] in "+-.0123456789" else v
            except ValueError:
                pass
        elif isinstance(v, dict):
            v = _floats_from_strings(v)
        out[k] = v
    return out


def to_dict(config) -> dict[str, Any]:
    return dataclasses.asdict(config)


def to_yaml(config) -> str:
    import yaml

    def plain(v):
        if isinstance(v, tuple):
            return [plain(x) for x in v]
        if isinstance(v, dict):
            return {k: plain(x) for k, x in v.items()}
        if isinstance(v, list):
            return [plain(x) for x in v]
        return v

    return yaml.safe_dump({k: plain(v) for k, v in dataclasses.asdict(config).items()}, sort_keys=False)
