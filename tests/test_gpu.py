"""The CUDA paths on a GPU, each against the same run on the CPU.

Mixed precision (bf16, and fp16 with its loss scaler), channels-last, uint8 images kept on the GPU
and augmented there, cached features on the GPU, DDP over NCCL, and an ONNX export (and predict)
of a CUDA-trained run. Every test is marked `gpu` and skips where PyTorch sees no CUDA device
(tests/conftest.py); ``bash bench/gpu_check.sh`` runs them and reports the numbers each records.

Tolerances, against the same run in float32 on the CPU, were set before any GPU had run these
tests, from what each precision can keep: TF32 convolutions (cuDNN's default for float32) carry
10 mantissa bits, fp16 10 and bf16 7 (relative rounding about 5e-4 and 4e-3), and a tiny run's
mean loss over an epoch moves less than its per-step values. They are loose enough for rounding
and strict enough to catch a wrong dtype, a skipped optimiser step, a lost memory format or a
batch on the wrong device (each of which moves the loss by far more, or fails outright). The
first GPU run records the measured differences in bench/GPU_RESULTS.md: tighten them from there.
As a stand-in, the same runs on the CPU with bf16 autocast moved the first epoch's mean training
loss by 0.016 (its bf16 tolerance here: 0.064) and the test loss by 0.001.
"""

from __future__ import annotations

import json
import math
import os
import socket
import subprocess
import sys
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
from PIL import Image

from transferlab.cli import main
from transferlab.config import config_from_dict

pytestmark = pytest.mark.gpu

REPO = Path(__file__).resolve().parents[1]
# |cuda - cpu| <= abs + rel * |cpu| on an epoch's mean loss, per precision (see the docstring).
LOSS_TOLERANCE = {"fp32": (2e-3, 5e-3), "bf16": (2e-2, 3e-2), "fp16": (1e-2, 1.5e-2)}
# A tiny synthetic run: 4 classes, 96 training and 32 validation images at 16 px, 6 steps of 16
# per epoch. MobileNetV2 from the paper's table (BatchNorm, depthwise convolutions: the layers
# channels-last changes), with crop + flip augmentation (done on the GPU when it trains there).
TINY = {
    "dataset": "synthetic:classes=4,train=128,test=64,size=16", "val_fraction": 0.25,
    "batch_size": 16, "eval_batch_size": 32, "quiet": True, "extract_backend": "eager",
    "model": "mobilenet_v2_paper", "model_kwargs": {"width_mult": 0.5, "cifar_stem": True},
    "input_size": 16, "channels_last": True,
}


def _close(cuda: float, cpu: float, tolerance: tuple[float, float]) -> bool:
    return abs(cuda - cpu) <= tolerance[0] + tolerance[1] * abs(cpu)


def _train(tmp: Path, name: str, device: str, amp: str, stages: list[dict[str, Any]],
           **fields: Any) -> Path:
    from transferlab.training import train_run

    config = config_from_dict({
        **TINY, "run_name": name, "out_dir": str(tmp / "runs"), "cache_dir": str(tmp / f"cache-{name}"),
        "device": device, "amp": amp, "stages": stages, **fields,
    })
    return train_run(config)


def _metrics(run_dir: Path) -> list[dict[str, Any]]:
    return [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]


def _summary(run_dir: Path) -> dict[str, Any]:
    return json.loads((run_dir / "summary.json").read_text())


class Seen:
    """What the training code was handed, recorded by wrappers around its entry points."""

    def __init__(self, monkeypatch: pytest.MonkeyPatch) -> None:
        import transferlab.training.engine as engine
        import transferlab.training.run as run_module
        import transferlab.training.stage_loop as stage_loop

        self.data: dict[str, str] = {}  # split -> device of its uint8 images
        self.batches: list[dict[str, Any]] = []  # per epoch: device, layout, dtype of a batch
        self.features: dict[str, str] = {}  # split -> device of its cached features
        load_data, train_one_epoch = run_module.load_data, engine.train_one_epoch
        cached_features = stage_loop.cached_features

        def seen_load_data(run: Any) -> None:
            load_data(run)
            # A tensor on the GPU; on the CPU a view that gathers from the dataset's array.
            self.data = {split: str(getattr(images, "device", type(images).__name__))
                         for split, (images, _) in run.data.items()}

        def seen_train_one_epoch(model: Any, batches: Any, *args: Any, **kwargs: Any) -> Any:
            x, y = next(iter(batches))  # a fresh iterator: the epoch itself is not disturbed
            conv = next((p for p in model.parameters() if p.dim() == 4), None)
            self.batches.append({
                "device": str(x.device), "labels": str(y.device), "dtype": str(x.dtype),
                "channels_last": x.dim() == 4 and x.is_contiguous(memory_format=torch.channels_last),
                "weights_channels_last": conv is not None
                and conv.is_contiguous(memory_format=torch.channels_last),
            })
            return train_one_epoch(model, batches, *args, **kwargs)

        def seen_cached_features(run: Any, *args: Any, **kwargs: Any) -> dict[str, Any]:
            info = cached_features(run, *args, **kwargs)
            self.features = {split: str(f.device) for split, f in info["features"].items()
                             if isinstance(f, torch.Tensor)}
            return info

        monkeypatch.setattr(run_module, "load_data", seen_load_data)
        monkeypatch.setattr(engine, "train_one_epoch", seen_train_one_epoch)
        monkeypatch.setattr(stage_loop, "cached_features", seen_cached_features)


TRAIN_ALL = [{"name": "all", "train": "all", "epochs": 2, "optimizer": "sgd", "lr": 0.02,
              "momentum": 0.9, "augment": "standard"}]


@pytest.fixture(scope="module")
def cpu_run(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The float32 CPU twin of the CUDA training runs."""
    return _train(tmp_path_factory.mktemp("cpu"), "cpu", "cpu", "off", TRAIN_ALL)


@pytest.mark.parametrize(("amp", "precision"), [("off", "fp32"), ("bf16", "bf16"), ("fp16", "fp16")])
def test_cuda_training_with_amp_and_channels_last_matches_the_cpu(
        amp, precision, cpu_run, tmp_path, monkeypatch, record_property):
    if amp == "bf16" and not torch.cuda.is_bf16_supported():
        pytest.skip(f"{torch.cuda.get_device_name()} has no bf16")
    seen = Seen(monkeypatch)
    run_dir = _train(tmp_path, f"cuda-{amp}", "cuda", amp, TRAIN_ALL)
    summary = _summary(run_dir)
    assert summary["device"] == "cuda:0" and summary["precision"] == precision
    assert summary["stopped"] is None, f"the {precision} run stopped early: {summary['stopped']}"
    # The uint8 images live on the GPU whole; every batch arrives there, channels-last, and the
    # model's convolution weights are channels-last too.
    assert set(seen.data.values()) == {"cuda:0"}, seen.data
    assert seen.batches and all(b["device"] == b["labels"] == "cuda:0" for b in seen.batches)
    assert all(b["channels_last"] and b["weights_channels_last"] for b in seen.batches), seen.batches
    assert all(b["dtype"] == "torch.float32" for b in seen.batches)  # autocast casts inside
    from transferlab.training.checkpoint import load_checkpoint

    scaler = load_checkpoint(run_dir / "last.pt")["scaler"]
    if precision == "fp16":  # loss scaling on, with a finite scale after the run
        assert scaler and math.isfinite(scaler["scale"]) and scaler["scale"] > 0, scaler
    else:
        assert not scaler, scaler  # bf16 and fp32 need no scaler
    cuda_rows, cpu_rows = _metrics(run_dir), _metrics(cpu_run)
    assert len(cuda_rows) == len(cpu_rows) == 2
    tolerance = LOSS_TOLERANCE[precision]
    first_cuda, first_cpu = cuda_rows[0], cpu_rows[0]
    record_property("train_loss_epoch1", f"cuda {first_cuda['train_loss']:.5f} cpu {first_cpu['train_loss']:.5f}")
    record_property("val_loss_epoch1", f"cuda {first_cuda['val_loss']:.5f} cpu {first_cpu['val_loss']:.5f}")
    record_property("img_s", f"cuda {first_cuda['images_per_s']:.0f} cpu {first_cpu['images_per_s']:.0f}")
    for key in ("train_loss", "val_loss"):
        assert _close(first_cuda[key], first_cpu[key], tolerance), (key, first_cuda[key], first_cpu[key])
    # The run learns on the GPU too: the training loss falls in the second epoch (float32 on the
    # CPU: 1.45 -> 0.99; CPU bf16 autocast: 1.47 -> 1.21). That second epoch is where this tiny
    # run starts to learn, at a moment rounding shifts, so it is not compared value for value.
    # The test pass uses best.pt and agrees at twice the tolerance, the accuracy within 3 of
    # the 64 test images.
    second_cuda, second_cpu = cuda_rows[1], cpu_rows[1]
    record_property("train_loss_epoch2", f"cuda {second_cuda['train_loss']:.5f} cpu {second_cpu['train_loss']:.5f}")
    assert second_cuda["train_loss"] < first_cuda["train_loss"] - 0.1
    cuda_s, cpu_s = summary, _summary(cpu_run)
    record_property("test_loss", f"cuda {cuda_s['test_loss']:.5f} cpu {cpu_s['test_loss']:.5f}")
    assert _close(cuda_s["test_loss"], cpu_s["test_loss"], tuple(2 * t for t in tolerance))
    assert abs(cuda_s["test_acc1"] - cpu_s["test_acc1"]) <= 3 / 64 + 1e-9


def test_cached_head_stage_keeps_its_features_on_the_gpu(tmp_path, monkeypatch, record_property):
    stages = [{"name": "head", "train": "head", "cache_features": "true", "epochs": 3, "lr": 3e-3}]
    cpu = _train(tmp_path, "cpu", "cpu", "off", stages)
    seen = Seen(monkeypatch)
    cuda = _train(tmp_path, "cuda", "cuda", "auto", stages)
    summary = _summary(cuda)
    expected = "bf16" if torch.cuda.is_bf16_supported() else "fp16"
    assert summary["precision"] == expected
    assert summary["stages"]["head"]["cached_features"]
    assert summary["stages"]["head"]["backend"] == "eager"  # off the CPU the prefix runs eagerly
    # Every split's features were moved to the GPU once; the head's batches come from there.
    assert seen.features and set(seen.features.values()) == {"cuda:0"}, seen.features
    assert seen.batches and all(b["device"] == "cuda:0" for b in seen.batches)
    cuda_rows, cpu_rows = _metrics(cuda), _metrics(cpu)
    record_property("train_loss_epoch1", f"cuda {cuda_rows[0]['train_loss']:.5f} cpu {cpu_rows[0]['train_loss']:.5f}")
    record_property("test_loss", f"cuda {summary['test_loss']:.5f} cpu {_summary(cpu)['test_loss']:.5f}")
    # The features were extracted under autocast (the run's precision), the head trains on them.
    tolerance = LOSS_TOLERANCE[expected]
    assert _close(cuda_rows[0]["train_loss"], cpu_rows[0]["train_loss"], tolerance)
    assert _close(summary["test_loss"], _summary(cpu)["test_loss"], tuple(2 * t for t in tolerance))


# The benchmark CNN has no BatchNorm, so two ranks on half batches compute the global batch's
# gradient (as tests/test_distributed.py does with gloo on the CPU).
DDP_CONFIG = """
dataset: synthetic:classes=4,train=64,test=24,size=8
val_fraction: 0.25
batch_size: 8
eval_batch_size: 16
model: benchmark_cnn
device: cuda
amp: "off"
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


def _run(cmd: list[str], tmp_path: Path, timeout: float = 300,
         **extra_env: str) -> subprocess.CompletedProcess:
    env = {**os.environ, "OMP_NUM_THREADS": "1", "TRANSFERLAB_DATA": str(tmp_path / "data"),
           "PYTHONPATH": os.pathsep.join([str(REPO / "src"), os.environ.get("PYTHONPATH", "")]),
           **extra_env}
    env.pop("WORLD_SIZE", None)
    proc = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=timeout)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    return proc


def test_ddp_over_nccl_on_two_gpus_matches_one(tmp_path, record_property):
    if torch.cuda.device_count() < 2:
        pytest.skip(f"needs 2 GPUs for a two-process NCCL run, found {torch.cuda.device_count()} "
                    "(test_nccl_group_of_one_process_trains_like_no_group covers one)")
    (tmp_path / "config.yaml").write_text(DDP_CONFIG)
    out = tmp_path / "runs"
    base = ["-m", "transferlab", "train", "--config", str(tmp_path / "config.yaml"), "--out-dir", str(out)]
    _run([sys.executable, *base, "--run-name", "one"], tmp_path)
    _run([sys.executable, "-m", "torch.distributed.run", "--nnodes", "1", "--nproc_per_node", "2",
          "--master_addr", "127.0.0.1", "--master_port", str(_free_port()), *base,
          "--run-name", "two"], tmp_path)
    one, two = _metrics(out / "one"), _metrics(out / "two")
    assert len(one) == len(two) == 3
    s2 = _summary(out / "two")
    assert s2["world_size"] == 2 and s2["device"] == "cuda:0 x2"
    assert s2["stages"]["head"]["cached_features"]
    record_property("final_train_loss", f"two GPUs {two[-1]['train_loss']:.6f} one {one[-1]['train_loss']:.6f}")
    # Half batches on each rank and a summed NCCL all-reduce: the same sums in another order,
    # through TF32 convolutions that may pick other algorithms for the smaller batch.
    for a, b in zip(one, two, strict=True):
        for key in ("train_loss", "val_loss"):
            assert b[key] == pytest.approx(a[key], rel=5e-3, abs=1e-3), key
    assert s2["test_loss"] == pytest.approx(_summary(out / "one")["test_loss"], rel=5e-3, abs=1e-3)


# transferlab joins a process group only with WORLD_SIZE > 1, and NCCL refuses two ranks on one
# GPU; so on a single GPU this script forms an NCCL group of one through transferlab's own
# helpers (a context that says it is distributed) and trains the same model with and without it.
NCCL_OF_ONE = """
import json, os
import torch
from torch import nn
from transferlab.training import distributed as d
from transferlab.training.engine import Batches, evaluate, train_one_epoch

class Group(d.DistContext):
    @property
    def enabled(self):
        return True

os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=os.environ["PORT"], RANK="0", WORLD_SIZE="1")
torch.backends.cudnn.deterministic, torch.backends.cudnn.benchmark = True, False
device = torch.device("cuda", 0)
ctx = Group(rank=0, local_rank=0, world_size=1)
d.init_process_group(ctx, device)
assert torch.distributed.get_backend() == "nccl", torch.distributed.get_backend()
g = torch.Generator().manual_seed(0)
x, y = torch.rand(64, 3, 8, 8, generator=g), torch.randint(0, 4, (64,), generator=g)

def run(wrap):
    torch.manual_seed(0)
    model = nn.Sequential(nn.Conv2d(3, 8, 3), nn.ReLU(), nn.Flatten(), nn.Linear(8 * 36, 4)).to(device)
    module = d.wrap_ddp(model, ctx, device) if wrap else model
    opt = torch.optim.SGD(module.parameters(), lr=0.1)
    losses = []
    for epoch in range(2):
        b = Batches(x, y, 16, shuffle=True, epoch=epoch, device=device, dist=ctx if wrap else None)
        losses.append(train_one_epoch(module, b, opt, quiet=True).loss)
    val = evaluate(module, Batches(x, y, 32, device=device, dist=ctx if wrap else None), quiet=True)
    return {"ddp": type(module).__name__, "losses": losses, "val_loss": val.loss}

print(json.dumps({"with": run(True), "without": run(False)}))
d.destroy_process_group()
"""


def test_nccl_group_of_one_process_trains_like_no_group(tmp_path, record_property):
    proc = _run([sys.executable, "-c", NCCL_OF_ONE], tmp_path, PORT=str(_free_port()))
    result = json.loads(proc.stdout.strip().splitlines()[-1])
    assert result["with"]["ddp"] == "DistributedDataParallel"
    assert result["without"]["ddp"] == "Sequential"
    record_property("losses", f"NCCL {result['with']['losses']} plain {result['without']['losses']}")
    # One rank: the all-reduce is an identity, so the numbers are the same up to float32 sums.
    assert result["with"]["losses"] == pytest.approx(result["without"]["losses"], rel=1e-5)
    assert result["with"]["val_loss"] == pytest.approx(result["without"]["val_loss"], rel=1e-5)


def test_onnx_export_of_a_cuda_run_predicts_like_its_checkpoint(tmp_path, capsys, record_property):
    stages = [{"name": "all", "train": "all", "epochs": 2, "lr": 3e-3}]
    run_dir = _train(tmp_path, "cuda", "cuda", "auto", stages, model="benchmark_cnn", model_kwargs={},
                     input_size=32)
    # best.pt must load on a machine without a GPU: every tensor in it is a CPU tensor.
    raw = torch.load(run_dir / "best.pt", weights_only=True)
    devices = {str(v.device) for v in raw["state_dict"].values()}
    assert devices == {"cpu"}, devices
    assert main(["export", str(run_dir), "--format", "onnx"]) == 0
    text = capsys.readouterr().out
    diff = float(text.split("largest logit difference ")[1].split()[0])
    record_property("export_logit_difference", f"{diff:.2e}")
    assert 0 <= diff <= 1e-4
    rng = np.random.default_rng(0)
    photos = tmp_path / "photos"
    photos.mkdir()
    for i in range(6):
        Image.fromarray(rng.integers(0, 256, (24 + i, 40, 3), dtype=np.uint8)).save(photos / f"p{i}.png")
    results = {}
    for label, weights, device in (("onnx", run_dir / "model.onnx", "cpu"),
                                   ("pt-cpu", run_dir / "best.pt", "cpu"),
                                   ("pt-cuda", run_dir / "best.pt", "cuda")):
        assert main(["predict", str(photos), "--weights", str(weights), "--json", "--top", "2",
                     "--device", device]) == 0
        results[label] = json.loads(capsys.readouterr().out)
    onnx = results["onnx"]
    worst = 0.0
    for label, tolerance in (("pt-cpu", 1e-4), ("pt-cuda", 2e-3)):  # cuda: TF32 convolutions
        other = results[label]
        assert [r["image"] for r in other] == [r["image"] for r in onnx]
        assert [r["top"][0]["index"] for r in other] == [r["top"][0]["index"] for r in onnx], label
        for a, b in zip(onnx, other, strict=True):
            worst = max(worst, abs(a["top"][0]["prob"] - b["top"][0]["prob"]))
            assert a["top"][0]["prob"] == pytest.approx(b["top"][0]["prob"], abs=tolerance), label
    record_property("largest_top1_prob_difference", f"{worst:.2e}")
