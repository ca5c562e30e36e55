"""The own-photos first try, measured: the default command on photo folders built from CIFAR-10.

Each dataset is a folder of JPEG "photos" made from the shared CIFAR-10 archive: chosen classes,
each image upscaled to a random size and aspect ratio and re-encoded, in a common download layout.
Every dataset is trained with `transferlab train --dataset folder:... --model mobilenet_v2
--weights FILE` (the default `finetune` recipe) and, for comparison, with `--recipe head` (the
hand-tuned head-on-cached-features recipe the README used to suggest), in the same process, one
after the other. The table gives test accuracy, epochs and wall time of each, from a cold cache.

    python bench/own_photos.py                       # writes bench/OWN_PHOTOS.md
    python bench/own_photos.py --datasets two        # the small one only
"""

from __future__ import annotations

import argparse
import io
import json
import os
import platform
import random
import shutil
import sys
import tarfile
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
SHARED = REPO.parent / "shared"
ARCHIVE = SHARED / "data" / "cifar10-jpeg.tar.gz"
WEIGHTS = SHARED / "weights" / "mobilenetv2_100.coral_int8_in1k.safetensors"

# name -> (classes, train images per class, evaluation images per class, layout)
DATASETS = {
    "two": (("airplane", "frog"), 60, 30, "train-val"),
    "five": (("bird", "cat", "deer", "dog", "horse"), 100, 40, "class-folders"),
}


def make_photo_folder(archive: Path, root: Path, classes: tuple[str, ...], train_per_class: int,
                      test_per_class: int, layout: str = "train-val", seed: int = 0) -> Path:
    """Write CIFAR-10 images of `classes` as mixed-size JPEG photos under `root`.

    Args:
        archive: the shared CIFAR-10 image-folder archive.
        root: the folder to create.
        classes: CIFAR-10 class names.
        train_per_class, test_per_class: images taken from the archive's train/ and test/.
        layout: "train-val" (train/<class>, val/<class>: torchvision's layout),
            "train-validation-test" (train/<class>, and the archive's test images alternately
            in validation/<class> and test/<class>) or "class-folders" (<class>/ only: the
            evaluation split is carved by transferlab).
        seed: seed of the sizes and JPEG qualities.
    """
    rng = random.Random(seed)
    want = {"train": train_per_class, "test": test_per_class}
    counts: dict[tuple[str, str], int] = {}
    with tarfile.open(archive) as tar:
        for member in tar:
            parts = member.name.split("/")
            if not member.isfile() or len(parts) < 3 or parts[-2] not in classes:
                continue
            split, cls = parts[-3], parts[-2]
            if counts.get((split, cls), 0) >= want[split]:
                continue
            counts[split, cls] = n = counts.get((split, cls), 0) + 1
            from PIL import Image

            image = Image.open(io.BytesIO(tar.extractfile(member).read())).convert("RGB")
            w = rng.randint(70, 200)
            h = int(w * rng.choice((0.6, 0.75, 1.0, 1.33)))
            if layout == "train-val":
                folder = root / ("train" if split == "train" else "val") / cls
            elif layout == "train-validation-test":
                folder = root / ("train" if split == "train" else ("validation", "test")[n % 2]) / cls
            else:
                folder = root / cls
            folder.mkdir(parents=True, exist_ok=True)
            image.resize((w, h), Image.BICUBIC).save(folder / f"{split}_{n:04d}.jpg",
                                                     quality=rng.randint(75, 95))
            if sum(counts.values()) == len(classes) * (train_per_class + test_per_class):
                break
    return root


def train_once(photos: Path, work: Path, recipe: str | None) -> dict:
    """One cold `transferlab train` (empty data root); its summary plus the wall time."""
    from transferlab.cli import main

    name = recipe or "default"
    argv = ["train", "--dataset", f"folder:{photos}", "--model", "mobilenet_v2",
            "--weights", str(WEIGHTS), "--out-dir", str(work / "runs"), "--run-name", name,
            "--data-root", str(work / f"data-{name}"), "--quiet"]
    if recipe:
        argv += ["--recipe", recipe]
    start = time.perf_counter()
    if main(argv) != 0:
        raise SystemExit(f"transferlab {' '.join(argv)} failed")
    wall = time.perf_counter() - start
    summary = json.loads((work / "runs" / name / "summary.json").read_text())
    return {"recipe": summary["recipe"], "test_acc1": summary["test_acc1"], "wall_s": wall,
            "epochs": summary["epochs"], "sizes": summary["split_sizes"],
            "sources": summary["split_sources"]}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--datasets", nargs="+", choices=sorted(DATASETS), default=list(DATASETS),
                        help="which photo folders to build and train on")
    parser.add_argument("--out", type=Path, default=REPO / "bench" / "OWN_PHOTOS.md",
                        help="the Markdown table to write")
    args = parser.parse_args()
    for path in (ARCHIVE, WEIGHTS):
        if not path.exists():
            raise SystemExit(f"needs {path} (the offline material in ../shared)")
    rows = []
    with tempfile.TemporaryDirectory(prefix="own-photos-") as tmp:
        for name in args.datasets:
            classes, n_train, n_test, layout = DATASETS[name]
            photos = make_photo_folder(ARCHIVE, Path(tmp) / name / "photos", classes, n_train,
                                       n_test, layout)
            for recipe in (None, "head"):
                result = train_once(photos, Path(tmp) / name, recipe)
                rows.append({"dataset": name, "classes": len(classes), "layout": layout, **result})
                print(json.dumps(rows[-1]), flush=True)
            shutil.rmtree(Path(tmp) / name, ignore_errors=True)
    lines = [
        "# Own photos: the default command, measured",
        "",
        f"`python bench/own_photos.py` on {platform.node() or 'this machine'}, {os.cpu_count()} cores, "
        f"{time.strftime('%Y-%m-%d %H:%M UTC', time.gmtime())}. MobileNetV2 (the shared ImageNet "
        "weights), 224 px, cold caches. `default` is `transferlab train --dataset folder:PHOTOS "
        "--model mobilenet_v2 --weights FILE` (the finetune recipe); `head` adds `--recipe head`.",
        "",
        "| dataset | classes | layout | train / val / test | recipe | test top-1 | epochs (head, finetune) | wall |",
        "| --- | --- | --- | --- | --- | --- | --- | --- |",
    ]
    for r in rows:
        sizes = r["sizes"]
        epochs = ", ".join(str(v) for v in r["epochs"].values())
        lines.append(f"| {r['dataset']} | {r['classes']} | {r['layout']} | {sizes['train']} / "
                     f"{sizes.get('val', 0)} / {sizes['test']} | {r['recipe']} | "
                     f"{100 * r['test_acc1']:.1f}% | {epochs} | {r['wall_s']:.0f} s |")
    args.out.write_text("\n".join(lines) + "\n")
    print("\n".join(lines))
    return 0


if __name__ == "__main__":
    sys.exit(main())
