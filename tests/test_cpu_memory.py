"""glibc keeps freed CPU memory for reuse once training starts (no page faults per step)."""

from __future__ import annotations

import json
import os
import platform
import subprocess
import sys

import pytest

from transferlab.training import cpu_memory

GLIBC = platform.system() == "Linux" and platform.libc_ver()[0] == "glibc"

# Allocate, write and free a 64 MiB block 10 times, counting minor page faults, before and after
# keep_freed_memory() (in a fresh process: the setting is process-wide).
_PROBE = """
import ctypes, importlib.util, json, resource, sys
# The module by its path: importing the package would import torch (slow in a fresh process).
spec = importlib.util.spec_from_file_location("cpu_memory", sys.argv[1])
cpu_memory = importlib.util.module_from_spec(spec)
spec.loader.exec_module(cpu_memory)
libc = ctypes.CDLL("libc.so.6")
libc.malloc.restype, libc.malloc.argtypes = ctypes.c_void_p, [ctypes.c_size_t]
libc.free.argtypes = [ctypes.c_void_p]
libc.memset.argtypes = [ctypes.c_void_p, ctypes.c_int, ctypes.c_size_t]

def faults():
    start = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
    for _ in range(10):  # what a training step does with its buffers: malloc, write, free
        block = libc.malloc(64 << 20)
        libc.memset(block, 1, 64 << 20)
        libc.free(block)
    return resource.getrusage(resource.RUSAGE_SELF).ru_minflt - start

before = faults()
kept = cpu_memory.keep_freed_memory()
faults()  # the first block after the change may still map its pages
print(json.dumps({"before": before, "kept": kept, "after": faults()}))
"""


def _probe(**env: str) -> dict:
    out = subprocess.run([sys.executable, "-c", _PROBE, cpu_memory.__file__], capture_output=True, text=True, check=True,
                         env={**os.environ, **env}, timeout=120)
    return json.loads(out.stdout.strip().splitlines()[-1])


@pytest.mark.skipif(not GLIBC, reason="mallopt thresholds are glibc's")
def test_freed_blocks_are_reused_without_page_faults() -> None:
    res = _probe()
    assert res["kept"] is True
    # 10 x 64 MiB of fresh pages is about 160,000 faults; reused heap blocks fault (almost) none.
    assert res["before"] > 50_000
    assert res["after"] < res["before"] / 20


@pytest.mark.skipif(not GLIBC, reason="mallopt thresholds are glibc's")
def test_opt_out_leaves_glibc_defaults() -> None:
    res = _probe(TRANSFERLAB_KEEP_FREED_MEMORY="0")
    assert res["kept"] is False
    assert res["after"] > 50_000


def test_idempotent_in_process() -> None:
    first = cpu_memory.keep_freed_memory()
    assert cpu_memory.keep_freed_memory() is first


# Kept freed memory (keep_freed_memory) stays resident until release_freed_memory hands it back.
_TRIM_PROBE = """
import ctypes, importlib.util, json, sys
spec = importlib.util.spec_from_file_location("cpu_memory", sys.argv[1])
cpu_memory = importlib.util.module_from_spec(spec)
spec.loader.exec_module(cpu_memory)
libc = ctypes.CDLL("libc.so.6")
libc.malloc.restype, libc.malloc.argtypes = ctypes.c_void_p, [ctypes.c_size_t]
libc.free.argtypes = [ctypes.c_void_p]
libc.memset.argtypes = [ctypes.c_void_p, ctypes.c_int, ctypes.c_size_t]
cpu_memory.keep_freed_memory()
start = cpu_memory.resident_mb()
blocks = [libc.malloc(32 << 20) for _ in range(8)]  # 256 MiB in heap blocks, touched
for b in blocks:
    libc.memset(b, 1, 32 << 20)
guard = libc.malloc(1 << 20)  # in use above the freed blocks: a plain top trim cannot free them
libc.memset(guard, 1, 1 << 20)
for b in blocks:
    libc.free(b)
kept = cpu_memory.resident_mb()
released = cpu_memory.release_freed_memory()
print(json.dumps({"start": start, "kept": kept, "released": released,
                  "after": cpu_memory.resident_mb()}))
"""


@pytest.mark.skipif(not GLIBC, reason="malloc_trim is glibc's")
def test_release_hands_kept_memory_back() -> None:
    out = subprocess.run([sys.executable, "-c", _TRIM_PROBE, cpu_memory.__file__], capture_output=True,
                         text=True, check=True, timeout=120)
    res = json.loads(out.stdout.strip().splitlines()[-1])
    assert res["kept"] - res["start"] > 200  # freed, but kept for reuse
    assert res["released"] is True
    assert res["kept"] - res["after"] > 200  # handed back


def test_resident_mb_sees_an_allocation() -> None:
    if cpu_memory.resident_mb() is None:
        pytest.skip("no /proc/self/status here")
    import mmap

    before = cpu_memory.resident_mb()
    # Fresh pages from the kernel (a malloc could reuse freed memory that is resident already).
    block = mmap.mmap(-1, 64 << 20)
    block.write(b"\1" * (64 << 20))  # 64 MiB, touched
    assert cpu_memory.resident_mb() - before > 48
    block.close()


def test_peak_resident_restarts_after_a_reset() -> None:
    if not cpu_memory.reset_peak_resident():
        pytest.skip("no /proc/self/clear_refs here")
    import mmap

    block = mmap.mmap(-1, 64 << 20)
    block.write(b"\1" * (64 << 20))
    block.close()
    high = cpu_memory.peak_resident_mb()
    assert high - cpu_memory.resident_mb() > 48  # the peak remembers the freed 64 MiB
    assert cpu_memory.reset_peak_resident()
    assert cpu_memory.peak_resident_mb() - cpu_memory.resident_mb() < 16
