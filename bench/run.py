"""Benchmark transferlab against the study's stack (Keras 3 on TensorFlow) and against the machine.

One command, one run, one machine::

    bench/.venv/bin/python bench/run.py            # full run (about 10 minutes on 2 CPU cores)
    bench/.venv/bin/python bench/run.py --quick    # quick preset only, small counts (1-2 minutes)

It measures training throughput, the head stage, frozen-feature extraction, the data pipeline and
the machine's float32 matmul peak, prints the table and writes bench/RESULTS.md (raw numbers in
bench/.cache/results.json). Without TensorFlow the Keras rows are marked "not run" with the reason.
See bench/README.md.
"""

from __future__ import annotations

import argparse
import dataclasses
import importlib.util
import json
import os
import shlex
import statistics
import subprocess
import sys
import time
import traceback
from collections.abc import Callable
from pathlib import Path
from typing import Any

BENCH = Path(__file__).resolve().parent
ROOT = BENCH.parent
sys.path.insert(0, str(BENCH))

import harness  # noqa: E402
import numpy as np  # noqa: E402
import presets  # noqa: E402
import tl_workloads as tl  # noqa: E402
import torch  # noqa: E402
from results_md import Row, console_table, median_rows, results_markdown, write_atomic  # noqa: E402

from transferlab.errors import TransferlabError  # noqa: E402

DEFAULT_DATA = ROOT.parent / "shared" / "data" / "cifar10-jpeg.tar.gz"
CACHE = BENCH / ".cache"
HEAD_EPOCHS = 10  # the "10-epoch head stage"
EXTRACT_SPLIT = 45_000  # CIFAR's training split less 10% validation: what `transferlab train` extracts
EXTRACT_BACKBONES = ("inception_v3", "mobilenet_v2")  # the pretrained backbones a user transfers from
SECTIONS = {
    "train": "Training throughput (model step, images/s)",
    "head": "Head stage (InceptionV3, frozen backbone)",
    "extract": "Frozen-feature extraction (images/s)",
    "pipeline": "Data pipeline against the model it feeds (images/s)",
    "peak": "Machine peak (float32 matmul)",
}
# The pipeline rows always augment (the issue: decode, resize, augment): with the preset's own
# augmentation, or where the preset has none, the study's Keras ImageDataGenerator recipe ("study")
# and the usual CIFAR crop + flip ("standard").
PIPELINE_AUGMENT = {"study": "study", "quick": "standard"}
REPRODUCE_ENV = ("OMP_WAIT_POLICY", "OMP_NUM_THREADS", "CUDA_VISIBLE_DEVICES", "TF_ENABLE_ONEDNN_OPTS")
OFF_CPU_FAST = ("not measured off the CPU: there transferlab runs the frozen part eagerly with the "
                "tail (the plain row above)")
PEER_LABELS = {SECTIONS["pipeline"]: "model trains at", SECTIONS["peak"]: "TensorFlow"}


@dataclasses.dataclass(frozen=True)
class Budget:
    """How much work each measurement does (the run's length scales with it)."""

    presets: tuple[str, ...]
    warmup: int  # untimed training steps
    repeats: int  # timed training steps (median reported)
    extract_repeats: int  # timed extraction batches
    head_images: dict[str, int]  # images in the head-stage comparison, per preset
    pipeline_repeats: int  # timed pipeline batches
    decode_images: int  # JPEG files decoded cold
    peak_n: int  # matmul side on the CPU (x2 on a GPU)
    extract_backend: dict[str, str]  # feature-extraction backend of the extraction rows, per preset


# "auto" extraction is what `transferlab train` does for a 45,000-image split: on the CPU, ONNX
# Runtime on the exported prefix (a few seconds of set-up; features.auto_backend).
FULL = Budget(("study", "quick"), warmup=2, repeats=5, extract_repeats=3,
              head_images={"study": 128, "quick": 256}, pipeline_repeats=10, decode_images=2000,
              peak_n=4096, extract_backend={"study": "auto", "quick": "auto"})
QUICK = Budget(("quick",), warmup=1, repeats=3, extract_repeats=2, head_images={"quick": 128},
               pipeline_repeats=5, decode_images=500, peak_n=2048, extract_backend={"quick": "auto"})


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    """The command line."""
    p = argparse.ArgumentParser(prog="bench/run.py", description=__doc__.split("\n")[0])
    p.add_argument("--quick", action="store_true", help="quick preset only, small repeat counts (1-2 min)")
    p.add_argument("--device", default="auto", help="auto | cpu | cuda | cuda:N (default auto)")
    p.add_argument("--threads", type=int, default=harness.usable_cpus(),
                   help="intra-op threads for PyTorch and TensorFlow alike (default: usable CPUs)")
    p.add_argument("--data", type=Path, default=DEFAULT_DATA,
                   help="image-folder archive to take real images from (default ../shared/data/cifar10-jpeg.tar.gz)")
    p.add_argument("--configs", type=Path, default=ROOT / "configs", help="folder of preset configs")
    p.add_argument("--out", type=Path, default=BENCH / "RESULTS.md", help="markdown report to write")
    p.add_argument("--cache-dir", type=Path, default=CACHE,
                   help="scratch folder: the decode subset, the peer's files, results.json "
                        "(default bench/.cache; another one keeps a tiny run's files apart)")
    p.add_argument("--no-keras", action="store_true", help="skip the Keras/TensorFlow peer")
    p.add_argument("--repeats", type=int, default=None,
                   help="interleaved repeats of every measurement, transferlab then Keras each time; "
                        "each row's ratio is the median of the repeats' ratios (default 3; 1 with --quick)")
    p.add_argument("--extract-backend", choices=("auto", "eager", "compile", "onnxruntime"), default=None,
                   help="feature-extraction backend of the extraction rows (default: auto, what "
                        "`transferlab train` picks)")
    return p.parse_args(argv)


def log(message: str) -> None:
    """Progress on stderr, so stdout holds only the table."""
    print(f"[bench {time.strftime('%H:%M:%S')}] {message}", file=sys.stderr, flush=True)


def attempt(what: str, fn: Callable[[], Any], errors: dict[str, str]) -> Any:
    """Run one measurement; on failure record why (the row says "not run") and go on."""
    log(what)
    try:
        return fn()
    except Exception as err:  # noqa: BLE001 - one broken measurement must not lose the others
        errors[what] = f"{type(err).__name__}: {err}"
        log(f"  failed: {errors[what]}")
        traceback.print_exc(file=sys.stderr)
        return None


# ---------------------------------------------------------------------------------------------
# data


def load_images(archive: Path, count: int) -> tuple[np.ndarray, np.ndarray]:
    """`count` training images (seeded random subset, all classes) through transferlab's loader."""
    from transferlab.data import load_dataset

    if not archive.exists():
        raise TransferlabError(
            f"{archive} not found: pass --data with an image-folder archive (train/<class>/*.jpg, "
            "test/<class>/*.jpg), e.g. the shared CIFAR-10 copy"
        )
    train = load_dataset(f"folder:{archive}")["train"]
    order = np.random.default_rng(0).permutation(len(train.labels))[:count]
    return train.images[order], train.labels[order]


# ---------------------------------------------------------------------------------------------
# the Keras peer


def _optimizer_spec(work: tl.Workload) -> dict[str, Any]:
    return {"name": work.optimizer.optimizer, "lr": work.optimizer.lr, "momentum": work.optimizer.momentum}


def mobilenet_table() -> dict[str, Any]:
    """transferlab's MobileNetV2 table, for the peer (which must not import PyTorch)."""
    from transferlab.models.mobilenet_v2 import BOTTLENECK_ROWS, LAST_CHANNELS, STEM_CHANNELS

    return {"rows": [list(r) for r in BOTTLENECK_ROWS], "stem": STEM_CHANNELS, "last": LAST_CHANNELS}


def keras_jobs(all_presets: dict[str, presets.Preset], budget: Budget) -> list[dict[str, Any]]:
    """The peer's job list, mirroring the transferlab measurements one to one."""
    jobs: list[dict[str, Any]] = [{"id": "peak", "kind": "peak", "n": budget.peak_n, "repeats": 5}]
    for name, preset in all_presets.items():
        for work, _ in preset.train:
            jobs.append({"id": f"train:{name}:{work.model}", "kind": "train", "model": work.model,
                         "model_kwargs": work.model_kwargs, "table": mobilenet_table(),
                         "num_classes": work.num_classes,
                         "input_size": work.input_size, "batch": work.batch, "train": work.train,
                         "optimizer": _optimizer_spec(work), "warmup": budget.warmup,
                         "repeats": budget.repeats})
        for work, _ in preset.extract:
            jobs.append({"id": f"extract:{name}:{work.model}", "kind": "extract", "model": work.model,
                         "input_size": work.input_size, "batch": work.batch, "warmup": 1,
                         "repeats": budget.extract_repeats})
        work = preset.head[0]
        jobs.append({"id": f"head:{name}", "kind": "head_stage", "model": work.model,
                     "num_classes": work.num_classes, "input_size": work.input_size, "batch": work.batch,
                     "images": budget.head_images[name], "epochs": HEAD_EPOCHS,
                     "optimizer": _optimizer_spec(work)})
    return jobs


def keras_unavailable(device: torch.device) -> str | None:
    """Why the Keras peer cannot run here, or None when it can."""
    if importlib.util.find_spec("tensorflow") is None or importlib.util.find_spec("keras") is None:
        return (f"TensorFlow/Keras not importable from {sys.executable}; install bench/requirements.txt "
                "into bench/.venv and run bench/.venv/bin/python bench/run.py")
    return None


def run_keras(jobs: list[dict[str, Any]], images: np.ndarray, labels: np.ndarray, threads: int,
              device: torch.device, cache: Path = CACHE) -> dict[str, Any]:
    """Run the peer in its own process; returns its JSON (environment + per-job results)."""
    cache.mkdir(parents=True, exist_ok=True)
    data = cache / "keras_data.npz"
    np.savez(data, images=images, labels=labels)
    spec, out = cache / "keras_spec.json", cache / "keras_out.json"
    spec.write_text(json.dumps({"threads": threads, "data": str(data), "jobs": jobs}, indent=1))
    out.unlink(missing_ok=True)
    env = dict(os.environ)
    if device.type != "cuda":
        env["CUDA_VISIBLE_DEVICES"] = ""  # a CPU comparison: keep TensorFlow off any GPU too
    proc = subprocess.run([sys.executable, str(BENCH / "keras_peer.py"), str(spec), str(out)],
                          env=env, stdout=sys.stderr, stderr=sys.stderr, check=False)
    if not out.is_file():
        return {"error": f"the Keras peer exited with code {proc.returncode} and wrote nothing"}
    result = json.loads(out.read_text())
    if proc.returncode != 0:
        result["error"] = f"the Keras peer exited with code {proc.returncode}"
    return result


# ---------------------------------------------------------------------------------------------
# rows


def keras_rate(keras: dict[str, Any], job_id: str, images_key: str = "batch") -> tuple[float | None, str]:
    """(images/s, why missing) for one peer job."""
    res = keras.get("jobs", {}).get(job_id)
    if res is None:
        return None, keras.get("skipped") or keras.get("error") or "not run by the Keras peer"
    if "error" in res:
        return None, f"Keras failed: {res['error']}"
    return res[images_key] / statistics.median(res["times_s"]), ""


def fraction(flops: float | None, rate: float | None, peak: float | None) -> float | None:
    """Achieved FLOP/s over the machine's peak."""
    if not flops or not rate or not peak:
        return None
    return flops * rate / peak


def join_notes(*notes: str) -> str:
    """Non-empty notes joined with '; '."""
    return "; ".join(n for n in notes if n)


def build_rows(ctx: dict[str, Any]) -> list[Row]:
    """All table rows from the transferlab measurements and the peer's results."""
    rows: list[Row] = []
    keras, errors, peak = ctx["keras"], ctx["errors"], ctx["peak"]
    all_presets: dict[str, presets.Preset] = ctx["presets"]
    # Training throughput
    for name, preset in all_presets.items():
        for work, source in preset.train:
            res = ctx["train"].get((name, work.model))
            ours = res["timing"].rate if res else None
            flops = res["flops_per_image"] if res else None
            theirs, why = keras_rate(keras, f"train:{name}:{work.model}")
            prec = f", {res['precision']}" if res and res["precision"] != "fp32" else ""
            options = "".join(f", {k}={v}" for k, v in work.model_kwargs.items())
            rows.append(Row(
                SECTIONS["train"], f"{work.model} (train {work.train})",
                f"{name}: {work.input_size}px, batch {work.batch}, {work.optimizer.optimizer}{prec}{options} [{source}]",
                "img/s", ours, theirs, True, 1.0, fraction(flops, ours, peak), fraction(flops, theirs, peak),
                join_notes(errors.get(f"train {name} {work.model}", ""), why,
                           f"{flops / 1e9:.3g} GFLOP/img" if flops else ""),
            ))
            if not work.train.startswith("from:"):
                continue
            fast = ctx["train_fast"].get((name, work.model))
            cached = ctx["train_cached"].get((name, work.model))
            used = fast["frozen_backend"] if fast else ctx["extract_backend"] or "auto"
            c_flops = cached["flops_per_image"] if cached else None
            variants = (  # (measurement, label, error key, FLOPs for ours, notes)
                (fast, f"frozen part on {used}", "train fast", flops,
                 ["transferlab's path for an augmented stage: the frozen part runs forward on a fast "
                  "engine every step (frozen_prefix.fast_prefix), the tail trains in PyTorch; both "
                  "sides recompute the frozen part"]),
                (cached, "cached below", "train cached", c_flops,
                 ["transferlab trains the tail on activations cached once (its path without "
                  "augmentation when they fit cache_memory_gb); Keras recomputes the frozen part",
                  f"tail {c_flops / 1e9:.3g} GFLOP/img" if c_flops else ""]),
            )
            for res_v, label, key, v_flops, notes in variants:
                rate = res_v["timing"].rate if res_v else None
                rows.append(Row(
                    SECTIONS["train"], f"{work.model} (train {work.train}, {label})",
                    f"{name}: {work.input_size}px, batch {work.batch}, {work.optimizer.optimizer} [{source}]",
                    "img/s", rate, theirs, True, 1.0, fraction(v_flops, rate, peak),
                    fraction(flops, theirs, peak),
                    join_notes(errors.get(f"{key} {name} {work.model}", ""), why, *notes,
                           OFF_CPU_FAST if key == "train fast" and ctx.get("device_type", "cpu") != "cpu" else ""),
                ))
    # Head stage
    for name, preset in all_presets.items():
        work, source = preset.head
        res = ctx["head"].get(name)
        kres = keras.get("jobs", {}).get(f"head:{name}")
        k_epoch = k_total = None
        why = keras.get("skipped") or keras.get("error") or "not run by the Keras peer"
        if kres and "error" not in kres:
            times = kres["epoch_times_s"]
            # Epoch 1 also traces the graph; steady state is what later epochs cost.
            k_epoch = statistics.median(times[1:] or times)
            k_total = sum(times)
            why = ""
        elif kres:
            why = f"Keras failed: {kres['error']}"
        n = ctx["budget"].head_images[name]
        setting = f"{name}: {work.input_size}px, {n} images, batch {work.batch}, {work.optimizer.optimizer} [{source}]"
        err = errors.get(f"head stage {name}", "")
        rows.append(Row(SECTIONS["head"], "one head epoch: cached features vs Keras fit on a frozen base",
                        setting, "s", statistics.median(res["epoch_times_s"]) if res else None, k_epoch,
                        False, 100.0, note=join_notes(err, why, "median epoch (Keras: epochs 2-10)")))
        rows.append(Row(SECTIONS["head"], f"{HEAD_EPOCHS}-epoch head stage end to end",
                        setting, "s", res["total_s"] if res else None, k_total, False, 10.0,
                        note=join_notes(err, why, f"transferlab: extraction {res['extract_s']:.2f} s "
                                        f"({res['backend']}) + {HEAD_EPOCHS} epochs {sum(res['epoch_times_s']):.2f} s"
                                        if res else "")))
    # Extraction
    for name, preset in all_presets.items():
        for work, source in preset.extract:
            res = ctx["extract"].get((name, work.model))
            ours = res["timing"].rate if res else None
            flops = res["flops_per_image"] if res else None
            theirs, why = keras_rate(keras, f"extract:{name}:{work.model}")
            backend = f", {res['backend']} (setup {res['setup_s']:.0f} s)" if res else ""
            rows.append(Row(SECTIONS["extract"], work.model,
                            f"{name}: {work.input_size}px, batch {work.batch}{backend} [{source}]",
                            "img/s", ours, theirs, True, None, fraction(flops, ours, peak),
                            fraction(flops, theirs, peak),
                            join_notes(errors.get(f"extract {name} {work.model}", ""), why,
                                       f"{flops / 1e9:.3g} GFLOP/img" if flops else "")))
            peer = res.get("onnxruntime_peer") if res else None
            if peer:
                rows.append(Row(SECTIONS["extract"], f"{work.model} vs plain ONNX Runtime",
                                f"{name}: {work.input_size}px, batch {work.batch}{backend} [{source}]",
                                "img/s", peer["ours"], peer["theirs"], True, 0.9,
                                note="peer: onnxruntime.InferenceSession with its defaults on the same "
                                     "exported prefix; median of 3 interleaved rounds"))
    # Data pipeline
    fastest = None
    for name, preset in all_presets.items():
        for work, _ in preset.train:
            pipe = ctx["pipeline"].get((name, work.model))
            res = ctx["train"].get((name, work.model))
            model_rate = res["timing"].rate if res else None
            if model_rate and (fastest is None or model_rate > fastest[0]):
                fastest = (model_rate, f"{work.model} {name}")
            augment = work.augment if work.augment != "none" else PIPELINE_AUGMENT[name]
            rows.append(Row(SECTIONS["pipeline"], f"gather + augment {augment} + resize + normalise",
                            f"{name}: {work.model}, 32px -> {work.input_size}px, batch {work.batch}",
                            "img/s", pipe.rate if pipe else None, model_rate, True, 5.0,
                            note=errors.get(f"pipeline {name} {work.model}", "")))
    dec = ctx["decode"]
    rows.append(Row(SECTIONS["pipeline"], "JPEG decode, cold cache (once per dataset)",
                    f"{dec['images']} files from {ctx['data_name']}" if dec else "",
                    "img/s", dec["images"] / dec["seconds"] if dec else None,
                    fastest[0] if fastest else None, True, 5.0,
                    note=join_notes(errors.get("decode", ""),
                                    f"against the fastest model ({fastest[1]})" if fastest else "",
                                    "decoded arrays are cached on disk: later epochs and runs never decode")))
    # Peak
    tf_peak = keras.get("jobs", {}).get("peak", {}).get("flops_per_s")
    rows.append(Row(SECTIONS["peak"], f"float32 matmul {ctx['peak_n']}x{ctx['peak_n']}",
                    ctx["device_name"], "GFLOP/s", peak and ctx["torch_peak"] / 1e9,
                    tf_peak and tf_peak / 1e9, True, None,
                    note="PyTorch column is the reference for every '% of peak' figure"
                    + ("" if tf_peak else "; TensorFlow: " + (keras.get("skipped") or keras.get("error") or "not run"))))
    return rows


def measure_transferlab(ctx: dict[str, Any], images: np.ndarray, labels: np.ndarray,
                        device: torch.device, budget: Budget, args: argparse.Namespace) -> None:
    """Every transferlab measurement, into ctx."""
    errors = ctx["errors"]
    for name, preset in ctx["presets"].items():
        for work, _ in preset.train:
            ctx["train"][(name, work.model)] = attempt(
                f"train {name} {work.model}",
                lambda w=work: tl.train_steps(w, images, labels, device, warmup=budget.warmup,
                                              repeats=budget.repeats), errors)
            # Off the CPU `transferlab train` runs a frozen part eagerly with the rest of the model
            # (fast_prefix is CPU-only), which is the row above: there is no fast-engine row there.
            if work.train.startswith("from:") and device.type == "cpu":
                ctx["train_fast"][(name, work.model)] = attempt(
                    f"train fast {name} {work.model}",
                    lambda w=work: tl.train_steps(w, images, labels, device, warmup=budget.warmup,
                                                  repeats=budget.repeats,
                                                  frozen_backend=ctx["extract_backend"] or "auto"),
                    errors)
            if work.train.startswith("from:"):
                ctx["train_cached"][(name, work.model)] = attempt(
                    f"train cached {name} {work.model}",
                    lambda w=work: tl.train_steps_cached(w, images, labels, device, warmup=budget.warmup,
                                                         repeats=budget.repeats), errors)
            augmented = dataclasses.replace(
                work, augment=work.augment if work.augment != "none" else PIPELINE_AUGMENT[name])
            ctx["pipeline"][(name, work.model)] = attempt(
                f"pipeline {name} {work.model}",
                lambda w=augmented: tl.pipeline(w, images, labels, device, warmup=2,
                                           repeats=budget.pipeline_repeats), errors)
        backend = ctx["extract_backend"] or budget.extract_backend[name]
        for work, _ in preset.extract:
            ctx["extract"][(name, work.model)] = attempt(
                f"extract {name} {work.model}",
                lambda w=work, b=backend: tl.extraction(w, images, device, backend=b, num_images=EXTRACT_SPLIT,
                                             warmup=1, repeats=budget.extract_repeats), errors)
        head, n = preset.head[0], budget.head_images[name]
        ctx["head"][name] = attempt(
            f"head stage {name}",
            lambda w=head, n=n: tl.head_stage(w, images[:n], labels[:n], device, epochs=HEAD_EPOCHS,
                                              eval_batch=2 * w.batch), errors)
    if ctx["decode"] is None:  # a cold-cache decode is measured once per run, not per repeat
        ctx["decode"] = attempt("decode", lambda: tl.decode(args.data, budget.decode_images, args.cache_dir), errors)


# ---------------------------------------------------------------------------------------------
# main


def main(argv: list[str] | None = None) -> int:
    """Run the benchmark; returns 0, or 2 on bad input."""
    args = parse_args(argv)
    budget = QUICK if args.quick else FULL
    started = time.perf_counter()
    try:
        from transferlab.training.device import select_device

        device = select_device(args.device)
        if args.threads < 1:
            raise TransferlabError(f"--threads must be >= 1, got {args.threads}")
        torch.set_num_threads(args.threads)
        all_presets = {p: presets.resolve(p, args.configs) for p in budget.presets}
        need = max([budget.head_images[p] for p in budget.presets]
                   + [(budget.warmup + budget.repeats) * w.batch
                      for pr in all_presets.values() for w, _ in pr.train]
                   + [w.batch for pr in all_presets.values() for w, _ in pr.extract])
        log(f"loading {need} images from {args.data}")
        images, labels = load_images(args.data, need)
    except TransferlabError as err:
        print(f"bench: error: {err}", file=sys.stderr)
        return 2
    errors: dict[str, str] = {}
    keras_runs: list[dict[str, Any]] = []
    repeats = args.repeats if args.repeats is not None else (1 if args.quick else 3)
    if repeats < 1:
        print(f"bench: error: --repeats must be >= 1, got {repeats}", file=sys.stderr)
        return 2
    load_before = harness.load_average()
    facts = harness.machine_facts(device)
    jobs = keras_jobs(all_presets, budget)
    why_not = "--no-keras given" if args.no_keras else keras_unavailable(device)
    # Interleaved repeats (ours, theirs, ours, theirs, ...): load that comes and goes on a shared
    # machine then hits both sides alike, and each row's ratio is the median of the repeats' ratios.
    repeat_rows: list[list[Row]] = []
    decode = None
    for index in range(repeats):
        ctx: dict[str, Any] = {
            "presets": all_presets, "budget": budget, "errors": {},
            "train": {}, "train_fast": {}, "train_cached": {}, "pipeline": {}, "extract": {}, "head": {}, "decode": decode,
            "extract_backend": args.extract_backend,
            "data_name": args.data.name,
        }
        peak_n = budget.peak_n * (2 if device.type == "cuda" else 1)
        ctx["peak_n"] = peak_n
        log(f"repeat {index + 1}/{repeats}: matmul peak ({peak_n}x{peak_n} float32) on {device}")
        ctx["torch_peak"] = ctx["peak"] = harness.matmul_peak(device, n=peak_n)
        ctx["device_name"], ctx["device_type"] = facts.device, device.type
        measure_transferlab(ctx, images, labels, device, budget, args)
        decode = ctx["decode"]
        if why_not:
            ctx["keras"] = {"skipped": f"not run: {why_not}"}
        else:
            log(f"repeat {index + 1}/{repeats}: Keras peer (its own process)")
            ctx["keras"] = run_keras(jobs, images, labels, args.threads, device, args.cache_dir)
            env = ctx["keras"].get("environment", {})
            if device.type == "cuda" and not env.get("gpus"):
                ctx["keras"] = {"skipped": "not run: TensorFlow sees no GPU (install tensorflow[and-cuda])",
                                "environment": env}
        repeat_rows.append(build_rows(ctx))
        errors.update({f"repeat {index + 1}: {k}" if repeats > 1 else k: v for k, v in ctx["errors"].items()})
        keras_runs.append(ctx["keras"])
    load_after = harness.load_average()
    rows = median_rows(repeat_rows)
    elapsed = time.perf_counter() - started

    env = ctx["keras"].get("environment", {})
    python = os.path.relpath(sys.executable, ROOT) if sys.executable.startswith(str(ROOT)) else sys.executable
    # Environment variables that change the numbers belong to the command that reproduces them.
    env_prefix = [f"{k}={os.environ[k]}" for k in REPRODUCE_ENV if k in os.environ]
    command = shlex.join([*env_prefix, python, "bench/run.py", *(argv if argv is not None else sys.argv[1:])])
    fact_lines: dict[str, object] = {
        "date (UTC)": time.strftime("%Y-%m-%d %H:%M", time.gmtime()),
        "device": facts.device,
        "CPU": f"{facts.cpu_model}, {facts.cpu_count} logical CPUs, {facts.cpus_usable} usable",
        "load average (1/5/15 min) before / after": f"{load_before} / {load_after}",
        "PyTorch": f"{facts.torch_version}, {facts.torch_threads} intra-op threads, "
                   f"{facts.torch_interop_threads} inter-op threads, oneDNN "
                   f"{'on' if torch.backends.mkldnn.is_available() else 'off'}",
        "TensorFlow / Keras": (f"{env['tensorflow']} / {env['keras']} ({env['keras_backend']} backend), "
                               f"{env['intra_op_threads']} intra-op threads, inter-op "
                               f"{env['inter_op_threads'] or 'TF default'}, oneDNN {env['onednn']}, GPUs {env['gpus'] or 'none'}"
                               if env else ctx["keras"].get("skipped") or ctx["keras"].get("error", "not run")),
        "OpenMP (PyTorch's CPU threads)": "OMP_WAIT_POLICY=" + os.environ.get("OMP_WAIT_POLICY", "(unset: libgomp default)")
        + ", OMP_NUM_THREADS=" + os.environ.get("OMP_NUM_THREADS", "(unset)"),
        "Python": f"{facts.python} on {facts.platform}",
        "images": f"{len(labels)} real training images from {args.data.name} (decoded once by transferlab)",
        "weights": "random initialisation everywhere: throughput does not depend on weight values",
        "budget": (f"{'quick' if args.quick else 'full'}: {budget.warmup} warm-up + {budget.repeats} timed "
                   f"steps per training row (median), {HEAD_EPOCHS} head epochs; {repeats} interleaved "
                   "repeats (transferlab, then Keras), each ratio the median of the repeats' ratios"),
        "run time": f"{elapsed / 60:.1f} min",
    }
    intro = [
        "Ratios are how many times transferlab is ahead (throughput ours / theirs, time theirs / ours).",
        "Training rows time the model step only (forward, backward, optimiser step) on a prepared batch; "
        "the data pipeline has its own section. "
        + ("Measured on a machine shared with other work: treat the ratios as provisional."
           if max(load_before[0], load_after[0]) > facts.cpus_usable else ""),
    ]
    remarks = ["", "Where a target is missed, bench/README.md ('Known gaps') says what remains and why."]
    if errors:
        remarks += ["", "Measurements that failed:", *[f"- {k}: {v}" for k, v in errors.items()]]
    print(console_table(rows))
    write_atomic(args.out, results_markdown(rows, command=command, facts=fact_lines,
                                            peer_labels=PEER_LABELS, intro=intro, remarks=remarks))
    args.cache_dir.mkdir(parents=True, exist_ok=True)
    write_atomic(args.cache_dir / "results.json", json.dumps(
        {"command": command, "facts": fact_lines, "rows": [r.to_dict() for r in rows],
         "keras": keras_runs, "errors": errors}, indent=1, default=str))
    log(f"wrote {args.out} in {elapsed / 60:.1f} min")
    return 0


if __name__ == "__main__":
    sys.exit(main())
