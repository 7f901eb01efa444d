"""`ssml-fast` command line. `ssml-fast train` on the bundled digits is the main job."""
from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import torch


def _metrics_line(m: dict) -> str:
    keys = [k for k in m if k.startswith("recall@")] + ["map_at_r", "r_precision", "nmi"]
    return "  ".join(f"{k} {m[k]:.4f}" for k in keys if k in m)


def cmd_train(args: argparse.Namespace) -> int:
    from . import losses, samplers
    from .data.digits import load_digits_split, random_shift
    from .evaluation import retrieval_metrics
    from .models import SmallCNN
    from .train import embed, train_epochs

    if args.dataset != "digits":
        print(f"error: dataset {args.dataset!r} is not available yet (only 'digits')", file=sys.stderr)
        return 2
    torch.manual_seed(args.seed)
    if args.threads:
        torch.set_num_threads(args.threads)
    data = load_digits_split(args.train_classes)
    print(f"digits: {len(data.train_labels)} train images (classes {sorted(set(data.train_labels.tolist()))}), "
          f"{len(data.test_labels)} test images (classes {sorted(set(data.test_labels.tolist()))}, unseen)")
    model_config = {"embedding_dim": args.embedding_dim}
    model = SmallCNN(**model_config)
    loss_fn = losses.TripletMarginLoss(margin=args.margin, mining=args.mining, distance=args.distance)
    sampler = samplers.MPerClassSampler(data.train_labels, m=args.m, batch_size=args.batch_size, seed=args.seed)
    optimizer = torch.optim.Adam(model.parameters(), lr=args.lr, weight_decay=args.weight_decay)
    gen = torch.Generator().manual_seed(args.seed)

    def evaluate() -> dict:
        return retrieval_metrics(embed(model, data.test_images), data.test_labels, ks=(1, 2, 4, 8), metric="cosine")

    before = evaluate()
    print(f"before training: {_metrics_line(before)}")
    out = Path(args.out)
    start = time.perf_counter()
    history = train_epochs(model, loss_fn, data.train_images, data.train_labels, sampler, optimizer, args.epochs,
                           augment=lambda x: random_shift(x, 1, gen), checkpoint_path=out / "checkpoint.pt",
                           checkpoint_extra={"dataset": "digits", "model_config": model_config,
                                             "train_classes": list(args.train_classes)})
    after = evaluate()
    print(f"after training:  {_metrics_line(after)}")
    print(f"Recall@1 on unseen classes: {before['recall@1']:.4f} -> {after['recall@1']:.4f} "
          f"({time.perf_counter() - start:.1f}s of training, {torch.get_num_threads()} threads)")
    summary = {"args": vars(args), "before": before, "after": after, "history": history}
    (out / "summary.json").write_text(json.dumps(summary, indent=2, default=str))
    print(f"checkpoint and summary in {out}/")
    return 0


def cmd_eval(args: argparse.Namespace) -> int:
    from .checkpoint import load_checkpoint
    from .data.digits import load_digits_split
    from .evaluation import retrieval_metrics
    from .models import SmallCNN
    from .train import embed

    path = Path(args.checkpoint)
    if not path.exists():
        print(f"error: checkpoint {path} does not exist (train one with `ssml-fast train`)", file=sys.stderr)
        return 2
    state = load_checkpoint(path)
    if state.get("dataset") != "digits" or "model_config" not in state:
        print(f"error: {path} is not a digits checkpoint written by `ssml-fast train`", file=sys.stderr)
        return 2
    model = SmallCNN(**state["model_config"])
    model.load_state_dict(state["model"])
    data = load_digits_split(state["train_classes"])
    emb = embed(model, data.test_images)
    print(f"{path} (epoch {state['epoch']}), {len(data.test_labels)} test images of unseen classes")
    print(f"{args.metric:>9}: {_metrics_line(retrieval_metrics(emb, data.test_labels, metric=args.metric))}")
    if args.rerank:
        rerank = {"k1": args.k1, "k2": args.k2, "lambda_value": args.lambda_value}
        reranked = retrieval_metrics(emb, data.test_labels, metric=args.metric, nmi=False, rerank=rerank)
        print(f" reranked: {_metrics_line(reranked)}  (k-reciprocal, k1={args.k1}, k2={args.k2}, "
              f"lambda={args.lambda_value})")
    return 0


def cmd_info(_args: argparse.Namespace) -> int:
    import ssml_fast

    print(json.dumps({k: v for k, v in ssml_fast.build_info().items() if k != "parallel_info"}, indent=2))
    return 0


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="ssml-fast", description=__doc__)
    sub = p.add_subparsers(dest="command", required=True)

    t = sub.add_parser("train", help="train an embedding with the fused triplet loss and report retrieval metrics")
    t.add_argument("--dataset", default="digits", help="'digits' (bundled with scikit-learn; default)")
    t.add_argument("--train-classes", type=int, nargs="+", default=[0, 1, 2, 3, 4],
                   help="digit classes used for training; the others are the unseen test classes")
    t.add_argument("--mining", default="all", choices=["all", "hard", "semihard"])
    t.add_argument("--distance", default="euclidean", choices=["euclidean", "sqeuclidean", "cosine"])
    t.add_argument("--margin", type=float, default=0.2)
    t.add_argument("--epochs", type=int, default=10)
    t.add_argument("--batch-size", type=int, default=80)
    t.add_argument("--m", type=int, default=16, help="samples per class in a batch (P x K sampling)")
    t.add_argument("--embedding-dim", type=int, default=64)
    t.add_argument("--lr", type=float, default=3e-4)
    t.add_argument("--weight-decay", type=float, default=5e-4)
    t.add_argument("--seed", type=int, default=0)
    t.add_argument("--threads", type=int, default=0, help="torch threads (0: torch's default)")
    t.add_argument("--out", default="runs/digits-triplet", help="where the checkpoint and summary go")
    t.set_defaults(func=cmd_train)

    e = sub.add_parser("eval", help="evaluate a checkpoint from `ssml-fast train` on its unseen test classes")
    e.add_argument("checkpoint", nargs="?", default="runs/digits-triplet/checkpoint.pt")
    e.add_argument("--metric", default="cosine", choices=["euclidean", "cosine"])
    e.add_argument("--rerank", action="store_true", help="also rank by k-reciprocal re-ranked distance")
    e.add_argument("--k1", type=int, default=20)
    e.add_argument("--k2", type=int, default=6)
    e.add_argument("--lambda-value", type=float, default=0.3)
    e.set_defaults(func=cmd_eval)

    i = sub.add_parser("info", help="how the compiled core was built (CUDA, architectures, threads)")
    i.set_defaults(func=cmd_info)
    return p


def main(argv=None) -> int:
    args = build_parser().parse_args(argv)
    return args.func(args)


if __name__ == "__main__":
    sys.exit(main())
