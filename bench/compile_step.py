"""Eager against `torch.compile` for whole training steps, per model: what `compile: false` rests on.

For each case (model, input size, batch) it builds the model as `transferlab train` does
(channels-last, freed memory kept: `cpu_memory.keep_freed_memory`), times the first compiled
step (the compile) and then eager and compiled steps interleaved in `--rounds` rounds, and
prints the median images/s of each, the ratio and the stage length (images) above which the
compile would pay for itself. Adam, random inputs, 100 classes.

    python bench/compile_step.py                      # the four study/quick training rows
    python bench/compile_step.py --mode max-autotune-no-cudagraphs
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time

import torch
import torch.nn.functional as F

from transferlab.models import create_model
from transferlab.training.cpu_memory import keep_freed_memory

CASES = (  # model, input size, batch: the training rows of bench/run.py
    ("benchmark_cnn", 32, 128),
    ("mobilenet_v2_paper", 48, 128),
    ("benchmark_cnn", 224, 32),
    ("mobilenet_v2_paper", 224, 32),
)
PAPER = {"width_mult": 1.0, "cifar_stem": False}  # the presets' MobileNetV2 settings


def _steps(model: torch.nn.Module, optimizer: torch.optim.Optimizer, x: torch.Tensor,
           y: torch.Tensor, count: int) -> list[float]:
    times = []
    for _ in range(count):
        start = time.perf_counter()
        optimizer.zero_grad(set_to_none=True)
        F.cross_entropy(model(x), y).backward()
        optimizer.step()
        times.append(time.perf_counter() - start)
    return times


def measure(name: str, size: int, batch: int, mode: str, rounds: int, steps: int) -> dict:
    """Compile seconds and median img/s, eager and compiled, for one case."""
    torch.manual_seed(0)
    kwargs = PAPER if name == "mobilenet_v2_paper" else {}
    model = create_model(name, num_classes=100, input_size=size, **kwargs)
    model = model.to(memory_format=torch.channels_last).train()
    x = torch.randn(batch, 3, size, size).contiguous(memory_format=torch.channels_last)
    y = torch.randint(0, 100, (batch,))
    optimizer = torch.optim.Adam(model.parameters(), lr=1e-3)
    compiled = torch.compile(model, mode=None if mode == "default" else mode)
    _steps(model, optimizer, x, y, 2)  # eager warm-up (oneDNN primitives, allocator)
    start = time.perf_counter()
    _steps(compiled, optimizer, x, y, 1)
    compile_s = time.perf_counter() - start
    eager, fast = [], []
    for _ in range(rounds):  # interleaved: load that comes and goes hits both alike
        eager.append(batch / statistics.median(_steps(model, optimizer, x, y, steps)))
        fast.append(batch / statistics.median(_steps(compiled, optimizer, x, y, steps)))
    e, c = statistics.median(eager), statistics.median(fast)
    gain = 1 / e - 1 / c  # seconds saved per image
    return {"model": name, "size": size, "batch": batch, "mode": mode, "compile_s": compile_s,
            "eager": e, "compiled": c, "breakeven": compile_s / gain if gain > 0 else None}


def main(argv: list[str] | None = None) -> int:
    """Measure every case and print the table."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--mode", default="default", help="torch.compile mode (default: the default)")
    parser.add_argument("--rounds", type=int, default=3, help="interleaved rounds (median)")
    parser.add_argument("--steps", type=int, default=5, help="timed steps per round (median)")
    args = parser.parse_args(argv)
    keep_freed_memory()
    print("| model | input, batch | compile (s) | eager img/s | compiled img/s | ratio | pays off above |")
    print("| --- | --- | --- | --- | --- | --- | --- |")
    for name, size, batch in CASES:
        r = measure(name, size, batch, args.mode, args.rounds, args.steps)
        pays = f"{r['breakeven']:,.0f} images" if r["breakeven"] is not None else "never"
        print(f"| {name} | {size} px, {batch} | {r['compile_s']:.1f} | {r['eager']:,.1f} | "
              f"{r['compiled']:,.1f} | x{r['compiled'] / r['eager']:.2f} | {pays} |", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
