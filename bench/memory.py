"""Peak and per-epoch resident memory of the own-photos default command, against its bound.

Builds two photo folders like a user's from the shared CIFAR-10 archive (mixed-size JPEGs:
`own_photos.make_photo_folder`): 398 photos of 2 classes as `train/` + `val/`, and 1,940 photos of
10 classes as `train/` + `validation/` + `test/`. On each it runs, in a fresh process each, the
bare default command (`transferlab train --dataset folder:PHOTOS --model mobilenet_v2 --weights
FILE`: the finetune recipe, a head on cached features then the top above a frozen part on ONNX
Runtime) and `--recipe head`, from a cold data root. It reports the peak resident memory
(`ru_maxrss` of the child, what `/usr/bin/time -v` prints), the resident memory after every epoch
(`rss_mb` in the run's metrics.csv), the wall time, and the bound: 2 GiB plus the decoded splits.

`--before-src DIR` runs the same commands a second time with another checkout's `src/` (e.g. the
commit before a change, `git archive REV src | tar -x -C DIR`), for the before/after columns.

    python bench/memory.py --shared ../shared                       # writes bench/MEMORY.md
    python bench/memory.py --folders two --finetune-epochs 3        # the small folder only
"""

from __future__ import annotations

import argparse
import csv
import json
import os
import platform
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(Path(__file__).resolve().parent))

from own_photos import make_photo_folder  # noqa: E402

# name -> (classes, train images per class, evaluation images per class, layout)
FOLDERS = {
    "two": (("airplane", "frog"), 150, 49, "train-val"),
    "ten": (("airplane", "automobile", "bird", "cat", "deer", "dog", "frog", "horse", "ship",
             "truck"), 120, 74, "train-validation-test"),
}
BOUND_BYTES = 2 * 2**30  # the bound is this plus the decoded splits
STORED_PX = 256  # MobileNetV2 at 224 px stores photos at 224 / 0.875


def train(src: Path, photos: Path, work: Path, weights: Path, recipe: str | None,
          finetune_epochs: int | None) -> dict:
    """One cold `transferlab train` in a child process: its peak RSS, per-epoch RSS and wall time."""
    name = recipe or "default"
    argv = [sys.executable, "-m", "transferlab", "train", "--dataset", f"folder:{photos}",
            "--model", "mobilenet_v2", "--weights", str(weights), "--out-dir", str(work / "runs"),
            "--run-name", name, "--data-root", str(work / f"data-{name}"), "--quiet"]
    if recipe:
        argv += ["--recipe", recipe]
    elif finetune_epochs:
        argv += ["--set", f"stages.finetune.epochs={finetune_epochs}"]
    env = {**os.environ, "PYTHONPATH": str(src)}
    start = time.perf_counter()
    child = subprocess.Popen(argv, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    output = child.communicate()[0]
    wall = time.perf_counter() - start
    if child.returncode != 0:
        raise SystemExit(f"{' '.join(argv)} failed:\n{output[-3000:]}")
    run_dir = work / "runs" / name
    summary = json.loads((run_dir / "summary.json").read_text())
    with open(run_dir / "metrics.csv", newline="") as f:
        rows = list(csv.DictReader(f))
    return {"recipe": summary["recipe"], "wall_s": wall, "test_acc1": summary["test_acc1"],
            "epochs": summary["epochs"], "sizes": summary["split_sizes"],
            **{key: {stage: [float(r[key]) for r in rows if r["stage"] == stage and r.get(key)]
                     for stage in summary["epochs"]} for key in ("rss_mb", "rss_peak_mb")}}


def children_peak_mb() -> float:
    """The largest peak RSS of this process's waited-for children (MiB; ru_maxrss is KiB on Linux)."""
    import resource

    return resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss / 1024


def measure(args: argparse.Namespace, src: Path, folder: str, photos: Path, work: Path,
            recipe: str | None) -> dict:
    """One measurement in a helper process of its own, whose only child is the run: its
    RUSAGE_CHILDREN maximum is that run's peak."""
    spec = json.dumps({"src": str(src), "photos": str(photos), "work": str(work / (recipe or "default")),
                       "weights": str(args.weights), "recipe": recipe,
                       "finetune_epochs": args.finetune_epochs})
    out = subprocess.run([sys.executable, __file__, "--one", spec], capture_output=True, text=True)
    if out.returncode != 0:
        raise SystemExit(f"{folder} {recipe or 'default'} ({src}) failed:\n{out.stdout[-2000:]}{out.stderr[-2000:]}")
    return json.loads(out.stdout.strip().splitlines()[-1])


def _one(spec: str) -> int:
    s = json.loads(spec)
    result = train(Path(s["src"]), Path(s["photos"]), Path(s["work"]), Path(s["weights"]),
                   s["recipe"], s["finetune_epochs"])
    print(json.dumps({**result, "peak_mb": children_peak_mb()}))
    return 0


def step_faults(weights: Path, epochs: int = 4) -> list[dict]:
    """Minor page faults and images/s per step of the finetune stage's training alone: the top of
    MobileNetV2 (from blocks.5, Adam) at 224 px, batch 32, photo augmentation, above the frozen part
    on ONNX Runtime, over 160 random 256 px images, `epochs` times. From the second epoch on a step
    should fault nothing in (what `cpu_memory.keep_freed_memory` is for)."""
    import resource

    import torch

    from transferlab.data.transforms import BatchTransform
    from transferlab.models import create_model
    from transferlab.training import Batches, train_one_epoch
    from transferlab.training.cpu_memory import keep_freed_memory
    from transferlab.training.frozen_prefix import ThenPrefix, fast_prefix
    from transferlab.training.stage_loop import apply_freeze

    keep_freed_memory()
    torch.manual_seed(0)
    model = create_model("mobilenet_v2", num_classes=2, pretrained=True, weights=str(weights))
    model.to(memory_format=torch.channels_last)
    apply_freeze(model, "top")
    pre = model.pretrained_cfg
    transform = BatchTransform((224, 224), mean=pre.mean, std=pre.std, augment="photo",
                               native_size=(STORED_PX, STORED_PX))
    x = torch.randint(0, 256, (160, STORED_PX, STORED_PX, 3), dtype=torch.uint8)
    y = torch.randint(0, 2, (160,))
    sample = transform.eval()(x[:32]).contiguous(memory_format=torch.channels_last)
    transform.train()
    fast = fast_prefix(model, "top", "onnxruntime", sample, 10_000, log=lambda _: None)
    optimizer = torch.optim.Adam([p for p in fast.tail.parameters() if p.requires_grad], lr=1e-4)
    out = []
    for epoch in range(epochs):
        batches = Batches(x, y, 32, shuffle=True, epoch=epoch, train=True,
                          transform=ThenPrefix(transform, fast.run, True))
        faults = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
        start = time.perf_counter()
        train_one_epoch(fast.tail, batches, optimizer, quiet=True)
        seconds = time.perf_counter() - start
        faults = resource.getrusage(resource.RUSAGE_SELF).ru_minflt - faults
        out.append({"faults_per_step": faults / len(batches), "images_per_s": len(y) / seconds,
                    "rss_mb": _vmrss_mb()})
    return out


def _vmrss_mb() -> float:
    """VmRSS in MiB (read here: a --before-src checkout may lack cpu_memory.resident_mb)."""
    with open("/proc/self/status", encoding="ascii") as status:
        return next(int(line.split()[1]) / 1024 for line in status if line.startswith("VmRSS:"))


def decoded_mb(sizes: dict[str, int]) -> float:
    """The decoded splits (uint8, STORED_PX square, RGB) in MiB."""
    return sum(sizes.values()) * STORED_PX * STORED_PX * 3 / 2**20


def table(rows: list[dict], before: bool) -> list[str]:
    """The Markdown table of the measurements."""
    head = ["folder", "photos", "decoded", "bound (2 GiB + decoded)", "`--recipe head` peak",
            "default peak", "met", "default, peak RSS of each epoch (MiB): head stage / finetune stage",
            "default, RSS after each epoch (MiB)",
            "default wall", "head wall"]
    if before:
        head[4:4] = ["`--recipe head` peak before"]
        head[6:6] = ["default peak before"]
        head += ["default wall before", "head wall before"]
    lines = ["| " + " | ".join(head) + " |", "|" + " --- |" * len(head)]
    for r in rows:
        d, h = r["default"], r["head"]
        bound = BOUND_BYTES / 2**20 + r["decoded_mb"]
        series = {key: " / ".join(", ".join(f"{v:.0f}" for v in d[key][stage]) for stage in d[key])
                  for key in ("rss_peak_mb", "rss_mb")}
        cells = [r["folder"], f"{r['photos']:,}", f"{r['decoded_mb']:.0f} MiB", f"{bound / 1024:.2f} GiB",
                 f"{h['peak_mb'] / 1024:.2f} GiB", f"**{d['peak_mb'] / 1024:.2f} GiB**",
                 "met" if max(d["peak_mb"], h["peak_mb"]) <= bound else "**missed**",
                 series["rss_peak_mb"], series["rss_mb"],
                 f"{d['wall_s']:.0f} s", f"{h['wall_s']:.0f} s"]
        if before:
            b, bh = r["before_default"], r["before_head"]
            cells[4:4] = [f"{bh['peak_mb'] / 1024:.2f} GiB"]
            cells[6:6] = [f"{b['peak_mb'] / 1024:.2f} GiB"]
            cells += [f"{b['wall_s']:.0f} s", f"{bh['wall_s']:.0f} s"]
        lines.append("| " + " | ".join(cells) + " |")
    return lines


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--folders", nargs="+", choices=sorted(FOLDERS), default=list(FOLDERS),
                        help="which photo folders to build and measure")
    parser.add_argument("--shared", type=Path, default=REPO.parent / "shared",
                        help="the offline material (cifar10-jpeg.tar.gz, the MobileNetV2 weights)")
    parser.add_argument("--finetune-epochs", type=int, default=3,
                        help="cap the finetune stage at this many epochs (0: the recipe's 10)")
    parser.add_argument("--before-src", type=Path, default=None,
                        help="another checkout's src/ to measure the same commands with (before)")
    parser.add_argument("--out", type=Path, default=REPO / "bench" / "MEMORY.md",
                        help="the Markdown table to write")
    parser.add_argument("--one", help=argparse.SUPPRESS)  # internal: one measurement, JSON out
    parser.add_argument("--faults", action="store_true", help=argparse.SUPPRESS)  # internal: step_faults
    args = parser.parse_args()
    if args.one:
        return _one(args.one)
    args.weights = args.shared / "weights" / "mobilenetv2_100.coral_int8_in1k.safetensors"
    if args.faults:
        print(json.dumps(step_faults(args.weights)))
        return 0
    archive = args.shared / "data" / "cifar10-jpeg.tar.gz"
    for path in (archive, args.weights):
        if not path.exists():
            raise SystemExit(f"needs {path} (the offline material in ../shared; or pass --shared)")
    srcs = {"": REPO / "src"}
    if args.before_src:
        srcs["before_"] = args.before_src
    rows = []
    with tempfile.TemporaryDirectory(prefix="tl-memory-") as tmp:
        for folder in args.folders:
            classes, n_train, n_eval, layout = FOLDERS[folder]
            photos = make_photo_folder(archive, Path(tmp) / folder / "photos", classes, n_train,
                                       n_eval, layout)
            row: dict = {"folder": f"{len(classes)} classes, {layout}", "photos": len(classes) * (n_train + n_eval)}
            for prefix, src in srcs.items():
                for recipe in (None, "head"):
                    work = Path(tmp) / folder / (prefix or "after")
                    result = measure(args, src, folder, photos, work, recipe)
                    row[prefix + (recipe or "default")] = result
                    print(json.dumps({"folder": folder, "src": str(src), **result}), flush=True)
            row["decoded_mb"] = decoded_mb(row["default"]["sizes"])
            rows.append(row)
    steps = {}
    for prefix, src in srcs.items():  # one child per checkout: the steps' page faults and speed
        out = subprocess.run([sys.executable, __file__, "--faults", "--shared", str(args.shared)],
                             env={**os.environ, "PYTHONPATH": str(src)}, capture_output=True, text=True)
        if out.returncode != 0:
            raise SystemExit(f"--faults ({src}) failed:\n{out.stderr[-2000:]}")
        steps[prefix or "after"] = json.loads(out.stdout.strip().splitlines()[-1])
        print(json.dumps({"src": str(src), "steps": steps[prefix or "after"]}), flush=True)
    epochs = f"the finetune stage capped at {args.finetune_epochs} epochs" if args.finetune_epochs else "the full recipe"
    lines = [
        "# Memory of the own-photos default command",
        "",
        f"`python bench/memory.py` on {platform.node() or 'this machine'}, {os.cpu_count()} cores, "
        f"{time.strftime('%Y-%m-%d %H:%M UTC', time.gmtime())}: MobileNetV2 with the shared "
        f"ImageNet weights, 224 px, photos stored at {STORED_PX} px, cold data root, one process per "
        f"run, {epochs}. Peak = the child's `ru_maxrss` (what `/usr/bin/time -v` reports); per epoch, "
        "metrics.csv's `rss_peak_mb` (the epoch's peak: steps and validation) and `rss_mb` (after "
        "it, freed blocks handed back). The bound is "
        "2 GiB plus the decoded splits; 'met' means both recipes stay within it."
        + (f" 'before' = the same commands with `{args.before_src}`." if args.before_src else ""),
        "",
        *table(rows, bool(args.before_src)),
        "",
        "The finetune stage's steps alone (`step_faults`: the top of MobileNetV2 above the frozen "
        "part on ONNX Runtime, 224 px, batch 32, photo augmentation, 5 steps an epoch, one process "
        "per checkout): minor page faults per step, images/s and resident memory, epoch by epoch. "
        "The first epoch faults its working set in; later ones should reuse it (0 faults).",
        "",
        "| checkout | epoch | faults / step | img/s | RSS (MiB) |",
        "| --- | --- | --- | --- | --- |",
        *[f"| {name} | {i + 1} | {e['faults_per_step']:,.0f} | {e['images_per_s']:.1f} | {e['rss_mb']:.0f} |"
          for name, epochs_ in steps.items() for i, e in enumerate(epochs_)],
    ]
    args.out.write_text("\n".join(lines) + "\n")
    print("\n".join(lines))
    return 0


if __name__ == "__main__":
    sys.exit(main())
