"""Every bad input of the sweep in issue 19 ends in one clean error line, with nothing half-written.

Each case drives the command line as a user would (`transferlab.cli.main`, or a subprocess where
the behaviour lives in the process: a closed pipe, Ctrl-C) and checks the exit code, that the
message names the input and the fix, that there is no traceback, and that nothing was left behind.
"""

from __future__ import annotations

import argparse
import importlib
import io
import os
import signal
import struct
import subprocess
import sys
import time
import zlib
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from transferlab.cli import build_parser, main
from transferlab.commands._common import non_negative_int, positive_int

REPO = Path(__file__).resolve().parents[1]
DATA = "synthetic:classes=3,train=36,test=9,size=8"


def _png_bomb(path: Path, width: int = 50_000, height: int = 50_000) -> Path:
    """A PNG of a few hundred bytes whose header claims width x height pixels (a decompression bomb)."""
    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))

    header = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    body = zlib.compress(b"\x00" * (3 * width + 1) * 2)
    path.write_bytes(b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", header) + chunk(b"IDAT", body)
                     + chunk(b"IEND", b""))
    return path


def _class_folders(root: Path, counts: dict[str, int], size: tuple[int, int] = (20, 20)) -> Path:
    rng = np.random.default_rng(0)
    for name, n in counts.items():
        (root / name).mkdir(parents=True, exist_ok=True)
        for i in range(n):
            pixels = rng.integers(0, 255, (*size, 3), dtype=np.uint8)
            Image.fromarray(pixels).save(root / name / f"{i:03d}.png")
    return root


def _complete_entries(data_root: Path) -> list[str]:
    """Cache entries (and leftovers) under data_root/decoded, lock files and size records aside."""
    decoded = data_root / "decoded"
    if not decoded.is_dir():
        return []
    return sorted(p.name for p in decoded.iterdir()
                  if not p.name.endswith((".lock", ".sizes.json")))


def _error(capsys: pytest.CaptureFixture[str]) -> str:
    err = capsys.readouterr().err
    assert "Traceback" not in err
    return err


@pytest.fixture(scope="module")
def run_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A finished tiny run (benchmark CNN, one epoch) for evaluate, report, export and predict."""
    out = tmp_path_factory.mktemp("runs")
    assert main(["train", "--dataset", DATA, "--set", "stages.0.epochs=1", "--out-dir", str(out),
                 "--run-name", "r", "--quiet"]) == 0
    return out / "r"


# --------------------------------------------------------------------------------------------
# decompression bombs


def test_a_bomb_in_a_folder_is_refused_by_data_info_naming_the_file_and_the_limit(
        tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    src = _class_folders(tmp_path / "photos", {"cat": 4, "dog": 4})
    _png_bomb(src / "cat" / "huge.png")
    assert main(["data", "info", f"folder:{src}", "--data-root", str(tmp_path / "cache")]) == 2
    err = _error(capsys)
    assert "cat/huge.png" in err and "50,000 x 50,000" in err
    assert "limit of 250,000,000 pixels" in err and "TRANSFERLAB_MAX_IMAGE_PIXELS" in err
    assert _complete_entries(tmp_path / "cache") == []


@pytest.mark.parametrize("workers", ["1", "2"])
def test_the_decode_workers_apply_the_limit_too(
        tmp_path: Path, capsys: pytest.CaptureFixture[str], workers: str) -> None:
    # --image-size skips the header scan: the refusal comes from the decoding processes.
    src = _class_folders(tmp_path / "photos", {"cat": 40, "dog": 40})
    _png_bomb(src / "dog" / "zz.png")
    assert main(["data", "info", f"folder:{src}", "--data-root", str(tmp_path / "cache"),
                 "--image-size", "16", "--workers", workers]) == 2
    assert "dog/zz.png" in _error(capsys)
    assert _complete_entries(tmp_path / "cache") == []


def test_the_limit_is_configurable_by_flag_and_environment_and_exact(
        tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch) -> None:
    # 20 x 20 = 400 pixels against a limit of 300: Pillow alone would only warn (it raises above
    # twice its limit); the stated limit is the one applied.
    src = _class_folders(tmp_path / "photos", {"cat": 3, "dog": 3})
    args = ["data", "info", f"folder:{src}", "--data-root", str(tmp_path / "cache")]
    assert main([*args, "--max-image-pixels", "300"]) == 2
    assert "limit of 300 pixels" in _error(capsys)
    monkeypatch.setenv("TRANSFERLAB_MAX_IMAGE_PIXELS", "300")
    assert main(args) == 2
    assert "400 pixels" in _error(capsys)
    monkeypatch.setenv("TRANSFERLAB_MAX_IMAGE_PIXELS", "lots")
    assert main(args) == 2
    assert "TRANSFERLAB_MAX_IMAGE_PIXELS='lots'" in _error(capsys)
    monkeypatch.setenv("TRANSFERLAB_MAX_IMAGE_PIXELS", "400")
    pillow_limit = Image.MAX_IMAGE_PIXELS
    assert main(args) == 0
    assert Image.MAX_IMAGE_PIXELS == pillow_limit  # the limit does not leak into other code


def test_a_bomb_stops_train_before_a_run_directory_exists(
        tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    src = _class_folders(tmp_path / "photos", {"cat": 4, "dog": 4})
    _png_bomb(src / "dog" / "huge.png")
    out = tmp_path / "runs"
    assert main(["train", "--dataset", f"folder:{src}", "--data-root", str(tmp_path / "cache"),
                 "--out-dir", str(out), "--run-name", "r", "--quiet"]) == 2
    assert "dog/huge.png" in _error(capsys)
    assert not (out / "r").exists()


def test_predict_refuses_a_bomb(run_dir: Path, tmp_path: Path,
                                capsys: pytest.CaptureFixture[str]) -> None:
    bomb = _png_bomb(tmp_path / "huge.png")
    assert main(["predict", str(bomb), "--weights", str(run_dir / "best.pt")]) == 2
    err = _error(capsys)
    assert str(bomb) in err and "limit of 250,000,000 pixels" in err
    small = _class_folders(tmp_path / "photos", {"a": 1}) / "a" / "000.png"  # 400 pixels
    assert main(["predict", str(small), "--weights", str(run_dir / "best.pt"),
                 "--max-image-pixels", "399"]) == 2
    assert "limit of 399 pixels" in _error(capsys)
    assert main(["predict", str(small), "--weights", str(run_dir / "best.pt"),
                 "--max-image-pixels", "400"]) == 0


# --------------------------------------------------------------------------------------------
# layouts, sizes, YAML


@pytest.mark.parametrize("counts, named", [
    ({"cat": 5, "dog": 1}, "dog/ (1 image)"),
    ({"cat": 1, "dog": 1}, "cat/ (1 image), dog/ (1 image)"),
])
def test_a_class_folder_with_one_image_names_the_class_and_the_minimum(
        tmp_path: Path, capsys: pytest.CaptureFixture[str], counts: dict[str, int],
        named: str) -> None:
    # With one image, the stratified carve gives that class no test image (and with every class
    # at one image the test split is empty: the AttributeError of the sweep).
    src = _class_folders(tmp_path / "photos", counts)
    assert main(["data", "info", f"folder:{src}", "--data-root", str(tmp_path / "cache")]) == 2
    err = _error(capsys)
    assert named in err and "at least 2" in err


def test_an_empty_test_folder_is_named(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    _class_folders(tmp_path / "photos" / "train", {"cat": 3, "dog": 3})
    (tmp_path / "photos" / "test").mkdir()
    assert main(["data", "info", f"folder:{tmp_path / 'photos'}",
                 "--data-root", str(tmp_path / "cache")]) == 2
    assert "test/ has no class folders" in _error(capsys)


def test_a_dataset_without_test_images_stops_train_before_it_starts(
        tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["train", "--dataset", "synthetic:classes=3,train=12,test=0", "--out-dir",
                 str(tmp_path), "--run-name", "r", "--quiet"]) == 2
    assert "no test images" in _error(capsys)
    assert not (tmp_path / "r").exists()


@pytest.mark.parametrize("model, minimum", [
    ("benchmark_cnn", 8), ("mobilenet_v2_paper", 32), ("mobilenet_v2", 32), ("inception_v3", 75),
])
def test_an_input_size_below_the_model_minimum_is_refused_before_any_decoding(
        tmp_path: Path, capsys: pytest.CaptureFixture[str], model: str, minimum: int) -> None:
    src = _class_folders(tmp_path / "photos", {"cat": 3, "dog": 3})
    args = ["train", "--dataset", f"folder:{src}", "--data-root", str(tmp_path / "cache"),
            "--model", model, "--out-dir", str(tmp_path / "runs"), "--quiet"]
    assert main([*args, "--input-size", str(minimum - 1)]) == 2
    err = _error(capsys)
    assert f"input_size={minimum - 1}" in err and f"{minimum} px" in err
    assert not (tmp_path / "cache").exists() and not (tmp_path / "runs").exists()
    assert main([*args, "--input-size", str(minimum), "--print-config"]) == 0


@pytest.mark.parametrize("model", ["benchmark_cnn", "inception_v3"])
def test_the_stated_minimum_is_the_size_the_network_runs_at(model: str) -> None:
    from transferlab.models import create_model
    from transferlab.models.input_size import min_input_size

    minimum = min_input_size(model)
    net = create_model(model, num_classes=2).eval()
    with torch.no_grad():
        assert net(torch.zeros(1, 3, minimum, minimum)).shape == (1, 2)
        with pytest.raises(RuntimeError):
            net(torch.zeros(1, 3, minimum - 1, minimum - 1))


@pytest.mark.parametrize("args, position", [
    (["--model-kwargs", "[1, 2"], "argument --model-kwargs: the value is not valid YAML at line 1, column 6"),
    (["--set", "stages.0.lr=[1, 2"], "--set stages.0.lr is not valid YAML at line 1, column 6"),
])
def test_malformed_yaml_on_the_command_line_names_its_position(
        capsys: pytest.CaptureFixture[str], args: list[str], position: str) -> None:
    assert main(["train", "--dataset", DATA, *args]) == 2
    assert position in _error(capsys)


def test_a_malformed_config_file_names_the_file_and_the_position(
        tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    config = tmp_path / "run.yaml"
    config.write_text("model: benchmark_cnn\nstages: [{name: a, epochs: 1}\nseed: 3\n")
    assert main(["train", "--config", str(config)]) == 2
    assert f"config file {config} is not valid YAML at line 3, column 1" in _error(capsys)
    compare = tmp_path / "compare.yaml"
    compare.write_text("models:\n  - name: a\n   model: x\n")
    assert main(["compare", "--config", str(compare), "--out", str(tmp_path / "c")]) == 2
    assert f"compare config {compare} is not valid YAML at line 3" in _error(capsys)


# --------------------------------------------------------------------------------------------
# outputs


def test_train_refuses_an_out_dir_under_a_file(
        tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    blocker = tmp_path / "afile"
    blocker.write_text("x")
    assert main(["train", "--dataset", DATA, "--out-dir", str(blocker / "runs"), "--quiet"]) == 2
    err = _error(capsys)
    assert str(blocker / "runs") in err and f"{blocker} is a file" in err


@pytest.mark.parametrize("argv, named", [
    (["data", "info", "folder:{src}", "--data-root", "{bad}/cache"], "{bad}/cache/decoded"),
    (["data", "info", "cifar10", "--data-root", "{bad}/cache"], "{bad}/cache"),
    (["train", "--dataset", DATA, "--cache-dir", "{bad}/features", "--out-dir", "{tmp}/runs"],
     "cache_dir {bad}/features"),
])
def test_cache_folders_under_a_file_are_named(
        tmp_path: Path, capsys: pytest.CaptureFixture[str], argv: list[str], named: str) -> None:
    src = _class_folders(tmp_path / "photos", {"cat": 3, "dog": 3})
    blocker = tmp_path / "afile"
    blocker.write_text("x")
    fill = {"src": src, "bad": blocker, "tmp": tmp_path}
    assert main([a.format(**fill) for a in argv]) == 2
    err = _error(capsys)
    assert named.format(**fill) in err and f"{blocker} is a file" in err
    assert not (tmp_path / "runs").exists()


@pytest.mark.parametrize("command", [
    ["evaluate", "{run}", "--out", "{bad}/evaluation"],
    ["report", "{run}", "--out", "{bad}/report", "--no-data-figures"],
    ["export", "{run}", "--out", "{bad}/model.onnx"],
])
def test_outputs_under_a_file_are_named_before_any_work(
        run_dir: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str],
        monkeypatch: pytest.MonkeyPatch, command: list[str]) -> None:
    blocker = tmp_path / "afile"
    blocker.write_text("x")

    def no_work(*args: object, **kwargs: object) -> None:
        raise AssertionError("the output path must be checked before the model is loaded")

    # Imported before patching: a module first imported while a name is patched would bind the
    # stand-in for good (report.evaluation binds evaluate_run at import).
    importlib.import_module("transferlab.report.builder")
    importlib.import_module("transferlab.export")
    monkeypatch.setattr("transferlab.export.load_checkpoint_model", no_work)
    monkeypatch.setattr("transferlab.evaluation.evaluate_run", no_work)
    monkeypatch.setattr("transferlab.report.builder.build_document", no_work)
    argv = [a.format(run=run_dir, bad=blocker) for a in command]
    assert main(argv) == 2
    err = _error(capsys)
    assert argv[3] in err and f"{blocker} is a file" in err
    assert blocker.read_text() == "x"


# --------------------------------------------------------------------------------------------
# counts at the flag


@pytest.mark.parametrize("argv, flag", [
    (["predict", "x.png", "--batch-size", "0"], "--batch-size"),
    (["predict", "x.png", "--top", "0"], "--top"),
    (["train", "--batch-size", "0"], "--batch-size"),
    (["train", "--eval-batch-size", "-4"], "--eval-batch-size"),
    (["train", "--workers", "-1"], "--workers"),
    (["train", "--seed", "-1"], "--seed"),
    (["train", "--checkpoint-every", "-1"], "--checkpoint-every"),
    (["train", "--max-image-pixels", "0"], "--max-image-pixels"),
    (["compare", "--config", "c.yaml", "--out", "o", "--seeds", "0"], "--seeds"),
    (["compare", "--config", "c.yaml", "--out", "o", "--top", "0"], "--top"),
    (["evaluate", "run", "--pairs", "-1"], "--pairs"),
    (["export", "run", "--opset", "0"], "--opset"),
    (["models", "--num-classes", "0"], "--num-classes"),
    (["rank", "--dataset", DATA, "--max-images", "0"], "--max-images"),
    (["rank", "--dataset", DATA, "--batch-size", "0"], "--batch-size"),
    (["data", "info", DATA, "--workers", "-2"], "--workers"),
    (["data", "info", DATA, "--seed", "1.5"], "--seed"),
])
def test_counts_are_validated_at_the_flag(
        capsys: pytest.CaptureFixture[str], argv: list[str], flag: str) -> None:
    assert main(argv) == 2
    assert f"argument {flag}:" in _error(capsys)


def test_no_command_takes_an_unchecked_integer() -> None:
    """Every integer flag of every command goes through positive_int or non_negative_int."""
    unchecked = []

    def walk(parser: argparse.ArgumentParser, path: str) -> None:
        for action in parser._actions:
            if isinstance(action, argparse._SubParsersAction):
                for name, sub in action.choices.items():
                    walk(sub, f"{path} {name}")
            elif action.type is int:
                unchecked.append(f"{path} {'/'.join(action.option_strings) or action.dest}")

    walk(build_parser(), "transferlab")
    assert not unchecked
    assert positive_int("3") == 3 and non_negative_int("0") == 0


# --------------------------------------------------------------------------------------------
# a closed pipe, Ctrl-C


def _env() -> dict[str, str]:
    return {**os.environ, "PYTHONPATH": str(REPO / "src")}


@pytest.mark.parametrize("json_flag", [[], ["--json"]])
def test_predict_into_a_closed_pipe_ends_quietly(run_dir: Path, tmp_path: Path,
                                                 json_flag: list[str]) -> None:
    _class_folders(tmp_path / "photos", {"a": 3})
    proc = subprocess.Popen(
        [sys.executable, "-m", "transferlab", "predict", str(tmp_path / "photos"), "--weights",
         str(run_dir / "best.pt"), *json_flag],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, env=_env())
    proc.stdout.close()  # the reader is gone before the first line (`| head -0`)
    err = proc.stderr.read().decode()
    assert proc.wait(timeout=120) in (0, 141)
    assert "Traceback" not in err and "BrokenPipeError" not in err and "Exception ignored" not in err


def test_a_broken_pipe_in_process_returns_141(monkeypatch: pytest.MonkeyPatch) -> None:
    class ClosedPipe(io.StringIO):
        def write(self, text: str) -> int:
            raise BrokenPipeError(32, "Broken pipe")

    monkeypatch.setattr(sys, "stdout", ClosedPipe())
    assert main(["models"]) == 141


def test_decode_workers_ignore_ctrl_c() -> None:
    """Ctrl-C reaches every process of the terminal's group: only the parent may handle it."""
    from transferlab.data.decode import _run

    handlers = _run([(signal.SIGINT,)] * 4, signal.getsignal, workers=2, desc="test",
                    counts=[1] * 4)
    assert handlers == [signal.SIG_IGN] * 4


def test_ctrl_c_during_the_parallel_decode_exits_130_with_one_line(tmp_path: Path) -> None:
    src = _class_folders(tmp_path / "photos", {"a": 150, "b": 150}, size=(192, 256))
    cache = tmp_path / "cache"
    proc = subprocess.Popen(
        [sys.executable, "-m", "transferlab", "data", "info", f"folder:{src}", "--data-root",
         str(cache), "--workers", "2", "--image-size", "96"],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, env=_env(), start_new_session=True)
    deadline = time.monotonic() + 120
    # Decoding has begun once a temporary entry holds its first .npy file.
    while not list((cache / "decoded").glob(".*.tmp/*.npy")) and time.monotonic() < deadline:
        assert proc.poll() is None, proc.communicate()
        time.sleep(0.01)
    os.killpg(proc.pid, signal.SIGINT)  # what Ctrl-C does: the whole foreground process group
    out, err = proc.communicate(timeout=120)
    assert proc.returncode == 130, err
    assert err.decode().strip() == "transferlab: interrupted"
    assert _complete_entries(cache) == []  # no entry, no temporary directory left
    # ... and the next run decodes from scratch.
    assert main(["data", "info", f"folder:{src}", "--data-root", str(cache), "--workers", "2",
                 "--image-size", "96"]) == 0


def test_rank_names_the_minimum_of_a_candidate_below_it(
        tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    from transferlab.models import create_model, save_weights

    weights = tmp_path / "weights"
    weights.mkdir()
    save_weights(create_model("benchmark_cnn", num_classes=3), weights / "bcnn.safetensors")
    assert main(["rank", "--dataset", "synthetic:classes=3,train=60,test=9,size=8", "--data-root",
                 str(tmp_path / "data"), "--weights-dir", str(weights), "--models", "benchmark_cnn",
                 "--input-size", "7", "--out", str(tmp_path / "rank"), "--quiet"]) == 2
    err = _error(capsys)
    assert "benchmark_cnn: input_size=7 is below the smallest input benchmark_cnn takes, 8 px" in err


def test_a_pixel_limit_does_not_leak_into_the_rest_of_the_process(tmp_path: Path) -> None:
    """Pillow's guard is a global: a small limit for one folder must not refuse later images."""
    from PIL import Image

    from transferlab.data.images import open_image

    before = Image.MAX_IMAGE_PIXELS
    path = tmp_path / "a.png"
    Image.new("RGB", (40, 40)).save(path)
    with pytest.raises(Exception, match="above the limit of 800 pixels"):
        with open_image(path, "a.png", 800):
            pass
    with open_image(path, "a.png", 10_000) as im:
        assert im.size == (40, 40)
    assert Image.MAX_IMAGE_PIXELS == before
    with Image.open(path) as im:  # a plain Pillow call elsewhere in the process still works
        im.load()


def test_audit_checks_its_output_and_input_size_before_decoding(
        tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    src = _class_folders(tmp_path / "photos", {"cat": 3, "dog": 3})
    blocker = tmp_path / "afile"
    blocker.write_text("x")
    args = ["data", "audit", f"folder:{src}", "--data-root", str(tmp_path / "cache")]
    assert main([*args, "--out", str(blocker / "audit")]) == 2
    assert f"{blocker} is a file" in _error(capsys)
    assert main([*args, "--out", str(tmp_path / "audit"), "--model", "mobilenet_v2",
                 "--input-size", "16"]) == 2
    assert "32 px" in _error(capsys)
    assert not (tmp_path / "cache").exists()
