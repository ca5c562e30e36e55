"""The benchmark's own machinery on tiny inputs: timing, peak, FLOP counting, presets, the report.

TensorFlow is not a dependency of transferlab: the Keras peer's checks skip when it is missing.
"""

from __future__ import annotations

import importlib.util
import math
import sys
from pathlib import Path

import pytest
import torch
from torch import nn

BENCH = Path(__file__).resolve().parents[1] / "bench"
sys.path.insert(0, str(BENCH))

import flop_count  # noqa: E402
import harness  # noqa: E402
import presets  # noqa: E402
import results_md  # noqa: E402
from results_md import Row  # noqa: E402


def _load_run_module():
    spec = importlib.util.spec_from_file_location("bench_run", BENCH / "run.py")
    module = importlib.util.module_from_spec(spec)
    sys.modules["bench_run"] = module  # dataclasses look their module up while the class is built
    spec.loader.exec_module(module)
    return module


# --- timing and peak ------------------------------------------------------------------------


def test_time_steps_counts_warmup_and_takes_the_median():
    calls = []
    ticks = iter([0.3, 0.1, 0.2])

    def step():
        calls.append(1)

    timing = harness.time_steps(step, warmup=2, repeats=3, items_per_call=10)
    assert len(calls) == 5
    assert len(timing.times_s) == 3
    # A Timing built from known durations: median and rate follow.
    t = harness.Timing(tuple(next(ticks) for _ in range(3)), items_per_call=10)
    assert t.median_s == pytest.approx(0.2)
    assert t.rate == pytest.approx(50.0)
    assert t.spread == pytest.approx(1.0)


def test_time_steps_rejects_zero_repeats():
    with pytest.raises(ValueError, match="repeats"):
        harness.time_steps(lambda: None, warmup=0, repeats=0)


def test_time_steps_calls_sync_before_each_clock_read():
    events = []
    harness.time_steps(lambda: events.append("step"), warmup=1, repeats=2,
                       sync=lambda: events.append("sync"))
    assert events == ["step", "sync", "step", "sync", "step", "sync"]


def test_matmul_peak_is_a_plausible_rate():
    rate = harness.matmul_peak("cpu", n=64, repeats=2)
    assert 1e6 < rate < 1e15  # FLOP/s: more than a megaflop, less than a petaflop on a CPU


def test_machine_facts_describe_the_cpu():
    facts = harness.machine_facts("cpu")
    assert facts.cpu_count >= 1 and 1 <= facts.cpus_usable <= facts.cpu_count
    assert facts.torch_version == torch.__version__
    assert facts.device == "cpu" and facts.cpu_model


# --- FLOP counting ---------------------------------------------------------------------------


def test_forward_flops_of_a_conv_and_a_linear_layer():
    model = nn.Sequential(nn.Conv2d(3, 8, 3, padding=1, bias=False), nn.Flatten(), nn.Linear(8 * 4 * 4, 5))
    x = torch.randn(2, 3, 4, 4)
    conv = 2 * (4 * 4) * 8 * 3 * 3 * 3  # 2 x output positions x weight size
    linear = 2 * (8 * 4 * 4) * 5
    assert flop_count.flops_per_image(model, x, train=False) == pytest.approx(conv + linear)


@pytest.mark.parametrize("groups", [1, 4, 16])
def test_training_flops_of_a_grouped_conv_are_three_forwards(groups):
    # Input gradient + weight gradient each cost one forward, whatever `groups` is (torch's own
    # formula multiplies depthwise backward by the channel count).
    conv = nn.Conv2d(16, 16, 3, padding=1, groups=groups, bias=False)
    model = nn.Sequential(nn.ReLU(), conv, nn.AdaptiveAvgPool2d(1), nn.Flatten())
    x = torch.randn(2, 16, 6, 6, requires_grad=True)
    forward = flop_count.flops_per_image(model, x.detach(), train=False)
    assert forward == pytest.approx(2 * 36 * 16 * (16 // groups) * 9)
    train = flop_count.flops_per_image(model, x, train=True)
    assert train == pytest.approx(3 * forward)
    assert all(p.grad is None for p in model.parameters())  # counting leaves no gradients behind


def test_frozen_layers_cost_no_weight_gradient():
    first, second = nn.Conv2d(3, 4, 1, bias=False), nn.Conv2d(4, 4, 1, bias=False)
    first.requires_grad_(False)
    model = nn.Sequential(first, second, nn.AdaptiveAvgPool2d(1), nn.Flatten())
    x = torch.randn(2, 3, 5, 5)
    one = 2 * 25 * 4 * 3
    two = 2 * 25 * 4 * 4
    # forward of both, backward of `second` only (weight gradient; no input gradient is needed).
    assert flop_count.flops_per_image(model, x, train=True) == pytest.approx(one + two + two)


# --- rows, tables, RESULTS.md ----------------------------------------------------------------


def _rows() -> list[Row]:
    return [
        Row("Training", "cnn", "224px", "img/s", 300.0, 100.0, True, 1.0, 0.1, 0.05),
        Row("Training", "big", "224px", "img/s", 50.0, 100.0, True, 1.0),
        Row("Head", "one epoch", "128 images", "s", 0.01, 5.0, False, 100.0),
        Row("Head", "keras missing", "", "s", 1.0, None, False, 10.0, note="not run: no TensorFlow"),
        Row("Peak", "matmul", "cpu", "GFLOP/s", 100.0, 90.0, True, None),
    ]


def test_median_rows_takes_the_median_of_each_repeats_ratio():
    def row(ours, theirs, note=""):
        return Row("Training", "cnn", "224px", "img/s", ours, theirs, True, 1.0, note=note)

    # Ratios per repeat: 0.5, 3.0, 1.2 -> median 1.2, although the medians of each side
    # (200 / 200) would say 1.0: the ratio compares figures measured side by side.
    rows = results_md.median_rows([[row(100.0, 200.0, "a")], [row(300.0, 100.0, "b")],
                                   [row(240.0, 200.0, "c")]])
    (combined,) = rows
    assert combined.ours == pytest.approx(240.0) and combined.theirs == pytest.approx(200.0)
    assert combined.ratio == pytest.approx(1.2) and combined.status == "met"
    assert combined.note.startswith("c;") and "median of 3 repeats" in combined.note
    assert "x0.500-x3.00" in combined.note
    # A repeat without the peer's figure does not count; one repeat is passed through unchanged.
    partial = results_md.median_rows([[row(100.0, 200.0)], [row(100.0, None)]])[0]
    assert partial.ratio == pytest.approx(0.5)
    assert results_md.median_rows([[row(1.0, 2.0)]])[0] == row(1.0, 2.0)


def test_row_ratio_and_status():
    cnn, big, epoch, missing, peak = _rows()
    assert cnn.ratio == pytest.approx(3.0) and cnn.status == "met"
    assert big.ratio == pytest.approx(0.5) and big.status == "MISSED"
    assert epoch.ratio == pytest.approx(500.0) and epoch.status == "met"  # times: theirs / ours
    assert missing.ratio is None and missing.status == "not run"
    assert peak.status == ""  # no target


@pytest.mark.parametrize(("value", "text"), [
    (None, "-"), (0, "0"), (1234.5, "1,234"), (12.345, "12.3"), (0.012345, "0.0123"), (3.0, "3.00"),
])
def test_format_number(value, text):
    assert results_md.format_number(value) == text


def test_markdown_table_has_a_row_per_measurement_and_escapes_pipes():
    rows = _rows()[:2]
    rows[0].note = "a | b"
    table = results_md.markdown_table(rows, peer_label="Keras/TF")
    lines = table.splitlines()
    assert len(lines) == 2 + len(rows)
    assert "Keras/TF" in lines[0]
    assert all(line.count(" | ") == len(results_md.COLUMNS) - 1 for line in lines[2:])
    assert "a \\| b" in table and "x3.00" in table and "x0.500" in table
    assert "10.0% / 5.0%" in table


def test_results_markdown_lists_command_facts_and_every_target():
    rows = _rows()
    text = results_md.results_markdown(rows, command="python bench/run.py --quick",
                                       facts={"CPU": "test cpu"}, remarks=["remains: nothing"])
    assert "python bench/run.py --quick" in text
    assert "- CPU: test cpu" in text
    for section in ("## Training", "## Head", "## Peak"):
        assert section in text
    note = text.split("## Closing note")[1]
    targeted = [r for r in rows if r.target is not None]
    assert note.count("\n- ") == len(targeted)
    assert "**MISSED**" in note and "**met**" in note and "**not run**" in note
    assert "remains: nothing" in note


def test_console_table_groups_sections():
    out = results_md.console_table(_rows())
    assert out.count("== ") == 3
    assert "note: not run: no TensorFlow" in out


def test_write_atomic_replaces_and_leaves_no_temporary(tmp_path):
    target = tmp_path / "sub" / "RESULTS.md"
    results_md.write_atomic(target, "one\n")
    results_md.write_atomic(target, "two\n")
    assert target.read_text() == "two\n"
    assert sorted(p.name for p in target.parent.iterdir()) == ["RESULTS.md"]


# --- presets ---------------------------------------------------------------------------------


def test_presets_read_a_compare_config_and_fall_back_per_model(tmp_path):
    (tmp_path / "study.yaml").write_text(
        "shared: {batch_size: 16, input_size: 96, augment: none}\nmodels:\n"
        "  - name: inc\n    model: inception_v3\n    stages:\n"
        "      - {name: head, train: head, optimizer: rmsprop, epochs: 1}\n"
        "      - {name: finetune, train: 'from:Mixed_7b', optimizer: sgd, lr: 1.0e-4, momentum: 0.9}\n"
        "  - name: cnn\n    model: benchmark_cnn\n    input_size: 32\n"
        "    stages: [{name: train, optimizer: adam}]\n"
    )
    preset = presets.resolve("study", tmp_path)
    train = {w.model: (w, src) for w, src in preset.train}
    assert list(train) == list(presets.MODELS)
    inception, source = train["inception_v3"]
    assert source == "study.yaml"
    assert (inception.batch, inception.input_size, inception.train) == (16, 96, "from:Mixed_7b")
    assert inception.optimizer.optimizer == "sgd"
    assert (train["benchmark_cnn"][0].input_size, train["benchmark_cnn"][0].optimizer.optimizer) == (32, "adam")
    assert train["mobilenet_v2_paper"][1] == "bench default"
    head, _ = preset.head
    assert (head.train, head.optimizer.name, head.input_size) == ("head", "head", 96)
    extract = {w.model: (w, src) for w, src in preset.extract}
    assert extract["inception_v3"][0].batch == 32  # the config's evaluation batch: 2 x batch_size
    assert extract["mobilenet_v2"][1] == "bench default"


def test_presets_of_the_repository_resolve():
    configs = Path(__file__).resolve().parents[1] / "configs"
    for name in presets.PRESETS:
        preset = presets.resolve(name, configs)
        assert [w.model for w, _ in preset.train] == list(presets.MODELS)
        assert preset.head[0].model == "inception_v3" and preset.head[0].train == "head"


# --- the run's rows without TensorFlow -------------------------------------------------------


def test_rows_mark_keras_not_run_with_the_reason():
    run = _load_run_module()
    work = presets.FALLBACKS["quick"]["benchmark_cnn"]
    head = presets.FALLBACKS["quick"]["inception_v3"]
    timing = harness.Timing((0.1, 0.2, 0.3), items_per_call=work.batch)
    preset = presets.Preset("quick", [(work, "bench default")], (head, "bench default"), [])
    ctx = {
        "presets": {"quick": preset},
        "budget": run.QUICK,
        "errors": {},
        "keras": {"skipped": "not run: TensorFlow/Keras not importable"},
        "train": {("quick", work.model): {"timing": timing, "flops_per_image": 1e7, "precision": "fp32"}},
        "pipeline": {("quick", work.model): harness.Timing((0.01,), items_per_call=work.batch)},
        "extract": {},
        "head": {"quick": {"epoch_times_s": [0.01] * 10, "total_s": 1.1, "extract_s": 1.0, "backend": "eager"}},
        "decode": {"images": 100, "seconds": 0.5},
        "peak": 1e11, "torch_peak": 1e11, "peak_n": 64, "device_name": "cpu", "data_name": "x.tar.gz",
    }
    rows = run.build_rows(ctx)
    train = next(r for r in rows if r.section == run.SECTIONS["train"])
    assert train.ours == pytest.approx(work.batch / 0.2)
    assert train.theirs is None and train.status == "not run"
    assert "TensorFlow/Keras not importable" in train.note
    assert train.ours_peak == pytest.approx(1e7 * train.ours / 1e11)
    heads = [r for r in rows if r.section == run.SECTIONS["head"]]
    assert [r.target for r in heads] == [100.0, 10.0] and all(r.status == "not run" for r in heads)
    pipe = next(r for r in rows if r.section == run.SECTIONS["pipeline"])
    assert pipe.ratio == pytest.approx((work.batch / 0.01) / train.ours)
    assert pipe.status == "met"


def test_off_the_cpu_no_fast_frozen_part_is_timed_and_the_row_says_why(monkeypatch):
    """On a GPU `transferlab train` runs a frozen part eagerly (fast_prefix is CPU-only): the bench
    times the plain and the cached rows there, and the fast-engine row says why it is empty."""
    run = _load_run_module()
    work = presets.FALLBACKS["quick"]["inception_v3"]  # train from:Mixed_7b
    preset = presets.Preset("quick", [(work, "bench default")], (work, "bench default"), [])
    calls = []
    monkeypatch.setattr(run.tl, "train_steps", lambda *a, **k: calls.append(("train", k)))
    monkeypatch.setattr(run.tl, "train_steps_cached", lambda *a, **k: calls.append(("cached", k)))
    monkeypatch.setattr(run.tl, "pipeline", lambda *a, **k: None)
    monkeypatch.setattr(run.tl, "head_stage", lambda *a, **k: None)
    ctx = {"presets": {"quick": preset}, "budget": run.QUICK, "errors": {}, "train": {},
           "train_fast": {}, "train_cached": {}, "pipeline": {}, "extract": {}, "head": {},
           "decode": {"images": 1, "seconds": 1.0}, "extract_backend": None}
    for device, fast in (("cuda", False), ("cpu", True)):
        calls.clear()
        run.measure_transferlab(ctx, None, None, torch.device(device), run.QUICK, None)
        assert [name for name, _ in calls] == (["train", "train", "cached"] if fast else ["train", "cached"])
        assert any("frozen_backend" in k for _, k in calls) is fast, (device, calls)
    ctx.update(keras={"skipped": "not run"}, peak=None, torch_peak=None, peak_n=64,
               device_name="GPU", data_name="x.tar.gz", device_type="cuda", train_fast={})
    fast_row = next(r for r in run.build_rows(ctx) if "frozen part on" in r.name)
    assert fast_row.ours is None and "not measured off the CPU" in fast_row.note


@pytest.mark.skipif(importlib.util.find_spec("tensorflow") is None, reason="TensorFlow not installed "
                    "(bench/requirements.txt lives in bench/.venv only)")
def test_keras_benchmark_cnn_matches_transferlab():
    import keras_peer

    from transferlab.models import count_parameters, create_model

    model, base = keras_peer.build_model("benchmark_cnn", 100, 32)
    assert base is None
    assert model.count_params() == 17_044 == count_parameters(create_model("benchmark_cnn", 100))[0]
    assert math.prod(model.output_shape[1:]) == 100


@pytest.mark.skipif(importlib.util.find_spec("tensorflow") is None, reason="TensorFlow not installed "
                    "(bench/requirements.txt lives in bench/.venv only)")
@pytest.mark.parametrize("kwargs", [{}, {"width_mult": 0.5, "cifar_stem": True}])
def test_keras_mobilenet_v2_from_the_table_matches_transferlab(kwargs):
    import keras_peer

    from transferlab.models import create_model

    run = _load_run_module()
    model, _ = keras_peer.build_model("mobilenet_v2_paper", 100, 32, model_kwargs=kwargs,
                                      table=run.mobilenet_table())
    ours = create_model("mobilenet_v2_paper", 100, **kwargs)
    # Keras counts BatchNorm's moving statistics as (non-trainable) weights; PyTorch keeps them as buffers.
    trainable = sum(math.prod(w.shape) for w in model.trainable_weights)
    assert trainable == sum(p.numel() for p in ours.parameters())


def test_main_interleaves_repeats_and_reports_the_median_ratio(tmp_path, monkeypatch):
    """The whole of main() with measurements stubbed: N repeats in turn, one RESULTS.md."""
    run = _load_run_module()
    work = presets.FALLBACKS["quick"]["benchmark_cnn"]
    head = presets.FALLBACKS["quick"]["inception_v3"]
    preset = presets.Preset("quick", [(work, "bench default")], (head, "bench default"), [])
    step_times = iter([0.1, 0.4, 0.2])  # one training step time per repeat
    order = []

    def measure(ctx, images, labels, device, budget, args):
        order.append("transferlab")
        t = next(step_times)
        ctx["train"][("quick", work.model)] = {"timing": harness.Timing((t,), items_per_call=work.batch),
                                               "flops_per_image": 1e7, "precision": "fp32"}
        ctx["head"]["quick"] = {"epoch_times_s": [0.01] * 10, "total_s": 1.1, "extract_s": 1.0,
                                "backend": "eager"}
        if ctx["decode"] is None:
            order.append("decode")
            ctx["decode"] = {"images": 100, "seconds": 0.5}

    def keras(jobs, images, labels, threads, device, cache):
        assert cache == tmp_path / "cache"
        order.append("keras")
        return {"jobs": {f"train:quick:{work.model}": {"batch": work.batch, "times_s": [0.2]}}}

    monkeypatch.setattr(run, "load_images", lambda archive, count: (None, [0] * count))
    monkeypatch.setattr(run.presets, "resolve", lambda name, configs: preset)
    monkeypatch.setattr(run.harness, "matmul_peak", lambda device, n: 1e11)
    monkeypatch.setattr(run, "measure_transferlab", measure)
    monkeypatch.setattr(run, "keras_unavailable", lambda device: None)
    monkeypatch.setattr(run, "run_keras", keras)
    monkeypatch.setattr(run, "CACHE", tmp_path / "cache")
    out = tmp_path / "RESULTS.md"
    assert run.main(["--quick", "--repeats", "3", "--device", "cpu", "--out", str(out)]) == 0
    assert order == ["transferlab", "decode", "keras", "transferlab", "keras", "transferlab", "keras"]
    # Ratios per repeat: Keras 0.2 s per step against 0.1, 0.4, 0.2 -> x2, x0.5, x1: median x1.
    text = out.read_text()
    row = next(line for line in text.splitlines() if line.startswith(f"| {work.model}"))
    assert "| x1.00 |" in row and "median of 3 repeats, range x0.500-x2.00" in row
    assert "3 interleaved repeats" in text
    assert run.main(["--quick", "--repeats", "0", "--out", str(out)]) == 2
