"""The Python API (`import transferlab as tl`): train -> evaluate -> export -> load -> predict,
the same answers as the command line, every input kind of `predict`, and its errors."""

from __future__ import annotations

import io
import json
import logging
import subprocess
import sys
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from PIL import Image

import transferlab as tl
from transferlab.cli import main
from transferlab.errors import TransferlabError

CLASSES = ("blue", "green", "red")


def _photo_folder(root: Path, per_class: int = 10, seed: int = 0) -> Path:
    """Class folders of PNGs of mixed sizes, each class a colour plus noise (learnable)."""
    rng = np.random.default_rng(seed)
    for c, name in enumerate(CLASSES):
        (root / name).mkdir(parents=True)
        for i in range(per_class):
            h, w = int(rng.integers(28, 48)), int(rng.integers(28, 48))
            pixels = rng.integers(0, 90, (h, w, 3))
            pixels[..., 2 - c] += 150
            Image.fromarray(pixels.astype(np.uint8)).save(root / name / f"{name}{i:02d}.png")
    return root


@pytest.fixture(scope="module")
def trained(tmp_path_factory: pytest.TempPathFactory) -> tuple[Any, Path]:
    """One tiny run from a plain folder path through `tl.train` (about a second of training)."""
    tmp = tmp_path_factory.mktemp("api")
    photos = _photo_folder(tmp / "photos")
    run = tl.train(photos, model="benchmark_cnn", out_dir=tmp / "runs", run_name="tiny",
                   data_root=tmp / "data", batch_size=8, quiet=True, extract_backend="eager",
                   sets=["stages.0.epochs=2"])
    return run, photos


def test_train_returns_a_finished_run_of_the_folder(trained: tuple[Any, Path]) -> None:
    run, photos = trained
    assert isinstance(run, tl.Run) and run.finished
    assert run.path.name == "tiny" and run.config.dataset == f"folder:{photos}"
    assert run.config.recipe == "scratch"  # no weights: the CLI's default recipe
    assert run.classes == list(CLASSES)
    assert run.summary["test_acc1"] is not None and run.summary["run_name"] == "tiny"
    assert [r["stage"] for r in run.metrics] == [run.config.stages[0].name] * 2
    assert "test top-1" in run._repr_html_() and "tiny" in repr(run)


def test_resume_goes_through_the_training_rules(trained: tuple[Any, Path]) -> None:
    run, _ = trained
    with pytest.raises(TransferlabError, match="cannot change \\['seed'\\] when resuming"):
        run.resume(seed=3)
    with pytest.raises(TransferlabError, match="already finished"):
        run.resume(quiet=True)


def test_plots_return_figures(trained: tuple[Any, Path]) -> None:
    from matplotlib.figure import Figure

    run, _ = trained
    curves, confusion = run.plot_curves(), run.evaluate().plot_confusion(title="tiny")
    assert isinstance(curves, Figure) and isinstance(confusion, Figure)
    assert len(curves.axes) == 2 and "tiny" in confusion.axes[0].get_title()
    image = confusion.axes[0].images[0].get_array()
    assert image.shape == (3, 3) and np.allclose(image.sum(axis=1), 1.0)  # rows normalised


def test_evaluate_export_load_predict_agree_with_the_cli(trained: tuple[Any, Path], tmp_path: Path,
                                                         capsys: pytest.CaptureFixture[str]) -> None:
    run, photos = trained
    evaluation = run.evaluate()
    assert evaluation.classes == list(CLASSES)
    assert evaluation.test_acc1 == pytest.approx(run.summary["test_acc1"])
    assert "test top-1" in evaluation._repr_html_()
    onnx = run.export("onnx", tmp_path / "tiny.onnx")
    assert onnx == tmp_path / "tiny.onnx" and onnx.is_file()
    from_onnx = tl.load(onnx).predict(photos, top=3)
    from_run = tl.load(run.path).predict(photos, top=3)
    from_pt = run.predict(photos, top=3)
    assert len(from_onnx) == 3 * 10
    capsys.readouterr()
    assert main(["predict", str(photos), "--weights", str(run.path / "best.pt"), "--json", "--top", "3"]) == 0
    cli = json.loads(capsys.readouterr().out)
    assert [p.source for p in from_run] == [c["image"] for c in cli]
    assert from_onnx.labels() == from_run.labels() == from_pt.labels() == [c["top"][0]["name"] for c in cli]
    for a, b in zip(from_onnx, from_run, strict=True):
        assert a.score == pytest.approx(b.score, abs=1e-4)
        assert a.label == a.top[0][0] and a.score == a.top[0][1] and len(a.top) == 3
    assert [p.to_dict() for p in from_run] == cli


def test_torchscript_and_safetensors_exports_load_and_agree(trained: tuple[Any, Path], tmp_path: Path) -> None:
    run, photos = trained
    files = sorted(p for p in (photos / "red").iterdir())[:4]
    expected = run.predict(files).labels()
    for fmt, name in (("torchscript", "m.torchscript.pt"), ("safetensors", "m.safetensors")):
        classifier = tl.load(run.export(fmt, tmp_path / name))
        assert classifier.classes == list(CLASSES)
        assert classifier.predict(files).labels() == expected, fmt
    assert tl.load(tmp_path / "m.torchscript.pt").runtime == "torchscript"


def test_every_input_kind_gives_the_same_answer(trained: tuple[Any, Path], tmp_path: Path) -> None:
    run, photos = trained
    classifier = tl.load(run.path)
    files = [photos / "green" / "green03.png", photos / "blue" / "blue07.png"]
    # A folder of just these two, so a folder is one of the kinds.
    folder = tmp_path / "two"
    folder.mkdir()
    for f in files:
        (folder / f"{files.index(f)}_{f.name}").write_bytes(f.read_bytes())
    arrays = [np.asarray(Image.open(f).convert("RGB")) for f in files]

    def answer(predictions: Any) -> list[tuple[str, float]]:
        return [(p.label, round(p.score, 5)) for p in predictions]

    expected = answer(classifier.predict([str(f) for f in files]))
    assert answer([classifier.predict(files[0])[0], classifier.predict(files[1])[0]]) == expected
    assert answer(classifier.predict(folder)) == expected
    assert answer(classifier.predict([Image.open(f) for f in files])) == expected
    assert answer(classifier.predict(list(arrays))) == expected
    assert answer([classifier.predict(a)[0] for a in arrays]) == expected
    if arrays[0].shape == arrays[1].shape:
        assert answer(classifier.predict(np.stack(arrays))) == expected
    same = np.stack([arrays[0], arrays[0]])  # a (N, H, W, 3) batch
    batch = classifier.predict(same)
    assert answer(batch) == [expected[0], expected[0]]
    assert [p.source for p in batch] == ["image[0]", "image[1]"]
    html = batch._repr_html_()
    assert html.count("data:image/jpeg;base64,") == 2 and expected[0][0] in html


def test_predict_refuses_what_is_not_an_image(trained: tuple[Any, Path]) -> None:
    classifier = tl.load(trained[0].path)
    with pytest.raises(TransferlabError, match="uint8 RGB"):
        classifier.predict(np.zeros((8, 8, 3), dtype=np.float32))
    with pytest.raises(TransferlabError, match="cannot predict a dict"):
        classifier.predict([{}])
    with pytest.raises(TransferlabError, match="not found"):
        classifier.predict("no/such/file.png")


def test_mistakes_are_the_wrong_test_predictions(trained: tuple[Any, Path]) -> None:
    run, _ = trained
    mistakes = run.mistakes(limit=None)
    evaluation = run.evaluate()
    wrong = int(evaluation.confusion.sum() - np.trace(evaluation.confusion))
    assert len(mistakes) == wrong
    for m in mistakes:
        assert m.true != m.label and m.image is not None
        assert Path(m.source).parent.name == m.true  # the file is in its true class's folder


def test_unknown_keyword_is_an_error_listing_the_fields(tmp_path: Path) -> None:
    with pytest.raises(TransferlabError) as err:
        tl.train("synthetic", epochs=3, out_dir=tmp_path)
    message = str(err.value)
    assert "['epochs']" in message and "batch_size" in message and "val_fraction" in message


def test_weights_dir_implies_pretrained_below_the_cli(tmp_path: Path) -> None:
    from transferlab.api import training_config

    config = training_config({"dataset": "synthetic", "model": "mobilenet_v2", "weights_dir": str(tmp_path)})
    assert config.pretrained and config.recipe == "finetune"
    explicit = training_config({"dataset": "synthetic", "weights_dir": str(tmp_path), "pretrained": False})
    assert not explicit.pretrained and explicit.recipe == "scratch"


def test_a_plain_path_is_a_folder_dataset(tmp_path: Path) -> None:
    from transferlab.api.training import dataset_spec

    (tmp_path / "synthetic").mkdir()
    assert dataset_spec(tmp_path) == f"folder:{tmp_path}"
    assert dataset_spec(str(tmp_path)) == f"folder:{tmp_path}"
    assert dataset_spec("cifar10") == "cifar10" and dataset_spec("synthetic:classes=3") == "synthetic:classes=3"
    assert dataset_spec("folder:x") == "folder:x"


def test_run_and_load_errors_name_the_fix(tmp_path: Path) -> None:
    with pytest.raises(TransferlabError, match="not a run directory"):
        tl.Run(tmp_path)
    with pytest.raises(TransferlabError, match="holds no best.pt"):
        tl.load(tmp_path)
    with pytest.raises(TransferlabError, match="say which model"):
        tl.load()


def test_training_messages_go_through_logging(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    with caplog.at_level(logging.INFO, logger="transferlab"):
        run = tl.train("synthetic:classes=3,train=24,test=9,size=8", out_dir=tmp_path, run_name="r",
                       quiet=True, batch_size=8, extract_backend="eager")
    messages = [r.getMessage() for r in caplog.records if r.name == "transferlab"]
    assert any(m.startswith("recipe scratch") for m in messages)
    assert any(f"run directory {run.path}" in m for m in messages)


def test_a_library_call_prints_nothing_of_its_own(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    from transferlab import logs

    printers = list(logs.logger.handlers)  # the CLI's printer, installed for the suite by conftest
    for handler in printers:
        logs.logger.removeHandler(handler)
    try:
        capsys.readouterr()
        tl.train("synthetic:classes=3,train=24,test=9,size=8", out_dir=tmp_path, run_name="r",
                 quiet=True, batch_size=8, extract_backend="eager")
        assert capsys.readouterr().out == ""
    finally:
        for handler in printers:
            logs.logger.addHandler(handler)
    assert main(["data", "info", "synthetic:classes=3,train=24,test=9,size=8"]) == 0
    assert "3 classes" in capsys.readouterr().out  # the CLI prints (and installs its printer)


def test_progress_bars_are_off_when_not_a_terminal_or_quiet() -> None:
    from transferlab.logs import progress

    class Terminal(io.StringIO):
        def isatty(self) -> bool:
            return True

    assert not sys.stderr.isatty()  # pytest captures it: no bar, no carriage returns in logs
    assert progress(range(3)).disable
    assert not progress(range(3), file=Terminal()).disable
    assert progress(range(3), file=Terminal(), quiet=True).disable


def test_data_info_mirrors_the_command(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    info = tl.data_info("synthetic:classes=3,train=30,test=9,size=8", val_fraction=0.2)
    assert info.classes and set(info.counts) == {"train", "val", "test"}
    assert int(info.counts["train"].sum() + info.counts["val"].sum()) == 30
    capsys.readouterr()
    assert main(["data", "info", "synthetic:classes=3,train=30,test=9,size=8", "--val-fraction", "0.2"]) == 0
    assert capsys.readouterr().out.strip() == str(info).strip()
    assert "<table>" in info._repr_html_()


def test_import_transferlab_imports_no_torch() -> None:
    code = ("import sys, transferlab as tl; assert callable(tl.__getattr__); "
            "print(sorted(m for m in ('torch', 'timm', 'matplotlib', 'onnxruntime') if m in sys.modules))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True, timeout=120)
    assert out.stdout.strip() == "[]", f"imported by `import transferlab`: {out.stdout.strip()}"


def test_compare_refuses_contradictory_settings(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(TransferlabError, match="drop weights_dir"):
        tl.compare_models(out=tmp_path, from_rank=tmp_path, weights_dir=tmp_path)
    with pytest.raises(TransferlabError, match="give it with from_rank"):
        tl.compare_models("configs/quick.yaml", tmp_path, top=2)
    with pytest.raises(TransferlabError, match="unknown compare setting"):
        tl.compare_models("configs/quick.yaml", tmp_path, epochs=2)
    assert main(["compare", "--config", "configs/quick.yaml", "--out", str(tmp_path), "--top", "2"]) == 2
    assert "give it with from_rank" in capsys.readouterr().err  # the CLI shows the library's message


def test_public_names_are_the_api_even_after_every_submodule_is_imported() -> None:
    import importlib
    import pkgutil

    import transferlab
    import transferlab.api
    import transferlab.errors

    for module in pkgutil.walk_packages(transferlab.__path__, "transferlab."):
        if module.name != "transferlab.__main__":
            importlib.import_module(module.name)  # a submodule becomes an attribute of the package
    for name in transferlab.__all__:
        if name != "__version__":
            home = transferlab.errors if name == "TransferlabError" else transferlab.api
            assert getattr(transferlab, name) is getattr(home, name), name
