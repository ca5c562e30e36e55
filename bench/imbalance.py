"""Uneven classes, measured: plain cross-entropy against the three counters, on balanced test sets.

Two image folders with uneven training classes and an even test split:

- `cifar-lt`: CIFAR-10 photos (the shared archive), training classes from 500 down to 50 images
  (geometric, 10:1, the long-tailed CIFAR of Cao et al. 2019 / Menon et al. 2021), 100 test
  images per class from the archive's test split.
- `cifar-r2`: the same with a mild 2:1 tail (500 down to 250), where the trigger's threshold lies.
- `trashnet`: the shared real phone photos (6 classes, 55 to 236 each); 25 photos of every class
  go to test/ (seeded), the rest (30 to 211) to train/.

Each is trained with the default command (`transferlab train --dataset folder:... --model
mobilenet_v2 --weights FILE`, the `finetune` recipe, validation carved from train/) once per
`--imbalance` method and seed, at a small input size and a capped `finetune` stage so that the
whole table fits a shared 2-core machine. Test top-1, balanced accuracy (mean per-class recall),
macro-F1 and wall time of each run go to bench/IMBALANCE.md, the per-epoch validation rows to a
JSON file beside it.

    python bench/imbalance.py                                  # both folders, 4 methods, seed 0
    python bench/imbalance.py --datasets trashnet --methods off logit_adjust --seeds 0 1
    python bench/imbalance.py --variant bn=stages.finetune.bn_frozen=true   # extra --set per run
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import random
import statistics
import sys
import tarfile
import tempfile
import time
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[1]
SHARED = REPO.parent / "shared"
WEIGHTS = "weights/mobilenetv2_100.coral_int8_in1k.safetensors"
METHODS = ("off", "logit_adjust", "class_weight", "balanced_sampler")
# name -> (archive under shared/, input size px)
DATASETS = {"cifar-lt": ("data/cifar10-jpeg.tar.gz", 96), "cifar-r2": ("data/cifar10-jpeg.tar.gz", 96),
            "trashnet": ("data/trashnet.tar.gz", 128)}


def long_tail_counts(largest: int, ratio: float, classes: int) -> list[int]:
    """Images per class falling geometrically from `largest` to `largest / ratio`."""
    return [round(largest * ratio ** (-i / (classes - 1))) for i in range(classes)]


def _jpegs(archive: Path) -> Any:
    """(member, bytes) of the archive's JPEG files, read in one streaming pass (a .tar.gz has no
    random access: reading members out of order would decompress it again each time)."""
    with tarfile.open(archive, "r|gz") as tar:
        for member in tar:
            if member.isfile() and member.name.endswith(".jpg"):
                yield member, tar.extractfile(member).read()


def make_cifar_lt(archive: Path, root: Path, largest: int = 500, ratio: float = 10.0,
                  test_per_class: int = 100) -> Path:
    """Write train/<class> (long-tailed) and test/<class> (even) from the CIFAR-10 archive.

    Class i in alphabetical order gets `long_tail_counts(...)[i]` training images: the first
    ones of its train/ folder in the archive's (the official) order.
    """
    classes = sorted(("airplane", "automobile", "bird", "cat", "deer", "dog", "frog", "horse",
                      "ship", "truck"))
    want = dict(zip(classes, long_tail_counts(largest, ratio, len(classes)), strict=True))
    taken: dict[tuple[str, str], int] = {}
    for member, data in _jpegs(archive):
        split, cls = member.name.split("/")[-3:-1]
        limit = want[cls] if split == "train" else test_per_class
        if taken.get((split, cls), 0) >= limit:
            continue
        taken[split, cls] = taken.get((split, cls), 0) + 1
        folder = root / split / cls
        folder.mkdir(parents=True, exist_ok=True)
        (folder / Path(member.name).name).write_bytes(data)
    return root


def make_trashnet(archive: Path, root: Path, test_per_class: int = 25, seed: int = 0) -> Path:
    """Write train/<class> and test/<class> from the trashnet archive, `test_per_class` photos of
    every class (a seeded choice) in test/."""
    names: dict[str, list[str]] = {}
    with tarfile.open(archive, "r|gz") as tar:
        for member in tar:
            if member.isfile() and member.name.endswith(".jpg"):
                names.setdefault(member.name.split("/")[-2], []).append(member.name)
    rng = random.Random(seed)
    test = {n for cls in sorted(names) for n in rng.sample(sorted(names[cls]), test_per_class)}
    for member, data in _jpegs(archive):
        folder = root / ("test" if member.name in test else "train") / member.name.split("/")[-2]
        folder.mkdir(parents=True, exist_ok=True)
        (folder / Path(member.name).name).write_bytes(data)
    return root


def train_once(folder: Path, work: Path, weights: Path, name: str, method: str, seed: int,
               input_size: int, finetune_epochs: int, sets: list[str]) -> dict[str, Any]:
    """One `transferlab train` of the default recipe; its summary figures, rows and wall time."""
    from transferlab.cli import main

    argv = ["train", "--dataset", f"folder:{folder}", "--model", "mobilenet_v2",
            "--weights", str(weights), "--out-dir", str(work / "runs"), "--run-name", name,
            "--data-root", str(work / "data"), "--cache-dir", str(work / f"features-{name}"),
            "--input-size", str(input_size), "--imbalance", method, "--seed", str(seed),
            "--set", f"stages.finetune.epochs={finetune_epochs}", "--quiet"]
    for item in sets:
        argv += ["--set", item]
    start = time.perf_counter()
    if main(argv) != 0:
        raise SystemExit(f"transferlab {' '.join(argv)} failed")
    wall = time.perf_counter() - start
    run_dir = work / "runs" / name
    summary = json.loads((run_dir / "summary.json").read_text())
    rows = [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]
    return {"test_acc1": summary["test_acc1"], "test_bal_acc": summary["test_bal_acc"],
            "test_macro_f1": summary["test_macro_f1"], "wall_s": wall,
            "epochs": summary["epochs"], "sizes": summary["split_sizes"],
            "imbalance": summary["imbalance"],
            "rows": [{k: r[k] for k in ("stage", "epoch", "train_loss", "val_loss", "val_acc1",
                                        "val_bal_acc")} for r in rows]}


def _pct(values: list[float]) -> str:
    mean = 100 * statistics.fmean(values)
    if len(values) == 1:
        return f"{mean:.1f}%"
    return f"{mean:.1f} ± {100 * statistics.stdev(values):.1f}%"


def table(results: list[dict[str, Any]]) -> list[str]:
    """Markdown rows: one per dataset, variant and method, averaged over seeds, with the change
    against the same dataset's and variant's `off` row."""
    lines = ["| dataset | variant | method | seeds | test top-1 | balanced acc | macro-F1 | "
             "Δ top-1 | Δ bal acc | Δ macro-F1 | wall (mean) |",
             "| --- | --- | --- | --- | --- | --- | --- | --- | --- | --- | --- |"]
    groups: dict[tuple[str, str, str], list[dict[str, Any]]] = {}
    for r in results:
        groups.setdefault((r["dataset"], r["variant"], r["method"]), []).append(r)
    for (dataset, variant, method), runs in groups.items():
        base = groups.get((dataset, variant, "off"), [])
        cells = []
        for key in ("test_acc1", "test_bal_acc", "test_macro_f1"):
            cells.append(_pct([r[key] for r in runs]))
        deltas = []
        for key in ("test_acc1", "test_bal_acc", "test_macro_f1"):
            if base and method != "off":
                diff = statistics.fmean(r[key] for r in runs) - statistics.fmean(r[key] for r in base)
                deltas.append(f"{100 * diff:+.1f}")
            else:
                deltas.append("")
        wall = statistics.fmean(r["wall_s"] for r in runs)
        lines.append(f"| {dataset} | {variant} | {method} | {len(runs)} | {' | '.join(cells)} | "
                     f"{' | '.join(deltas)} | {wall:.0f} s |")
    return lines


def epoch_table(results: list[dict[str, Any]]) -> list[str]:
    """Markdown rows: the head stage's best epoch, then every finetune epoch's validation loss
    and top-1 (and training loss), per run (does the second stage start by undoing the first?)."""
    lines = ["| dataset | variant | method | seed | head (best epoch) | "
             "finetune epochs: val loss / top-1 (train loss) |",
             "| --- | --- | --- | --- | --- | --- |"]
    for r in results:
        head = [row for row in r["rows"] if row["stage"] == "head"]
        best = min(head, key=lambda row: row["val_loss"]) if head else None
        fine = [row for row in r["rows"] if row["stage"] == "finetune"]
        head_text = (f"{best['val_loss']:.3f} / {100 * best['val_acc1']:.1f}% (epoch {best['epoch']})"
                     if best else "")
        fine_text = ", ".join(f"{row['val_loss']:.3f} / {100 * row['val_acc1']:.1f}% "
                              f"({row['train_loss']:.2f})" for row in fine)
        lines.append(f"| {r['dataset']} | {r['variant']} | {r['method']} | {r['seed']} | {head_text} | "
                     f"{fine_text} |")
    return lines


def write_tables(results: list[dict[str, Any]], out: Path, command: str, rows_where: str) -> None:
    """Write (and print) the Markdown tables of `results`."""
    caps = sorted({sum(1 for row in r["rows"] if row["stage"] == "finetune") for r in results})
    lines = [f"`{command}` on {platform.node() or 'this machine'} ({os.cpu_count()} cores, shared), "
             f"{time.strftime('%Y-%m-%d %H:%M UTC', time.gmtime())}; finetune epochs run: "
             f"{', '.join(map(str, caps))}; per-epoch rows in {rows_where}.", "", *table(results),
             "", "Validation per epoch (head: the epoch early stopping restored):", "",
             *epoch_table(results)]
    out.write_text("\n".join(lines) + "\n")
    print("\n".join(lines))


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--datasets", nargs="+", choices=sorted(DATASETS), default=list(DATASETS))
    parser.add_argument("--methods", nargs="+", choices=METHODS, default=list(METHODS))
    parser.add_argument("--seeds", nargs="+", type=int, default=[0])
    parser.add_argument("--finetune-epochs", type=int, default=4,
                        help="cap of the finetune stage (the recipe's is 10)")
    parser.add_argument("--variant", action="append", default=[],
                        help="NAME=SET[;SET...]: also run every method with these `--set`s "
                             "(repeatable); "
                             "the plain recipe is the variant `recipe`")
    parser.add_argument("--no-plain", action="store_true", help="skip the plain recipe variant")
    parser.add_argument("--shared", type=Path, default=SHARED, help="the offline material folder")
    parser.add_argument("--out", type=Path, default=REPO / "bench" / "IMBALANCE.md")
    parser.add_argument("--rows-out", type=Path, default=None,
                        help="JSON of every run with its per-epoch rows (default: beside --out)")
    parser.add_argument("--render", type=Path, nargs="+", default=None,
                        help="write the tables from these JSON files of earlier runs (no training)")
    args = parser.parse_args()
    if args.render:
        results = [r for path in args.render for r in json.loads(path.read_text())]
        write_tables(results, args.out, "python bench/imbalance.py " + " ".join(sys.argv[1:]),
                     "the JSON files named")
        return 0
    weights = args.shared / WEIGHTS
    for path in (weights, *(args.shared / DATASETS[d][0] for d in args.datasets)):
        if not path.exists():
            raise SystemExit(f"needs {path} (the offline material in ../shared)")
    variants: list[tuple[str, list[str]]] = [] if args.no_plain else [("recipe", [])]
    for item in args.variant:
        name, _, setting = item.partition("=")
        variants.append((name, setting.split(";")))
    results = []
    rows_out = args.rows_out or args.out.with_suffix(".json")
    with tempfile.TemporaryDirectory(prefix="imbalance-") as tmp:
        for dataset in args.datasets:
            archive, size = DATASETS[dataset]
            work = Path(tmp) / dataset
            if dataset == "trashnet":
                folder = make_trashnet(args.shared / archive, work / "photos")
            else:
                ratio = 10.0 if dataset == "cifar-lt" else 2.0
                folder = make_cifar_lt(args.shared / archive, work / "photos", ratio=ratio)
            for variant, sets in variants:
                for seed in args.seeds:
                    for method in args.methods:
                        name = f"{variant}-{method}-s{seed}"
                        result = train_once(folder, work, weights, name, method, seed, size,
                                            args.finetune_epochs, sets)
                        results.append({"dataset": dataset, "variant": variant, "method": method,
                                        "seed": seed, "input_size": size, **result})
                        print(json.dumps({k: v for k, v in results[-1].items() if k != "rows"}),
                              flush=True)
                        rows_out.write_text(json.dumps(results, indent=1) + "\n")  # after each run
    write_tables(results, args.out, " ".join(["python bench/imbalance.py", *sys.argv[1:]]),
                 f"`{rows_out.name}`")
    return 0


if __name__ == "__main__":
    sys.exit(main())
