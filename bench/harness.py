"""Timing harness, machine peak and machine facts for the benchmarks.

Every throughput figure in bench/RESULTS.md comes from `time_steps`: a few untimed warm-up calls
(allocator, oneDNN primitive caches, cuDNN autotuning, TF graph tracing), then the median of
repeated timed calls, each bracketed by a device synchronisation so that asynchronous CUDA work is
counted where it happens (airbench's rule: synchronise before reading the clock).
"""

from __future__ import annotations

import os
import platform
import statistics
import time
from collections.abc import Callable
from dataclasses import dataclass, field

import torch


@dataclass(frozen=True)
class Timing:
    """Wall-clock times of repeated calls of one step.

    Attributes:
        times_s: seconds of each timed call, in call order (warm-up calls excluded).
        items_per_call: images (or FLOPs, for the peak) processed by one call.
    """

    times_s: tuple[float, ...]
    items_per_call: float = 1.0

    @property
    def median_s(self) -> float:
        """Median seconds per call: robust to a neighbour's burst on a shared machine."""
        return statistics.median(self.times_s)

    @property
    def rate(self) -> float:
        """Items per second at the median call time."""
        return self.items_per_call / self.median_s

    @property
    def spread(self) -> float:
        """(max - min) / median of the timed calls: how noisy the figure is."""
        return (max(self.times_s) - min(self.times_s)) / self.median_s


def synchronizer(device: torch.device | str) -> Callable[[], None]:
    """Return a function that waits for all queued work on `device` (a no-op on the CPU)."""
    device = torch.device(device)
    if device.type == "cuda":
        return lambda: torch.cuda.synchronize(device)
    if device.type == "mps":
        return torch.mps.synchronize
    return lambda: None


def time_steps(
    step: Callable[[], object],
    *,
    warmup: int,
    repeats: int,
    items_per_call: float = 1.0,
    sync: Callable[[], None] = lambda: None,
) -> Timing:
    """Time `step` after `warmup` untimed calls.

    Args:
        step: the work of one call (e.g. one training step on one batch).
        warmup: untimed calls first.
        repeats: timed calls (at least 1).
        items_per_call: images per call, for `Timing.rate`.
        sync: waits for the device; called before each clock read.

    Returns:
        The timings of the `repeats` timed calls.
    """
    if repeats < 1:
        raise ValueError(f"repeats must be >= 1, got {repeats}")
    for _ in range(warmup):
        step()
    sync()
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        step()
        sync()
        times.append(time.perf_counter() - start)
    return Timing(tuple(times), items_per_call)


def matmul_peak(
    device: torch.device | str = "cpu",
    *,
    n: int = 2048,
    dtype: torch.dtype = torch.float32,
    warmup: int = 1,
    repeats: int = 5,
) -> float:
    """Measured matmul throughput of the machine in FLOP/s: the ceiling the other figures are
    compared with.

    Args:
        device: where to multiply.
        n: side of the square matrices; 2 n^3 FLOPs per product.
        dtype: element type (float32 is the reference for every fraction-of-peak figure).
        warmup: untimed products first.
        repeats: timed products; the median is reported.

    Returns:
        FLOPs per second at the median product time.
    """
    device = torch.device(device)
    generator = torch.Generator().manual_seed(0)
    a = torch.randn(n, n, generator=generator).to(device=device, dtype=dtype)
    b = torch.randn(n, n, generator=generator).to(device=device, dtype=dtype)
    out = torch.empty(n, n, device=device, dtype=dtype)
    timing = time_steps(
        lambda: torch.matmul(a, b, out=out),
        warmup=warmup,
        repeats=repeats,
        items_per_call=2.0 * n**3,
        sync=synchronizer(device),
    )
    return timing.rate


@dataclass
class MachineFacts:
    """What the numbers were measured on."""

    cpu_model: str
    cpu_count: int
    cpus_usable: int
    torch_version: str
    torch_threads: int
    torch_interop_threads: int
    python: str
    platform: str
    device: str
    load_average: tuple[float, float, float]
    extra: dict[str, str] = field(default_factory=dict)


def cpu_model() -> str:
    """The CPU's model name from /proc/cpuinfo (or `platform.processor()` elsewhere)."""
    try:
        with open("/proc/cpuinfo", encoding="utf-8") as f:
            for line in f:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "unknown"


def usable_cpus() -> int:
    """CPUs this process may run on (the affinity mask, which containers narrow)."""
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # not on Linux
        return os.cpu_count() or 1


def load_average() -> tuple[float, float, float]:
    """1, 5 and 15 minute load averages (zeros where the OS has none): a busy machine slows all rows."""
    try:
        return tuple(round(x, 2) for x in os.getloadavg())  # type: ignore[return-value]
    except (AttributeError, OSError):
        return (0.0, 0.0, 0.0)


def machine_facts(device: torch.device | str) -> MachineFacts:
    """Collect the facts RESULTS.md prints about the machine and the thread settings."""
    device = torch.device(device)
    name = "cpu"
    if device.type == "cuda":
        name = f"cuda: {torch.cuda.get_device_name(device)}"
    return MachineFacts(
        cpu_model=cpu_model(),
        cpu_count=os.cpu_count() or 1,
        cpus_usable=usable_cpus(),
        torch_version=torch.__version__,
        torch_threads=torch.get_num_threads(),
        torch_interop_threads=torch.get_num_interop_threads(),
        python=platform.python_version(),
        platform=platform.platform(),
        device=name,
        load_average=load_average(),
    )
