"""The first GPU run, in one call: the CUDA tests, the quick benchmark, the quick study.

No GPU had been lent to this project when this was written, so its CUDA paths (AMP, channels-last,
GPU-resident batches, cached features on the GPU, DDP over NCCL, export from a CUDA run) had never
run. Whoever first has a GPU for a few minutes runs ``bash bench/gpu_check.sh`` (this file behind
it) from the repository root, and gets `bench/GPU_RESULTS.md`:

0. setup: if transferlab and its dependencies are not importable, a virtual environment `.venv`
   (seeing the system's packages, so an installed CUDA torch is reused) with the README's install;
1. gpu tests: ``pytest -m gpu`` (tests/test_gpu.py), each test's outcome and measured numbers;
2. bench: ``bench/run.py --device cuda --quick`` (the Keras peer only where TensorFlow is there);
3. quick study: ``transferlab compare --config configs/quick.yaml`` on ../shared's CIFAR-10 copy
   and weights, ``--device cuda``.

Where ../shared is absent (it is outside the repository), the bench runs on generated JPEGs and
the study on synthetic CIFAR-10-sized data with random weights (``--set pretrained=false``):
every path and time of the study, no meaningful accuracy; the results say so.

Each step runs in its own process group under a time limit (the whole check is sized to finish
in under 8 minutes on one H100 / H200), its output goes to a log, and a failed or timed-out step is
recorded and the check goes on. The results file is written after every step, so even a check
killed from outside leaves what it had. With ``$OUT`` set, the results, the step logs and the key
output files are copied there (what the device tool brings back).

Without a CUDA device (``CUDA_VISIBLE_DEVICES= bash bench/gpu_check.sh``, or ``--cpu``) it runs
the CPU fallback: the same steps, with the gpu tests skipping (and reported as skipped), a tiny
benchmark on generated images and a tiny synthetic comparison on the CPU, in about a minute.
That proves the script end to end; its figures say nothing about any GPU.

This file uses the standard library only: it must run before anything is installed.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import shlex
import shutil
import signal
import subprocess
import sys
import time
import xml.etree.ElementTree as ET
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

BENCH = Path(__file__).resolve().parent
ROOT = BENCH.parent
TOTAL_BUDGET_S = 465.0  # the whole check, setup included: under 8 minutes with room to spare
# Per-step ceilings (s). The estimates on one H100 that set them: gpu tests about 90 s (tiny
# runs, a CPU twin for each, a torchrun); the quick bench about 60-90 s (CIFAR-10 decoded once,
# then short timed loops); the quick study about 2-3 min (19,000 images, 4 models). A step gets
# the least of its ceiling and what is left of the total, less a minimum for each later step.
CAPS_S = {"setup": 240.0, "gpu_tests": 180.0, "bench": 130.0, "study": 240.0}
MIN_STEP_S = 20.0  # a step with less time than this left is "not run"
KILL_GRACE_S = 10.0  # after SIGTERM at the time limit, SIGKILL this much later
LOG_TAIL_LINES = 25  # lines of a failed step's log quoted in the results
TORCH_PINS = ("torch==2.14.1", "torchvision==0.29.1")  # the README's install command
# Importing these proves the install: transferlab's runtime dependencies and the test runner.
REQUIRED_MODULES = ("transferlab", "torch", "torchvision", "timm", "safetensors", "numpy", "yaml",
                    "matplotlib", "PIL", "tqdm", "filelock", "onnx", "onnxscript", "onnxruntime",
                    "tensorboard", "pytest")
RESULTS_NAME = "GPU_RESULTS.md"
TITLES = {"gpu_tests": "the CUDA tests (pytest -m gpu)", "bench": "bench/run.py --quick",
          "study": "the quick study (transferlab compare)"}


@dataclass
class Outcome:
    """What one step did."""

    name: str  # step key: setup, gpu_tests, bench, study
    title: str  # in words
    command: str  # the shell line that ran (or would have)
    status: str = "not run"  # passed | failed | timed out | skipped | not run
    wall_s: float | None = None  # seconds the step ran
    detail: str = ""  # one line: why it failed, was skipped or not run
    figures: list[tuple[str, str]] = field(default_factory=list)  # (what, value): the key figures
    tables: list[str] = field(default_factory=list)  # markdown tables of the step's numbers
    log: Path | None = None  # the step's full output


# ---------------------------------------------------------------------------------------------
# running a step


def run_command(command: Sequence[str], *, timeout_s: float, log: Path, env: dict[str, str],
                cwd: Path = ROOT) -> tuple[int | None, float, bool]:
    """Run `command` with stdout and stderr into `log`, killed as a group at `timeout_s`.

    The command starts a session of its own, so at the time limit its children (torchrun's
    workers, the benchmark's peer) are stopped with it: SIGTERM, then SIGKILL after a grace.

    Returns:
        (exit code or None when it could not start, wall seconds, whether it timed out).
    """
    log.parent.mkdir(parents=True, exist_ok=True)
    started = time.perf_counter()
    with open(log, "ab") as out:
        out.write(f"$ {shlex.join(command)}\n".encode())
        out.flush()
        try:
            proc = subprocess.Popen(list(command), cwd=cwd, env=env, stdout=out,
                                    stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
                                    start_new_session=True)
        except OSError as err:
            out.write(f"could not start: {err}\n".encode())
            return None, time.perf_counter() - started, False
        try:
            code = proc.wait(timeout=max(timeout_s, 0.1))
            return code, time.perf_counter() - started, False
        except subprocess.TimeoutExpired:
            _kill_group(proc, signal.SIGTERM)
            try:
                proc.wait(timeout=KILL_GRACE_S)
            except subprocess.TimeoutExpired:
                _kill_group(proc, signal.SIGKILL)
                proc.wait()
            out.write(f"\n[gpu_check] stopped at the time limit of {timeout_s:.0f} s\n".encode())
            return proc.returncode, time.perf_counter() - started, True


def _kill_group(proc: subprocess.Popen, sig: int) -> None:
    """Signal the process group the command leads (this check's own child, by its id)."""
    try:
        os.killpg(proc.pid, sig)
    except ProcessLookupError:
        pass


def log_tail(log: Path | None, lines: int = LOG_TAIL_LINES) -> str:
    """The last lines of a log (empty when there is none)."""
    if log is None or not log.is_file():
        return ""
    text = log.read_text(errors="replace").splitlines()
    return "\n".join(text[-lines:])


class Clock:
    """The check's time budget: how long the next step may run."""

    def __init__(self, budget_s: float, started: float | None = None) -> None:
        self.budget_s = budget_s
        self.started = time.perf_counter() if started is None else started

    def left(self) -> float:
        """Seconds left of the whole budget."""
        return self.budget_s - (time.perf_counter() - self.started)

    def limit(self, cap_s: float, later_steps: int) -> float:
        """The time limit of a step: its cap, within what is left less a minimum per later step."""
        return min(cap_s, self.left() - MIN_STEP_S * later_steps)


def finish(outcome: Outcome, code: int | None, wall: float, timed_out: bool, limit: float) -> None:
    """Set a step's status from how its command ended."""
    outcome.wall_s = wall
    if timed_out:
        outcome.status, outcome.detail = "timed out", f"stopped at its time limit of {limit:.0f} s"
    elif code == 0:
        outcome.status = "passed"
    else:
        outcome.status = "failed"
        outcome.detail = ("could not start" if code is None else f"exit code {code}") + (
            f"; log {outcome.log.name}" if outcome.log else "")


# ---------------------------------------------------------------------------------------------
# the environment


def python_env(work: Path) -> dict[str, str]:
    """The environment of every step: the checkout's own source first, a cold data cache."""
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join([str(ROOT / "src"), *filter(None, [env.get("PYTHONPATH")])])
    env["TRANSFERLAB_DATA"] = str(work / "data")
    env.setdefault("MPLBACKEND", "Agg")
    env["PYTHONUNBUFFERED"] = "1"
    return env


def missing_modules(python: str, env: dict[str, str]) -> list[str]:
    """The required modules `python` cannot import (all of them if it does not run)."""
    code = ("import importlib.util, sys\n"
            f"print(' '.join(m for m in {REQUIRED_MODULES!r} if importlib.util.find_spec(m) is None))")
    try:
        proc = subprocess.run([python, "-c", code], env=env, capture_output=True, text=True,
                              timeout=60, cwd=ROOT)
    except (OSError, subprocess.TimeoutExpired):
        return list(REQUIRED_MODULES)
    if proc.returncode != 0:
        return list(REQUIRED_MODULES)
    return proc.stdout.split()


def setup(python: str, work: Path, env: dict[str, str], clock: Clock) -> tuple[Outcome, str]:
    """Step 0: make transferlab importable (the README's install into `.venv`) when it is not.

    Returns:
        The outcome and the Python the later steps use.
    """
    venv = ROOT / ".venv"
    outcome = Outcome("setup", "install (only when transferlab is not importable)",
                      f"python3 -m venv --system-site-packages .venv && .venv/bin/pip install "
                      f"{' '.join(TORCH_PINS)} && .venv/bin/pip install -e '.[dev]'",
                      log=work / "logs" / "0-setup.log")
    missing = missing_modules(python, env)
    if not missing:
        outcome.status, outcome.wall_s = "skipped", 0.0
        outcome.detail = f"everything is importable from {python}"
        return outcome, python
    venv_python = str(venv / "bin" / "python")
    if venv.is_dir() and not missing_modules(venv_python, env):
        outcome.status, outcome.wall_s = "skipped", 0.0
        outcome.detail = f"everything is importable from {venv_python} (installed earlier)"
        return outcome, venv_python
    outcome.detail = f"not importable from {python}: {', '.join(missing)}"
    limit = clock.limit(CAPS_S["setup"], later_steps=3)
    started = time.perf_counter()
    code: int | None = 0
    timed_out = False

    def step(command: list[str]) -> bool:
        nonlocal code, timed_out
        left = limit - (time.perf_counter() - started)
        code, _, timed_out = run_command(command, timeout_s=left, log=outcome.log, env=env)
        return code == 0 and not timed_out

    pip = [venv_python, "-m", "pip", "install"]
    ok = venv.is_dir() or step([python, "-m", "venv", "--system-site-packages", str(venv)])
    # The system's torch (a CUDA build already on the machine) is seen through
    # --system-site-packages; only a machine without one downloads the pinned wheels.
    has_torch = not {"torch", "torchvision"} & set(missing_modules(venv_python, env)) if ok else False
    ok = ok and (has_torch or step([*pip, *TORCH_PINS]))
    # Build isolation fetches setuptools from PyPI; without a network the venv's own may do.
    ok = ok and (step([*pip, "-e", ".[dev]"]) or step([*pip, "--no-build-isolation", "-e", ".[dev]"]))
    finish(outcome, code, time.perf_counter() - started, timed_out, limit)
    if outcome.status == "passed":
        still = missing_modules(venv_python, env)
        if still:
            outcome.status = "failed"
            outcome.detail = f"installed, but still not importable: {', '.join(still)}"
        else:
            outcome.detail = f"installed into {venv} (was missing: {', '.join(missing)})"
    return outcome, venv_python


def device_facts(python: str, env: dict[str, str]) -> dict[str, str]:
    """What the machine is: GPU (nvidia-smi and torch), torch and CUDA versions, CPU."""
    facts: dict[str, str] = {"host": platform.node(), "CPU": f"{os.cpu_count()} logical CPUs"}
    smi = shutil.which("nvidia-smi")
    if smi:
        try:
            proc = subprocess.run(
                [smi, "--query-gpu=name,memory.total,driver_version", "--format=csv,noheader"],
                capture_output=True, text=True, timeout=30)
            if proc.returncode == 0 and proc.stdout.strip():
                facts["nvidia-smi"] = "; ".join(line.strip() for line in proc.stdout.splitlines())
        except (OSError, subprocess.TimeoutExpired):
            pass
    facts.setdefault("nvidia-smi", "not available" if smi is None else "no GPU listed")
    code = (
        "import json, torch\n"
        "ok = torch.cuda.is_available()\n"
        "print(json.dumps({'torch': torch.__version__, 'cuda_build': str(torch.version.cuda),\n"
        "  'cuda': ok, 'count': torch.cuda.device_count() if ok else 0,\n"
        "  'name': torch.cuda.get_device_name(0) if ok else '',\n"
        "  'capability': '.'.join(map(str, torch.cuda.get_device_capability(0))) if ok else '',\n"
        "  'bf16': bool(ok and torch.cuda.is_bf16_supported()),\n"
        "  'cudnn': str(torch.backends.cudnn.version()) if ok else '',\n"
        "  'nccl': '.'.join(map(str, torch.cuda.nccl.version())) if ok else ''}))\n"
    )
    try:
        proc = subprocess.run([python, "-c", code], env=env, capture_output=True, text=True,
                              timeout=120, cwd=ROOT)
        info = json.loads(proc.stdout.strip().splitlines()[-1]) if proc.returncode == 0 else None
    except (OSError, subprocess.TimeoutExpired, json.JSONDecodeError, IndexError):
        info = None
    if info is None:
        facts["torch"] = "not importable"
        facts["cuda"] = "false"
        return facts
    facts["torch"] = f"{info['torch']} (CUDA build {info['cuda_build']})"
    facts["cuda"] = "true" if info["cuda"] else "false"
    if info["cuda"]:
        facts["GPU (torch)"] = (f"{info['name']} x{info['count']}, compute capability "
                                f"{info['capability']}, bf16 {'yes' if info['bf16'] else 'no'}, "
                                f"cuDNN {info['cudnn']}, NCCL {info['nccl']}")
    visible = os.environ.get("CUDA_VISIBLE_DEVICES")
    if visible is not None:
        facts["CUDA_VISIBLE_DEVICES"] = repr(visible)
    return facts


def find_shared(explicit: Path | None) -> Path | None:
    """The offline material (data/cifar10-jpeg.tar.gz, weights/): --shared, $TRANSFERLAB_SHARED,
    ../shared beside the checkout, or shared/ inside it; None when none holds the archive."""
    candidates = [explicit] if explicit else []
    if os.environ.get("TRANSFERLAB_SHARED"):
        candidates.append(Path(os.environ["TRANSFERLAB_SHARED"]))
    candidates += [ROOT.parent / "shared", ROOT / "shared"]
    for path in candidates:
        if path is not None and (path / "data" / "cifar10-jpeg.tar.gz").is_file():
            return path.resolve()
    return None


# ---------------------------------------------------------------------------------------------
# the tiny inputs of the CPU fallback

# The bench's quick preset, shrunk: every model it measures, at small batches (configs/quick.yaml
# is the real one). The bench reads the models it times from these entries.
SYNTHETIC_CIFAR = "synthetic:classes=10,train=50000,test=10000,size=32"  # CIFAR-10's sizes
TINY_BENCH_PRESET = """\
title: tiny bench preset of the gpu check's CPU fallback
shared: {dataset: cifar10, augment: none, batch_size: 8, eval_batch_size: 8}
models:
  - {name: cnn, model: benchmark_cnn, input_size: 32,
     stages: [{name: train, optimizer: adam, lr: 3.0e-3, epochs: 1}]}
  - {name: scratch, model: mobilenet_v2_paper, input_size: 32,
     model_kwargs: {width_mult: 0.25, cifar_stem: true},
     stages: [{name: train, optimizer: adam, lr: 3.0e-3, epochs: 1}]}
  - {name: mnv2, model: mobilenet_v2, head: linear, input_size: 32,
     stages: [{name: head, train: head, epochs: 1}]}
  - {name: inception, model: inception_v3, head: study, input_size: 75, batch_size: 4,
     eval_batch_size: 4, stages: [{name: head, train: head, optimizer: rmsprop, lr: 1.0e-3, epochs: 1}]}
"""
# A comparison on the CPU in seconds: one model from scratch, one head on cached features.
TINY_STUDY = """\
title: tiny study of the gpu check's CPU fallback
shared: {dataset: "synthetic:classes=4,train=96,test=32,size=16", val_fraction: 0.25,
         batch_size: 16, eval_batch_size: 32, extract_backend: eager, quiet: true}
models:
  - {name: cnn, label: Benchmark CNN, model: benchmark_cnn, input_size: 16,
     stages: [{name: train, optimizer: adam, lr: 3.0e-3, epochs: 2}]}
  - {name: cnn_head, label: Benchmark CNN head on cached features, model: benchmark_cnn,
     input_size: 16, stages: [{name: head, train: head, cache_features: "true", epochs: 2}]}
"""


def image_archive(path: Path, python: str, classes: int, train_per_class: int,
                  test_per_class: int) -> Path:
    """A CIFAR-like image-folder archive of generated 32 px JPEGs (train/ and test/), written by
    `python` (the one with Pillow and numpy: this file imports neither)."""
    if path.is_file():
        return path
    path.parent.mkdir(parents=True, exist_ok=True)
    script = (
        "import io, sys, tarfile\n"
        "import numpy as np\n"
        "from PIL import Image\n"
        f"classes = [f'class{{c}}' for c in range({classes})]\n"
        f"counts = {{'train': {train_per_class}, 'test': {test_per_class}}}\n"
        "rng = np.random.default_rng(0)\n"
        "with tarfile.open(sys.argv[1], 'w:gz') as tar:\n"
        "    for split, n in counts.items():\n"
        "        for c, name in enumerate(classes):\n"
        "            for i in range(n):\n"
        "                pixels = rng.integers(0, 256, (32, 32, 3), dtype=np.uint8)\n"
        "                pixels[:, :, c % 3] = pixels[:, :, c % 3] // 4 + 17 * c\n"
        "                buf = io.BytesIO()\n"
        "                Image.fromarray(pixels).save(buf, format='JPEG', quality=90)\n"
        "                info = tarfile.TarInfo(f'tiny/{split}/{name}/{i:04d}.jpg')\n"
        "                info.size = buf.tell()\n"
        "                buf.seek(0)\n"
        "                tar.addfile(info, buf)\n"
    )
    tmp = path.with_suffix(".tmp")
    subprocess.run([python, "-c", script, str(tmp)], check=True, timeout=120)
    tmp.replace(path)
    return path


# ---------------------------------------------------------------------------------------------
# the steps


@dataclass
class Plan:
    """What the check runs: the device, the Python, the folders and each step's command."""

    mode: str  # "gpu" or "cpu fallback"
    python: str
    work: Path  # logs, data cache, run folders (never under $OUT: checkpoints are large)
    shared: Path | None
    device: str  # "cuda" or "cpu"

    def gpu_tests(self) -> tuple[list[str], Path]:
        """pytest over the gpu-marked tests, with a JUnit XML report to read the outcomes from."""
        xml = self.work / "gpu_tests.xml"
        return [self.python, "-m", "pytest", "-m", "gpu", "tests/test_gpu.py", "-q", "-rA",
                "-p", "no:cacheprovider", f"--junitxml={xml}", "-o", "junit_family=xunit1"], xml

    def bench(self) -> tuple[list[str], str]:
        """bench/run.py quick on the device, and a note on its data."""
        out = self.work / "bench_quick.md"
        command = [self.python, "bench/run.py", "--quick", "--device", self.device, "--out", str(out),
                   "--cache-dir", str(self.work / "bench-cache")]
        if self.mode != "gpu":
            configs = self.work / "tiny-configs"
            configs.mkdir(parents=True, exist_ok=True)
            (configs / "quick.yaml").write_text(TINY_BENCH_PRESET)
            archive = image_archive(self.work / "tiny-images.tar.gz", self.python, 4, 40, 8)
            return command + ["--data", str(archive), "--configs", str(configs), "--no-keras",
                              "--threads", "1", "--extract-backend", "eager"], ""
        if self.shared is not None:
            return command + ["--data", str(self.shared / "data" / "cifar10-jpeg.tar.gz")], ""
        # The quick preset needs 512 training images (4 steps of 128) and decodes 500; the
        # throughput rows do not depend on what the pixels show.
        archive = image_archive(self.work / "generated-images.tar.gz", self.python, 10, 80, 10)
        return command + ["--data", str(archive)], (
            "../shared absent: on 800 generated 32 px JPEGs instead of CIFAR-10 (rates do not "
            "depend on the pixels)")

    def study(self) -> tuple[list[str], str]:
        """The quick comparison on the device, and a note on its data."""
        out = self.work / "quick"
        base = [self.python, "-m", "transferlab", "compare", "--out", str(out), "--device", self.device]
        if self.mode != "gpu":
            config = self.work / "tiny-study.yaml"
            config.write_text(TINY_STUDY)
            return base + ["--config", str(config)], ""
        base += ["--config", "configs/quick.yaml", "--quiet"]
        if self.shared is not None:
            return base + ["--dataset", f"folder:{self.shared / 'data' / 'cifar10-jpeg.tar.gz'}",
                           "--weights-dir", str(self.shared / "weights")], ""
        # Without the offline material: CIFAR-10's sizes, random weights. Every model, stage,
        # cache and size of the study still runs; only the accuracies mean nothing.
        return base + ["--dataset", SYNTHETIC_CIFAR, "--set", "pretrained=false"], (
            "../shared absent: synthetic CIFAR-10-sized data and random weights, so times and code "
            "paths only (accuracies mean nothing)")


def run_gpu_tests(plan: Plan, env: dict[str, str], clock: Clock) -> Outcome:
    """Step 1: the gpu-marked tests; each test's outcome, time and recorded numbers."""
    command, xml = plan.gpu_tests()
    outcome = Outcome("gpu_tests", "the CUDA tests (pytest -m gpu)", shlex.join(command),
                      log=plan.work / "logs" / "1-gpu_tests.log")
    xml.unlink(missing_ok=True)
    limit = clock.limit(CAPS_S["gpu_tests"], later_steps=2)
    if limit < MIN_STEP_S:
        outcome.detail = f"only {max(limit, 0):.0f} s left of the budget"
        return outcome
    code, wall, timed_out = run_command(command, timeout_s=limit, log=outcome.log, env=env)
    finish(outcome, code, wall, timed_out, limit)
    tests = junit_tests(xml)
    counts = {k: sum(t["outcome"] == k for t in tests) for k in ("passed", "failed", "skipped")}
    if tests:
        outcome.figures.append(("tests", ", ".join(f"{v} {k}" for k, v in counts.items())))
        outcome.tables.append(tests_table(tests))
    if outcome.status == "passed" and tests and counts["passed"] == 0:
        # pytest exits 0 when every test skips: say so, with the reason (no CUDA device).
        outcome.status = "skipped"
        reasons = sorted({t["message"] for t in tests if t["outcome"] == "skipped"})
        outcome.detail = "every gpu test skipped: " + "; ".join(reasons)
    elif code == 5:  # pytest: no tests collected
        outcome.detail = "no gpu tests were collected"
    return outcome


def junit_tests(xml: Path) -> list[dict]:
    """Each test of a JUnit XML report: name, outcome, seconds, message, recorded properties."""
    if not xml.is_file():
        return []
    try:
        root = ET.parse(xml).getroot()
    except ET.ParseError:
        return []
    tests = []
    for case in root.iter("testcase"):
        outcome, message = "passed", ""
        for tag in ("failure", "error", "skipped"):
            node = case.find(tag)
            if node is not None:
                outcome = "skipped" if tag == "skipped" else "failed"
                message = (node.get("message") or node.text or "").strip().splitlines()
                message = message[0] if message else ""
                break
        if outcome == "skipped":
            # pytest writes "SKIPPED [1] path:line: reason" style messages; keep the reason.
            message = message.split(": ", 1)[-1] if message.startswith(("Skipped", "SKIPPED")) else message
        props = {p.get("name"): p.get("value") for p in case.iter("property")}
        tests.append({"name": case.get("name", "?"), "outcome": outcome,
                      "seconds": float(case.get("time") or 0.0), "message": message,
                      "properties": props})
    return tests


def tests_table(tests: list[dict]) -> str:
    """A markdown table of the tests: outcome, seconds, the numbers they recorded or why not."""
    lines = ["| test | outcome | s | numbers / reason |", "| --- | --- | --- | --- |"]
    for t in tests:
        numbers = ", ".join(f"{k} {v}" for k, v in t["properties"].items())
        note = numbers if t["outcome"] == "passed" else join(t["message"], numbers)
        lines.append(f"| `{t['name']}` | {t['outcome']} | {t['seconds']:.1f} | {_cell(note)} |")
    return "\n".join(lines)


def run_bench(plan: Plan, env: dict[str, str], clock: Clock) -> Outcome:
    """Step 2: bench/run.py --quick on the device; its transferlab figures."""
    command, note = plan.bench()
    outcome = Outcome("bench", f"bench/run.py --device {plan.device} --quick", shlex.join(command),
                      log=plan.work / "logs" / "2-bench.log")
    results = plan.work / "bench-cache" / "results.json"
    results.unlink(missing_ok=True)
    limit = clock.limit(CAPS_S["bench"], later_steps=1)
    if limit < MIN_STEP_S:
        outcome.detail = f"only {max(limit, 0):.0f} s left of the budget"
        return outcome
    code, wall, timed_out = run_command(command, timeout_s=limit, log=outcome.log, env=env)
    finish(outcome, code, wall, timed_out, limit)
    outcome.detail = join(outcome.detail, note)
    rows, errors = bench_rows(results)
    if rows:
        measured = sum(r["ours"] is not None for r in rows)
        outcome.figures.append(("rows measured", f"{measured} of {len(rows)}"))
        outcome.tables.append(bench_table(rows))
    if errors:
        outcome.figures.append(("measurements that failed", str(len(errors))))
        outcome.tables.append("\n".join(f"- {k}: {_cell(v)}" for k, v in errors.items()))
        if outcome.status == "passed":
            outcome.status = "failed"
            outcome.detail = join(f"{len(errors)} measurement(s) failed (listed below)", note)
    return outcome


def bench_rows(results: Path) -> tuple[list[dict], dict[str, str]]:
    """The rows and failed measurements of bench/run.py's results.json (empty when absent)."""
    if not results.is_file():
        return [], {}
    try:
        data = json.loads(results.read_text())
    except json.JSONDecodeError:
        return [], {}
    return list(data.get("rows", [])), dict(data.get("errors", {}))


def bench_table(rows: list[dict]) -> str:
    """transferlab's figure of every bench row, and the peer's where it ran (Keras, ONNX Runtime,
    or for the data pipeline the model it feeds)."""
    lines = ["| section | measurement | setting | transferlab | peer |", "| --- | --- | --- | --- | --- |"]
    for r in rows:
        unit = r.get("unit", "")
        ours = f"{r['ours']:.4g} {unit}" if r.get("ours") is not None else "not run"
        theirs = f"{r['theirs']:.4g} {unit}" if r.get("theirs") is not None else "-"
        lines.append(f"| {_cell(r.get('section', ''))} | {_cell(r.get('name', ''))} | "
                     f"{_cell(r.get('setting', ''))} | {ours} | {theirs} |")
    return "\n".join(lines)


def run_study(plan: Plan, env: dict[str, str], clock: Clock) -> Outcome:
    """Step 3: the quick comparison on the device; each model's accuracy and time."""
    command, note = plan.study()
    outcome = Outcome("study", f"the quick study (transferlab compare, --device {plan.device})",
                      shlex.join(command), log=plan.work / "logs" / "3-study.log")
    out = plan.work / "quick"
    if out.exists():
        shutil.rmtree(out)  # a fresh comparison: compare would skip models finished earlier
    limit = clock.limit(CAPS_S["study"], later_steps=0)
    if limit < MIN_STEP_S:
        outcome.detail = f"only {max(limit, 0):.0f} s left of the budget"
        return outcome
    code, wall, timed_out = run_command(command, timeout_s=limit, log=outcome.log, env=env)
    finish(outcome, code, wall, timed_out, limit)
    outcome.detail = join(outcome.detail, note)
    models = study_models(out / "comparison.json")
    if models:
        outcome.tables.append(study_table(models))
        outcome.figures.append(("models finished", str(len(models))))
    return outcome


def study_models(path: Path) -> list[dict]:
    """The per-model records of a comparison.json (empty when absent)."""
    if not path.is_file():
        return []
    try:
        return list(json.loads(path.read_text()).get("models", []))
    except json.JSONDecodeError:
        return []


def study_table(models: list[dict]) -> str:
    """Accuracy, time per epoch, throughput and device of every model of the comparison."""
    lines = ["| model | test top-1 | test top-5 | train s/epoch | img/s | wall s | epochs | device |",
             "| --- | --- | --- | --- | --- | --- | --- | --- |"]
    for m in models:
        epochs = m.get("epochs")
        if isinstance(epochs, dict):
            epochs = ", ".join(f"{k} {v}" for k, v in epochs.items())
        lines.append(f"| {_cell(str(m.get('label') or m.get('name')))} | {_pct(m.get('test_acc1'))} | "
                     f"{_pct(m.get('test_acc5'))} | {_num(m.get('epoch_time_s'))} | "
                     f"{_num(m.get('images_per_s'))} | {_num(m.get('wall_time_s'))} | "
                     f"{_cell(str(epochs))} | {_cell(str(m.get('device')))} |")
    return "\n".join(lines)


# ---------------------------------------------------------------------------------------------
# the results file


def join(*parts: str) -> str:
    """Non-empty parts joined with '; '."""
    return "; ".join(p for p in parts if p)


def _cell(text: str) -> str:
    return str(text).replace("|", "\\|").replace("\n", " ")


def _pct(value: object) -> str:
    return f"{100 * value:.1f}%" if isinstance(value, int | float) else "-"


def _num(value: object) -> str:
    return f"{value:.3g}" if isinstance(value, int | float) else "-"


def results_markdown(plan: Plan, facts: dict[str, str], outcomes: list[Outcome], command: str,
                     started: str, total_s: float, complete: bool) -> str:
    """GPU_RESULTS.md: the machine, each step's status and wall time, key figures, failures."""
    lines = ["# GPU check", ""]
    if plan.mode == "gpu":
        lines.append("What the first run on a GPU found: the CUDA tests, the quick benchmark and the "
                     "quick study on the device below (bench/gpu_check.sh; see bench/README.md).")
    else:
        lines.append("**CPU fallback**: no CUDA device was visible (or `--cpu` was given), so the "
                     "gpu tests skip and the benchmark and study ran tiny versions on the CPU. This "
                     "proves the script end to end; none of its figures describe a GPU.")
    if not complete:
        lines += ["", "**Incomplete**: the check was still running when this was written."]
    lines += ["", f"Command: `{command}`", "", "| fact | value |", "| --- | --- |",
              f"| date (UTC) | {started} |", f"| mode | {plan.mode} |"]
    lines += [f"| {k} | {_cell(v)} |" for k, v in facts.items()]
    lines += [f"| total wall time | {total_s:.0f} s |", "", "## Steps", "",
              "| step | status | wall s | key figures | note |", "| --- | --- | --- | --- | --- |"]
    for o in outcomes:
        wall = f"{o.wall_s:.0f}" if o.wall_s is not None else "-"
        figures = ", ".join(f"{k}: {v}" for k, v in o.figures)
        lines.append(f"| {o.name}: {_cell(o.title)} | **{o.status}** | {wall} | {_cell(figures)} | "
                     f"{_cell(o.detail)} |")
    for o in outcomes:
        if o.status in ("skipped", "not run") and not o.tables:
            continue
        lines += ["", f"## {o.name}: {o.title}", "", f"`{o.command}`", ""]
        lines += [*[t + "\n" for t in o.tables]]
        if o.status in ("failed", "timed out"):
            tail = log_tail(o.log)
            if tail:
                lines += [f"Last lines of `{o.log.name}`:", "", "```", tail, "```", ""]
    return "\n".join(lines).rstrip() + "\n"


def write_results(path: Path, text: str) -> None:
    """Write the results file whole (a temporary file renamed into place)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(text)
    tmp.replace(path)


def copy_to_out(out: Path, results: Path, plan: Plan, outcomes: list[Outcome]) -> None:
    """Copy the results, the logs and the key outputs (no checkpoints) under $OUT."""
    out.mkdir(parents=True, exist_ok=True)
    shutil.copyfile(results, out / RESULTS_NAME)
    extra = out / "gpu_check"
    extra.mkdir(exist_ok=True)
    for o in outcomes:
        if o.log is not None and o.log.is_file():
            shutil.copyfile(o.log, extra / o.log.name)
    for source in (plan.work / "gpu_tests.xml", plan.work / "bench_quick.md",
                   plan.work / "bench-cache" / "results.json", plan.work / "quick" / "comparison.json",
                   plan.work / "quick" / "REPORT.md"):
        if source.is_file():
            name = source.name if source.parent == plan.work else f"{source.parent.name}-{source.name}"
            shutil.copyfile(source, extra / name)


# ---------------------------------------------------------------------------------------------
# main


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    """The command line."""
    p = argparse.ArgumentParser(prog="bench/gpu_check.sh", description=__doc__.split("\n")[0])
    p.add_argument("--cpu", action="store_true",
                   help="the CPU fallback even where CUDA is visible (tiny steps on the CPU)")
    p.add_argument("--python", default=os.environ.get("PYTHON") or sys.executable,
                   help="the Python that runs transferlab (default $PYTHON, else this one)")
    p.add_argument("--results", type=Path, default=BENCH / RESULTS_NAME,
                   help=f"results file to write (default bench/{RESULTS_NAME})")
    p.add_argument("--work", type=Path, default=BENCH / ".cache" / "gpu_check",
                   help="scratch folder: logs, decoded data, run folders (default bench/.cache/gpu_check)")
    p.add_argument("--shared", type=Path, default=None,
                   help="the offline material (default: $TRANSFERLAB_SHARED, ../shared or ./shared)")
    p.add_argument("--budget", type=float, default=TOTAL_BUDGET_S,
                   help=f"seconds for the whole check (default {TOTAL_BUDGET_S:.0f})")
    p.add_argument("--only", nargs="+", choices=("gpu_tests", "bench", "study"),
                   help="run only these steps (the others are 'not run')")
    return p.parse_args(argv)


def main(argv: Sequence[str] | None = None) -> int:
    """Run the check; 0 when every step that ran passed (or skipped for want of a GPU), else 1."""
    argv = list(sys.argv[1:] if argv is None else argv)
    args = parse_args(argv)
    clock = Clock(args.budget)
    started = time.strftime("%Y-%m-%d %H:%M", time.gmtime())
    work = args.work.resolve()
    work.mkdir(parents=True, exist_ok=True)
    for old in (work / "logs").glob("*.log"):
        old.unlink()
    env = python_env(work)
    if args.cpu:
        env["CUDA_VISIBLE_DEVICES"] = ""  # the gpu tests then skip, as on a machine without one
    command = "bash bench/gpu_check.sh" + (" " + shlex.join(argv) if argv else "")
    if os.environ.get("CUDA_VISIBLE_DEVICES") is not None:
        command = f"CUDA_VISIBLE_DEVICES={shlex.quote(os.environ['CUDA_VISIBLE_DEVICES'])} " + command
    first, python = setup(args.python, work, env, clock)
    facts = device_facts(python, env)
    gpu = facts.get("cuda") == "true" and not args.cpu
    plan = Plan(mode="gpu" if gpu else "cpu fallback", python=python, work=work,
                shared=find_shared(args.shared), device="cuda" if gpu else "cpu")
    facts["offline material (../shared)"] = str(plan.shared) if plan.shared else "absent"
    outcomes = [first]
    steps: list[tuple[str, Callable[[Plan, dict[str, str], Clock], Outcome]]] = [
        ("gpu_tests", run_gpu_tests), ("bench", run_bench), ("study", run_study)]
    out = Path(os.environ["OUT"]) if os.environ.get("OUT") else None

    def write(complete: bool) -> None:
        total = time.perf_counter() - clock.started
        text = results_markdown(plan, facts, outcomes, command, started, total, complete)
        write_results(args.results, text)
        if out is not None:
            copy_to_out(out, args.results, plan, outcomes)

    write(False)
    for name, step in steps:
        if first.status == "failed":
            outcomes.append(Outcome(name, TITLES[name], "", detail="setup failed: transferlab is not importable"))
        elif args.only and name not in args.only:
            outcomes.append(Outcome(name, TITLES[name], "", detail="not selected (--only)"))
        else:
            print(f"[gpu_check] {name} ({clock.left():.0f} s of the budget left)", flush=True)
            outcomes.append(step(plan, env, clock))
            o = outcomes[-1]
            print(f"[gpu_check] {name}: {o.status}"
                  + (f" in {o.wall_s:.0f} s" if o.wall_s is not None else "")
                  + (f" ({o.detail})" if o.detail else ""), flush=True)
        write(False)
    write(True)
    for o in outcomes:
        wall = f"{o.wall_s:5.0f} s" if o.wall_s is not None else "      -"
        print(f"[gpu_check] {o.name:<10} {o.status:<10} {wall}  {o.detail}", flush=True)
    print(f"[gpu_check] wrote {args.results}" + (f" and copied it to {out}" if out else ""), flush=True)
    bad = [o for o in outcomes if o.status in ("failed", "timed out")]
    return 1 if bad else 0


if __name__ == "__main__":
    sys.exit(main())
