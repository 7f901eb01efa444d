"""`ssml-fast` command line: train | eval | compare | info | index | search. `ssml-fast compare` is the main job.

Every command checks its arguments, builds its configs, data and networks before any training starts,
and reports a bad argument as one line naming it (exit status 2), never a traceback.
"""
from __future__ import annotations

import argparse
import json
import sys
from dataclasses import asdict
from pathlib import Path


class UsageError(Exception):
    """A bad argument, config, file or dataset: printed as `error: ...` with exit status 2."""


def _metrics_line(m: dict) -> str:
    keys = [k for k in m if k.startswith("recall@")] + ["map_at_r", "r_precision", "nmi"]
    return "  ".join(f"{k} {m[k]:.4f}" for k in keys if k in m)


def _int_list(text: str, arg: str) -> list[int]:
    try:
        return [int(t) for t in text.replace(",", " ").split()]
    except ValueError:
        raise UsageError(f"{arg} expects integers separated by commas, got {text!r}") from None


def _checked(fn, *args, **kw):
    """Runs a preparation step, turning the user-facing errors it raises into UsageError."""
    from .config import ConfigError

    try:
        return fn(*args, **kw)
    except (ConfigError, ValueError, TypeError, FileNotFoundError, ImportError) as e:
        raise UsageError(str(e)) from None


# ---- data ----------------------------------------------------------------------------------------
def _data_args(args) -> dict:
    """--data-root / --num-workers / --image-size / --pipeline, checked against --dataset."""
    from .data import file_datasets, is_file_dataset

    if args.num_workers < 0:
        raise UsageError(f"--num-workers must be >= 0, got {args.num_workers}")
    if args.image_size < 8:
        raise UsageError(f"--image-size must be >= 8, got {args.image_size}")
    if is_file_dataset(args.dataset):
        if args.data_root is None:
            raise UsageError(f"--dataset {args.dataset} is read from disk: pass --data-root DIR (its layout: "
                             "README, section Datasets)")
        if not Path(args.data_root).exists():
            raise UsageError(f"--data-root {args.data_root} does not exist")
    elif args.data_root is not None:
        raise UsageError(f"--data-root applies to the datasets on disk ({', '.join(file_datasets())}), not to "
                         f"the bundled {args.dataset!r}")
    return {"data_root": None if args.data_root is None else str(Path(args.data_root).resolve()),
            "num_workers": args.num_workers, "image_size": args.image_size, "pipeline": args.pipeline}


def _split_args(run) -> dict:
    """load_dataset's file-backed arguments from a RunConfig (nothing for the bundled datasets)."""
    from .data import is_file_dataset

    if not is_file_dataset(run.dataset):
        return {}
    return {"root": run.data_root, "image_size": run.image_size, "pipeline": run.pipeline}


def _add_data_arguments(p) -> None:
    p.add_argument("--data-root", metavar="DIR", help="directory of a dataset on disk (cub, cars196, sop, inshop, "
                   "gldv2, gldv2_clean, gldv2_6pct, folder, unlabeled; the CSV file for csv)")
    p.add_argument("--num-workers", type=int, default=0, help="DataLoader workers decoding / augmenting images "
                   "of a dataset on disk (default 0: in the main process)")
    p.add_argument("--image-size", type=int, default=224, help="crop size for datasets on disk (224; 227 for "
                   "GoogLeNet as in the thesis)")
    p.add_argument("--pipeline", choices=["official", "thesis"], default="official",
                   help="datasets on disk: each method's official augmentation, or the thesis's Resize(256x256) + "
                        "RandomCrop + flip for every method")


# ---- train ---------------------------------------------------------------------------------------
def _config_overrides(args) -> list:
    """(source, dict) config overrides of --config, --set and the backbone / transfer-recipe flags (shortcuts
    for --set of MethodConfig's backbone fields), shared by train and compare."""
    from .config import load_yaml, parse_set

    overrides = []
    if args.config:
        overrides.append((f"--config {args.config}", _checked(load_yaml, args.config)))
    if args.set:
        overrides.append(("--set", _checked(parse_set, args.set)))
    if args.weights is not None and not Path(args.weights).is_file():
        raise UsageError(f"--weights: file {args.weights!r} does not exist")
    for flag, key in (("--backbone", "backbone"), ("--pretrained", "pretrained"), ("--weights", "weights"),
                      ("--pool", "pool"), ("--freeze-stages", "freeze_stages"), ("--head-lr", "head_lr")):
        if getattr(args, key) is not None:
            overrides.append((flag, {key: getattr(args, key)}))
    if args.bn_freeze:
        overrides.append(("--bn-freeze", {"bn_freeze": True}))
    if args.channels_last is not None:
        overrides.append(("--channels-last", {"channels_last": args.channels_last == "on"}))
    return overrides


def _add_config_arguments(p) -> None:
    p.add_argument("--config", help="YAML file of config overrides")
    p.add_argument("--set", action="append", metavar="KEY=VALUE", help="config override, repeatable "
                   "(e.g. --set lr=3e-4 --set loss=multi_similarity --set loss_kwargs.alpha=2)")
    p.add_argument("--backbone", help="small_cnn (default) | small_cnn_wide | resnet18 | resnet50 | resnet101 | "
                   "googlenet | timm:<name>")
    p.add_argument("--pretrained", help="imagenet | imagenet_v2 | none (default: imagenet for resnet/googlenet/"
                   "timm, read from the local torch / HF cache; none for the small CNNs)")
    p.add_argument("--weights", metavar="PATH", help="local backbone weight file (state dict) instead of the cache")
    p.add_argument("--pool", help="gap | gmp | gap+gmp | gem (| flatten for the small CNNs; default the backbone's)")
    p.add_argument("--freeze-stages", type=int, metavar="N", help="freeze the first N backbone stages (BN in eval)")
    p.add_argument("--bn-freeze", action="store_true", help="every backbone BN in eval mode, affine frozen (STML)")
    p.add_argument("--head-lr", type=float, help="learning rate of everything outside the backbone")
    p.add_argument("--channels-last", choices=["on", "off"], help="backbone memory layout (default the backbone's)")


def _add_allocator_argument(p) -> None:
    p.add_argument("--keep-freed-memory", choices=["on", "off"], default="on",
                   help="glibc malloc keeps freed blocks for reuse instead of unmapping them, so steps do not "
                   "page-fault (how much that costs otherwise depends on the process's allocation history; "
                   "default on)")


def _train_setup(args):
    from .compare import default_preset
    from .data import load_dataset
    from .methods import get_method, make_config
    from .train import RunConfig, data_info

    cls = _checked(get_method, args.method)
    overrides = _config_overrides(args)
    if args.epochs is not None:
        overrides.append(("--epochs", {"epochs": args.epochs}))
    preset = args.preset or default_preset(args.dataset)
    config = _checked(make_config, args.method, preset, overrides)
    train_classes = tuple(_int_list(args.train_classes, "--train-classes")) if args.train_classes else None
    run = _checked(RunConfig, dataset=args.dataset, train_classes=train_classes, val_mode=args.val_mode,
                   seed=args.seed, device=args.device, amp=args.amp, threads=args.threads,
                   select=args.select, quiet=args.quiet, sync_bn=args.sync_bn,
                   keep_freed_memory=args.keep_freed_memory == "on", **_data_args(args))
    out = Path(args.out or f"runs/{args.method}-{args.dataset}")
    return cls, config, run, preset, out


def cmd_train(args) -> int:
    import torch

    cls, config, run, preset, out = _train_setup(args)
    if args.print_config:
        from .config import to_yaml

        print(f"# method {cls.name}, preset {preset}\n" + to_yaml(config) + "# run\n" + to_yaml(run), end="")
        return 0
    from .data import load_dataset
    from .train import NonFiniteLossError, Trainer, TrainingInterrupted, data_info

    if args.resume and not (out / "last.pt").is_file():
        raise UsageError(f"--resume: no checkpoint at {out / 'last.pt'} (train without --resume first, "
                         "or pass the same --out)")
    split = _checked(load_dataset, run.dataset, run.train_classes, val_mode=run.val_mode,
                     val_fraction=run.val_fraction, seed=run.seed, **_split_args(run))
    if run.threads:
        torch.set_num_threads(run.threads)
    torch.manual_seed(run.seed)
    method = _checked(cls, config, data_info(split))
    record = {"method_config": asdict(config), "run_config": asdict(run), "model_info": asdict(data_info(split))}
    trainer = _checked(Trainer, method, split, run, out, config_record=record)
    if not run.quiet and trainer.group.is_main:
        print(split.describe())
        print(f"method {cls.name} (preset {preset}), {config.epochs} epochs, out {out}/")
    try:
        result = trainer.fit(resume=args.resume)
    except NonFiniteLossError as e:
        print(f"error: {e}", file=sys.stderr)
        return 3
    except TrainingInterrupted as e:
        print(f"\n{e}", file=sys.stderr)
        return 130
    if not trainer.group.is_main:  # under torchrun rank 0 reports and writes the summary
        return 0
    classes = split.test_classes if len(split.test_classes) <= 12 else f"{len(split.test_classes)} classes"
    if result["test"]:  # a training-only dataset (GLDv2) has no test part
        print(f"test (unseen classes {classes}): {_metrics_line(result['test'])}")
    if result["val"]:
        print(f"val  (held-out, training classes):  {_metrics_line(result['val'])}")
    summary = {"method": cls.name, "preset": preset, "config": asdict(config), "run": asdict(run),
               **{k: result[k] for k in ("val", "test", "best", "train_seconds", "history")}}
    (out / "summary.json").write_text(json.dumps(summary, indent=2, default=str))
    print(f"checkpoint {out / 'last.pt'}, logs and summary.json in {out}/")
    return 0


# ---- eval ----------------------------------------------------------------------------------------
def load_trained(path: Path):
    """(method, split, checkpoint dict) from a checkpoint written by `ssml-fast train` / `compare`
    (ssml_fast.train.restore does the work; its errors become UsageError here)."""
    from .train.restore import load_trained as _load_trained

    return _checked(_load_trained, path)


def cmd_eval(args) -> int:
    from .evaluation import retrieval_metrics
    from .train import embed_images, resolve_device

    path = Path(args.checkpoint)
    if args.revisitop:
        return _eval_revisitop(args, path)
    method, split, state = load_trained(path)
    device = resolve_device("auto")
    method.to(device)
    emb = embed_images(method.embed, method, split.test_images, device)
    metric = args.metric or method.eval_metric
    pos = state.get("position", {})
    print(f"{path}: method {method.name}, epoch {pos.get('epoch', '?')}; {len(split.test_labels)} test images "
          f"of unseen classes {split.test_classes}")
    gallery = getattr(split.test_images, "gallery_mask", None)
    if gallery is not None:  # In-Shop: queries search the gallery
        print(f"{metric:>9}: {_metrics_line(retrieval_metrics(emb[~gallery], split.test_labels[~gallery], metric=metric, gallery=emb[gallery], gallery_labels=split.test_labels[gallery]))}")
        return 0
    print(f"{metric:>9}: {_metrics_line(retrieval_metrics(emb, split.test_labels, metric=metric))}")
    if args.rerank:
        rerank = {"k1": args.k1, "k2": args.k2, "lambda_value": args.lambda_value}
        reranked = _checked(retrieval_metrics, emb, split.test_labels, metric=metric, nmi=False, rerank=rerank)
        print(f" reranked: {_metrics_line(reranked)}  (k-reciprocal, k1={args.k1}, k2={args.k2}, "
              f"lambda={args.lambda_value})")
    return 0


def _eval_revisitop(args, path: Path) -> int:
    """`eval --revisitop roxford5k,rparis6k --data-root DIR`: Easy / Medium / Hard mAP (thesis tables 7-9)."""
    from .train import resolve_device
    from .train.restore import restore_method
    from .train.revisitop_eval import evaluate_revisitop

    names = [n.strip() for n in args.revisitop.split(",") if n.strip()]
    bad = [n for n in names if n not in ("roxford5k", "rparis6k")]
    if not names or bad:
        raise UsageError(f"--revisitop expects roxford5k and/or rparis6k, got {args.revisitop!r}")
    if args.data_root is None or not Path(args.data_root).is_dir():
        raise UsageError(f"--revisitop needs --data-root DIR holding {'/, '.join(names)}/ (got {args.data_root!r})")
    scales = [float(s) for s in args.scales.split(",")] if args.scales else None
    method, _info, _state = _checked(restore_method, path)
    device = resolve_device("auto")
    method.to(device)
    for name in names:
        kw = {"scales": scales} if scales else {}
        m = _checked(evaluate_revisitop, method, args.data_root, name, device, max_size=args.max_size,
                     num_workers=args.num_workers, **kw)
        print(f"{name}: mAP easy {100 * m['easy']:.2f}  medium {100 * m['medium']:.2f}  hard {100 * m['hard']:.2f}  "
              f"(mP@10 E/M/H {100 * m['easy_mP@10']:.2f} / {100 * m['medium_mP@10']:.2f} / {100 * m['hard_mP@10']:.2f})")
    return 0


# ---- compare -------------------------------------------------------------------------------------
def cmd_compare(args) -> int:
    from .compare import check_methods, prepare_runs, run_compare
    from .data import load_dataset

    methods = _checked(check_methods, args.methods.split(",")) if args.methods else None
    seeds = _int_list(args.seeds, "--seeds")
    if not seeds:
        raise UsageError("--seeds is empty")
    train_classes = _int_list(args.train_classes, "--train-classes") if args.train_classes else None
    if args.epochs is not None and args.epochs < 1:
        raise UsageError(f"--epochs must be >= 1, got {args.epochs}")
    overrides = _config_overrides(args)
    # Everything that can be wrong is checked here, before the first method trains.
    _checked(prepare_runs, args.dataset, check_methods(methods), epochs=args.epochs, preset=args.preset,
             overrides=overrides)
    data = _data_args(args)
    files = ({"root": data["data_root"], "image_size": data["image_size"], "pipeline": data["pipeline"]}
             if data["data_root"] else {})
    _checked(load_dataset, args.dataset, train_classes, **files)
    _checked(run_compare, args.dataset, methods, train_classes=train_classes, epochs=args.epochs, seeds=seeds,
             preset=args.preset, out=args.out, device=args.device, threads=args.threads, quiet=args.quiet,
             overrides=overrides, keep_freed_memory=args.keep_freed_memory == "on", **data)
    return 0


def cmd_info(_args) -> int:
    import ssml_fast

    print(json.dumps({k: v for k, v in ssml_fast.build_info().items() if k != "parallel_info"}, indent=2))
    return 0


# ---- index / search (ssml_fast.search) -----------------------------------------------------------
def _flagged(fn, *args, **kw):
    """Like _checked, naming the command-line flag: ssml_fast.search reports errors as "<name>: ...",
    shown here as "--<name>: ..."."""
    try:
        return _checked(fn, *args, **kw)
    except UsageError as e:
        msg = str(e)
        for name in ("images", "out", "checkpoint", "query", "index", "nprobe", "nlist", "metric", "batch_size", "k"):
            if msg.startswith(name + ":") or msg.startswith(name + " must"):
                raise UsageError("--" + name.replace("_", "-") + msg[len(name):]) from None
        raise


def _device_arg(name: str):
    from .train import resolve_device

    try:
        return resolve_device(name)
    except (ValueError, RuntimeError) as e:
        raise UsageError(f"--device: {e}") from None


def cmd_index(args) -> int:
    from .search import AddReport, Index, build_index

    for flag, v, low in (("--batch-size", args.batch_size, 1), ("--workers", args.workers, 0),
                         ("--nprobe", args.nprobe, 1), ("--nlist", args.nlist, 1)):
        if v is not None and v < low:
            raise UsageError(f"{flag} must be >= {low}, got {v}")
    device = _device_arg(args.device)
    show = False if args.quiet else None  # None: a progress bar when stderr is a terminal
    out = Path(args.out)
    if args.append:
        if not (out / "meta.json").is_file():
            raise UsageError(f"--append: {out} holds no index yet (build it first, without --append)")
        if args.index_type != "auto" or args.metric or args.overwrite or args.nlist:
            raise UsageError("--index-type / --nlist / --metric / --overwrite apply to a new index, not to --append")
        index = _flagged(Index.load, out, device=device)
        if args.nprobe is not None:
            raise UsageError("--nprobe with --append: pass it to `ssml-fast search --nprobe` instead")
        report = _flagged(index.add, args.images, checkpoint=args.checkpoint, batch_size=args.batch_size,
                          num_workers=args.workers, show_progress=show)
        index.save()
    else:
        if args.checkpoint is None:
            raise UsageError("--checkpoint is required: the trained model (e.g. runs/<method>-<dataset>/last.pt) "
                             "that embeds the images")
        report = AddReport()
        index = _flagged(build_index, args.checkpoint, args.images, out, index_type=args.index_type,
                         nprobe=args.nprobe, nlist=args.nlist, metric=args.metric, batch_size=args.batch_size,
                         num_workers=args.workers, device=device, show_progress=show, overwrite=args.overwrite,
                         report=report)
    for path, reason in report.failed:
        print(f"warning: skipped unreadable image {path} ({reason})", file=sys.stderr)
    done = report.added + len(report.failed)
    rate = f", {done / report.seconds:.0f} images/s" if report.seconds > 0 and done else ""
    extra = f", {report.already_present} already in the index" if args.append else ""
    print(f"{'appended' if args.append else 'indexed'} {report.added} images in {report.seconds:.1f} s{rate}"
          f"{extra}{', ' + str(len(report.failed)) + ' unreadable skipped' if report.failed else ''}"
          f"{', index rebuilt for the new size' if getattr(report, 'rebuilt', False) else ''}")
    print(f"{out}/: {index.describe()}")
    return 0


def cmd_search(args) -> int:
    from .search import Index, save_grid

    if args.k < 1:
        raise UsageError(f"-k must be >= 1, got {args.k}")
    if args.nprobe is not None and args.nprobe < 1:
        raise UsageError(f"--nprobe must be >= 1, got {args.nprobe}")
    device = _device_arg(args.device)
    index = _flagged(Index.load, args.index, device=device)
    rerank = ({"k1": args.k1, "k2": args.k2, "lambda_value": args.lambda_value, "candidates": args.candidates}
              if args.rerank else False)
    results = _flagged(index.search, args.query, k=args.k, rerank=rerank, nprobe=args.nprobe)
    if args.json:
        rows = [{"query": r.query, "results": [{"rank": rank, "score": score, "path": str(path),
                                                 **({"rerank_distance": float(r.rerank_distances[rank - 1])}
                                                    if r.rerank_distances is not None else {})}
                                                for rank, score, path in r.rows()]} for r in results]
        print(json.dumps(rows, indent=1))
    else:
        score = "cosine" if index.metric == "cosine" else "sq. L2"
        print(f"index {args.index}: {index.describe()}")
        for r in results:
            print(f"query {r.query}" + ("  (k-reciprocal re-ranked)" if r.rerank_distances is not None else ""))
            for rank, s, path in r.rows():
                rr = f"  rerank {r.rerank_distances[rank - 1]:.4f}" if r.rerank_distances is not None else ""
                print(f"  {rank:>3}  {score} {s:.4f}{rr}  {path}")
    if args.grid != "none":
        png = save_grid(results, args.grid, metric=index.metric)
        print(f"grid of the results: {png}", file=sys.stderr if args.json else sys.stdout)
    return 0


def _add_search_parsers(sub) -> None:
    x = sub.add_parser("index", help="embed a folder of images with a trained checkpoint into a faiss index")
    x.add_argument("--checkpoint", help="checkpoint of `ssml-fast train` (e.g. runs/supervised-mnist5k/last.pt)")
    x.add_argument("--images", required=True, help="folder of images, searched recursively (jpg, jpeg, png, bmp, webp)")
    x.add_argument("--out", required=True, help="index folder to write")
    x.add_argument("--index-type", default="auto", choices=["auto", "flat", "ivf", "hnsw"],
                   help="auto (default): exact below 50,000 images, IVF from there on")
    x.add_argument("--nprobe", type=int, help="IVF cells (HNSW: efSearch) searched per query (default: "
                   "calibrated for recall@10 >= 0.97 against exact search)")
    x.add_argument("--nlist", type=int, help="IVF cells (default sqrt(number of images))")
    x.add_argument("--metric", choices=["cosine", "euclidean"], help="default: the method's own")
    x.add_argument("--append", action="store_true", help="add the images not yet in the index at --out "
                   "(the checkpoint, if given, must be the one the index was built with)")
    x.add_argument("--overwrite", action="store_true", help="replace an existing index at --out")
    x.add_argument("--batch-size", type=int, default=64)
    x.add_argument("--workers", type=int, default=2, help="DataLoader processes decoding images (default 2)")
    x.add_argument("--device", default="cpu", help="cpu (default) | cuda | cuda:N | auto")
    x.add_argument("--quiet", action="store_true", help="no progress bar")
    x.set_defaults(func=cmd_index)

    s = sub.add_parser("search", help="the nearest indexed images of query images; a PNG grid of them")
    s.add_argument("--index", required=True, help="index folder written by `ssml-fast index`")
    s.add_argument("--query", required=True, nargs="+", help="query image(s) or folder(s) of query images")
    s.add_argument("-k", type=int, default=10, help="matches per query (default 10)")
    s.add_argument("--rerank", action="store_true", help="k-reciprocal re-ranking of the --candidates best")
    s.add_argument("--candidates", type=int, default=100, help="shortlist re-ranked per query (default 100)")
    s.add_argument("--k1", type=int, default=20)
    s.add_argument("--k2", type=int, default=6)
    s.add_argument("--lambda-value", type=float, default=0.3)
    s.add_argument("--nprobe", type=int, help="override the index's nprobe (IVF) / efSearch (HNSW)")
    s.add_argument("--grid", default="search.png", help="PNG of the results (default search.png; 'none': no grid)")
    s.add_argument("--json", action="store_true", help="print the results as JSON")
    s.add_argument("--device", default="cpu")
    s.set_defaults(func=cmd_search)


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="ssml-fast", description=__doc__.splitlines()[0])
    sub = p.add_subparsers(dest="command", required=True)

    t = sub.add_parser("train", help="train one method; test on the unseen classes")
    t.add_argument("--method", default="supervised", help="supervised | spreading | simclr | ... (default supervised)")
    t.add_argument("--dataset", default="mnist5k", help="mnist5k (default) | digits (bundled) | cub | cars196 | "
                   "sop | inshop | gldv2 | gldv2_clean | gldv2_6pct | folder | csv | unlabeled (with --data-root)")
    _add_data_arguments(t)
    _add_config_arguments(t)
    t.add_argument("--preset", help="official | small (default: small on mnist5k/digits)")
    t.add_argument("--epochs", type=int, help="shortcut for --set epochs=N")
    t.add_argument("--train-classes", help="comma-separated training classes (default 0,1,2,3,4)")
    t.add_argument("--val-mode", default="samples", help="samples | classes | none (validation from training classes)")
    t.add_argument("--select", default="last", help="last | best: model used for the test evaluation")
    t.add_argument("--seed", type=int, default=0)
    t.add_argument("--device", default="auto")
    t.add_argument("--amp", default="off", help="off | bf16 | fp16")
    t.add_argument("--threads", type=int, default=0, help="torch threads (0: torch's default)")
    _add_allocator_argument(t)
    t.add_argument("--out", help="run directory (default runs/<method>-<dataset>)")
    t.add_argument("--resume", action="store_true", help="continue from <out>/last.pt")
    t.add_argument("--print-config", action="store_true", help="print the resolved config and exit")
    t.add_argument("--quiet", action="store_true")
    t.add_argument("--sync-bn", action="store_true", help="under torchrun: SyncBatchNorm (BN statistics of the "
                   "global batch; default: per-rank statistics, averaged after each step)")
    t.set_defaults(func=cmd_train)

    e = sub.add_parser("eval", help="evaluate a checkpoint on its unseen test classes")
    e.add_argument("checkpoint")
    e.add_argument("--metric", choices=["euclidean", "cosine"], help="default: the method's own")
    e.add_argument("--rerank", action="store_true", help="also rank by k-reciprocal re-ranked distance")
    e.add_argument("--k1", type=int, default=20)
    e.add_argument("--k2", type=int, default=6)
    e.add_argument("--lambda-value", type=float, default=0.3)
    e.add_argument("--revisitop", metavar="NAMES", help="roxford5k,rparis6k: Easy / Medium / Hard mAP on the "
                   "revisited Oxford / Paris sets under --data-root (GLDv2-trained models)")
    e.add_argument("--data-root", metavar="DIR", help="with --revisitop: the directory holding roxford5k/, rparis6k/")
    e.add_argument("--scales", help="with --revisitop: comma-separated scales (default 1,0.7071,0.5)")
    e.add_argument("--max-size", type=int, default=1024, help="with --revisitop: long side cap (default 1024)")
    e.add_argument("--num-workers", type=int, default=0, help="DataLoader workers decoding the images")
    e.set_defaults(func=cmd_eval)

    c = sub.add_parser("compare", help="the main job: every method + baselines on one split, one table")
    c.add_argument("--dataset", default="mnist5k", help="as for train (datasets on disk need --data-root)")
    _add_data_arguments(c)
    c.add_argument("--methods", help="comma-separated (default: every registered method)")
    c.add_argument("--train-classes", help="comma-separated training classes (default 0,1,2,3,4)")
    c.add_argument("--epochs", type=int, help="override every method's epochs")
    c.add_argument("--seeds", default="0", help="comma-separated seeds (default 0)")
    c.add_argument("--preset", help="official | small (default: small on mnist5k/digits)")
    _add_config_arguments(c)  # applied to every method (a key a method lacks is an error naming it)
    c.add_argument("--device", default="auto")
    c.add_argument("--threads", type=int, default=0)
    _add_allocator_argument(c)
    c.add_argument("--out", default="runs/compare")
    c.add_argument("--quiet", action="store_true")
    c.set_defaults(func=cmd_compare)

    i = sub.add_parser("info", help="how the compiled core was built (CUDA, architectures, threads)")
    i.set_defaults(func=cmd_info)
    _add_search_parsers(sub)
    return p


def main(argv=None) -> int:
    args = build_parser().parse_args(argv)
    try:
        return args.func(args)
    except UsageError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
