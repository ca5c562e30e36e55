"""The generated report from small fake run directories (numbers computed here, not typed in)."""

from __future__ import annotations

import csv
import html
import json
import re
import shutil
import statistics
import subprocess
from html.parser import HTMLParser
from pathlib import Path

import numpy as np
import pytest
import yaml
from PIL import Image

from transferlab.cli import main
from transferlab.report import write_report
from transferlab.report.document import Document, Paragraph, Table, to_html, to_markdown
from transferlab.report.tables import fmt_pct, fmt_seconds
from transferlab.sweep import SweepRow, write_sweep

CLASSES = ["apple", "bee", "cloud", "dolphin"]
DATASET = "synthetic:classes=4,train=40,test=12,size=8,seed=0"


def make_run(root: Path, name: str, model: str, seed: int, pretrained: bool = False,
             stages: tuple[str, ...] = ("train",)) -> Path:
    """A run directory as `transferlab train` writes it, with random but consistent numbers."""
    rng = np.random.default_rng(seed + 7 * len(name))
    run = root / name
    run.mkdir(parents=True)
    labels = np.repeat(np.arange(len(CLASSES)), 3)
    logits = rng.normal(size=(len(labels), len(CLASSES))).astype(np.float32)
    logits[np.arange(len(labels)), labels] += rng.uniform(0.0, 2.0)  # better than chance
    np.savez(run / "predictions_test.npz", labels=labels, logits=logits, classes=np.array(CLASSES))
    rows = []
    for stage in stages:
        for epoch in range(1, 4):
            rows.append({"stage": stage, "epoch": epoch, "train_loss": rng.uniform(0.5, 2),
                         "train_acc1": rng.uniform(), "val_loss": rng.uniform(0.5, 2),
                         "val_acc1": rng.uniform(), "val_acc5": 1.0, "lr": 1e-3,
                         "epoch_time_s": rng.uniform(1, 9), "eval_time_s": rng.uniform(0, 1),
                         "images_per_s": rng.uniform(100, 900)})
    with open(run / "metrics.csv", "w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=list(rows[0]))
        writer.writeheader()
        writer.writerows(rows)
    config = {"run_name": name, "dataset": DATASET, "model": model, "seed": seed,
              "augment": "none", "stages": [{"name": s} for s in stages]}
    (run / "config.yaml").write_text(yaml.safe_dump(config))
    top1 = float((logits.argmax(1) == labels).mean())
    # Balanced accuracy and macro-F1 by their definitions, as training writes them.
    predicted = logits.argmax(1)
    recalls, f1s = [], []
    for c in range(len(CLASSES)):
        tp = int(((predicted == c) & (labels == c)).sum())
        recall = tp / int((labels == c).sum())
        precision = tp / max(int((predicted == c).sum()), 1)
        recalls.append(recall)
        f1s.append(2 * precision * recall / (precision + recall) if tp else 0.0)
    summary = {
        "run_name": name, "model": model, "pretrained": pretrained, "dataset": DATASET,
        "classes": CLASSES, "test_acc1": top1, "test_acc5": 1.0,
        "test_bal_acc": statistics.fmean(recalls), "test_macro_f1": statistics.fmean(f1s),
        "epochs": {s: 3 for s in stages},
        "epoch_time_s": statistics.fmean(r["epoch_time_s"] for r in rows),
        "val_time_s": statistics.fmean(r["eval_time_s"] for r in rows),
        "eval_time_s": float(rng.uniform(1, 3)),
        "images_per_s": statistics.fmean(r["images_per_s"] for r in rows),
        "wall_time_s": sum(r["epoch_time_s"] + r["eval_time_s"] for r in rows),
        "params_total": int(rng.integers(10_000, 90_000)), "params_trainable": 1234,
        "device": "cpu", "versions": {"torch": "x.y", "python": "3.z"},
    }
    (run / "summary.json").write_text(json.dumps(summary))
    return run


class TagChecker(HTMLParser):
    """Collects images and checks that non-void tags are balanced."""

    VOID = {"meta", "img", "br", "hr", "link", "input"}

    def __init__(self) -> None:
        super().__init__()
        self.stack: list[str] = []
        self.images: list[str] = []
        self.tables = 0

    def handle_starttag(self, tag, attrs):
        if tag == "img":
            self.images.append(dict(attrs)["src"])
        if tag == "table":
            self.tables += 1
        if tag not in self.VOID:
            self.stack.append(tag)

    def handle_endtag(self, tag):
        assert self.stack and self.stack[-1] == tag, f"unbalanced </{tag}> after {self.stack[-3:]}"
        self.stack.pop()


def markdown_rows(text: str, first_cell: str) -> list[list[str]]:
    """Cells of the Markdown table rows that start with `first_cell`."""
    return [[c.strip() for c in line.strip().strip("|").split("|")]
            for line in text.splitlines() if line.startswith(f"| {first_cell} |")]


@pytest.fixture
def runs(tmp_path):
    root = tmp_path / "runs"
    return [make_run(root, "benchmark_cnn", "benchmark_cnn", 0),
            make_run(root, "mobilenet_v2", "mobilenet_v2", 0),
            make_run(root, "mobilenet_v2-seed1", "mobilenet_v2", 1),
            make_run(root, "inception_v3", "inception_v3", 0, pretrained=True,
                     stages=("head", "finetune"))]


def test_report_table_matches_summaries(runs, tmp_path):
    out = tmp_path / "report"
    paths = write_report(runs, out, title="Fake study", data_figures=False)
    text = paths.markdown.read_text()
    summaries = {p.name: json.loads((p / "summary.json").read_text()) for p in runs}
    cnn = markdown_rows(text, "benchmark_cnn")[0]
    assert cnn[1] == fmt_pct(summaries["benchmark_cnn"]["test_acc1"])
    assert cnn[3] == fmt_pct(summaries["benchmark_cnn"]["test_bal_acc"])
    assert cnn[4] == fmt_pct(summaries["benchmark_cnn"]["test_macro_f1"])
    assert cnn[5] == fmt_seconds(summaries["benchmark_cnn"]["epoch_time_s"])
    assert cnn[6] == fmt_seconds(summaries["benchmark_cnn"]["val_time_s"])
    assert cnn[7] == fmt_seconds(summaries["benchmark_cnn"]["eval_time_s"])
    assert cnn[13] == "–"  # synthetic data is not the study's: no 2018 numbers beside it
    # Two seeds of MobileNetV2 make one row: mean ± sample standard deviation.
    accs = [summaries[n]["test_acc1"] for n in ("mobilenet_v2", "mobilenet_v2-seed1")]
    assert markdown_rows(text, "mobilenet_v2")[0][1] == fmt_pct(statistics.fmean(accs),
                                                               statistics.stdev(accs))
    assert markdown_rows(text, "inception_v3")[0][8] == "head 3 + finetune 3"
    for name in ("benchmark_cnn", "mobilenet_v2", "inception_v3"):
        assert (out / "figures" / f"curves_{name}.png").is_file()
        assert (out / "figures" / f"confusion_{name}.png").is_file()
    assert "run_name: inception_v3" in text  # the exact config is included


def test_html_parses_and_is_self_contained(runs, tmp_path):
    paths = write_report(runs, tmp_path / "report", data_figures=False)
    checker = TagChecker()
    checker.feed(paths.html.read_text())
    checker.close()
    assert checker.stack == []
    assert checker.images and all(src.startswith("data:image/png;base64,") for src in checker.images)
    assert checker.tables >= 3


def test_report_command_with_sweep_and_data_figures(runs, tmp_path, capsys):
    sweep_dir = tmp_path / "sweep"
    sweep_dir.mkdir()
    grid = {"stages.0.optimizer": ["sgd", "adam"], "stages.0.lr": [0.1, 0.01]}
    rows = [SweepRow({"stages.0.optimizer": o, "stages.0.lr": lr}, f"p{i}", 0.1 * i, 0.5, 0.2,
                     3, 1.5, 9.0)
            for i, (o, lr) in enumerate([(o, lr) for o in ("sgd", "adam") for lr in (0.1, 0.01)])]
    write_sweep(sweep_dir, grid, rows)
    out = tmp_path / "report"
    assert main(["report", str(runs[0]), str(sweep_dir), "--out", str(out)]) == 0
    text = (out / "REPORT.md").read_text()
    # The pivot: optimiser rows, learning-rate columns, as in the study's tables.
    assert markdown_rows(text, "adam")[0] == ["adam", fmt_pct(0.2), fmt_pct(0.3)]
    assert (out / "figures" / "data_class_counts.png").is_file()
    assert "REPORT.md" in capsys.readouterr().out


def test_report_of_missing_folder_is_a_clear_error(tmp_path, capsys):
    assert main(["report", str(tmp_path / "nothing"), "--out", str(tmp_path / "r")]) == 2
    assert "does not exist" in capsys.readouterr().err


def test_document_escapes_markup(tmp_path):
    doc = Document("a <b> & c")
    doc.add(Paragraph("x < y and `a|b`"), Table(["h"], [["p|q <i>"]]))
    html = to_html(doc)
    assert "<b>" not in html and "&lt;i&gt;" in html and "<code>a|b</code>" in html
    assert "p\\|q" in to_markdown(doc, tmp_path)


def _chromium() -> str | None:
    names = ("chromium", "chromium-browser", "google-chrome", "google-chrome-stable", "chrome",
             "headless_shell")
    return next((path for name in names if (path := shutil.which(name))), None)


# Appended to a copy of report.html: once every image has loaded (the load event waits for them),
# it writes what the browser laid out into the page, which --dump-dom then prints.
RENDER_PROBE = """<script>
addEventListener("load", () => {
  const box = (e) => e.getBoundingClientRect();
  const probe = {
    viewport: document.documentElement.clientWidth,
    scroll_width: document.documentElement.scrollWidth,
    page_height: document.documentElement.scrollHeight,
    font_px: parseFloat(getComputedStyle(document.body).fontSize),
    images: [...document.images].map((i) => ({
      natural_width: i.naturalWidth, complete: i.complete, alt: i.alt,
      left: box(i).left, top: box(i).top + scrollY, width: box(i).width, height: box(i).height})),
    tables: [...document.querySelectorAll("table")].map((t) => ({rows: t.rows.length,
                                                                 right: box(t).right})),
  };
  const out = document.createElement("pre");
  out.id = "render-probe";
  out.textContent = JSON.stringify(probe);
  document.body.appendChild(out);
});
</script>"""


def _render(browser: str, page: Path, width: int, height: int, shot: Path) -> dict:
    """Load `page` in headless Chromium at width x height: screenshot it and return the probe."""
    result = subprocess.run(
        [browser, "--headless", "--no-sandbox", "--disable-gpu",
         f"--window-size={width},{height}", "--virtual-time-budget=10000",
         f"--screenshot={shot}", "--dump-dom", page.as_uri()],
        check=True, timeout=60, capture_output=True, text=True)
    found = re.search(r'<pre id="render-probe">(.*?)</pre>', result.stdout, re.S)
    assert found, f"the page never finished loading in Chromium: {result.stderr[-500:]}"
    return json.loads(html.unescape(found.group(1)))


def test_html_renders_in_headless_chromium(runs, tmp_path):
    """Every figure loads, the tables are there, and a 1366 px laptop screen needs no sideways scroll."""
    browser = _chromium()
    if browser is None:
        pytest.skip("no Chromium or Chrome executable on PATH (.ci/run installs Debian's "
                    "chromium); the headless render is not checked")
    sweep_dir = tmp_path / "sweep"
    write_sweep(sweep_dir, {"stages.0.lr": [0.1, 0.01]},
                [SweepRow({"stages.0.lr": lr}, f"p{i}", 0.3 + 0.1 * i, 0.9, 0.3, 3, 1.5, 9.0)
                 for i, lr in enumerate([0.1, 0.01])])
    paths = write_report([*runs, sweep_dir], tmp_path / "report", data_figures=False)
    source = TagChecker()
    source.feed(paths.html.read_text())
    page = tmp_path / "probed.html"
    page.write_text(paths.html.read_text().replace("</body>", RENDER_PROBE + "</body>"))

    laptop = _render(browser, page, 1366, 768, tmp_path / "laptop.png")
    assert laptop["viewport"] > 1300  # the window size took effect (a scrollbar may take a few px)
    assert laptop["scroll_width"] <= laptop["viewport"], "the page scrolls sideways at 1366 px"
    assert laptop["font_px"] >= 14
    assert len(laptop["images"]) == len(source.images) >= 6  # curves, confusion, accuracy vs time
    broken = [i["alt"] for i in laptop["images"] if not (i["complete"] and i["natural_width"] > 0)]
    assert not broken, f"figures that did not load: {broken}"
    assert all(0 <= i["left"] and i["left"] + i["width"] <= laptop["viewport"] + 0.5
               for i in laptop["images"]), "a figure is wider than the screen"
    assert len(laptop["tables"]) == source.tables >= 4
    assert all(t["rows"] >= 2 and t["right"] <= laptop["viewport"] + 0.5 for t in laptop["tables"])

    # The whole page in one screenshot: every figure's box holds a drawn plot, not blank paper.
    full_shot = tmp_path / "page.png"
    full = _render(browser, page, 1366, laptop["page_height"], full_shot)
    with Image.open(full_shot) as shot:
        pixels = np.asarray(shot.convert("L"), dtype=np.float32)
    assert pixels.shape[1] == 1366 and pixels.shape[0] >= full["page_height"] - 1
    for img in full["images"]:
        top, left = round(img["top"]), round(img["left"])
        region = pixels[top : top + round(img["height"]), left : left + round(img["width"])]
        assert region.size and region.std() > 10 and (region < 128).mean() > 0.002, (
            f"the figure {img['alt']!r} is blank in the screenshot")
