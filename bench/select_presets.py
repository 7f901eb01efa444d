"""Choose each method's "small" preset on a validation split of the *training* classes, never on test classes.

Run: .venv/bin/python bench/select_presets.py [--methods a,b] [--budget-minutes N] [--threads T] [--dry-run]

The shipped "small" presets came from side studies that looked at test-class metrics (SMALL_IMAGE_RECIPES.md).
Here every registered method (ssml_fast.methods.METHODS, so methods registered later are included) trains a
few candidate overrides around its current "small" preset on mnist5k classes 0-2 and is scored on classes
3-4, held out entirely (class-disjoint, like the open-set test). Classes 5-9, the test classes of the
default split, are dropped before the split is built: no image of them is loaded into it, trained on or
evaluated. Selection is by validation MAP@R (cosine or the method's eval metric, as `ssml-fast compare`).

Procedure, under a wall-clock budget (default 25 minutes; a run whose estimated time would exceed it is
skipped and listed as such):
1. seed 0 for every candidate, round-robin over the methods (candidate 1 of each method, then candidate 2,
   ...), so a budget cut trims every method alike; the current preset is always candidate 1;
2. a second seed for the best seed-0 candidate, the current preset, and the runner-up, in that order;
3. winner = the best mean validation MAP@R over the candidates that have both seeds (if none has, the best
   seed-0 candidate). The report gives the margin over the preset next to the seed-to-seed spread.
Seeds change the initial weights, the batches and the views; the split is the same.

Caveat, written into the report: 1,500 training images of three classes (11 steps per epoch at batch 128)
instead of the default split's 2,250 of five (17 steps): epochs mean fewer steps here, and the ranking of
candidates on 3 -> 2 classes is evidence, not proof, for 5 -> 5.

Writes bench/results_presets.md after every run (a stopped run leaves its partial table). It does not
change any preset: the winners are for the lead to apply.
"""
from __future__ import annotations

import argparse
import json
import os
import re
import shlex
import statistics
import sys
import time
from pathlib import Path

import torch

DATASET = "mnist5k"
USED_CLASSES = (0, 1, 2, 3, 4)   # the default split's training classes; 5-9 are never loaded
FIT_CLASSES = (0, 1, 2)
VAL_CLASSES = (3, 4)
RESULTS = Path(__file__).with_name("results_presets.md")

MS_LOSS = {"loss": "multi_similarity", "loss_kwargs": {"alpha": 2.0, "beta": 50.0, "base": 0.5},
           "miner": "multi_similarity", "miner_kwargs": {"epsilon": 0.1}}

# Candidates around each current small preset, most informative first (a budget cut drops the last ones).
# The first entry is always the preset itself.
GRIDS: dict[str, list[tuple[str, dict]]] = {
    "supervised": [
        ("preset", {}),
        ("multi_similarity+miner", MS_LOSS),
        ("epochs=15", {"epochs": 15}),
        ("lr=2e-3", {"lr": 2e-3}),
        ("augment=none", {"augment": "none"}),
        ("margin=0.1", {"loss_kwargs.margin": 0.1}),
    ],
    "spreading": [
        ("preset", {}),
        ("temperature=0.05", {"temperature": 0.05}),
        ("temperature=0.2", {"temperature": 0.2}),
        ("epochs=15", {"epochs": 15}),
        ("lr=2e-3", {"lr": 2e-3}),
    ],
    "simclr": [
        ("preset", {}),
        ("temperature=0.1", {"temperature": 0.1}),
        ("temperature=0.5", {"temperature": 0.5}),
        ("augment=mild", {"augment": "mild"}),
        ("epochs=15", {"epochs": 15}),
    ],
    "stml": [
        ("preset", {}),
        ("epochs=24", {"epochs": 24}),
        ("momentum_ema=0.95", {"momentum_ema": 0.95}),
    ],
    # The slowest method (batch x (batch + memory) loss terms): few trained candidates. Second round
    # (issue 9): the blend weight of the memory loss, warm-up and size (memory_size=1024 was tried in the
    # first round; the control without memory is the stml preset, the same training at M = 0). Third
    # round: where the memory enters (memory_columns; bench/memory_columns_validation.py runs it on both
    # validation splits with four seeds, which chose "pull").
    "stml_memory": [
        ("preset", {}),
        ("memory_columns=all", {"memory_columns": "all"}),
        ("memory_weight=0.5", {"memory_weight": 0.5}),
        ("memory_warmup=50", {"memory_warmup": 50}),
        ("memory_size=256", {"memory_size": 256}),
    ],
    # Issue 13: the multi-crop small preset collapsed (uniform teacher output, bench/diag_dino.py). The
    # candidate: BN in the head (official use_bn_in_head; the trunk's features have pairwise cosine ~0.97,
    # so the centred teacher logits were near flat), the official main_dino.py temperature (0.04, no
    # warm-up), and the flattened trunk (global pooling alone gives 0.55-0.62 untrained), hence no local crops.
    # That candidate is now the preset; the old multi-crop preset's runs are bench/diag_dino.py's (seed 0).
    "dino": [
        ("preset", {}),
    ],
    # Issue 13 (second round): the untuned small presets of the redundancy-reduction methods; mild views won
    # for simsiam, a narrower projector and a lower lr are the other free choices.
    "barlow_twins": [
        ("preset", {}),
        ("augment=mild", {"augment": "mild"}),
        ("projector_dim=256", {"projector_dim": 256}),
        ("lr=3e-4", {"lr": 3e-4}),
    ],
    "vicreg": [
        ("preset", {}),
        ("augment=mild", {"augment": "mild"}),
        ("expander_dim=256", {"expander_dim": 256}),
        ("lr=3e-4", {"lr": 3e-4}),
    ],
}

# Candidates that change only how a trained model is evaluated: scored on the model trained for the
# candidate named second (same seed), not trained again. STML's embed() reads eval_embedding at call time.
_STML_EVAL = [("eval_embedding=teacher_g", {"eval_embedding": "teacher_g"}, "preset"),
              ("eval_embedding=student_g", {"eval_embedding": "student_g"}, "preset")]
EVAL_VARIANTS: dict[str, list[tuple[str, dict, str]]] = {"stml": _STML_EVAL, "stml_memory": _STML_EVAL}


def generic_grid(name: str) -> list[tuple[str, dict]]:
    """For a method without an entry in GRIDS: the preset, lr x2 and x0.5, 1.5x the epochs, and the
    temperature x0.5 when the method has one."""
    from ssml_fast.methods import make_config

    cfg = make_config(name, "small")
    grid = [("preset", {}), (f"lr={cfg.lr * 2:g}", {"lr": cfg.lr * 2}), (f"lr={cfg.lr / 2:g}", {"lr": cfg.lr / 2}),
            (f"epochs={round(cfg.epochs * 1.5)}", {"epochs": round(cfg.epochs * 1.5)})]
    if isinstance(getattr(cfg, "temperature", None), float):
        grid.append((f"temperature={cfg.temperature / 2:g}", {"temperature": cfg.temperature / 2}))
    return grid


def candidates(name: str) -> list[tuple[str, dict]]:
    return GRIDS.get(name) or generic_grid(name)


def validation_split():
    """mnist5k restricted to classes 0-4, then split: train 0-2, and the split's *test* fields hold the
    validation classes 3-4 (its own val fields are empty). Classes 5-9 are dropped before splitting."""
    from ssml_fast.data import dataset_info, split_by_class

    info = dataset_info(DATASET)
    images, labels = info.loader()
    keep = torch.isin(labels, torch.tensor(USED_CLASSES))
    split = split_by_class(images[keep], labels[keep], FIT_CLASSES, name=f"{DATASET}[classes 0-4]",
                           mean=info.mean, std=info.std, val_mode="none")
    assert split.test_classes == list(VAL_CLASSES) and split.train_classes == list(FIT_CLASSES), split.describe()
    for part in (split.train_labels, split.test_labels, split.val_labels):
        assert not torch.isin(part, torch.tensor([c for c in range(10) if c not in USED_CLASSES])).any()
    return split


def _scores(v: dict, seconds: float, epochs: int) -> dict:
    return {"map_at_r": v["map_at_r"], "recall@1": v["recall@1"], "nmi": v.get("nmi", float("nan")),
            "seconds": seconds, "epochs": epochs}


def train_and_validate(name: str, overrides: dict, seed: int, split, eval_variants=()) -> tuple[dict, dict]:
    """Trains one candidate; returns its validation scores and those of each (label, overrides) eval
    variant, computed on the same trained model."""
    from ssml_fast.methods import get_method, make_config
    from ssml_fast.train import RunConfig, Trainer, data_info, evaluate_method

    cfg = make_config(name, "small", [("candidate", overrides)])
    torch.manual_seed(seed)
    method = get_method(name)(cfg, data_info(split))
    t = time.perf_counter()
    res = Trainer(method, split, RunConfig(seed=seed, quiet=True, eval_every=0, device="cpu")).fit()
    seconds = time.perf_counter() - t
    variants = {}
    for label, ov in eval_variants:
        method.config = make_config(name, "small", [("candidate", overrides), ("eval variant", ov)])
        variants[label] = _scores(evaluate_method(method, split.test_images, split.test_labels, "cpu"), seconds,
                                  cfg.epochs)
    method.config = cfg
    # res["test"] is the split's test fields: the validation classes 3-4.
    return _scores(res["test"], seconds, cfg.epochs), variants


def baselines(split, seeds) -> dict:
    """Reference scores on the validation classes: raw pixels, and the untrained network (the supervised
    small preset's, at random init) for each seed: a self-supervised candidate should beat it."""
    from ssml_fast.evaluation import retrieval_metrics
    from ssml_fast.methods import get_method, make_config
    from ssml_fast.train import data_info, evaluate_method

    out = {"raw pixels": _scores(retrieval_metrics(split.test_images.flatten(1), split.test_labels,
                                                   metric="euclidean"), 0.0, 0)}
    for seed in seeds:
        torch.manual_seed(seed)
        net = get_method("supervised")(make_config("supervised", "small"), data_info(split))
        out[f"untrained (seed {seed})"] = _scores(evaluate_method(net, split.test_images, split.test_labels, "cpu"),
                                                  0.0, 0)
    return out


def baselines_markdown(base: dict) -> list[str]:
    return ["Reference on the same validation classes: " + "; ".join(
        f"{k} MAP@R {v['map_at_r']:.4f} / R@1 {v['recall@1']:.4f}" for k, v in base.items()) + ".", ""]


class Selection:
    def __init__(self, methods, budget_s: float, seeds=(0, 1)):
        self.methods = methods
        self.budget_s = budget_s
        self.seeds = seeds
        self.grid = {}
        self.invalid = {}
        self.results: dict[str, dict[str, dict[int, dict]]] = {}
        self.skipped: dict[str, list] = {m: [] for m in methods}
        self.sec_per_epoch: dict[str, float] = {}
        self.start = time.perf_counter()
        self.baselines: dict = {}
        self.previous_commands: list = []
        self.previous_seconds = 0.0
        from ssml_fast.methods import make_config

        self.variants: dict[str, list] = {}   # method -> [(label, overrides, trained candidate)]
        for m in methods:  # every candidate's config is built (and so checked) before anything trains
            ok = []
            for label, ov in candidates(m):
                try:
                    make_config(m, "small", [("candidate", ov)])
                    ok.append((label, ov))
                except Exception as e:
                    self.invalid.setdefault(m, []).append(f"{label}: {e}")
            trained = dict(ok)
            self.variants[m] = []
            for label, ov, base in EVAL_VARIANTS.get(m, []):
                try:
                    make_config(m, "small", [("candidate", trained[base]), ("eval variant", ov)])
                    self.variants[m].append((label, ov, base))
                except Exception as e:
                    self.invalid.setdefault(m, []).append(f"{label}: {e}")
            self.grid[m] = ok
            self.results[m] = {label: {} for label, _ in ok}
            self.results[m].update({label: {} for label, _, _ in self.variants[m]})

    def elapsed(self) -> float:
        return time.perf_counter() - self.start

    def estimate(self, m: str, overrides: dict) -> float:
        from ssml_fast.methods import make_config

        if m not in self.sec_per_epoch:
            return 0.0  # the first run of a method: no estimate yet
        return self.sec_per_epoch[m] * make_config(m, "small", [("candidate", overrides)]).epochs

    def load(self, path: Path) -> None:
        """Takes the finished runs (and commands, minutes) of an earlier report at `path` (--continue)."""
        match = re.search(r"<!-- select_presets state: (.*?) -->", path.read_text()) if path.is_file() else None
        if match is None:
            raise SystemExit(f"--continue: no select_presets state in {path}")
        state = json.loads(match.group(1))
        self.previous_commands = state["commands"]
        self.previous_seconds = state["seconds"]
        for m, by_label in state["results"].items():
            for label, by_seed in by_label.items():
                if m in self.results and label in self.results[m]:
                    self.results[m][label].update({int(k): v for k, v in by_seed.items()})
                    for r in by_seed.values():
                        if r["seconds"] > 0 and r["epochs"]:
                            self.sec_per_epoch[m] = r["seconds"] / r["epochs"]

    def state(self, command: str) -> str:
        return json.dumps({"commands": self.previous_commands + [command],
                           "seconds": self.previous_seconds + self.elapsed(), "results": self.results})

    def run(self, m: str, label: str, overrides: dict, seed: int, split, log) -> bool:
        if seed in self.results[m][label]:
            return False  # done by an earlier invocation (--continue)
        est = self.estimate(m, overrides)
        if self.elapsed() + est > self.budget_s:
            self.skipped[m].append(f"{label} seed {seed} (estimated {est:.0f} s, "
                                   f"{self.elapsed() / 60:.1f} of {self.budget_s / 60:.0f} min used)")
            log(f"[skip] {m} {label} seed {seed}: budget")
            return False
        variants = [(v, ov) for v, ov, base in self.variants[m] if base == label]
        r, extra = train_and_validate(m, overrides, seed, split, variants)
        self.sec_per_epoch[m] = r["seconds"] / r["epochs"]
        for lab, res in [(label, r)] + list(extra.items()):
            self.results[m][lab][seed] = res
            log(f"{m:>12} {lab:<28} seed {seed}: val MAP@R {res['map_at_r']:.4f}  R@1 {res['recall@1']:.4f}  "
                f"NMI {res['nmi']:.3f}  {r['seconds']:.0f} s  (elapsed {self.elapsed() / 60:.1f} min)")
        return True

    def trained_label(self, m: str, label: str) -> str:
        """The candidate whose training run gives `label`'s scores (itself, or an eval variant's base)."""
        return next((base for v, _, base in self.variants[m] if v == label), label)

    def overrides(self, m: str, label: str) -> dict:
        grid = dict(self.grid[m])
        if label in grid:
            return grid[label]
        v, ov, base = next(t for t in self.variants[m] if t[0] == label)
        return {**grid[base], **ov}

    def ranked_seed0(self, m: str) -> list[str]:
        s0 = self.seeds[0]
        done = [(r[s0]["map_at_r"], label) for label, r in self.results[m].items() if s0 in r]
        return [label for _, label in sorted(done, reverse=True)]

    def second_seed_order(self, m: str) -> list[str]:
        """Training runs for the second seed: the best seed-0 candidate, the preset, the runner-up (an eval
        variant maps to the run it was scored on)."""
        ranked = self.ranked_seed0(m)
        order = ranked[:1] + (["preset"] if "preset" in self.results[m] else []) + ranked[1:2]
        return list(dict.fromkeys(self.trained_label(m, label) for label in order))

    def winner(self, m: str):
        both = {label: statistics.mean(r[s]["map_at_r"] for s in self.seeds)
                for label, r in self.results[m].items() if all(s in r for s in self.seeds)}
        if both:
            best = max(both, key=both.get)
            return best, both[best], "mean of seeds " + ", ".join(map(str, self.seeds))
        ranked = self.ranked_seed0(m)
        if not ranked:
            return None, float("nan"), "no run finished"
        return ranked[0], self.results[m][ranked[0]][self.seeds[0]]["map_at_r"], f"seed {self.seeds[0]} only"


def _fmt(r: dict | None, key: str) -> str:
    return f"{r[key]:.4f}" if r else "-"


def write_report(sel: Selection, command: str, path: Path, split_text: str, finished: bool) -> None:
    from ssml_fast.methods import make_config

    s0, s1 = sel.seeds
    lines = [
        "# Small presets selected on a validation split of the training classes (bench/select_presets.py)",
        "",
        "Command" + ("s, in order" if sel.previous_commands else "") + ": "
        + ", then ".join(f"`{c}`" for c in sel.previous_commands + [command]),
        f"{time.strftime('%Y-%m-%d %H:%M UTC', time.gmtime())}; {os.cpu_count()}-core shared VM, CPU, torch "
        f"{torch.__version__}, {torch.get_num_threads()} intra-op thread(s); "
        f"{(sel.previous_seconds + sel.elapsed()) / 60:.1f} min in all (this invocation {sel.elapsed() / 60:.1f} "
        f"min of a {sel.budget_s / 60:.0f} min budget)"
        f"{'' if finished else ' (RUN IN PROGRESS OR STOPPED: partial table)'}.",
        "",
        f"Split: {split_text}. The split's `test` fields hold the validation classes {list(VAL_CLASSES)}; "
        f"classes 5-9 (the test classes of the default mnist5k split) are dropped before splitting and never "
        "trained on or evaluated. Scores: retrieval on the 1,000 validation images (R = 499 per query), the "
        "method's own evaluation embedding and metric, model after the last epoch (no epoch selection).",
        "",
        "Caveat: 1,500 training images of 3 classes (11 steps per epoch at batch 128) against 2,250 of 5 (17 "
        "steps) in the default split, so an epoch here is about 2/3 of the steps of an epoch there; a ranking on "
        "3 -> 2 classes is evidence, not proof, for 5 -> 5. Differences smaller than the seed-to-seed spread are "
        "noise.",
        "",
    ] + (baselines_markdown(sel.baselines) if sel.baselines else [])
    untrained = [v["map_at_r"] for k, v in sel.baselines.items() if k.startswith("untrained")]
    untrained = statistics.mean(untrained) if untrained else float("nan")
    summary = ["## Winners", "", f"Untrained network, mean of the seeds: {untrained:.4f}.", "",
               "| method | winner | overrides of the current small preset | val MAP@R | "
               "preset val MAP@R | margin | seed spread (preset) | winner - untrained |",
               "|---|---|---|---|---|---|---|---|"]
    body = []
    for m in sel.methods:
        rows = list(sel.grid[m]) + [(label, sel.overrides(m, label)) for label, _, _ in sel.variants[m]]
        grid = dict(rows)
        body += [f"## {m}", "", f"Current small preset: `{_preset_repr(m)}`", "",
                 f"| candidate | overrides | MAP@R seed {s0} | R@1 seed {s0} | MAP@R seed {s1} | R@1 seed {s1} | "
                 "mean MAP@R (both seeds) | NMI (seed 0) | seconds (seed 0) |", "|---|---|---|---|---|---|---|---|---|"]
        for label, ov in rows:
            r = sel.results[m][label]
            a, b = r.get(s0), r.get(s1)
            mean = statistics.mean(x["map_at_r"] for x in (a, b)) if (a and b) else None
            body.append(f"| {label} | `{_ov_repr(ov)}` | {_fmt(a, 'map_at_r')} | {_fmt(a, 'recall@1')} | "
                        f"{_fmt(b, 'map_at_r')} | {_fmt(b, 'recall@1')} | "
                        f"{f'{mean:.4f}' if mean is not None else '-'} | {_fmt(a, 'nmi')} | "
                        f"{_fmt_s(a)} |")
        best, score, how = sel.winner(m)
        body.append("")
        if best is None:
            body.append("Winner: none (no run finished).")
            summary.append(f"| {m} | - | - | - | - | - | - | - |")
        else:
            pr = sel.results[m].get("preset", {})
            p_mean = (statistics.mean(pr[s]["map_at_r"] for s in sel.seeds) if all(s in pr for s in sel.seeds)
                      else pr[s0]["map_at_r"] if s0 in pr else float("nan"))
            spread = abs(pr[s0]["map_at_r"] - pr[s1]["map_at_r"]) if all(s in pr for s in sel.seeds) else None
            margin = score - p_mean
            noise = (" (within the seed spread: keeping the preset is as good)"
                     if spread is not None and best != "preset" and margin <= spread else "")
            body.append(f"Winner: **{best}** (`{_ov_repr(grid[best])}`), validation MAP@R {score:.4f} ({how}); "
                        f"preset {p_mean:.4f}, margin {margin:+.4f}"
                        f"{f', preset seed spread {spread:.4f}' if spread is not None else ''}{noise}.")
            summary.append(f"| {m} | {best} | `{_ov_repr(grid[best])}` | {score:.4f} ({how}) | {p_mean:.4f} | "
                           f"{margin:+.4f} | {f'{spread:.4f}' if spread is not None else '-'} | "
                           f"{score - untrained:+.4f} |")
        for label, _, base in sel.variants[m]:
            body.append(f"- {label}: the {base} model of the same seed, evaluated with this setting (not trained "
                        "again; its seconds are the training run's)")
        for note in sel.invalid.get(m, []):
            body.append(f"- invalid candidate, not run: {note}")
        for note in sel.skipped[m]:
            body.append(f"- skipped for the budget: {note}")
        body.append("")
    state = f"<!-- select_presets state: {sel.state(command)} -->"
    path.write_text("\n".join(lines + summary + [""] + body + [state, ""]))


def _fmt_s(r: dict | None) -> str:
    return f"{r['seconds']:.0f}" if r else "-"


def _ov_repr(ov: dict) -> str:
    return ", ".join(f"{k}={v}" for k, v in ov.items()) if ov else "(none)"


def _preset_repr(m: str) -> str:
    from ssml_fast.methods import get_method

    return _ov_repr(get_method(m).presets.get("small", {}))


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--methods", default=None, help="comma list (default: every registered method)")
    p.add_argument("--budget-minutes", type=float, default=25.0)
    p.add_argument("--threads", type=int, default=1, help="torch intra-op threads (default 1: shared machine)")
    p.add_argument("--seeds", default="0,1", help="first seed for every candidate, second for the top ones")
    p.add_argument("--out", default=str(RESULTS))
    p.add_argument("--dry-run", action="store_true", help="list the candidates and exit")
    p.add_argument("--continue", dest="cont", action="store_true",
                   help="keep the runs recorded in --out and do only the missing ones (within this budget)")
    args = p.parse_args(argv)

    from ssml_fast.methods import available_methods, get_method

    torch.set_num_threads(args.threads)
    methods = available_methods() if args.methods is None else [m.strip() for m in args.methods.split(",") if m.strip()]
    for m in methods:
        get_method(m)  # unknown names fail here, naming the method
    seeds = tuple(int(s) for s in args.seeds.split(","))
    if len(seeds) != 2:
        raise SystemExit("--seeds needs two seeds, e.g. 0,1")
    sel = Selection(methods, args.budget_minutes * 60, seeds)
    if args.dry_run:
        for m in methods:
            print(m, [label for label, _ in sel.grid[m]], sel.invalid.get(m, []))
        return 0
    if args.cont:
        sel.load(Path(args.out))
    split = validation_split()
    split_text = split.describe()
    sel.baselines = baselines(split, seeds)
    command = "python bench/select_presets.py " + " ".join(shlex.quote(a) for a in (argv if argv is not None else sys.argv[1:]))
    out = Path(args.out)
    log = lambda s: print(s, flush=True)  # noqa: E731
    log(f"{split_text}; {torch.get_num_threads()} thread(s); budget {args.budget_minutes:g} min")

    rounds = max(len(g) for g in sel.grid.values())
    for i in range(rounds):
        for m in methods:
            if i < len(sel.grid[m]):
                label, ov = sel.grid[m][i]
                if sel.run(m, label, ov, seeds[0], split, log):
                    write_report(sel, command, out, split_text, finished=False)
    for j in range(3):
        for m in methods:
            order = sel.second_seed_order(m)
            if j < len(order):
                label = order[j]
                if sel.run(m, label, sel.overrides(m, label), seeds[1], split, log):
                    write_report(sel, command, out, split_text, finished=False)
    write_report(sel, command, out, split_text, finished=True)
    for m in methods:
        best, score, how = sel.winner(m)
        log(f"winner {m}: {best} (val MAP@R {score:.4f}, {how})")
    log(f"wrote {out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
