"""Datasets larger than memory: decode throughput, peak memory of training, torchrun ranks, warm load.

    python bench/data_memory.py                     # about 15-20 min on 2 shared cores
    python bench/data_memory.py --images 2000       # a quick look (the cache is then < 4 GB)

Generates a photo-like JPEG folder under --workdir (default /tmp/tl-data-bench, never the repo):
train/ and test/ of four classes, 640 x 480 and 480 x 640 photos plus larger ones (800 x 600 to
3264 x 2448, an 8-megapixel phone photo), smooth content plus noise so they compress like photos. Stored at 320 px, 13,500
images make a decoded cache of 4.1 GB. Then measures, as separate processes:

1. cold decode: `transferlab data info` on the folder (no cache), images/s over the whole
   folder, against a one-process Pillow loop at full resolution (open, RGB, shorter side to
   320, centre crop) over a seeded sample of the same files; the decode's memory is the
   proportional share (Pss_Anon) summed over the process and its forked workers, which share
   the parent's pages;
2. `transferlab train` with a head stage on cached features (MobileNetV2 at 128 px): peak
   RssAnon (anonymous memory, sampled every 0.1 s) against the decoded cache's size;
3. the same under `torchrun --nproc_per_node 2` (gloo, CPU): the ranks' summed peak RssAnon
   (the features cached by run 2 are reused: what is measured is that no rank copies a split);
4. warm load: `load_dataset` on the decoded cache in a process that has already imported
   transferlab, median of 5.

The machine is shared with other jobs: rates are medians where repeated, and the load average is
printed. Results go to stdout and to bench/DATA_RESULTS.md (--out).
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import threading
import time
from pathlib import Path

import numpy as np
from PIL import Image

REPO = Path(__file__).resolve().parents[1]
# Mostly 640 x 480 in both orientations, some larger, and a few phone-camera photos (8 MP), as a
# folder of users' own photos holds.
SIZES = [((640, 480), 0.4), ((480, 640), 0.2), ((800, 600), 0.15), ((1024, 768), 0.1),
         ((2048, 1536), 0.1), ((3264, 2448), 0.05)]
CLASSES = 4
STORED = 320  # px, --image-size of every measured command


def _make_images(args: tuple[Path, int, int, int]) -> None:
    """Write `count` photos of class `cls` starting at number `start` (runs in a worker)."""
    folder, cls, start, count = args
    rng = np.random.default_rng([cls, start])
    kinds, weights = zip(*SIZES, strict=True)
    for i in range(start, start + count):
        w, h = kinds[rng.choice(len(kinds), p=weights)]
        # Smooth content: a few random colours, class-tinted, upsampled; then sensor-like noise.
        base = rng.integers(0, 200, (4, 5, 3)).astype(np.uint8)
        base[..., cls % 3] = np.clip(base[..., cls % 3].astype(int) + 55 * (1 + cls // 3), 0, 255)
        smooth = Image.fromarray(base).resize((w, h), Image.BICUBIC)
        noisy = np.asarray(smooth, np.int16) + rng.integers(-10, 11, (h, w, 1), dtype=np.int16)
        Image.fromarray(np.clip(noisy, 0, 255).astype(np.uint8)).save(
            folder / f"{i:06d}.jpg", quality=88)


def generate(root: Path, images: int, workers: int) -> float:
    """Create the folder once (a marker file records what is there); returns seconds spent."""
    marker = root / "DONE.json"
    what = json.loads(json.dumps({"images": images, "sizes": SIZES}))
    if marker.is_file() and json.loads(marker.read_text()) == what:
        return 0.0
    import shutil
    from multiprocessing import Pool

    shutil.rmtree(root, ignore_errors=True)
    start = time.perf_counter()
    test = images // 7
    jobs = []
    for split, n in (("train", images - test), ("test", test)):
        per_class = n // CLASSES
        for c in range(CLASSES):
            folder = root / "photos" / split / f"class{c}"
            folder.mkdir(parents=True)
            offset = 0 if split == "train" else 10**5
            for s in range(0, per_class, 200):
                jobs.append((folder, c, offset + s, min(200, per_class - s)))
    with Pool(workers) as pool:
        pool.map(_make_images, jobs, chunksize=1)
    marker.write_text(json.dumps(what))
    return time.perf_counter() - start


def _cpu_seconds() -> float:
    """CPU time (user + system) of this process and its reaped children (decode workers)."""
    import resource

    return sum(r.ru_utime + r.ru_stime for r in (resource.getrusage(resource.RUSAGE_SELF),
                                                 resource.getrusage(resource.RUSAGE_CHILDREN)))


def sample_folder(photos: Path, files: list[Path], dest: Path) -> Path:
    """A folder of symbolic links to `files`, in their own split/class layout."""
    import shutil

    shutil.rmtree(dest, ignore_errors=True)
    for f in files:
        link = dest / f.relative_to(photos)
        link.parent.mkdir(parents=True, exist_ok=True)
        link.symlink_to(f)
    return dest


def transferlab_decode(folder: Path, root: Path, workers: int | None) -> tuple[float, float]:
    """(images/s, CPU ms per image) of a cold `load_folder` at the stored size."""
    import shutil

    from transferlab.data.folder import load_folder

    shutil.rmtree(root, ignore_errors=True)
    wall, cpu = time.perf_counter(), _cpu_seconds()
    ds = load_folder(folder, root, image_size=STORED, workers=workers)
    n = sum(len(s) for s in ds.splits.values())
    return n / (time.perf_counter() - wall), 1000 * (_cpu_seconds() - cpu) / n


def pillow_loop(files: list[Path]) -> float:
    """Images/s of the plain one-process loop at full resolution (same output as the cache)."""
    return pillow_loop_cpu(files)[0]


def pillow_loop_cpu(files: list[Path]) -> tuple[float, float]:
    """(images/s, CPU ms per image) of the plain loop."""
    start, cpu = time.perf_counter(), _cpu_seconds()
    for f in files:
        with Image.open(f) as im:
            img = im.convert("RGB")
        w, h = img.size
        s = STORED / min(w, h)
        img = img.resize((max(STORED, round(w * s)), max(STORED, round(h * s))), Image.BICUBIC)
        left, top = (img.size[0] - STORED) // 2, (img.size[1] - STORED) // 2
        np.asarray(img.crop((left, top, left + STORED, top + STORED)))
    return len(files) / (time.perf_counter() - start), 1000 * (_cpu_seconds() - cpu) / len(files)


def _descendants(pid: int) -> list[int]:
    out, todo = [], [pid]
    while todo:
        p = todo.pop()
        try:
            kids = Path(f"/proc/{p}/task/{p}/children").read_text().split()
        except OSError:
            kids = []
        out += [int(k) for k in kids]
        todo += [int(k) for k in kids]
    return out


def _anon(pid: int, pss: bool) -> int:
    """RssAnon of `pid` in bytes, or its proportional share Pss_Anon (pages shared after fork
    counted once over the processes sharing them)."""
    path, key = (f"/proc/{pid}/smaps_rollup", "Pss_Anon:") if pss else (f"/proc/{pid}/status", "RssAnon:")
    try:
        for line in Path(path).read_text().splitlines():
            if line.startswith(key):
                return int(line.split()[1]) * 1024
    except OSError:
        pass
    return 0


def run_sampled(cmd: list[str], env: dict[str, str], which: str, pss: bool = False
                ) -> tuple[float, int, str]:
    """Run `cmd`; return (seconds, peak RssAnon in bytes, output tail).

    which: "self" samples the process itself, "ranks" sums its descendants (torchrun's ranks and
    their children, not the launcher).
    """
    start = time.perf_counter()
    proc = subprocess.Popen(cmd, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    peak = 0
    stop = threading.Event()

    def sample() -> None:
        nonlocal peak
        while not stop.is_set():
            pids = [proc.pid] if which == "self" else _descendants(proc.pid)
            if which == "self":
                pids += _descendants(proc.pid)  # decode workers count too
            peak = max(peak, sum(_anon(p, pss) for p in pids))
            time.sleep(0.1)

    t = threading.Thread(target=sample, daemon=True)
    t.start()
    out, _ = proc.communicate()
    stop.set()
    t.join()
    seconds = time.perf_counter() - start
    if proc.returncode != 0:
        raise SystemExit(f"failed ({proc.returncode}): {' '.join(cmd)}\n{out[-3000:]}")
    return seconds, peak, out[-1500:]


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--images", type=int, default=13500, help="photos to generate")
    parser.add_argument("--workdir", type=Path, default=Path("/tmp/tl-data-bench"))
    parser.add_argument("--sample", type=int, default=1000, help="files of the interleaved decode comparison")
    parser.add_argument("--rounds", type=int, default=3, help="rounds of the interleaved comparison")
    parser.add_argument("--out", type=Path, default=REPO / "bench" / "DATA_RESULTS.md")
    args = parser.parse_args(argv)
    env = {**os.environ, "PYTHONPATH": str(REPO / "src")}
    photos = args.workdir / "data" / "photos"
    data_root = args.workdir / "cache"
    load_before = os.getloadavg()
    gen_s = generate(args.workdir / "data", args.images, os.cpu_count() or 1)
    files = sorted(photos.rglob("*.jpg"))
    print(f"folder: {len(files)} JPEGs, {sum(f.stat().st_size for f in files) / 1e9:.2f} GB "
          f"(generated in {gen_s:.0f} s)", file=sys.stderr)
    import shutil

    for old in (data_root, args.workdir / "runs", args.workdir / "feat1"):
        shutil.rmtree(old, ignore_errors=True)  # a cold start, and no earlier run in the way
    rows: list[tuple[str, str, str, str]] = []

    def add(row: tuple[str, str, str, str]) -> None:
        rows.append(row)
        print(" | ".join(row), file=sys.stderr, flush=True)  # kept even if a later step fails


    # 1. Cold decode through the CLI, then the plain loop on a sample.
    info = [sys.executable, "-m", "transferlab", "data", "info", f"folder:{photos}",
            "--data-root", str(data_root), "--image-size", str(STORED)]
    cold_s, cold_peak, _ = run_sampled(info, env, "self", pss=True)
    ours = len(files) / cold_s
    decoded = sum(p.stat().st_size for p in data_root.rglob("*_images.npy"))
    sample = [files[i] for i in np.random.default_rng(0).choice(len(files), args.sample, replace=False)]
    add(("cold decode, `transferlab data info` (whole folder, incl. start-up and header scan)",
                 f"{ours:.0f} img/s ({cold_s:.0f} s)", "", ""))
    add(("decode peak Pss_Anon (parent + forked workers)", f"{cold_peak / 2**30:.2f} GiB",
                 f"decoded cache {decoded / 2**30:.2f} GiB", f"{cold_peak / decoded:.0%}"))
    # Interleaved on the same sample, so that both sides see the same machine load.
    linked = sample_folder(photos, sample, args.workdir / "sample")
    ours_r, theirs_r = [], []
    for _ in range(args.rounds):
        theirs_r.append(pillow_loop_cpu(sample))
        ours_r.append(transferlab_decode(linked, args.workdir / "sample-cache", None))
    med = lambda pairs, i: statistics.median(p[i] for p in pairs)  # noqa: E731
    add((f"decode rate, same {args.sample} files, interleaved (median of {args.rounds})",
                 f"{med(ours_r, 0):.0f} img/s", f"one-process Pillow loop at full resolution: "
                 f"{med(theirs_r, 0):.0f} img/s", f"{med(ours_r, 0) / med(theirs_r, 0):.2f}x (target >= 2x)"))
    add(("decode CPU time per image (all processes)", f"{med(ours_r, 1):.1f} ms",
                 f"Pillow loop: {med(theirs_r, 1):.1f} ms",
                 f"{med(theirs_r, 1) / med(ours_r, 1):.2f}x less work per image"))

    # 2. A head stage on cached features, one process.
    config = args.workdir / "head.yaml"
    config.write_text(
        f"model: mobilenet_v2\ninput_size: 128\nimage_size: {STORED}\naugment: none\nbatch_size: 128\n"
        "quiet: true\nval_fraction: 0.1\n"
        "stages:\n  - {name: head, train: head, epochs: 1, optimizer: adam, lr: 0.001, "
        "cache_features: 'true'}\n")
    train = [sys.executable, "-m", "transferlab", "train", "--config", str(config),
             "--dataset", f"folder:{photos}", "--data-root", str(data_root),
             "--out-dir", str(args.workdir / "runs")]
    train_s, train_peak, _ = run_sampled(
        train + ["--run-name", "one", "--cache-dir", str(args.workdir / "feat1")], env, "self")
    add(("`transferlab train`, head stage on cached features (1 process)",
                 f"peak RssAnon {train_peak / 2**30:.2f} GiB ({train_s:.0f} s)",
                 f"decoded cache {decoded / 2**30:.2f} GiB",
                 f"{train_peak / decoded:.0%} (target < 50%)"))

    # 3. Two CPU ranks under torchrun (the features of run 2 are reused).
    ddp = [sys.executable, "-m", "torch.distributed.run", "--nnodes", "1", "--nproc_per_node", "2",
           "-m", "transferlab"] + train[3:] + ["--run-name", "ddp", "--cache-dir",
                                               str(args.workdir / "feat1"), "--device", "cpu"]
    ddp_s, ddp_peak, _ = run_sampled(ddp, {**env, "OMP_NUM_THREADS": "1"}, "ranks")
    add(("torchrun, 2 CPU ranks (gloo): summed peak RssAnon of the ranks",
                 f"{ddp_peak / 2**30:.2f} GiB ({ddp_s:.0f} s)", f"one decoded copy {decoded / 2**30:.2f} GiB",
                 f"{ddp_peak / decoded:.0%} (target < 100%)"))

    # 4. Warm load in a process that has imported transferlab already.
    warm = subprocess.run(
        [sys.executable, "-c",
         "import time, statistics, sys; from transferlab.data import load_dataset\n"
         "t = []\n"
         "for _ in range(5):\n"
         f"    s = time.perf_counter(); load_dataset(sys.argv[1], data_root=sys.argv[2], image_size={STORED})\n"
         "    t.append(time.perf_counter() - s)\n"
         "print(statistics.median(t))", f"folder:{photos}", str(data_root)],
        env=env, capture_output=True, text=True, check=True)
    warm_s = float(warm.stdout.split()[-1])
    add(("warm load of the decoded cache (`load_dataset`, median of 5)", f"{warm_s:.2f} s",
                 f"{len(files)} images, {decoded / 2**30:.2f} GiB", "target < 1 s"))
    load_after = os.getloadavg()

    table = ["| measure | transferlab | reference | ratio / target |", "|---|---|---|---|"]
    table += [f"| {a} | {b} | {c} | {d} |" for a, b, c, d in rows]
    text = "\n".join([
        "# Data at scale: decode, memory, ranks (bench/data_memory.py)", "",
        "Produced by:", "", "```", f"python bench/data_memory.py --images {args.images}", "```", "",
        f"- date (UTC): {time.strftime('%Y-%m-%d %H:%M', time.gmtime())}",
        f"- CPU: {os.cpu_count()} logical CPUs, shared with other jobs while measuring; load "
        f"average (1/5/15 min) before {tuple(round(x, 2) for x in load_before)}, after "
        f"{tuple(round(x, 2) for x in load_after)}. Single runs except the warm load (median of 5).",
        f"- folder: {len(files)} JPEGs under {photos} (sizes and shares: "
        + ", ".join(f"{w}x{h} {p:.0%}" for (w, h), p in SIZES)
        + f"), {sum(f.stat().st_size for f in files) / 1e9:.2f} GB on disk; stored at {STORED} px",
        "- the JPEG files were in the page cache for both decoders (written just before). The "
        "decode-rate comparison alternates the two decoders on the same files (transferlab with "
        "one worker per usable core, a cold cache each time); CPU time per image shows the work "
        "each does whatever the machine's load: on an idle machine the rate ratio approaches the "
        "core count times the CPU-time ratio.",
        "- train: MobileNetV2 (random init) at 128 px, one head epoch on cached features, "
        "batch 128 (extraction batch 256); torchrun with OMP_NUM_THREADS=1 per rank, reusing "
        "the features the one-process run extracted.",
        "- decode memory is Pss_Anon (the forked workers share the parent's pages; RssAnon would "
        "count them once per worker); train and torchrun rows are RssAnon as sampled.", "",
        *table, ""])
    args.out.write_text(text)
    print(text)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
