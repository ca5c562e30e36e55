"""CPU threads: how many CPUs this process can get, and OpenMP threads that yield when they wait.

PyTorch's CPU kernels run on OpenMP (libgomp on Linux). By default a libgomp thread that waits
for its team spins for about 300,000 iterations (a few milliseconds) before it sleeps. On a quiet
machine that saves a wake-up per parallel region; on a shared one it is a disaster: when another
process preempts one of the team, the others burn their time slices spinning for it. Measured on
a 2-core machine with `python3 -c 'while True: pass'` loops beside training, spinning kept 37% of
the quiet throughput with one loop and 16% with two (issue 19; `bench/busy_cpu.py`,
`bench/BUSY_CPU.md`), where a fair share is about 67% and 50%.

libgomp reads its wait policy once, when it is loaded (by `import torch`), so `configure_threads`
sets it in the environment before that: `import transferlab` calls it (this module imports
nothing heavy), which covers the CLI, library use, `torchrun` workers (each starts the CLI) and
worker processes (they inherit the environment). A setting the user made is left alone.

The CPU count is the affinity mask capped by the cgroup CPU quota (containers, `systemd-run -p
CPUQuota=`, Kubernetes limits): OpenMP and ONNX Runtime count only the mask, and more busy
threads than the quota allows stall at the end of every quota period.
"""

from __future__ import annotations

import logging
import math
import os
import sys
from collections.abc import MutableMapping
from pathlib import Path

logger = logging.getLogger(__name__)

# What `configure_threads` sets when the user set none of the wait variables (bench/BUSY_CPU.md
# has the measurements behind the choice). OMP_WAIT_POLICY is standard OpenMP: libgomp and LLVM's
# libomp (macOS) both read it; PASSIVE makes a waiting thread sleep at once.
WAIT_POLICY = {"OMP_WAIT_POLICY": "PASSIVE"}
# Variables that already express a wait policy: if any is set, the user chose and we keep out.
_WAIT_VARIABLES = ("OMP_WAIT_POLICY", "GOMP_SPINCOUNT", "KMP_BLOCKTIME")


def affinity_cpus() -> int:
    """CPUs in this process's affinity mask (the machine's count where the OS has no mask)."""
    try:
        return max(1, len(os.sched_getaffinity(0)))
    except AttributeError:  # macOS, Windows
        return max(1, os.cpu_count() or 1)


def _mounts(mountinfo: str) -> list[tuple[str, str, str, set[str]]]:
    """(mount root, mount point, file system type, super options) of every cgroup mount."""
    mounts = []
    for line in mountinfo.splitlines():
        left, sep, right = line.partition(" - ")
        fields, tail = left.split(), right.split()
        if not sep or len(fields) < 5 or len(tail) < 3 or not tail[0].startswith("cgroup"):
            continue
        mounts.append((fields[3], fields[4], tail[0], set(tail[2].split(","))))
    return mounts


def _cgroup_dirs(root: Path) -> list[tuple[str, Path, Path]]:
    """(version, this process's cgroup directory, its mount point) for the CPU controller."""
    try:
        cgroups = (root / "proc/self/cgroup").read_text()
        mountinfo = (root / "proc/self/mountinfo").read_text()
    except OSError:
        return []
    found = []
    for mount_root, point, fstype, options in _mounts(mountinfo):
        for line in cgroups.splitlines():
            parts = line.split(":", 2)
            if len(parts) != 3:
                continue
            _, controllers, path = parts
            if fstype == "cgroup2" and parts[0] == "0" and controllers == "":
                version = "v2"
            elif fstype == "cgroup" and "cpu" in controllers.split(",") and "cpu" in options:
                version = "v1"
            else:
                continue
            # Inside a container the mount's root is often the process's own cgroup (path "/" or
            # the same path): the directory is then the mount point itself.
            relative = os.path.relpath(path, mount_root) if path.startswith(mount_root) else "."
            mount = root / point.lstrip("/")
            directory = Path(os.path.normpath(mount / relative))
            found.append((version, directory, mount))
    return found


def _quota(version: str, directory: Path) -> float | None:
    """CPUs the cgroup at `directory` may use per period (None: no limit or unreadable)."""
    try:
        if version == "v2":
            quota, _, period = (directory / "cpu.max").read_text().strip().partition(" ")
            if quota == "max":
                return None
            return int(quota) / int(period or 100_000)
        quota = int((directory / "cpu.cfs_quota_us").read_text())
        if quota <= 0:  # -1: unlimited
            return None
        return quota / int((directory / "cpu.cfs_period_us").read_text())
    except (OSError, ValueError, ZeroDivisionError):
        return None


def cgroup_cpu_limit(root: Path = Path("/")) -> float | None:
    """The CPU quota of this process's cgroup, in CPUs (e.g. 1.5), None when there is none.

    The tightest quota of the process's cgroup and every cgroup above it (each level limits the
    ones below), for cgroup v2 (`cpu.max`) and v1 (`cpu.cfs_quota_us` / `cpu.cfs_period_us`).

    Args:
        root: where the file system starts (a made-up tree in tests).
    """
    limits = []
    for version, directory, mount in _cgroup_dirs(root):
        level = directory
        while True:
            quota = _quota(version, level)
            if quota is not None:
                limits.append(quota)
            if level == mount or mount not in level.parents:
                break
            level = level.parent
    return min(limits) if limits else None


def available_cpus(root: Path = Path("/")) -> int:
    """CPUs this process can actually get: its affinity mask, capped by its cgroup's CPU quota.

    A fractional quota rounds up (1.5 CPUs -> 2 threads): the half CPU is still worth a thread.

    Args:
        root: where the file system starts (a made-up tree in tests).
    """
    cpus = affinity_cpus()
    limit = cgroup_cpu_limit(root)
    if limit is not None:
        cpus = min(cpus, max(1, math.ceil(limit - 1e-9)))
    return cpus


def configure_threads(environ: MutableMapping[str, str] | None = None,
                      root: Path = Path("/")) -> dict[str, str]:
    """Set OpenMP's wait policy and, under a CPU quota, its thread count, unless the user did.

    Effective only before the OpenMP runtime loads (`import torch`); the variables also reach
    every process started from this one. Idempotent.

    * `OMP_WAIT_POLICY=PASSIVE` unless any of OMP_WAIT_POLICY, GOMP_SPINCOUNT or KMP_BLOCKTIME is
      set.
    * `OMP_NUM_THREADS=<available_cpus()>` unless it is set, and only when a cgroup quota makes
      that fewer than the affinity mask (OpenMP already counts the mask).

    Args:
        environ: the environment to change (default: `os.environ`).
        root: where the file system starts (a made-up tree in tests).

    Returns:
        The variables it set (empty when the user's settings stand).
    """
    env = os.environ if environ is None else environ
    changed: dict[str, str] = {}
    if not any(name in env for name in _WAIT_VARIABLES):
        changed.update(WAIT_POLICY)
    if "OMP_NUM_THREADS" not in env:
        cpus = available_cpus(root)
        if cpus < affinity_cpus():
            changed["OMP_NUM_THREADS"] = str(cpus)
    env.update(changed)
    if changed and environ is None and "torch" in sys.modules:
        logger.debug("torch was imported before transferlab: %s applies to new processes only",
                     " ".join(f"{k}={v}" for k, v in changed.items()))
    return changed


__all__ = ["WAIT_POLICY", "affinity_cpus", "available_cpus", "cgroup_cpu_limit", "configure_threads"]
