"""Markdown table for README from `pytest bench/bench_triplet.py --benchmark-json=FILE`.

Usage: python bench/triplet_table.py FILE
"""
import json
import sys

LABELS = {
    "ssml_all": "ssml_fast batch-all",
    "ssml_hard": "ssml_fast batch-hard",
    "ssml_semihard": "ssml_fast semi-hard",
    "pml_all": "PML TripletMarginLoss (all triplets)",
    "pml_hard": "PML BatchHardMiner + TripletMarginLoss",
    "plain_pxk_all": "plain PyTorch batch-all (P x K only)",
    "cdist_floor": "torch.cdist forward + backward (floor)",
}


def main(path):
    rows = {}
    for b in json.load(open(path))["benchmarks"]:
        impl, B = b["params"]["impl"], b["params"]["B"]
        rows.setdefault(impl, {})[B] = (b["stats"]["median"] * 1e3, b["extra_info"].get("peak_mb"))
    sizes = sorted({B for r in rows.values() for B in r})
    head = "| implementation | " + " | ".join(f"B = {B}: ms / peak MB" for B in sizes) + " |"
    print(head)
    print("|" + "---|" * (len(sizes) + 1))
    for impl in LABELS:
        if impl not in rows:
            continue
        cells = []
        for B in sizes:
            if B not in rows[impl]:
                cells.append("n/a")
                continue
            ms, mb = rows[impl][B]
            ours = rows.get("ssml_all", {}).get(B)
            ratio = f" ({ms / ours[0]:.1f}x)" if ours and impl.startswith(("pml_all", "plain")) else ""
            cells.append(f"{ms:.1f}{ratio} / {mb if mb is not None else '?'}")
        print(f"| {LABELS[impl]} | " + " | ".join(cells) + " |")
    print("\n(x): time relative to ssml_fast batch-all at the same B.")


if __name__ == "__main__":
    main(sys.argv[1])
