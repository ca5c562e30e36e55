"""Keep freed CPU memory in the process, so a training step does not page-fault its buffers in again.

PyTorch's CPU allocator is plain `malloc`. glibc serves every block above its mmap threshold
(dynamic, at most 32 MiB) with a fresh `mmap` and gives it back to the kernel on `free`, and it
trims the heap's free top above 2x that threshold. A training step allocates and frees the same
activation and gradient buffers every time, so each step touches them as new pages: the benchmark
CNN at 224 px (batch 32) took about 90,000 minor page faults per step, and half its CPU time went
to the kernel zeroing and mapping those pages. TensorFlow's allocator (BFC) and PyTorch's CUDA
allocator keep freed blocks for reuse; this does the same for glibc's heap by raising both
thresholds once per process, so freed blocks stay in the heap and the next step reuses them.

What it keeps is bounded by what one phase of a run needs at once: a training step, an
evaluation pass or an extraction batch each reuse the same blocks while they repeat. Between
phases whose allocations differ (after feature extraction, at the end of a stage),
`release_freed_memory` hands the free pages back (`malloc_trim`), so one phase's peak is not
carried into the next. Other C libraries (musl, macOS) are left alone. Set
`TRANSFERLAB_KEEP_FREED_MEMORY=0` to leave glibc's defaults.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import os
import platform

# glibc's mallopt parameters (malloc.h).
_M_TRIM_THRESHOLD = -1
_M_MMAP_THRESHOLD = -3
# Blocks up to this size come from the heap and freed heap memory up to this size stays in the
# process: larger than any activation of the models here at their batch sizes (the largest, the
# benchmark CNN's 32 x 32 x 224 x 224 float32 output, is 205 MB).
THRESHOLD_BYTES = 1 << 30

_state: dict[str, bool] = {}


def _libc() -> ctypes.CDLL | None:
    """glibc, or None on another C library."""
    if platform.system() != "Linux" or platform.libc_ver()[0] != "glibc":
        return None
    try:
        return ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6")
    except OSError:
        return None


def keep_freed_memory() -> bool:
    """Raise glibc's mmap and trim thresholds once per process (no-op elsewhere or when opted out).

    Returns:
        True when glibc now keeps freed memory for reuse (also on later calls), False when it was
        left alone (another C library, mallopt refused, or TRANSFERLAB_KEEP_FREED_MEMORY=0).
    """
    if "done" not in _state:
        _state["done"] = _apply()
    return _state["done"]


def _apply() -> bool:
    if os.environ.get("TRANSFERLAB_KEEP_FREED_MEMORY", "1").strip().lower() in ("0", "false", "no", "off"):
        return False
    libc = _libc()
    mallopt = getattr(libc, "mallopt", None)
    if mallopt is None:
        return False
    mallopt.argtypes, mallopt.restype = [ctypes.c_int, ctypes.c_int], ctypes.c_int
    # Trim first: mallopt returns 1 on success; a refused threshold leaves glibc's default.
    trimmed = mallopt(_M_TRIM_THRESHOLD, THRESHOLD_BYTES) == 1
    return bool(trimmed and mallopt(_M_MMAP_THRESHOLD, THRESHOLD_BYTES) == 1)


def release_freed_memory() -> bool:
    """Give the free pages glibc holds back to the kernel (`malloc_trim(0)`), at the end of a
    phase whose freed blocks the next phase will not reuse.

    Only the pages of free blocks go; blocks in use stay where they are. The next phase
    page-faults its own working set in once, then reuses it as before.

    Returns:
        True when glibc released memory, False when there was none to release or the process
        does not run on glibc.
    """
    libc = _libc()
    trim = getattr(libc, "malloc_trim", None)
    if trim is None:
        return False
    trim.argtypes, trim.restype = [ctypes.c_size_t], ctypes.c_int
    return trim(0) == 1


def resident_mb() -> float | None:
    """This process's resident memory now (VmRSS, MiB), or None where /proc does not say."""
    return _status_mb("VmRSS:")


def peak_resident_mb() -> float | None:
    """This process's peak resident memory (VmHWM, MiB) since it started or since the last
    `reset_peak_resident`, or None where /proc does not say."""
    return _status_mb("VmHWM:")


def reset_peak_resident() -> bool:
    """Start a new peak for `peak_resident_mb` (Linux 4.0+: "5" to /proc/self/clear_refs);
    False where that is not possible (the peak then runs from the process's start)."""
    try:
        with open("/proc/self/clear_refs", "w", encoding="ascii") as refs:
            refs.write("5")
    except OSError:
        return False
    return True


def _status_mb(field: str) -> float | None:
    try:
        with open("/proc/self/status", encoding="ascii") as status:
            for line in status:
                if line.startswith(field):
                    return int(line.split()[1]) / 1024
    except (OSError, ValueError, IndexError):
        return None
    return None
