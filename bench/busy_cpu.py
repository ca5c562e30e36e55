"""Training and extraction on a busy CPU: images/s quiet and beside one or two busy loops.

For each workload and each thread-wait policy, a worker process builds the workload once (the
policy is in its environment before torch loads: libgomp reads it then), and the parent asks it
for a timed measurement with 0, 1 and 2 competing `python -c 'while True: pass'` loops at normal
priority running beside it. Every repeat measures quiet, one loop, two loops in turn, and the
policies alternate their order, so a neighbour's burst lands on all of them alike; figures are
medians over the repeats. The parent also counts the CPU time the rest of the machine used during
each measurement (`/proc/stat` minus the worker and the loops): "background" in the table.

Workloads (settings from configs/quick.yaml where it names them, like bench/run.py):

* `cnn`: the benchmark CNN's training epoch (augmentation, step; train_one_epoch on Batches);
* `mnv2_paper`: MobileNetV2 from its paper's table, the same (the issue's collapse: 48 px);
* `mnv2_top_ort`: pretrained MobileNetV2 (../shared/weights) at 224 px, batch 32, the finetune
  recipe's second stage: `photo` augmentation, the frozen part below blocks.5 on ONNX Runtime
  (frozen_prefix.fast_prefix), blocks.5-up trained in PyTorch;
* `extract_ort`: MobileNetV2's frozen backbone on ONNX Runtime (features.make_extractor), the
  quick preset's extraction (96 px, its evaluation batch).

Policies: `default` (the worker imports torch before transferlab, with no wait variable set:
libgomp spins ~300,000 iterations before it sleeps; transferlab before issue 19), `transferlab`
(what `import transferlab` sets now: threads.WAIT_POLICY), `passive` (OMP_WAIT_POLICY=PASSIVE),
`spin:N` (GOMP_SPINCOUNT=N).

    flock /tmp/tl-heavy.lock python bench/busy_cpu.py [--quick] [--workloads cnn,...]
        [--policies default,transferlab] [--repeats 3] [--seconds 3] [--out bench/BUSY_CPU.md]

Prints the table and writes it (with the date, machine and command) to `--out`.
"""

from __future__ import annotations

import argparse
import datetime
import json
import os
import platform
import select
import shlex
import statistics
import subprocess
import sys
import time
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
WEIGHTS = ROOT.parent / "shared" / "weights" / "mobilenetv2_100.coral_int8_in1k.safetensors"
WORKLOADS = ("cnn", "mnv2_paper", "mnv2_top_ort", "extract_ort")
QUICK_WORKLOADS = ("cnn", "mnv2_top_ort", "extract_ort")
WAIT_VARIABLES = ("OMP_WAIT_POLICY", "GOMP_SPINCOUNT", "KMP_BLOCKTIME")
LOADS = (0, 1, 2)
BUSY_LOOP = "while True: pass"
# Issue 19's targets: share of the quiet throughput kept beside 1 and 2 loops, and the new
# policy's quiet throughput against the default's.
TARGETS = {1: 0.60, 2: 0.35}
QUIET_TOLERANCE = 0.05
_TAG = "@@busy_cpu "  # marks the worker's protocol lines on its stdout


# --- policies ---------------------------------------------------------------------------------


def policy_env(policy: str, base: dict[str, str]) -> dict[str, str]:
    """The worker's environment for `policy`: every wait variable removed, then the policy's own."""
    env = {k: v for k, v in base.items() if k not in WAIT_VARIABLES}
    if policy == "passive":
        env["OMP_WAIT_POLICY"] = "PASSIVE"
    elif policy.startswith("spin:"):
        env["GOMP_SPINCOUNT"] = str(int(policy.removeprefix("spin:")))
    elif policy not in ("default", "transferlab"):
        raise ValueError(f"unknown policy {policy!r}: use default, transferlab, passive or spin:N")
    return env


# --- the worker (a fresh process per workload and policy) ---------------------------------------


def _import_torch_under(policy: str) -> dict[str, str]:
    """Load the OpenMP runtime under `policy` (for `default` before transferlab can set anything);
    returns the thread variables torch was loaded with."""
    names = (*WAIT_VARIABLES, "OMP_NUM_THREADS")
    if policy != "default":
        import transferlab  # noqa: F401  - sets threads.WAIT_POLICY unless a variable is set
    seen = {k: os.environ[k] for k in names if k in os.environ}
    import torch  # noqa: F401  - libgomp initialises here

    import transferlab  # noqa: F401,F811
    return seen


def _training(model_name: str, size: int, batch: int, train: str, augment: str, optimizer,
              model_kwargs: dict, native: int, weights: Path | None, frozen_backend: str | None,
              steps: int = 4) -> Callable[[], int]:
    """A training workload: returns one pass of `steps` steps (train_one_epoch) -> images."""
    import numpy as np
    import torch

    from transferlab.data.transforms import BatchTransform
    from transferlab.models import create_model, freeze
    from transferlab.training import Batches, train_one_epoch
    from transferlab.training import features as feats
    from transferlab.training.cpu_memory import keep_freed_memory
    from transferlab.training.frozen_prefix import ThenPrefix, fast_prefix
    from transferlab.training.optim import build_optimizer

    keep_freed_memory()  # as `transferlab train` does
    torch.manual_seed(0)
    model = create_model(model_name, num_classes=10, pretrained=False, weights=weights,
                         input_size=size, head="linear" if weights else "study", **model_kwargs)
    if train.startswith("from:"):
        freeze(model, train.removeprefix("from:"))
    model.to(memory_format=torch.channels_last)
    pre = model.pretrained_cfg
    transform = BatchTransform((size, size), mean=pre.mean, std=pre.std, interpolation=pre.interpolation,
                               augment=augment, native_size=(native, native))
    transform = transform.train() if augment != "none" else transform.eval()
    rng = np.random.default_rng(0)
    images = torch.from_numpy(rng.integers(0, 256, (steps * batch, native, native, 3), dtype=np.uint8))
    labels = torch.from_numpy(rng.integers(0, 10, steps * batch))
    trained, step_transform, channels_last = model, transform, True
    if frozen_backend is not None:
        sample = transform.eval()(images[:batch]).contiguous(memory_format=torch.channels_last)
        transform.train()
        fast = fast_prefix(model, train, frozen_backend, sample, num_images=50_000, log=lambda _: None)
        if fast is None or fast.backend != frozen_backend:
            raise RuntimeError(f"{model_name}: the frozen part did not go to {frozen_backend}")
        trained, step_transform = fast.tail, ThenPrefix(transform, fast.run, True)
        if feats.tail_wants_nchw(fast.out_shape):  # as `transferlab train` does (stage_loop)
            trained.to(memory_format=torch.contiguous_format)
            channels_last = False
    optim = build_optimizer(optimizer, [p for p in trained.parameters() if p.requires_grad])
    epoch = [0]

    def one_pass() -> int:
        epoch[0] += 1
        batches = Batches(images, labels, batch, shuffle=True, seed=0, epoch=epoch[0],
                          transform=step_transform, channels_last=channels_last, drop_last=True,
                          train=True)
        train_one_epoch(trained, batches, optim, quiet=True)
        return steps * batch

    return one_pass


def _extraction(size: int, batch: int, weights: Path | None) -> Callable[[], int]:
    """Frozen MobileNetV2 features on ONNX Runtime: returns one batch's run -> images."""
    import torch

    from transferlab.models import create_model
    from transferlab.training import features as feats

    model = create_model("mobilenet_v2", num_classes=10, pretrained=False, weights=weights,
                         input_size=size, head="linear").eval()
    prefix, _ = feats.split_model(model, "head")
    prefix.eval()
    sample = torch.randn(batch, 3, size, size).contiguous(memory_format=torch.channels_last)
    extractor, used = feats.make_extractor(prefix, "onnxruntime", sample, 50_000, log=lambda _: None)
    if used != "onnxruntime":
        raise RuntimeError(f"extraction fell back to {used}")

    def one_pass() -> int:
        with torch.inference_mode():
            extractor(sample)
        return batch

    return one_pass


def build_workload(name: str, weights: Path | None) -> tuple[Callable[[], int], str]:
    """(one pass -> images, description) of a workload, built as `transferlab train` would.

    `weights`: the pretrained MobileNetV2 file (needed by mnv2_top_ort; extract_ort uses it when
    given, random weights otherwise: its speed does not depend on them)."""
    from presets import resolve

    from transferlab.config import StageConfig

    preset = resolve("quick", ROOT / "configs")
    if name in ("cnn", "mnv2_paper"):
        model = "benchmark_cnn" if name == "cnn" else "mobilenet_v2_paper"
        work, _ = next((w, s) for w, s in preset.train if w.model == model)
        native = 32  # CIFAR, what the quick preset trains on
        # Passes of about a second quiet: the per-epoch overhead stays small, as in a real epoch.
        fn = _training(work.model, work.input_size, work.batch, work.train, work.augment, work.optimizer,
                       work.model_kwargs, native, None, None, steps=16 if name == "cnn" else 4)
        return fn, (f"{work.model} {work.input_size} px, batch {work.batch}, augment {work.augment}, "
                    f"train {work.train}")
    if name == "mnv2_top_ort":
        stage = StageConfig(name="finetune", train="from:blocks.5", optimizer="adam", lr=1e-4)
        if weights is None:
            raise ValueError("mnv2_top_ort needs the pretrained MobileNetV2 weights (--weights)")
        fn = _training("mobilenet_v2", 224, 32, stage.train, "photo", stage, {}, 256, weights, "onnxruntime",
                       steps=2)
        return fn, ("mobilenet_v2 (pretrained) 224 px from 256 px, batch 32, augment photo, "
                    "blocks.5-up trained, frozen part on ONNX Runtime")
    if name == "extract_ort":
        work, _ = next((w, s) for w, s in preset.extract if w.model == "mobilenet_v2")
        fn = _extraction(work.input_size, work.batch, weights)
        return fn, f"mobilenet_v2 frozen backbone {work.input_size} px, batch {work.batch}, ONNX Runtime"
    raise ValueError(f"unknown workload {name!r}")


def _say(payload: dict) -> None:
    sys.stdout.write(_TAG + json.dumps(payload) + "\n")
    sys.stdout.flush()


def worker(name: str, policy: str, weights: Path | None) -> int:
    """Serve measurements: read `SECONDS` lines, answer {"images", "seconds"}; EOF ends."""
    seen = _import_torch_under(policy)
    import torch

    one_pass, description = build_workload(name, weights)
    one_pass()  # warm-up: allocator, oneDNN primitives, ONNX Runtime's arena
    _say({"ready": True, "description": description, "threads": torch.get_num_threads(),
          "env": seen})
    for line in sys.stdin:
        seconds = float(line)
        one_pass()  # the first pass after an idle wait wakes the threads: not timed
        images, start = 0, time.perf_counter()
        while (elapsed := time.perf_counter() - start) < seconds or images == 0:
            images += one_pass()
        _say({"images": images, "seconds": elapsed})
    return 0


# --- the parent: competitors, measurements, the table -------------------------------------------


def _cpu_ticks() -> int:
    """Busy ticks of the whole machine (/proc/stat: everything but idle and iowait)."""
    with open("/proc/stat", encoding="ascii") as f:
        fields = [int(x) for x in f.readline().split()[1:]]
    return sum(fields) - fields[3] - fields[4] - sum(fields[8:])  # guest time is in user already


def _process_ticks(pid: int) -> int:
    """user + system ticks of one process and its waited-for children."""
    try:
        with open(f"/proc/{pid}/stat", encoding="ascii") as f:
            fields = f.read().rsplit(")", 1)[1].split()
    except OSError:
        return 0
    return sum(int(x) for x in fields[11:15])


@contextmanager
def competitors(n: int) -> Iterator[list[subprocess.Popen]]:
    """`n` busy loops at normal priority for the duration of the block."""
    loops = [subprocess.Popen([sys.executable, "-c", BUSY_LOOP]) for _ in range(n)]
    try:
        time.sleep(0.3 if n else 0.0)  # running, not starting
        yield loops
    finally:
        for p in loops:
            p.kill()
        for p in loops:
            p.wait()


class Worker:
    """One workload under one policy in its own process."""

    def __init__(self, name: str, policy: str, weights: Path | None) -> None:
        self.name, self.policy = name, policy
        env = policy_env(policy, dict(os.environ))
        env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(ROOT / "src"), str(ROOT / "bench"),
                                                          env.get("PYTHONPATH")]))
        extra = ["--weights", str(weights)] if weights else []
        self.proc = subprocess.Popen([sys.executable, __file__, "--worker", name, "--policy", policy, *extra],
                                     stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True, env=env)
        self.info: dict = {}

    def read(self, timeout: float = 900.0) -> dict:
        """The worker's next protocol line (other output is passed through to stderr)."""
        deadline = time.monotonic() + timeout
        assert self.proc.stdout is not None
        while True:
            if not select.select([self.proc.stdout], [], [], max(0.0, deadline - time.monotonic()))[0]:
                raise TimeoutError(f"{self.name}/{self.policy}: no answer in {timeout:.0f} s")
            line = self.proc.stdout.readline()
            if not line:
                raise RuntimeError(f"{self.name}/{self.policy}: the worker exited ({self.proc.wait()})")
            if line.startswith(_TAG):
                return json.loads(line[len(_TAG):])
            sys.stderr.write(line)

    def measure(self, seconds: float) -> tuple[dict, int]:
        """One timed measurement: the worker's answer and its CPU ticks during it."""
        assert self.proc.stdin is not None
        before = _process_ticks(self.proc.pid)
        self.proc.stdin.write(f"{seconds}\n")
        self.proc.stdin.flush()
        answer = self.read()
        return answer, _process_ticks(self.proc.pid) - before

    def close(self) -> None:
        """End the worker (EOF on its stdin)."""
        if self.proc.stdin:
            self.proc.stdin.close()
        try:
            self.proc.wait(timeout=60)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()


@dataclass
class Cell:
    """The measurements of one workload x policy x number of loops."""

    rates: list[float] = field(default_factory=list)  # images/s per repeat
    background: list[float] = field(default_factory=list)  # other processes' CPUs per repeat

    @property
    def rate(self) -> float:
        """Median images/s."""
        return statistics.median(self.rates)


def run_workload(name: str, policies: Sequence[str], repeats: int, seconds: float, weights: Path | None,
                 log: Callable[[str], None]) -> tuple[dict[tuple[str, int], Cell], dict[str, dict]]:
    """Measure one workload under every policy: {(policy, loops): Cell}, {policy: worker info}."""
    workers = {p: Worker(name, p, weights) for p in policies}
    cells = {(p, n): Cell() for p in policies for n in LOADS}
    hz = os.sysconf("SC_CLK_TCK")
    try:
        for w in workers.values():
            w.info = w.read()
            log(f"{name}/{w.policy}: {w.info['description']}; {w.info['threads']} threads, "
                f"env {w.info['env'] or '{}'}")
        for rep in range(repeats):
            order = list(policies) if rep % 2 == 0 else list(reversed(policies))
            for policy in order:
                for n in LOADS:
                    with competitors(n) as loops:
                        machine, loop_ticks = _cpu_ticks(), [_process_ticks(p.pid) for p in loops]
                        wall = time.perf_counter()
                        answer, own = workers[policy].measure(seconds)
                        wall = time.perf_counter() - wall
                        machine = _cpu_ticks() - machine
                        loop_used = sum(_process_ticks(p.pid) - t for p, t in zip(loops, loop_ticks, strict=True))
                    rate = answer["images"] / answer["seconds"]
                    # Over the whole exchange (the worker's untimed pass included), in CPUs.
                    others = max(0, machine - own - loop_used) / hz / wall
                    cell = cells[(policy, n)]
                    cell.rates.append(rate)
                    cell.background.append(others)
                    log(f"  {name} repeat {rep + 1} {policy:12s} {n} loops: {rate:8.1f} img/s "
                        f"(background {others:.2f} CPUs)")
    finally:
        for w in workers.values():
            w.close()
    return cells, {p: workers[p].info for p in policies}


def table(results: dict[str, tuple[dict[tuple[str, int], Cell], dict[str, dict]]],
          policies: Sequence[str]) -> list[str]:
    """The markdown table: median images/s and the share of the quiet rate kept under load."""
    lines = ["| workload | policy | quiet img/s | 1 loop img/s (of quiet) | 2 loops img/s (of quiet) "
             "| quiet vs default | background CPUs (median) |",
             "| --- | --- | --- | --- | --- | --- | --- |"]
    for name, (cells, _) in results.items():
        for policy in policies:
            quiet = cells[(policy, 0)].rate
            loaded = [f"{cells[(policy, n)].rate:.1f} ({cells[(policy, n)].rate / quiet:.0%})" for n in (1, 2)]
            base = cells.get(("default", 0))
            versus = f"{quiet / base.rate:.1%}" if base and policy != "default" else "-"
            background = statistics.median(b for n in LOADS for b in cells[(policy, n)].background)
            lines.append(f"| {name} | {policy} | {quiet:.1f} | {loaded[0]} | {loaded[1]} | {versus} "
                         f"| {background:.2f} |")
    return lines


def verdicts(results: dict, policy: str) -> list[str]:
    """One line per workload: does `policy` meet the issue's targets?"""
    out = []
    for name, (cells, _) in results.items():
        quiet = cells[(policy, 0)].rate
        checks = [f"{n} loop{'s' if n > 1 else ''} {cells[(policy, n)].rate / quiet:.0%} "
                  f"(>= {share:.0%}: {'met' if cells[(policy, n)].rate / quiet >= share else 'NOT met'})"
                  for n, share in TARGETS.items()]
        if ("default", 0) in cells and policy != "default":
            ratio = quiet / cells[("default", 0)].rate
            checks.append(f"quiet {ratio:.1%} of default (>= {1 - QUIET_TOLERANCE:.0%}: "
                          f"{'met' if ratio >= 1 - QUIET_TOLERANCE else 'NOT met'})")
        out.append(f"- {name}, {policy}: " + "; ".join(checks))
    return out


def _autogroup() -> bool:
    """Whether the kernel groups processes by session (niceness then orders them only within one)."""
    try:
        return Path("/proc/sys/kernel/sched_autogroup_enabled").read_text().strip() == "1"
    except OSError:
        return False


def machine() -> str:
    """CPU model, logical CPUs, usable CPUs, Python and platform."""
    model = "unknown"
    try:
        with open("/proc/cpuinfo", encoding="utf-8") as f:
            model = next((ln.split(":", 1)[1].strip() for ln in f if ln.startswith("model name")), model)
    except OSError:
        pass
    return (f"{model}, {os.cpu_count()} logical CPUs ({len(os.sched_getaffinity(0))} usable), "
            f"Python {platform.python_version()}, {platform.platform()}")


def write_markdown(path: Path, results: dict, policies: Sequence[str], args: argparse.Namespace,
                   command: str, started: str, load_before: tuple[float, ...], wall_s: float) -> None:
    """BUSY_CPU.md: the table, the verdicts, every repeat, and what it was measured on."""
    from transferlab.io import atomic_write_text

    new = next((p for p in policies if p != "default"), None)
    lines = ["# Training on a busy CPU (`bench/busy_cpu.py`)", "",
             f"Measured {started} on {machine()}; `{command}` ({wall_s:.0f} s). Load average before: "
             f"{', '.join(f'{x:.2f}' for x in load_before)}.", "",
             "Images/s (median of "
             f"{args.repeats} repeats of {args.seconds:g} s each) with 0, 1 and 2 competing "
             f"`python -c '{BUSY_LOOP}'` loops at normal priority, each repeat measuring quiet, one "
             "loop and two loops in turn, the policies alternating their order. Each workload and "
             "policy runs in a fresh process (the policy must be set before torch loads). The machine "
             "is shared with other jobs: \"background\" is the CPU time (in CPUs) that processes other "
             "than the worker and its loops used during the measurements, so figures may carry noise "
             "from them."
             + (f" The workers and their loops ran at niceness {args.nice} (the same for both, so a "
                "loop competes at the worker's own priority)"
                + ("; the kernel schedules by session here (`sched_autogroup_enabled` = 1), so that "
                   "ordered them only against their own session, not against other jobs."
                   if _autogroup() else ", which keeps the other jobs' share small.")
                if args.nice else ""), "",
             *table(results, policies), ""]
    if new:
        lines += ["Against issue 19's targets (>= 60% of quiet with one loop, >= 35% with two, quiet "
                  "within 5% of the default):", "", *verdicts(results, new), ""]
    lines += ["Workloads and worker settings:", ""]
    for name, (_, infos) in results.items():
        first = next(iter(infos.values()))
        lines.append(f"- `{name}`: {first['description']}; {first['threads']} PyTorch threads; "
                     + ", ".join(f"{p}: env {info['env'] or '{}'}" for p, info in infos.items()))
    lines += ["", "Every repeat (images/s, in measurement order):", ""]
    for name, (cells, _) in results.items():
        for (policy, n), cell in cells.items():
            lines.append(f"- {name} {policy} {n} loops: " + ", ".join(f"{r:.1f}" for r in cell.rates)
                         + " (background " + ", ".join(f"{b:.2f}" for b in cell.background) + ")")
    atomic_write_text(path, "\n".join(lines) + "\n")


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true",
                        help=f"workloads {','.join(QUICK_WORKLOADS)}, 3 repeats of 2 s (about 4 min)")
    parser.add_argument("--workloads", default=None, help=f"comma-separated, from {','.join(WORKLOADS)}")
    parser.add_argument("--policies", default="default,transferlab",
                        help="comma-separated: default, transferlab, passive, spin:N")
    parser.add_argument("--repeats", type=int, default=None, help="repeats per cell (default 3, 5 without --quick)")
    parser.add_argument("--seconds", type=float, default=None, help="seconds per measurement (2 quick, 4)")
    parser.add_argument("--weights", type=Path, default=WEIGHTS,
                        help="pretrained MobileNetV2 .safetensors (default: ../shared/weights/...)")
    parser.add_argument("--nice", type=int, default=0,
                        help="run the workers and their loops at this niceness (e.g. -10 as root): "
                             "the other jobs then take less from either while a loop keeps the "
                             "worker's own priority (not across sessions where the kernel's "
                             "autogroup scheduling is on)")
    parser.add_argument("--out", type=Path, default=ROOT / "bench" / "BUSY_CPU.md")
    parser.add_argument("--worker", help=argparse.SUPPRESS)
    parser.add_argument("--policy", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.worker:
        return worker(args.worker, args.policy, args.weights if args.weights.is_file() else None)

    names = args.workloads.split(",") if args.workloads else list(QUICK_WORKLOADS if args.quick else WORKLOADS)
    policies = args.policies.split(",")
    for p in policies:
        policy_env(p, {})  # an unknown policy fails here, not in a worker
    unknown = set(names) - set(WORKLOADS)
    if unknown:
        parser.error(f"unknown workloads {sorted(unknown)}; choose from {', '.join(WORKLOADS)}")
    args.repeats = args.repeats or (3 if args.quick else 5)
    args.seconds = args.seconds or (2.0 if args.quick else 4.0)
    if "mnv2_top_ort" in names and not args.weights.is_file():
        print(f"skipping mnv2_top_ort: {args.weights} is absent (the pretrained MobileNetV2 it fine-tunes)",
              file=sys.stderr)
        names.remove("mnv2_top_ort")
    if args.nice:
        os.nice(args.nice)  # inherited by the workers and the loops
    started = datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%d %H:%M UTC")
    load_before = os.getloadavg()
    start = time.perf_counter()
    results = {}
    for name in names:
        results[name] = run_workload(name, policies, args.repeats, args.seconds,
                                     args.weights if args.weights.is_file() else None,
                                     log=lambda s: print(s, file=sys.stderr, flush=True))
    lines = table(results, policies)
    print("\n".join(lines))
    new = next((p for p in policies if p != "default"), None)
    if new:
        print("\n".join(verdicts(results, new)))
    command = "python bench/busy_cpu.py " + " ".join(shlex.quote(a) for a in (argv if argv is not None else sys.argv[1:]))
    sys.path.insert(0, str(ROOT / "src"))
    write_markdown(args.out, results, policies, args, command.strip(), started, load_before,
                   time.perf_counter() - start)
    print(f"wrote {args.out}", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
