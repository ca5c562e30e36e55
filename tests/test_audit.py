"""The data audit and what acts on it: copies across splits, wrong labels, --exclude, train's warning."""

from __future__ import annotations

import csv
import json
import tarfile
from pathlib import Path

import numpy as np
import pytest
from PIL import Image, ImageOps

from tests.conftest import require_shared
from transferlab.cli import main
from transferlab.data.exclude import kept_rows, read_exclude
from transferlab.errors import TransferlabError

CLASSES = ("airplane", "frog", "truck")  # three CIFAR-10 classes far apart in feature space


def cifar_folder(root: Path, train: int = 14, test: int = 4) -> Path:
    """train/ and test/ folders of real CIFAR-10 photos of CLASSES from the shared archive."""
    archive = require_shared("data", "cifar10-jpeg.tar.gz")
    want = {"train": train, "test": test}
    got: dict[tuple[str, str], int] = {}
    with tarfile.open(archive) as tar:
        for m in tar:
            parts = m.name.split("/")
            if not m.isfile() or len(parts) < 3 or parts[-2] not in CLASSES:
                continue
            split, cls = parts[-3], parts[-2]
            if got.get((split, cls), 0) >= want[split]:
                continue
            got[(split, cls)] = got.get((split, cls), 0) + 1
            out = root / split / cls / parts[-1]
            out.parent.mkdir(parents=True, exist_ok=True)
            out.write_bytes(tar.extractfile(m).read())
            if len(got) == 6 and all(got[k] >= want[k[0]] for k in got):
                break
    return root


@pytest.fixture(scope="module")
def planted(tmp_path_factory: pytest.TempPathFactory) -> dict[str, object]:
    """A folder with three copies of training photos planted in test/ and one wrong label, audited."""
    from transferlab.audit import AuditOptions, run_audit

    weights = require_shared("weights", "mobilenetv2_100.coral_int8_in1k.safetensors")
    tmp = tmp_path_factory.mktemp("audit")
    root = cifar_folder(tmp / "photos")
    frogs = sorted((root / "train" / "frog").iterdir())
    trucks = sorted((root / "train" / "truck").iterdir())
    planes = sorted((root / "train" / "airplane").iterdir())
    copies = {
        "test/frog/copy_exact.jpg": frogs[0],
        "test/truck/copy_resized.jpg": trucks[1],
        "test/airplane/copy_flipped.jpg": planes[2],
        "test/frog/copy_cropped.jpg": frogs[3],
    }
    # Cropped by 10%, shrunk to 24 px and re-encoded at quality 60: the pixel check finds it.
    Image.open(frogs[3]).crop((2, 2, 30, 30)).resize((24, 24), Image.BICUBIC).save(
        root / "test/frog/copy_cropped.jpg", quality=60)
    # A frame of one (non-grey) colour and a frame of noise among the photos.
    Image.new("RGB", (32, 32), (200, 40, 90)).save(root / "train/truck/blank.png")
    noise = np.random.default_rng(0).integers(0, 256, (32, 32, 3), dtype=np.uint8)
    Image.fromarray(noise).save(root / "train/frog/noise.png")
    (root / "test" / "frog" / "copy_exact.jpg").write_bytes(frogs[0].read_bytes())
    Image.open(trucks[1]).resize((48, 48), Image.BICUBIC).save(root / "test/truck/copy_resized.jpg", quality=70)
    ImageOps.mirror(Image.open(planes[2])).save(root / "test/airplane/copy_flipped.jpg", quality=90)
    swapped = root / "train" / "airplane" / "swapped_truck.jpg"
    trucks[-1].rename(swapped)  # a truck filed as an airplane
    result, paths = run_audit(AuditOptions(f"folder:{root}", weights=str(weights), image_size=32,
                                           data_root=str(tmp / "cache"), quiet=True, pixel_check=True),
                              tmp / "out")
    return {"root": root, "result": result, "paths": paths, "copies": copies,
            "swapped": "train/airplane/swapped_truck.jpg", "weights": weights, "tmp": tmp}


def test_copies_across_splits_are_leakage_and_different_photos_are_not(planted: dict) -> None:
    result = planted["result"]
    leaks = {f.path: f for f in result.of_kind("leakage")}
    root = planted["root"]
    for copy, original in planted["copies"].items():
        assert copy in leaks, f"{copy} not found as leakage"
        assert leaks[copy].other == original.relative_to(root).as_posix()
        assert leaks[copy].split == "test"
    assert leaks["test/frog/copy_exact.jpg"].detail == "exact copy"
    # Nothing else: the other 50 photos are different photos.
    assert set(leaks) == set(planted["copies"])
    assert not result.of_kind("duplicate") and not result.of_kind("label_conflict")


def test_blank_frames_and_noise_are_flagged(planted: dict) -> None:
    result = planted["result"]
    assert "train/truck/blank.png" in {f.path for f in result.of_kind("blank")}
    outliers = [f.path for f in result.of_kind("outlier")]
    assert "train/frog/noise.png" in outliers
    # No real photo is called an outlier or blank.
    assert set(outliers) <= {"train/frog/noise.png", "train/truck/blank.png"}
    assert {f.path for f in result.of_kind("blank")} == {"train/truck/blank.png"}


def test_a_swapped_label_is_ranked_above_its_class_clean_images(planted: dict) -> None:
    result = planted["result"]
    issues = result.of_kind("label_issue")
    paths = [f.path for f in issues]
    assert planted["swapped"] in paths
    swapped = issues[paths.index(planted["swapped"])]
    assert swapped.suggested == "truck" and swapped.label == "airplane"
    # Ranked above every clean airplane image that is flagged at all.
    clean_planes = [i for i, f in enumerate(issues) if f.label == "airplane" and f.path != planted["swapped"]]
    assert all(paths.index(planted["swapped"]) < i for i in clean_planes)


def test_audit_files_are_written_and_the_csv_feeds_exclude(planted: dict) -> None:
    paths = planted["paths"]
    payload = json.loads(paths["json"].read_text())
    assert payload["counts"]["leakage"] == 4
    rows = list(csv.DictReader(paths["csv"].open()))
    assert {r["path"] for r in rows if r["kind"] == "leakage"} == set(planted["copies"])
    html = paths["html"].read_text()
    assert html.count("<img") >= 6 and "data:image/png;base64," in html
    assert set(read_exclude(paths["csv"])) == {r["path"] for r in rows}


def test_data_audit_command(planted: dict, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    code = main(["data", "audit", f"folder:{planted['root']}", "--weights", str(planted["weights"]),
                 "--image-size", "32", "--data-root", str(planted["tmp"] / "cache"), "--no-labels",
                 "--pixel-check",
                 "--quiet", "--out", str(tmp_path / "audit")])
    out = capsys.readouterr().out
    assert code == 0
    assert "leakage: 4 image(s)" in out and "--exclude" in out
    assert (tmp_path / "audit" / "audit.html").is_file()


def test_audit_without_weights_is_a_clear_error(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    code = main(["data", "audit", "synthetic:classes=3,train=30,test=9,size=8", "--out", str(tmp_path / "a")])
    assert code == 2
    assert "--weights FILE" in capsys.readouterr().err
    assert not (tmp_path / "a").exists()


# -- exclude and train's own check (no shared data needed) ---------------------------------------

def colour_folder(root: Path, per_class: int = 6) -> Path:
    """train/ and test/ with three classes of noisy solid colours (all different images)."""
    rng = np.random.default_rng(0)
    for split, n in (("train", per_class), ("test", 3)):
        for c, rgb in enumerate(((200, 30, 30), (30, 200, 30), (30, 30, 200))):
            d = root / split / f"c{c}"
            d.mkdir(parents=True)
            for i in range(n):
                pixels = np.clip(np.array(rgb) + rng.normal(0, 25, (8, 8, 3)), 0, 255).astype(np.uint8)
                Image.fromarray(pixels).save(d / f"{i}.png")
    return root


def train_args(root: Path, tmp_path: Path, *extra: str) -> list[str]:
    return ["train", "--dataset", f"folder:{root}", "--model", "benchmark_cnn", "--data-root",
            str(tmp_path / "cache"), "--out-dir", str(tmp_path / "runs"), "--run-name", "r",
            "--val-fraction", "0.2", "--batch-size", "8", "--quiet", "--set", "stages.0.epochs=1",
            *extra]


def test_exclude_drops_exactly_the_listed_files_and_the_run_records_them(tmp_path: Path) -> None:
    root = colour_folder(tmp_path / "photos")
    listed = ["train/c0/1.png", "train/c2/4.png", "test/c1/0.png"]
    exclude = tmp_path / "exclude.txt"
    exclude.write_text("# made by hand\n" + "\n".join(listed) + "\n")
    assert main(train_args(root, tmp_path, "--exclude", str(exclude))) == 0
    run = tmp_path / "runs" / "r"
    files = json.loads((run / "split_files.json").read_text())
    used = {f for split in ("train", "val", "test") for f in files.get(split, [])}
    assert not used & set(listed)
    assert len(used) == 18 + 9 - 3  # everything else is used
    assert files["excluded"] == {"train": ["train/c0/1.png", "train/c2/4.png"], "test": ["test/c1/0.png"]}
    summary = json.loads((run / "summary.json").read_text())
    assert summary["excluded"]["count"] == 3 and summary["split_sizes"]["test"] == 8


def test_an_exclude_path_not_in_the_dataset_is_an_error(tmp_path: Path,
                                                        capsys: pytest.CaptureFixture[str]) -> None:
    root = colour_folder(tmp_path / "photos")
    exclude = tmp_path / "exclude.txt"
    exclude.write_text("train/c0/1.png\ntrain/nope/9.png\n")
    assert main(train_args(root, tmp_path, "--exclude", str(exclude))) == 2
    err = capsys.readouterr().err
    assert "train/nope/9.png" in err and "not images of" in err
    assert not (tmp_path / "runs" / "r" / "summary.json").exists()


def test_kept_rows_and_plain_lists() -> None:
    files = {"train": ["a.png", "b.png", "c.png"], "test": ["d.png"]}
    kept, dropped = kept_rows(files, ["b.png"])
    assert kept["train"].tolist() == [0, 2] and kept["test"].tolist() == [0]
    assert dropped == {"train": ["b.png"]}
    with pytest.raises(TransferlabError, match="not an image folder"):
        kept_rows(None, ["b.png"])


def test_train_warns_of_test_images_copied_from_train(tmp_path: Path,
                                                      capsys: pytest.CaptureFixture[str]) -> None:
    root = colour_folder(tmp_path / "photos")
    (root / "test" / "c1" / "copy.png").write_bytes((root / "train" / "c1" / "2.png").read_bytes())
    assert main(train_args(root, tmp_path)) == 0
    out = capsys.readouterr().out
    assert "1 test image(s) are exact copies of training images" in out
    assert "transferlab data audit" in out
    leakage = json.loads((tmp_path / "runs" / "r" / "summary.json").read_text())["leakage"]
    assert leakage["exact"] == 1 and leakage["pairs"][0]["path"] == "test/c1/copy.png"
    assert leakage["pairs"][0]["train_path"] == "train/c1/2.png"


def test_audit_page_renders_in_headless_chromium(planted: dict, tmp_path: Path) -> None:
    """Every thumbnail loads and the page needs no sideways scroll on a 1366 px laptop screen."""
    from tests.test_report import RENDER_PROBE, _chromium, _render

    browser = _chromium()
    if browser is None:
        pytest.skip("no Chromium or Chrome executable on PATH (.ci/run installs Debian's chromium)")
    page = tmp_path / "probed.html"
    page.write_text(planted["paths"]["html"].read_text().replace("</body>", RENDER_PROBE + "</body>"))
    shown = _render(browser, page, 1366, 768, tmp_path / "audit.png")
    assert shown["scroll_width"] <= shown["viewport"], "the audit page scrolls sideways at 1366 px"
    # The four leakage groups (two photos each) and the swapped label's card at least.
    assert len(shown["images"]) >= 9
    broken = [i["alt"] for i in shown["images"] if not (i["complete"] and i["natural_width"] > 0)]
    assert not broken, f"thumbnails that did not load: {broken}"


def test_the_python_api_audits_a_plain_folder_path(planted: dict, tmp_path: Path) -> None:
    import transferlab as tl

    result = tl.audit_data(planted["root"], out=tmp_path / "a", weights=planted["weights"], image_size=32,
                           data_root=str(planted["tmp"] / "cache"), label_issues=False, quiet=True)
    # Without the pixel check (the default) the copy cropped, shrunk and re-encoded is missed;
    # the features find the other three.
    assert {f.path for f in result.of_kind("leakage")} == set(planted["copies"]) - {"test/frog/copy_cropped.jpg"}
    assert result.settings["pixel_check"] is False
    assert (tmp_path / "a" / "audit.csv").is_file()
    with pytest.raises(TransferlabError, match="unknown audit setting"):
        tl.audit_data(planted["root"], weights=planted["weights"], threshold=0.5)
