"""DDP: `torchrun --nproc_per_node=2 -m transferlab train` on the CPU (gloo) matches one process."""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
from pathlib import Path

import pytest

from transferlab.training.distributed import DistContext, from_environment

# Benchmark CNN has no BatchNorm, so two ranks on half batches compute exactly the global batch's
# gradient; 48 training images / batch 8 and 16 validation images split evenly over 2 ranks.
# Stage 1 trains the head on features rank 0 extracts once; stage 2 trains everything.
CONFIG = """
dataset: synthetic:classes=4,train=64,test=24,size=8
val_fraction: 0.25
batch_size: 8
eval_batch_size: 16
model: benchmark_cnn
extract_backend: eager
quiet: true
stages:
  - {name: head, train: head, epochs: 1, lr: 3.0e-3, cache_features: "true"}
  - {name: all, train: all, epochs: 2, optimizer: sgd, lr: 0.05, momentum: 0.9}
"""


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _run(cmd: list[str], tmp_path: Path, config: str = CONFIG) -> None:
    (tmp_path / "config.yaml").write_text(config)
    cmd = [*cmd, "--config", str(tmp_path / "config.yaml")]
    env = {**os.environ, "OMP_NUM_THREADS": "1", "GLOO_SOCKET_IFNAME": "lo",
           "TRANSFERLAB_DATA": str(tmp_path / "data")}
    env.pop("WORLD_SIZE", None)
    proc = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]


def test_environment_context(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("WORLD_SIZE", raising=False)
    assert from_environment() == DistContext()
    monkeypatch.setenv("WORLD_SIZE", "2")
    monkeypatch.setenv("RANK", "1")
    monkeypatch.setenv("LOCAL_RANK", "1")
    ctx = from_environment()
    assert ctx.enabled and not ctx.is_main and ctx.world_size == 2


def test_two_process_gloo_run_matches_one_process(tmp_path: Path) -> None:
    out = tmp_path / "runs"
    _run([sys.executable, "-m", "transferlab", "train", "--out-dir", str(out), "--run-name", "one"],
         tmp_path)
    _run([sys.executable, "-m", "torch.distributed.run", "--nnodes", "1", "--nproc_per_node", "2",
          "--master_addr", "127.0.0.1", "--master_port", str(_free_port()),
          "-m", "transferlab", "train", "--out-dir", str(out), "--run-name", "two"], tmp_path)
    one = [json.loads(x) for x in (out / "one" / "metrics.jsonl").read_text().splitlines()]
    two = [json.loads(x) for x in (out / "two" / "metrics.jsonl").read_text().splitlines()]
    assert len(one) == len(two) == 3
    for a, b in zip(one, two, strict=True):
        for key in ("train_loss", "train_acc1", "val_loss", "val_acc1"):
            assert b[key] == pytest.approx(a[key], rel=1e-4, abs=1e-5), key
    s1 = json.loads((out / "one" / "summary.json").read_text())
    s2 = json.loads((out / "two" / "summary.json").read_text())
    assert s2["world_size"] == 2 and s2["device"] == "cpu x2"
    assert s2["stages"]["head"]["cached_features"]
    assert s2["test_acc1"] == pytest.approx(s1["test_acc1"])
    assert s2["test_loss"] == pytest.approx(s1["test_loss"], rel=1e-4)


def test_two_processes_train_above_a_frozen_part_on_onnxruntime(tmp_path: Path) -> None:
    # An augmented stage above a frozen part: each rank runs that part on its own ONNX Runtime
    # session (one thread, as torchrun gives PyTorch) and DDP trains the layers above it.
    config = CONFIG.replace("extract_backend: eager", "extract_backend: onnxruntime").replace(
        '  - {name: all, train: all, epochs: 2, optimizer: sgd, lr: 0.05, momentum: 0.9}',
        '  - {name: top, train: "from:block3", augment: standard, epochs: 2, lr: 3.0e-3}')
    out = tmp_path / "runs"
    _run([sys.executable, "-m", "torch.distributed.run", "--nnodes", "1", "--nproc_per_node", "2",
          "--master_addr", "127.0.0.1", "--master_port", str(_free_port()),
          "-m", "transferlab", "train", "--out-dir", str(out), "--run-name", "two"], tmp_path, config)
    summary = json.loads((out / "two" / "summary.json").read_text())
    assert summary["world_size"] == 2
    assert summary["stages"]["top"]["frozen_part_backend"] == "onnxruntime"
    assert summary["epochs"] == {"head": 1, "top": 2} and summary["test_acc1"] is not None
