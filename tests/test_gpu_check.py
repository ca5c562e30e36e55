"""bench/gpu_check.sh: its CPU fallback end to end, and a failed or hung step recorded while the
check goes on (the GPU run itself happens where a GPU is lent)."""

from __future__ import annotations

import importlib.util
import os
import re
import subprocess
import sys
import time
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]


def _driver():
    spec = importlib.util.spec_from_file_location("gpu_check", REPO / "bench" / "gpu_check.py")
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # its dataclasses resolve their annotations there
    spec.loader.exec_module(module)
    return module


def _env(tmp_path: Path) -> dict[str, str]:
    env = {**os.environ, "CUDA_VISIBLE_DEVICES": "", "OUT": str(tmp_path / "out"),
           "PYTHON": sys.executable, "OMP_NUM_THREADS": "1",
           "PYTHONPATH": os.pathsep.join([str(REPO / "src"), os.environ.get("PYTHONPATH", "")])}
    env.pop("TRANSFERLAB_SHARED", None)
    return env


def _step_row(text: str, step: str) -> str:
    return next(line for line in text.splitlines() if line.startswith(f"| {step}:"))


def test_cpu_fallback_runs_every_step_and_writes_the_results(tmp_path):
    results = tmp_path / "GPU_RESULTS.md"
    started = time.perf_counter()
    proc = subprocess.run(["bash", str(REPO / "bench" / "gpu_check.sh"), "--results", str(results),
                           "--work", str(tmp_path / "work")],
                          env=_env(tmp_path), capture_output=True, text=True, timeout=600)
    seconds = time.perf_counter() - started
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    text = results.read_text()
    assert "**CPU fallback**" in text and "| mode | cpu fallback |" in text
    assert "CUDA_VISIBLE_DEVICES=''" in text  # the command that reproduces it
    # The install is skipped (everything importable); the gpu tests skip, with the reason.
    assert "**skipped**" in _step_row(text, "setup")
    row = _step_row(text, "gpu_tests")
    assert "**skipped**" in row and "needs a CUDA device" in row and "passed" not in row.split("|")[2]
    assert re.search(r"tests: 0 passed, 0 failed, [1-9]\d* skipped", row), row
    # The tiny benchmark and the tiny comparison ran on the CPU, each with its figures.
    bench = _step_row(text, "bench")
    assert "**passed**" in bench and "rows measured" in bench
    assert "| Training throughput (model step, images/s) | benchmark_cnn (train all) |" in text
    study = _step_row(text, "study")
    assert "**passed**" in study and "models finished: 2" in study
    assert "| Benchmark CNN head on cached features |" in text
    for row in (bench, study):
        assert float(row.split("|")[3]) > 0  # wall seconds
    # $OUT gets the same results, the step logs and the key outputs, and no checkpoints.
    out = tmp_path / "out"
    assert (out / "GPU_RESULTS.md").read_text() == text
    copied = {p.name for p in (out / "gpu_check").iterdir()}
    assert {"1-gpu_tests.log", "2-bench.log", "3-study.log", "gpu_tests.xml", "bench_quick.md",
            "quick-comparison.json"} <= copied
    assert not list(out.rglob("*.pt"))
    assert seconds < 240  # the fallback is a smoke run (about a minute on a quiet 2-core CPU)


def test_a_failed_and_a_hung_step_are_recorded_and_the_check_goes_on(tmp_path, monkeypatch):
    gpu_check = _driver()
    python = sys.executable
    monkeypatch.setattr(gpu_check, "device_facts", lambda python, env: {"cuda": "false"})
    monkeypatch.setattr(gpu_check.Plan, "gpu_tests", lambda self: (
        [python, "-c", "import sys; print('boom'); sys.exit(3)"], self.work / "none.xml"))
    monkeypatch.setattr(gpu_check.Plan, "bench", lambda self: (
        [python, "-c", "import time; time.sleep(60)"], ""))
    monkeypatch.setattr(gpu_check.Plan, "study", lambda self: ([python, "-c", "pass"], ""))
    monkeypatch.setitem(gpu_check.CAPS_S, "bench", 2.0)
    monkeypatch.setattr(gpu_check, "MIN_STEP_S", 1.0)
    monkeypatch.setattr(gpu_check, "KILL_GRACE_S", 2.0)
    monkeypatch.setenv("OUT", str(tmp_path / "out"))
    monkeypatch.setenv("PYTHONPATH", str(REPO / "src"))
    results = tmp_path / "GPU_RESULTS.md"
    code = gpu_check.main(["--results", str(results), "--work", str(tmp_path / "work"),
                           "--python", python])
    assert code == 1
    text = results.read_text()
    assert "**failed**" in _step_row(text, "gpu_tests") and "exit code 3" in _step_row(text, "gpu_tests")
    assert "boom" in text  # the failed step's log tail
    bench = _step_row(text, "bench")
    assert "**timed out**" in bench and "time limit of 2 s" in bench
    assert float(bench.split("|")[3]) < 15
    assert "**passed**" in _step_row(text, "study")
    assert (tmp_path / "out" / "GPU_RESULTS.md").read_text() == text


def test_a_step_past_its_limit_is_stopped_with_its_children(tmp_path):
    gpu_check = _driver()
    pid_file = tmp_path / "child.pid"
    script = ("import subprocess, sys, time\n"
              "child = subprocess.Popen([sys.executable, '-c', 'import time; time.sleep(60)'])\n"
              f"open({str(pid_file)!r}, 'w').write(str(child.pid))\n"
              "time.sleep(60)\n")
    code, wall, timed_out = gpu_check.run_command([sys.executable, "-c", script], timeout_s=3,
                                                  log=tmp_path / "log.txt", env=dict(os.environ))
    assert timed_out and wall < 3 + gpu_check.KILL_GRACE_S + 5
    assert "stopped at the time limit of 3 s" in (tmp_path / "log.txt").read_text()
    child = int(pid_file.read_text())
    for _ in range(50):  # the orphaned child is reaped by init shortly after its signal
        try:
            os.kill(child, 0)
        except ProcessLookupError:
            break
        time.sleep(0.1)
    else:
        pytest.fail(f"the step's child {child} outlived its time limit")


def test_junit_outcomes_and_recorded_numbers_are_read(tmp_path):
    gpu_check = _driver()
    xml = tmp_path / "r.xml"
    xml.write_text(
        '<testsuites><testsuite name="pytest">'
        '<testcase classname="t" name="test_a" time="1.5"><properties>'
        '<property name="loss" value="cuda 0.5 cpu 0.5"/></properties></testcase>'
        '<testcase classname="t" name="test_b" time="0.1">'
        '<failure message="AssertionError: too far">trace</failure></testcase>'
        '<testcase classname="t" name="test_c" time="0">'
        '<skipped type="pytest.skip" message="needs 2 GPUs">skip</skipped></testcase>'
        '</testsuite></testsuites>')
    tests = gpu_check.junit_tests(xml)
    assert [(t["name"], t["outcome"]) for t in tests] == [
        ("test_a", "passed"), ("test_b", "failed"), ("test_c", "skipped")]
    table = gpu_check.tests_table(tests)
    assert "| `test_a` | passed | 1.5 | loss cuda 0.5 cpu 0.5 |" in table
    assert "AssertionError: too far" in table and "needs 2 GPUs" in table
    assert gpu_check.junit_tests(tmp_path / "missing.xml") == []


def test_on_a_gpu_without_shared_the_bench_and_study_run_on_stand_in_data(tmp_path):
    gpu_check = _driver()
    plan = gpu_check.Plan(mode="gpu", python=sys.executable, work=tmp_path, shared=None, device="cuda")
    bench, note = plan.bench()
    assert bench[bench.index("--device") + 1] == "cuda" and "--no-keras" not in bench
    archive = Path(bench[bench.index("--data") + 1])
    assert archive.is_file() and "generated" in note
    import tarfile

    with tarfile.open(archive) as tar:
        names = [n for n in tar.getnames() if n.endswith(".jpg")]
    assert sum("/train/" in n for n in names) >= 512  # 4 quick steps of 128
    assert len({n.split("/")[2] for n in names}) == 10
    study, note = plan.study()
    assert study[study.index("--config") + 1] == "configs/quick.yaml"
    assert study[study.index("--dataset") + 1].startswith("synthetic:")
    assert "pretrained=false" in study and "accuracies mean nothing" in note
    shared = tmp_path / "shared"
    (shared / "data").mkdir(parents=True)
    (shared / "data" / "cifar10-jpeg.tar.gz").write_bytes(b"")
    assert gpu_check.find_shared(shared) == shared.resolve()
    plan.shared = shared
    study, note = plan.study()
    assert f"folder:{shared / 'data' / 'cifar10-jpeg.tar.gz'}" in study and note == ""
    assert study[study.index("--weights-dir") + 1] == str(shared / "weights")
