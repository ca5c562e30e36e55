"""Parallel, memory-bounded decoding of image files into preallocated .npy files.

Each split's images go into one uint8 (N, H, W, 3) .npy created with `open_memmap`; worker
processes decode chunks of files and write their rows straight into that file. The parent never
holds the images, so peak memory does not grow with the dataset: written pages belong to the
file and the operating system flushes them as it likes.
"""

from __future__ import annotations

import multiprocessing
import signal
import threading
from collections.abc import Callable, Iterator, Sequence
from concurrent.futures import ProcessPoolExecutor, as_completed
from concurrent.futures.process import BrokenProcessPool
from contextlib import contextmanager
from pathlib import Path

import numpy as np

from transferlab.data.images import SizePlan, decode, header_size, max_image_pixels
from transferlab.errors import TransferlabError
from transferlab.logs import progress
from transferlab.threads import available_cpus

# Files per task: large enough that process overhead vanishes, small enough for a smooth
# progress bar and an even share of work at the end.
_CHUNK = 32


def usable_cores() -> int:
    """CPUs this process can get: the affinity mask capped by a cgroup quota (`threads.available_cpus`)."""
    return available_cpus()


def resolve_workers(workers: int | None) -> int:
    """Worker processes to use: `workers`, or one per usable core when None or 0."""
    return usable_cores() if not workers else max(1, int(workers))


def _context() -> multiprocessing.context.BaseContext:
    # fork starts workers in milliseconds without re-importing torch; the workers only run
    # Pillow and numpy, which are safe after fork. Elsewhere use the platform's default.
    methods = multiprocessing.get_all_start_methods()
    return multiprocessing.get_context("fork" if "fork" in methods else None)


def _ignore_sigint() -> None:
    """Pool initializer: Ctrl-C reaches the whole process group, but only the parent handles it
    (it stops the workers), so no worker prints a KeyboardInterrupt traceback of its own."""
    signal.signal(signal.SIGINT, signal.SIG_IGN)


def _decode_rows(npy: str, rows: Sequence[int], paths: Sequence[str], names: Sequence[str],
                 plan: SizePlan, max_pixels: int) -> int:
    """Decode `paths` into rows `rows` of the .npy file `npy` (runs in a worker)."""
    out = np.load(npy, mmap_mode="r+")
    for row, path, name in zip(rows, paths, names, strict=True):
        out[row] = decode(Path(path), name, plan, max_pixels)
    # No flush (msync): it would wait for the disk on every chunk. The written pages are in the
    # page cache, visible to every process at once; the kernel writes them back in its own time.
    del out
    return len(rows)


def _headers(paths: Sequence[str], names: Sequence[str], max_pixels: int) -> list[tuple[int, int]]:
    return [header_size(Path(p), n, max_pixels) for p, n in zip(paths, names, strict=True)]


def _chunks(n: int) -> Iterator[slice]:
    for start in range(0, n, _CHUNK):
        yield slice(start, min(n, start + _CHUNK))


def _run(tasks: list[tuple], fn: Callable, workers: int, desc: str, counts: list[int]) -> list:
    """Run fn(*task) for every task, in `workers` processes (inline for one), with a progress bar.

    A worker's exception is raised here, and so is a worker that dies (killed for memory, a
    crashing decoder: BrokenProcessPool), instead of waiting for it forever. On any error or
    Ctrl-C the remaining work is cancelled and the workers are stopped at once.
    """
    results: list = [None] * len(tasks)
    with progress(total=sum(counts), desc=desc, unit="img", leave=False,
                  dynamic_ncols=True) as bar:
        if workers == 1 or len(tasks) <= 1:
            for i, task in enumerate(tasks):
                results[i] = fn(*task)
                bar.update(counts[i])
            return results
        pool = ProcessPoolExecutor(min(workers, len(tasks)), mp_context=_context(),
                                   initializer=_ignore_sigint)
        try:
            with _sigint_deferred():  # forked workers start with Ctrl-C ignored, not raised
                futures = {pool.submit(fn, *task): i for i, task in enumerate(tasks)}
            for future in as_completed(futures):
                i = futures[future]
                results[i] = future.result()
                bar.update(counts[i])
        except BrokenProcessPool as err:
            _stop(pool)
            raise TransferlabError(
                "a decoding worker process died (killed for lack of memory, or a crash in an image "
                "decoder); nothing was cached. Run again with fewer decoding processes (workers=1 "
                "decodes in this process and names a file that crashes it).") from err
        except BaseException:
            _stop(pool)
            raise
        pool.shutdown(wait=True)
    return results


def _stop(pool: ProcessPoolExecutor) -> None:
    """Cancel what is queued, terminate the workers at once and wait until they are gone."""
    processes = list((getattr(pool, "_processes", None) or {}).values())
    manager = getattr(pool, "_executor_manager_thread", None)
    pool.shutdown(wait=False, cancel_futures=True)
    for process in processes:
        process.terminate()  # a worker in the middle of a large file would finish it
    for process in processes:
        process.join(timeout=5)
    if manager is not None:
        # The pool's manager thread notices the dead workers and ends. Left running, it would be
        # woken at interpreter exit through a pipe it may have closed: an "Exception ignored"
        # traceback after the one-line message.
        manager.join(timeout=5)


@contextmanager
def _sigint_deferred() -> Iterator[None]:
    """Hold Ctrl-C while worker processes are forked, then raise it.

    A worker forked with Python's default handler and interrupted before its initializer ran
    would print a traceback; forked with this handler, it only records the signal, harmlessly.
    """
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    hit: list[int] = []
    previous = signal.signal(signal.SIGINT, lambda signum, frame: hit.append(signum))
    try:
        yield
    finally:
        signal.signal(signal.SIGINT, previous)
    if hit:
        raise KeyboardInterrupt


def read_sizes(paths: Sequence[str], names: Sequence[str], workers: int,
               max_pixels: int | None = None) -> list[tuple[int, int]]:
    """(height, width) of every image from its header, in parallel; files above `max_pixels`
    pixels (None: `images.max_image_pixels()`) are refused (`images.ImageTooLargeError`)."""
    limit = max_image_pixels(max_pixels)
    tasks, counts = [], []
    for s in _chunks(len(paths)):
        tasks.append((paths[s], names[s], limit))
        counts.append(s.stop - s.start)
    sizes: list[tuple[int, int]] = []
    for part in _run(tasks, _headers, workers, "reading image sizes", counts):
        sizes += part
    return sizes


def decode_into(npy: Path, paths: Sequence[str], names: Sequence[str], plan: SizePlan,
                workers: int, desc: str, max_pixels: int | None = None) -> None:
    """Create `npy` as uint8 (len(paths), H, W, 3) and decode every file into its row.

    Args:
        npy: the .npy file to create (inside a temporary directory: see cache.py).
        paths: absolute file paths, in row order.
        names: the same files named for error messages.
        plan: the stored size.
        workers: processes to decode in (1: in this process).
        desc: progress-bar label.
        max_pixels: refuse files whose header claims more pixels (`images.open_image`);
            None: `images.max_image_pixels()`.
    """
    limit = max_image_pixels(max_pixels)
    h, w = plan.size
    out = np.lib.format.open_memmap(npy, mode="w+", dtype=np.uint8, shape=(len(paths), h, w, 3))
    del out  # workers open the file themselves; the header is written
    tasks, counts = [], []
    for s in _chunks(len(paths)):
        tasks.append((str(npy), range(s.start, s.stop), paths[s], names[s], plan, limit))
        counts.append(s.stop - s.start)
    _run(tasks, _decode_rows, workers, desc, counts)
