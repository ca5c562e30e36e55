"""transferlab's side of the benchmark: the same work as the Keras peer, through transferlab's code.

Every figure runs the library's own path, not a hand-tuned copy of it:

* training steps: `transferlab.training.train_one_epoch` on `Batches` of real images prepared at
  the model's size, per-step times read from its own clock (`sync_every=1`: the `after_step`
  hook sees the running total after every step);
* the head stage: `features.split_model` + `features.extract` (the frozen-feature path of
  `transferlab train`), then `train_one_epoch` on the cached features for every epoch;
* feature extraction: `features.make_extractor` with the backend `transferlab train` would pick,
  and on the CPU against a plain ONNX Runtime session on the same exported prefix;
* the data pipeline: `Batches` + `BatchTransform` (gather, augment, resize, normalise) and the
  folder loader's JPEG decoding.
"""

from __future__ import annotations

import statistics
import tarfile
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch
from flop_count import flops_per_image
from harness import Timing, synchronizer, time_steps

from transferlab.config import StageConfig
from transferlab.data import load_dataset
from transferlab.data.transforms import BatchTransform
from transferlab.models import count_parameters, create_model, freeze
from transferlab.training import Batches, train_one_epoch
from transferlab.training import features as feats
from transferlab.training.cpu_memory import keep_freed_memory
from transferlab.training.device import select_precision
from transferlab.training.frozen_prefix import ThenPrefix, fast_prefix
from transferlab.training.optim import build_optimizer

# Images a training stage's frozen part runs over (what `auto` decides for): 45,000 training
# images, the study's CIFAR-100 split, for one epoch.
EXTRACT_SPLIT_IMAGES = 45_000


@dataclass(frozen=True)
class Workload:
    """One model at one setting.

    Attributes:
        model: registry name.
        input_size: square input side (px).
        batch: images per training step.
        train: the stage's `train:` setting ("all", "head", "from:<stage>").
        optimizer: the stage's optimiser settings.
        augment: the preset's augmentation (for the data-pipeline row).
        num_classes: head outputs (the study's CIFAR-100: 100).
        model_kwargs: extra `create_model` arguments from the config (e.g. cifar_stem).
    """

    model: str
    input_size: int
    batch: int
    train: str = "all"
    optimizer: StageConfig = field(default_factory=StageConfig)
    augment: str = "none"
    num_classes: int = 100
    model_kwargs: dict = field(default_factory=dict)


def build(work: Workload, device: torch.device, channels_last: bool = True) -> torch.nn.Module:
    """The model as `transferlab train` builds it: random init, frozen as the stage says, NHWC."""
    torch.manual_seed(0)
    model = create_model(work.model, num_classes=work.num_classes, pretrained=False,
                         input_size=work.input_size, **work.model_kwargs)
    if work.train == "head":
        freeze(model, "all")
    elif work.train.startswith("from:"):
        freeze(model, work.train.removeprefix("from:"))
    model.to(device)
    if channels_last:
        model.to(memory_format=torch.channels_last)
    return model


def _frozen(work: Workload) -> Workload:
    """The same model with its whole backbone frozen (feature extraction, head stage)."""
    return Workload(work.model, work.input_size, work.batch, "head", work.optimizer, "none",
                    work.num_classes, dict(work.model_kwargs))


def transform_for(model: torch.nn.Module, work: Workload, native: int, augment: str,
                  device: torch.device) -> BatchTransform:
    """The model's BatchTransform at the workload's input size (train mode iff augmenting)."""
    pre = model.pretrained_cfg
    t = BatchTransform((work.input_size, work.input_size), mean=pre.mean, std=pre.std,
                       interpolation=pre.interpolation, augment=augment, native_size=(native, native))
    t = t.to(device)
    return t.train() if augment != "none" else t.eval()


def as_tensors(images: np.ndarray, labels: np.ndarray, device: torch.device) -> tuple[torch.Tensor, torch.Tensor]:
    """uint8 images and int64 labels as tensors where `transferlab train` keeps them."""
    home = device if device.type == "cuda" else torch.device("cpu")
    return (torch.from_numpy(np.ascontiguousarray(images)).to(home),
            torch.from_numpy(labels.astype(np.int64)).to(home))


def train_steps(work: Workload, images: np.ndarray, labels: np.ndarray, device: torch.device, *,
                warmup: int, repeats: int, amp: str = "auto", channels_last: bool = True,
                frozen_backend: str = "eager") -> dict:
    """Time training steps of `train_one_epoch` on prepared inputs (the data pipeline is timed apart).

    Args:
        frozen_backend: how a frozen part below `work.train` runs each step: "eager" (the whole
            model in PyTorch) or what `transferlab train` does for an augmented stage
            (`frozen_prefix.fast_prefix` with this `extract_backend`, e.g. "auto": ONNX Runtime
            on the CPU); the step then covers the prefix's forward and the tail's training.

    Returns:
        {"timing": Timing, "flops_per_image": float, "params": int, "trainable": int,
         "precision": str, "frozen_backend": str}
    """
    model = build(work, device, channels_last)
    full = model
    steps = warmup + repeats
    need = steps * work.batch
    if len(labels) < need:
        raise ValueError(f"{work.model}: {need} images needed for {steps} steps, have {len(labels)}")
    x, y = as_tensors(images[:need], labels[:need], device)
    transform = transform_for(model, work, images.shape[1], "none", device)
    # Inputs prepared up front (the data pipeline has its own rows): train_one_epoch's clock also
    # covers fetching each batch, which is then a gather from memory, as for cached features.
    with torch.no_grad():
        prepared = torch.cat([transform(x[i:i + work.batch].to(device)) for i in range(0, need, work.batch)])
    used = "eager"
    transform = None
    if frozen_backend != "eager":
        fast = fast_prefix(model, work.train, frozen_backend, prepared[:work.batch].contiguous(
            memory_format=torch.channels_last) if channels_last else prepared[:work.batch],
            num_images=EXTRACT_SPLIT_IMAGES, log=lambda _: None)
        if fast is None:
            raise RuntimeError(f"{work.model} train {work.train}: no fast frozen part "
                               f"({frozen_backend}) was built")
        model, used = fast.tail, fast.backend
        transform = ThenPrefix(None, fast.run, channels_last)
        if channels_last and feats.tail_wants_nchw(fast.out_shape):  # as `transferlab train` does
            model.to(memory_format=torch.contiguous_format)
            channels_last = False
    batches = Batches(prepared, y.to(device), work.batch, device=device, channels_last=channels_last,
                      drop_last=True, transform=transform)
    optimizer = build_optimizer(work.optimizer, [p for p in model.parameters() if p.requires_grad])
    precision = select_precision(amp, device)
    seconds: list[float] = []
    # sync_every=1: the sums are read, and the clock stops, after every step.
    train_one_epoch(model, batches, optimizer, precision=precision, quiet=True, sync_every=1,
                    after_step=lambda _, totals: seconds.append(totals.seconds))
    per_step = np.diff([0.0, *seconds])[warmup:]
    sample = prepared[:2].contiguous(memory_format=torch.channels_last) if channels_last else prepared[:2]
    full.train()
    flops = flops_per_image(full, sample, train=True)  # the same work whichever engine runs the prefix
    total, trainable = count_parameters(full)
    return {"timing": Timing(tuple(float(s) for s in per_step), work.batch),
            "flops_per_image": flops, "params": total, "trainable": trainable,
            "precision": precision.name, "frozen_backend": used}


def train_steps_cached(work: Workload, images: np.ndarray, labels: np.ndarray, device: torch.device, *,
                       warmup: int, repeats: int, channels_last: bool = True) -> dict:
    """Time `train_one_epoch` on cached activations: what `transferlab train` does for a stage
    `train: from:<stage>` without augmentation when the activations fit `cache_memory_gb`.

    The frozen prefix runs once (not timed: it is paid once per run, not per epoch); each step
    trains the tail (the stages from the boundary on, and the head) on the stored activations.

    Returns:
        {"timing": Timing, "flops_per_image": float (tail only), "precision": str}
    """
    if not work.train.startswith("from:"):
        raise ValueError(f"cached activations need a 'from:<stage>' boundary, got {work.train!r}")
    model = build(work, device, channels_last)
    prefix, tail = feats.split_model(model, work.train)
    need = (warmup + repeats) * work.batch
    x, y = as_tensors(images[:need], labels[:need], device)
    transform = transform_for(model, work, images.shape[1], "none", device)
    acts, _, _ = feats.extract(prefix, Batches(x, y, 2 * work.batch, transform=transform, device=device,
                                               channels_last=channels_last),
                               backend="eager", num_images=need, quiet=True, log=lambda _: None)
    # A plain copy, as `transferlab train` reads them back from its cache (inference-mode tensors
    # cannot enter autograd).
    acts, y = acts.clone().to(device), y.to(device)
    if channels_last and feats.tail_wants_nchw(tuple(acts.shape[1:])):
        tail.to(memory_format=torch.contiguous_format)  # as `transferlab train` does (stage_loop)
    optimizer = build_optimizer(work.optimizer, tail.parameters())
    seconds: list[float] = []
    train_one_epoch(tail, Batches(acts, y, work.batch, device=device, drop_last=True), optimizer,
                    quiet=True, sync_every=1, after_step=lambda _, totals: seconds.append(totals.seconds))
    per_step = np.diff([0.0, *seconds])[warmup:]
    tail.train()
    flops = flops_per_image(tail, acts[:2], train=True)
    return {"timing": Timing(tuple(float(t) for t in per_step), work.batch), "flops_per_image": flops,
            "precision": "fp32"}


def extraction(work: Workload, images: np.ndarray, device: torch.device, *, backend: str,
               num_images: int, warmup: int, repeats: int, channels_last: bool = True) -> dict:
    """Throughput of the frozen backbone + pooling through `features.make_extractor`.

    Args:
        backend: "auto" (what `transferlab train` picks for `num_images` images), "eager",
            "compile" or "onnxruntime".
        num_images: the split size the choice is made for.

    Returns:
        {"timing": Timing, "backend": str, "setup_s": float, "flops_per_image": float}
    """
    keep_freed_memory()  # as `transferlab train` sets it before it extracts
    model = build(_frozen(work), device, channels_last)
    prefix, _ = feats.split_model(model, "head")
    prefix.eval()
    x = torch.from_numpy(np.ascontiguousarray(images[: work.batch])).to(device)
    transform = transform_for(model, work, images.shape[1], "none", device)
    sample = transform(x)
    if channels_last:
        sample = sample.contiguous(memory_format=torch.channels_last)
    start = time.perf_counter()
    extractor, used = feats.make_extractor(prefix, backend, sample, num_images, log=lambda _: None)
    setup = time.perf_counter() - start

    def step() -> None:
        with torch.inference_mode():
            extractor(sample)

    timing = time_steps(step, warmup=warmup, repeats=repeats, items_per_call=work.batch,
                        sync=synchronizer(device))
    flops = flops_per_image(prefix, sample[:2], train=False)
    result = {"timing": timing, "backend": used, "setup_s": setup, "flops_per_image": flops}
    if device.type == "cpu":
        result["onnxruntime_peer"] = _against_plain_onnxruntime(prefix, sample, step, work.batch,
                                                                repeats=repeats)
    return result


def _against_plain_onnxruntime(prefix: torch.nn.Module, sample: torch.Tensor, step, batch: int, *,
                               repeats: int, rounds: int = 3) -> dict:
    """transferlab's extractor against a plain ONNX Runtime session on the same exported graph.

    The peer is what a user gets from ONNX Runtime with its defaults: an `InferenceSession` on the
    exported prefix fed a ready C-contiguous array. Rates are medians of `rounds` interleaved
    rounds of `repeats` batches each (ratios near 1 swing with the machine's load otherwise).

    Returns:
        {"ours": img/s, "theirs": img/s, "ours_rounds": [...], "theirs_rounds": [...]}
    """
    import onnxruntime as ort

    from transferlab.models.onnx_io import export_onnx

    with torch.no_grad():
        proto = export_onnx(prefix, sample[:2].contiguous(), exporters=("torchscript", "dynamo"))
    session = ort.InferenceSession(proto.SerializeToString(), providers=["CPUExecutionProvider"])
    name = session.get_inputs()[0].name
    x = sample.contiguous().numpy()

    def plain() -> None:
        session.run(None, {name: x})

    ours, theirs = [], []
    plain()  # first run allocates
    for _ in range(rounds):
        ours.append(time_steps(step, warmup=0, repeats=repeats, items_per_call=batch).rate)
        theirs.append(time_steps(plain, warmup=0, repeats=repeats, items_per_call=batch).rate)
    return {"ours": statistics.median(ours), "theirs": statistics.median(theirs),
            "ours_rounds": ours, "theirs_rounds": theirs}


def head_stage(work: Workload, images: np.ndarray, labels: np.ndarray, device: torch.device, *,
               epochs: int, eval_batch: int, backend: str = "auto", channels_last: bool = True) -> dict:
    """The cached-feature head stage end to end: extract once, then `epochs` epochs on the features.

    Returns:
        {"extract_s", "epoch_times_s", "total_s", "backend"}; total = extraction + all epochs,
        model construction excluded (as on the Keras side).
    """
    model = build(_frozen(work), device, channels_last)
    x, y = as_tensors(images, labels, device)
    transform = transform_for(model, work, images.shape[1], "none", device)
    prefix, head = feats.split_model(model, "head")
    sync = synchronizer(device)
    sync()
    start = time.perf_counter()
    batches = Batches(x, y, eval_batch, transform=transform, device=device, channels_last=channels_last)
    features, _, used = feats.extract(prefix, batches, backend=backend, num_images=len(y),
                                      quiet=True, log=lambda _: None)
    features = features.to(device)
    sync()
    extract_s = time.perf_counter() - start
    optimizer = build_optimizer(work.optimizer, head.parameters())
    epoch_times = []
    for epoch in range(epochs):
        sync()
        t0 = time.perf_counter()
        train_one_epoch(head, Batches(features, y.to(device), work.batch, shuffle=True, epoch=epoch,
                                      device=device), optimizer, quiet=True)
        sync()
        epoch_times.append(time.perf_counter() - t0)
    return {"extract_s": extract_s, "epoch_times_s": epoch_times,
            "total_s": extract_s + sum(epoch_times), "backend": used}


def pipeline(work: Workload, images: np.ndarray, labels: np.ndarray, device: torch.device, *,
             warmup: int, repeats: int, channels_last: bool = True) -> Timing:
    """Per-batch cost of the data pipeline alone: gather, augment, resize, normalise (`Batches`)."""
    model = create_model(work.model, num_classes=work.num_classes, input_size=work.input_size,
                         **work.model_kwargs)
    transform = transform_for(model, work, images.shape[1], work.augment, device)
    x, y = as_tensors(images, labels, device)
    batches = Batches(x, y, work.batch, shuffle=True, transform=transform, device=device,
                      channels_last=channels_last, drop_last=True)
    iterator = iter(_forever(batches))
    return time_steps(lambda: next(iterator), warmup=warmup, repeats=repeats,
                      items_per_call=work.batch, sync=synchronizer(device))


def _forever(batches: Batches):
    """Batches of successive epochs, endlessly (the timed loop may need more than one epoch)."""
    epoch = 0
    while True:
        batches.epoch = epoch
        yield from batches
        epoch += 1


def decode(archive: Path, count: int, workdir: Path) -> dict:
    """JPEG decoding through the folder loader: `count` files from `archive`, cold cache.

    A small tar of the first `count` training files (and a few test files, which the loader
    requires) is written to `workdir`, then `load_dataset("folder:...")` decodes it into an
    empty cache directory.

    Returns:
        {"images": int, "seconds": float}
    """
    workdir.mkdir(parents=True, exist_ok=True)
    small = workdir / f"decode-{count}.tar"
    if not small.is_file():
        _subset_archive(archive, small, count)
    with tempfile.TemporaryDirectory(dir=workdir) as cache:
        start = time.perf_counter()
        ds = load_dataset(f"folder:{small}", data_root=cache)
        seconds = time.perf_counter() - start
    n = sum(len(s.labels) for s in ds.splits.values())
    return {"images": n, "seconds": seconds}


def _subset_archive(archive: Path, out: Path, count: int) -> None:
    """Copy `count` train JPEGs and count // 10 test JPEGs, at most a tenth of each from any one
    class folder (the archive lists classes one after another: the first `count` files would all
    be one class, which the folder loader rightly refuses), into a tar."""
    per_split = {"train": count, "test": max(count // 10, 1)}
    taken = {"train": 0, "test": 0}
    per_class: dict[tuple[str, str], int] = {}
    tmp = out.with_suffix(".tmp")
    with tarfile.open(archive, "r:*") as src, tarfile.open(tmp, "w") as dst:
        for member in src:
            parts = Path(member.name).parts
            split = next((p for p in parts if p in per_split), None)
            if not member.isfile() or split is None or taken[split] >= per_split[split]:
                if all(taken[s] >= per_split[s] for s in per_split):
                    break
                continue
            key = (split, parts[-2] if len(parts) > 1 else "")
            if per_class.get(key, 0) >= max(per_split[split] // 10, 1):
                continue
            per_class[key] = per_class.get(key, 0) + 1
            dst.addfile(member, src.extractfile(member))
            taken[split] += 1
    tmp.replace(out)
