"""Frozen-feature extraction backends head to head: set-up time and throughput, for `auto`.

Measures `features.make_extractor` for each backend (eager, onnxruntime, compile) on the frozen
prefix of a few models and sizes: set-up seconds (export or compile, plus the check against eager)
and images per second on batches of random pixels, in interleaved repeats (median of 3; compile's
set-up only on the first repeat, since later ones would hit inductor's cache). From them, the
break-even split size above which a fast backend pays for its set-up.

    python bench/extract_backends.py [--repeats 3] [--batch 64] [--batches 3] [--no-compile]

Prints one line per (model, size, backend) and a JSON summary on stdout.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import time

import torch

from transferlab.models import create_model
from transferlab.models.onnx_io import usable_cores
from transferlab.training import features as feats

CASES = (  # model, input size, freeze boundary ("head": pooled features)
    ("mobilenet_v2", 96, "head"),
    ("mobilenet_v2", 96, "from:blocks.5"),
    ("mobilenet_v2", 224, "head"),
    ("inception_v3", 75, "head"),
    ("inception_v3", 224, "head"),
)


def measure(prefix: torch.nn.Module, backend: str, batch: torch.Tensor, batches: int) -> tuple[float, float, str]:
    """(set-up s, images/s, backend used) for one backend."""
    start = time.perf_counter()
    fn, used = feats.make_extractor(prefix, backend, batch, 50_000, log=lambda _: None)
    setup = time.perf_counter() - start
    with torch.inference_mode():
        fn(batch)  # warm-up
        start = time.perf_counter()
        for _ in range(batches):
            fn(batch)
        seconds = time.perf_counter() - start
    return setup, batches * len(batch) / seconds, used


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--batch", type=int, default=64)
    parser.add_argument("--batches", type=int, default=3)
    parser.add_argument("--no-compile", action="store_true")
    args = parser.parse_args()
    torch.set_num_threads(usable_cores())
    backends = ["eager", "onnxruntime"] + ([] if args.no_compile else ["compile"])
    summary = []
    for name, size, boundary in CASES:
        model = create_model(name, num_classes=10, head="linear", input_size=size).eval()
        prefix, _ = feats.split_model(model, boundary)
        prefix.eval()
        # channels_last, as a run feeds its prefix (eager is ~1.6x faster on it than on NCHW).
        batch = torch.randn(args.batch, 3, size, size).contiguous(memory_format=torch.channels_last)
        setups: dict[str, list[float]] = {b: [] for b in backends}
        rates: dict[str, list[float]] = {b: [] for b in backends}
        for rep in range(args.repeats):
            for backend in backends:
                if backend == "compile" and rep > 0:
                    # Reuse the first compile's set-up figure; throughput is measured again.
                    fn, used = feats.make_extractor(prefix, backend, batch, 50_000, log=lambda _: None)
                    with torch.inference_mode():
                        fn(batch)
                        start = time.perf_counter()
                        for _ in range(args.batches):
                            fn(batch)
                        rates[backend].append(args.batches * len(batch) / (time.perf_counter() - start))
                    continue
                setup, rate, used = measure(prefix, backend, batch, args.batches)
                if used != backend:
                    print(f"{name} {size} {backend}: fell back to {used}", file=sys.stderr)
                setups[backend].append(setup)
                rates[backend].append(rate)
        eager_rate = statistics.median(rates["eager"])
        for backend in backends:
            setup = statistics.median(setups[backend])
            rate = statistics.median(rates[backend])
            gain = 1 / eager_rate - 1 / rate  # seconds saved per image
            breakeven = setup / gain if gain > 0 else float("inf")
            row = {"model": name, "size": size, "boundary": boundary, "backend": backend,
                   "setup_s": round(setup, 2), "img_per_s": round(rate, 1),
                   "rates": [round(r, 1) for r in rates[backend]],
                   "breakeven_images": None if breakeven == float("inf") else round(breakeven)}
            summary.append(row)
            print(f"{name:13s} {size:3d}px {boundary:14s} {backend:12s} set-up {setup:6.1f} s  "
                  f"{rate:7.1f} img/s  (x{rate / eager_rate:.2f} eager)  pays off above "
                  f"{row['breakeven_images'] if row['breakeven_images'] is not None else 'never'} images",
                  file=sys.stderr, flush=True)
    print(json.dumps(summary, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
