"""The compare report: results.csv / results.md and three PNGs (metric bars, curves, retrieval grid)."""
from __future__ import annotations

import csv
import math
from pathlib import Path

import torch

COLUMNS = [("recall@1", "R@1"), ("recall@2", "R@2"), ("recall@4", "R@4"), ("recall@8", "R@8"),
           ("map_at_r", "MAP@R"), ("nmi", "NMI"), ("seconds", "seconds")]
KIND_COLORS = {"baseline": "#9e9e9e", "supervised": "#1f77b4", "self-supervised": "#ff7f0e"}


def _fmt(row: dict, key: str) -> str:
    v = row.get(key, float("nan"))
    digits = 1 if key == "seconds" else 3
    s = f"{v:.{digits}f}" if isinstance(v, float) and math.isfinite(v) else "-"
    if f"{key}_std" in row and math.isfinite(row[f"{key}_std"]):
        s += f" ± {row[f'{key}_std']:.{digits}f}"
    return s


def markdown_table(summary: dict) -> str:
    kinds = summary["kinds"]
    head = "| method | kind | " + " | ".join(label for _, label in COLUMNS) + " |"
    sep = "|---|---|" + "---|" * len(COLUMNS)
    lines = [head, sep]
    for row in summary["table"]:
        lines.append(f"| {row['method']} | {kinds.get(row['method'], '')} | "
                     + " | ".join(_fmt(row, k) for k, _ in COLUMNS) + " |")
    seeds = summary["seeds"]
    note = (f"{summary['dataset']}: train classes {summary['train_classes']}, test classes (unseen) "
            f"{summary['test_classes']}; seeds {seeds}" + (" (mean ± std)" if len(seeds) > 1 else "")
            + f"; preset {summary['preset']}; {summary['threads']} threads on {summary['device']}; "
            "seconds = training time.")
    return "\n".join(lines) + "\n\n" + note + "\n"


def write_csv(path: Path, summary: dict) -> None:
    rows = summary["table"]
    keys = ["method", "kind"] + [k for k, _ in COLUMNS]
    if any(k.endswith("_std") for r in rows for k in r):
        keys += [f"{k}_std" for k, _ in COLUMNS]
    with open(path, "w", newline="") as f:
        w = csv.DictWriter(f, fieldnames=keys, extrasaction="ignore")
        w.writeheader()
        for r in rows:
            w.writerow({**r, "kind": summary["kinds"].get(r["method"], "")})


def write_report(out: Path, summary: dict, histories: dict, embeddings: dict, split, kinds: dict) -> list[Path]:
    out = Path(out)
    (out / "results.md").write_text(markdown_table(summary))
    write_csv(out / "results.csv", summary)
    files = [out / "results.csv", out / "results.md", out / "results.json"]
    import matplotlib

    matplotlib.use("Agg")
    files.append(plot_metrics(out / "metrics.png", summary))
    files.append(plot_curves(out / "curves.png", histories))
    grid = plot_retrieval_grid(out / "retrieval.png", summary, embeddings, split, kinds)
    if grid is not None:
        files.append(grid)
    return files


def plot_metrics(path: Path, summary: dict) -> Path:
    import matplotlib.pyplot as plt

    rows = summary["table"]
    keys = [("recall@1", "R@1"), ("map_at_r", "MAP@R"), ("nmi", "NMI")]
    fig, axes = plt.subplots(1, len(keys), figsize=(4.2 * len(keys), 3.4))
    names = [r["method"] for r in rows]
    colors = [KIND_COLORS.get(summary["kinds"].get(n, ""), "#555555") for n in names]
    for ax, (key, label) in zip(axes, keys):
        vals = [r[key] for r in rows]
        err = [r.get(f"{key}_std", 0.0) for r in rows]
        ax.bar(range(len(rows)), vals, yerr=err if any(err) else None, color=colors, capsize=3)
        ax.set_xticks(range(len(rows)), names, rotation=35, ha="right", fontsize=8)
        ax.set_title(label)
        lo = min(v for v in vals if math.isfinite(v)) if vals else 0
        # Many bars: values written upright inside the bars (above them, neighbouring labels overlap), so
        # the shortest bar needs room for its label.
        inside = len(rows) > 8
        hi = 1.0 if key != "map_at_r" else min(1.0, max(vals) + 0.05)
        ax.set_ylim(max(0.0, lo - (0.2 * (hi - lo) + 0.1 if inside else 0.1)), hi)
        for i, v in enumerate(vals):
            if inside:
                ax.text(i, v - 0.004, f"{v:.3f}", ha="center", va="top", rotation=90, color="white", fontsize=7)
            else:
                ax.text(i, v, f"{v:.3f}", ha="center", va="bottom", fontsize=7)
    handles = [plt.Rectangle((0, 0), 1, 1, color=c) for c in KIND_COLORS.values()]
    fig.legend(handles, list(KIND_COLORS), loc="upper right", fontsize=8, ncol=3)
    fig.suptitle(f"{summary['dataset']}: retrieval of unseen classes {summary['test_classes']}", fontsize=10, x=0.3)
    fig.tight_layout(rect=(0, 0, 1, 0.93))
    fig.savefig(path, dpi=90)
    plt.close(fig)
    return path


def plot_curves(path: Path, histories: dict) -> Path:
    import matplotlib.pyplot as plt

    fig, (a, b) = plt.subplots(1, 2, figsize=(10, 3.4))
    # Matplotlib's cycle has ten colours: past ten methods, the same colour comes back dashed, then dotted.
    cycle = plt.rcParams["axes.prop_cycle"].by_key()["color"]
    for i, (name, hist) in enumerate(histories.items()):
        style = {"color": cycle[i % len(cycle)], "linestyle": ("-", "--", ":")[(i // len(cycle)) % 3]}
        x = list(range(1, len(hist) + 1))
        loss = [r["loss"] for r in hist]
        # Losses differ in scale and sign (SimSiam's is a negative cosine): each is scaled to [0, 1].
        lo, hi = min(loss), max(loss)
        a.plot(x, [(v - lo) / (hi - lo) if hi > lo else 0.0 for v in loss], marker=".", label=name, **style)
        if any("val_map_at_r" in r for r in hist):
            b.plot([i for i, r in zip(x, hist) if "val_map_at_r" in r],
                   [r["val_map_at_r"] for r in hist if "val_map_at_r" in r], marker=".", label=name, **style)
    a.set_title("training loss (min-max scaled per method)")
    a.set_xlabel("epoch")
    b.set_title("validation MAP@R (held-out images of training classes)")
    b.set_xlabel("epoch")
    for ax in (a, b):
        ax.grid(alpha=0.3)
        ax.legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(path, dpi=90)
    plt.close(fig)
    return path


def _neighbours(emb: torch.Tensor, queries: torch.Tensor, k: int, metric: str) -> torch.Tensor:
    x = emb.double()
    if metric == "cosine":
        x = torch.nn.functional.normalize(x, dim=1)
        d = -(x[queries] @ x.T)
    else:
        d = torch.cdist(x[queries], x)
    d[torch.arange(len(queries)), queries] = math.inf  # never the query itself
    return d.topk(k, dim=1, largest=False).indices


def plot_retrieval_grid(path: Path, summary: dict, embeddings: dict, split, kinds: dict, n_queries: int = 6,
                        k: int = 5):
    """6 test queries x top 5 for the best supervised and the best self-supervised method (MAP@R)."""
    import matplotlib.pyplot as plt

    from .methods import get_method

    picks = []
    for kind in ("supervised", "self-supervised"):
        rows = [r for r in summary["table"] if kinds.get(r["method"]) == kind and r["method"] in embeddings]
        if rows:
            picks.append(max(rows, key=lambda r: r["map_at_r"])["method"])
    if not picks:
        return None
    labels = split.test_labels
    gen = torch.Generator().manual_seed(0)
    classes = labels.unique()
    # One query from each of n_queries classes (cycling), chosen once for every method.
    queries = torch.stack([torch.nonzero(labels == classes[i % len(classes)]).flatten()[
        torch.randint(0, int((labels == classes[i % len(classes)]).sum()), (1,), generator=gen)][0]
        for i in range(n_queries)])
    fig, axes = plt.subplots(n_queries, len(picks) * (k + 1), figsize=(1.1 * len(picks) * (k + 1), 1.15 * n_queries + 0.5))
    axes = axes.reshape(n_queries, -1)
    for p, name in enumerate(picks):
        nn_idx = _neighbours(embeddings[name], queries, k, get_method(name).eval_metric)
        for r in range(n_queries):
            cells = [(int(queries[r]), None)] + [(int(j), bool(labels[j] == labels[queries[r]])) for j in nn_idx[r]]
            for c, (img_idx, correct) in enumerate(cells):
                ax = axes[r, p * (k + 1) + c]
                img = split.test_images[img_idx]
                ax.imshow(img.permute(1, 2, 0).squeeze(-1).numpy(), cmap="gray", vmin=0, vmax=1)
                ax.set_xticks([])
                ax.set_yticks([])
                color = "black" if correct is None else ("#2ca02c" if correct else "#d62728")
                for s in ax.spines.values():
                    s.set_edgecolor(color)
                    s.set_linewidth(1.0 if correct is None else 3.0)
                if r == 0:
                    ax.set_title(f"{name}\nquery" if c == 0 else f"#{c}", fontsize=8)
    fig.suptitle("test queries (unseen classes) and their top-5 neighbours: green = same class, red = other",
                 fontsize=9)
    fig.tight_layout(rect=(0, 0, 1, 0.95))
    fig.savefig(path, dpi=80)
    plt.close(fig)
    return path
