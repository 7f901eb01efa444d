"""`ssml-fast compare`: every method on one split, backbone and budget, plus two baselines, one table.

The thesis's question on the user's data: supervised or self-supervised, which embedding retrieves
unseen classes better? Each method is trained on the training classes with its preset for the dataset
(model selection and curves use a validation split of the *training* classes), then evaluated on the
test classes, which no method has seen. Baselines: `raw` (the input pixels as the embedding) and
`untrained` (the default network at random initialisation, same seed; `pretrained` instead when the
backbone options load weights: the network before fine-tuning). Several seeds give mean and std.
"""
from __future__ import annotations

import json
import math
import time
from dataclasses import asdict
from pathlib import Path
from typing import Callable, Optional, Sequence

import torch

METRICS = ("recall@1", "recall@2", "recall@4", "recall@8", "map_at_r", "nmi")
SMALL_IMAGE_DATASETS = ("mnist5k", "digits")


def default_preset(dataset: str) -> str:
    """The bundled small-image datasets use each method's "small" preset; real datasets the official one."""
    return "small" if dataset in SMALL_IMAGE_DATASETS else "official"


def check_methods(methods: Optional[Sequence[str]]) -> list[str]:
    from .config import ConfigError
    from .methods import available_methods, get_method

    if methods is None:
        return available_methods()
    names = [m.strip() for m in methods if m.strip()]
    if not names:
        raise ValueError("--methods is empty; available: " + ", ".join(available_methods()))
    for n in names:
        try:
            get_method(n)  # a method name, or a spec such as supervised:arcface (method:loss)
        except ConfigError as e:
            raise ConfigError(f"--methods: {e}") from None
    if len(set(names)) != len(names):
        raise ValueError(f"--methods lists a method twice: {names}")
    return names


def prepare_runs(dataset: str, methods: Sequence[str], *, epochs: Optional[int], preset: Optional[str],
                 overrides: Sequence = ()) -> dict:
    """Every method's config, built (and so checked) before anything trains."""
    from .methods import make_config

    extra = list(overrides) + ([("--epochs", {"epochs": epochs})] if epochs is not None else [])
    return {m: make_config(m, preset or default_preset(dataset), extra) for m in methods}


# MethodConfig's backbone fields: the overrides that also shape the baseline network.
BACKBONE_FIELDS = ("backbone", "pretrained", "weights", "pool", "gem_p", "freeze_stages", "bn_freeze", "channels_last")


def backbone_overrides(overrides: Sequence) -> dict:
    """The backbone fields among (source, dict) overrides, later sources winning."""
    out = {}
    for _source, values in overrides:
        out.update({k: v for k, v in values.items() if str(k) in BACKBONE_FIELDS})
    return out


def baseline_metrics(split, seed: int, device, backbone: Optional[dict] = None) -> tuple[dict, dict]:
    """Metrics and test embeddings of the raw pixels and of the baseline network: the supervised method's
    network with the compare's backbone options, before any training (random init with `seed`, or the
    pretrained weights, then named "pretrained": the thesis's "no fine-tuning" rows)."""
    from .evaluation import retrieval_metrics
    from .methods import make_config, get_method
    from .train import data_info, embed_images

    out, emb_out = {}, {}
    t0 = time.perf_counter()
    if isinstance(split.test_images, torch.Tensor):  # raw pixels: the bundled small images only
        raw = emb_out["raw"] = split.test_images.flatten(1)
        out["raw"] = dict(retrieval_metrics(raw, split.test_labels, metric="euclidean"),
                          seconds=time.perf_counter() - t0)
    t0 = time.perf_counter()
    torch.manual_seed(seed)
    cfg = make_config("supervised", "small", [("backbone options", backbone)] if backbone else [])
    net = get_method("supervised")(cfg, data_info(split)).to(device)
    name = "pretrained" if getattr(net.trunk, "weights_source", None) else "untrained"
    emb = embed_images(net.embed, net, split.test_images, device)
    out[name] = dict(retrieval_metrics(emb, split.test_labels, metric=net.eval_metric),
                     seconds=time.perf_counter() - t0)
    emb_out[name] = emb
    return out, emb_out


def run_compare(
    dataset: str = "mnist5k",
    methods: Optional[Sequence[str]] = None,
    *,
    train_classes: Optional[Sequence[int]] = None,
    epochs: Optional[int] = None,
    seeds: Sequence[int] = (0,),
    preset: Optional[str] = None,
    out: str | Path = "runs/compare",
    device: str = "auto",
    threads: int = 0,
    quiet: bool = False,
    overrides: Sequence = (),
    log: Callable[[str], None] = print,
    data_root: Optional[str] = None,
    num_workers: int = 0,
    image_size: int = 224,
    pipeline: str = "official",
    keep_freed_memory: bool = True,
) -> dict:
    """Trains and evaluates every method for every seed; writes results.{csv,md,json} and PNGs to `out`.

    Returns {"table": [row per method], "runs": {method: {seed: result}}, ...}. Every argument is
    checked, and every method's config built, before the first method trains.
    """
    from .data import load_dataset
    from .methods import get_method
    from .train import RunConfig, Trainer, data_info, embed_images, resolve_device
    from .report import write_report

    names = check_methods(methods)
    seeds = [int(s) for s in seeds]
    if not seeds:
        raise ValueError("--seeds is empty")
    configs = prepare_runs(dataset, names, epochs=epochs, preset=preset, overrides=overrides)
    disk = ({"root": data_root, "image_size": image_size, "pipeline": pipeline} if data_root is not None
            else {})  # a dataset on disk (cub, cars196, sop, ...)
    splits = {s: load_dataset(dataset, train_classes, seed=s, **disk) for s in seeds}  # raises on bad classes
    for name, cfg in configs.items():
        if cfg.batch_size > len(splits[seeds[0]].train_labels):
            raise ValueError(f"{name}: batch_size={cfg.batch_size} exceeds the "
                             f"{len(splits[seeds[0]].train_labels)} training images")
    from .distributed import setup as distributed_setup

    # Under torchrun every rank trains every method (DDP); rank 0 logs and writes the report.
    world, rank_device = distributed_setup(resolve_device(device))
    dev = rank_device
    if not world.is_main:
        log = lambda *_args, **_kw: None  # noqa: E731
    if threads:
        torch.set_num_threads(threads)
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    split0 = splits[seeds[0]]
    log(f"compare on {split0.describe()}")
    log(f"methods: {', '.join(names)}; seeds {seeds}; preset {preset or default_preset(dataset)}; "
        f"device {dev}, {torch.get_num_threads()} threads")

    per_seed: dict[str, dict[int, dict]] = {}
    grid_embeddings: dict[str, torch.Tensor] = {}
    histories: dict[str, list] = {}
    for seed in seeds:
        split = splits[seed]
        base, base_emb = baseline_metrics(split, seed, dev, backbone_overrides(overrides))
        for k, v in base.items():
            per_seed.setdefault(k, {})[seed] = {"test": v, "train_seconds": 0.0, "val": {}}
        if seed == seeds[0]:
            grid_embeddings.update(base_emb)
        for name in names:
            cls = get_method(name)
            torch.manual_seed(seed)
            method = cls(configs[name], data_info(split))
            run = RunConfig(dataset=dataset, train_classes=tuple(split.train_classes) if not disk else None,
                            seed=seed, device=device, quiet=quiet, data_root=data_root, num_workers=num_workers,
                            image_size=image_size, pipeline=pipeline, keep_freed_memory=keep_freed_memory)
            record = {"method_config": asdict(configs[name]), "run_config": asdict(run),
                      "model_info": asdict(data_info(split))}
            log(f"--- {name} (seed {seed}, {configs[name].epochs} epochs)")
            t0 = time.perf_counter()
            result = Trainer(method, split, run, out / "runs" / f"{name}-seed{seed}", config_record=record).fit()
            result["wall_seconds"] = time.perf_counter() - t0
            per_seed.setdefault(name, {})[seed] = result
            t = result["test"]
            log(f"    test R@1 {t['recall@1']:.4f}  MAP@R {t['map_at_r']:.4f}  NMI {t['nmi']:.4f}  "
                f"({result['train_seconds']:.0f}s training)")
            if seed == seeds[0]:
                histories[name] = result["history"]
                grid_embeddings[name] = embed_images(method.embed, method, split.test_images, dev)
    table = aggregate(per_seed, seeds)
    kinds = {n: ("supervised" if get_method(n).uses_labels else "self-supervised") for n in names}
    kinds.update(raw="baseline", untrained="baseline", pretrained="baseline")
    summary = {
        "dataset": dataset, "train_classes": split0.train_classes, "test_classes": split0.test_classes,
        "val_classes": split0.val_classes, "seeds": seeds, "preset": preset or default_preset(dataset),
        "epochs": {n: c.epochs for n, c in configs.items()}, "threads": torch.get_num_threads(),
        "device": str(dev), "kinds": kinds, "table": table,
        "configs": {n: asdict(c) for n, c in configs.items()},
        "per_seed": {n: {str(s): {"test": r["test"], "val": r.get("val", {}),
                                  "train_seconds": r["train_seconds"]} for s, r in d.items()}
                     for n, d in per_seed.items()},
    }
    if not world.is_main:
        return summary
    files = write_report(out, summary, histories, grid_embeddings, split0, kinds)
    summary["files"] = [str(f) for f in files]
    (out / "results.json").write_text(json.dumps(summary, indent=2, default=_json_default))
    log("")
    log((out / "results.md").read_text())
    log(f"results and plots in {out}/")
    return summary


def aggregate(per_seed: dict, seeds: Sequence[int]) -> list[dict]:
    """One row per method: mean (and std over seeds when there are several) of each metric."""
    rows = []
    for name, by_seed in per_seed.items():
        row = {"method": name}
        for key in METRICS + ("seconds",):
            vals = [(r["train_seconds"] if key == "seconds" and name not in ("raw", "untrained", "pretrained")
                     else r["test"].get(key, float("nan"))) for r in by_seed.values()]
            mean = sum(vals) / len(vals)
            row[key] = mean
            if len(seeds) > 1:
                row[f"{key}_std"] = math.sqrt(sum((v - mean) ** 2 for v in vals) / (len(vals) - 1))
        rows.append(row)
    return rows


def _json_default(o):
    if isinstance(o, torch.Tensor):
        return o.tolist()
    if isinstance(o, Path):
        return str(o)
    return str(o)
