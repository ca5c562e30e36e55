"""Cached features: run the frozen part of a model once per split, then train the rest on its outputs.

A stage that trains only above a frozen part, with no augmentation changing that part's inputs,
sees the same frozen outputs every epoch. Computing them once turns a head epoch from a full
backbone pass into a few matrix products.

* ``train: head``  caches the pooled features ``m.head.pool(m.forward_features(x))`` (B, C) and
  trains ``m.head.fc``.
* ``train: from:<stage>`` caches the feature map entering ``<stage>`` and trains the stages from
  there plus the head. Activations larger than ``cache_memory_gb`` are written straight to a
  .npy on disk and memory-mapped, not held in memory (training through the frozen part is the
  fallback only when the disk cannot hold them either).

The cache lives under ``<data cache dir>/features/<key>`` where the key hashes the frozen part's
weights, the dataset fingerprint, the preprocessing, the boundary and the split indices, so any
change to one of them makes a new entry.

Fast extraction on the CPU: measured on MobileNetV2 at 128 px on 2 shared cores (batches of
128; absolute rates swing with the load of the machine, the order does not), eager PyTorch does
~40 img/s, eager channels_last ~65 img/s, ``torch.jit.freeze`` + ``optimize_for_inference`` no
better than channels_last, bf16 autocast is off by ~10% of the output scale (not correct), and
``torch.compile`` with inductor weight freezing ~235 img/s (max abs difference 4e-5 from eager;
one-time compile 15-70 s). ONNX Runtime's CPU session on the exported prefix is faster still and
ready in a few seconds: see ``auto_backend`` for the measurements behind the ``auto`` rule, which
reads no clock (the engine changes the numbers, so it must not depend on the machine's load).
Every fast path is checked against eager on a batch first and falls back to eager (with a warning
and the reason in the run's log and in `make_extractor`'s record) when it cannot be built or
disagrees.
"""

from __future__ import annotations

import hashlib
import time
import warnings
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from transferlab.errors import TransferlabError
from transferlab.logs import info, progress
from transferlab.training.device import Precision
from transferlab.training.prefix_cost import count_cost, eager_seconds_per_image

EXTRACT_BACKENDS = ("eager", "compile", "onnxruntime")  # what make_extractor can build
# Largest allowed |fast path - eager| relative to the eager outputs' scale (their largest
# magnitude). Inductor reorders float sums more freely (measured 4e-5 at MobileNetV2's scale);
# ONNX Runtime measured below 1e-5 (models/onnx_io.py).
TOLERANCES = {"compile": 1e-3, "onnxruntime": 1e-4}
CHECK_IMAGES = 8  # images in ONNX Runtime's check batch
# The cost model of `auto` (see `auto_backend`): ONNX Runtime's export and session set-up in
# seconds, a fixed part and a part per million weights, and the smallest speed-up over eager
# measured at extraction batch sizes.
ORT_SETUP_S = 0.2
ORT_SETUP_S_PER_MPARAM = 0.035
ORT_MIN_SPEEDUP = 1.25


class PrefixModule(nn.Module):
    """The frozen part below a boundary: feature stages before it, or the whole backbone + pool."""

    def __init__(self, model: nn.Module, boundary: str) -> None:
        super().__init__()
        self.boundary = boundary
        if boundary == "head":
            self.backbone = model
            self.stages = None
        else:
            stages = _stages_before(model, boundary)
            self.backbone = None
            self.stages = nn.Sequential(*stages)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.stages is not None:
            return self.stages(x)
        return self.backbone.head.pool(self.backbone.forward_features(x))


class TailModule(nn.Module):
    """The trainable part above a boundary: feature stages from it on, then the head."""

    def __init__(self, model: nn.Module, boundary: str) -> None:
        super().__init__()
        names = [name for name, _ in model.feature_stages()]
        start = names.index(boundary)
        self.stages = nn.Sequential(*[module for _, module in model.feature_stages()[start:]])
        self._model = [model]  # a list so that the full model is not registered as a submodule
        self.head = model.head

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self._model[0].forward_head(self.stages(x))


def _stages_before(model: nn.Module, boundary: str) -> list[nn.Module]:
    stages = model.feature_stages()
    names = [name for name, _ in stages]
    if boundary not in names:
        raise TransferlabError(
            f"freeze boundary {boundary!r} is not a feature stage of this model; stages are {names}"
        )
    return [module for _, module in stages[: names.index(boundary)]]


def split_model(model: nn.Module, train: str) -> tuple[nn.Module, nn.Module] | None:
    """Split `model` at a stage's `train` setting into (frozen prefix, trainable tail).

    Returns None for ``train: all`` (nothing frozen to cache).
    """
    from transferlab.models.freezing import boundary_for

    if train == "head":
        return PrefixModule(model, "head"), model.head.fc
    boundary = boundary_for(model, train)
    if boundary is None:
        return None
    return PrefixModule(model, boundary), TailModule(model, boundary)


def tail_wants_nchw(input_shape: tuple[int, ...]) -> bool:
    """Whether a trainable tail on inputs of this per-image shape should run in NCHW rather than
    channels-last: on 1 x 1 maps (InceptionV3's top blocks at 75 px).

    The two layouts are then the same bytes, but oneDNN's channels-last kernels for the tail's
    3 x 3 and 1 x 3 convolutions are slower there. Measured on the 2-core CPU, InceptionV3 above
    `Mixed_7b` at 75 px, batch 128, SGD, one process, 4 interleaved rounds: 1,128-1,143 img/s
    NCHW against 966-990 channels-last. From 5 x 5 maps on, channels-last is faster (InceptionV3
    at 224 px: 127 against 111 img/s; MobileNetV2 above blocks.5 at 96 px, 6 x 6: 1,010 against
    934). Vectors (a head on pooled features) have no layout to choose.
    """
    return len(input_shape) == 3 and tuple(input_shape[1:]) == (1, 1)


def state_hash(module: nn.Module | Mapping[str, torch.Tensor]) -> str:
    """SHA-256 of a module's parameters and buffers (or of a state dict): the frozen weights' identity."""
    state = module.state_dict() if isinstance(module, nn.Module) else module
    h = hashlib.sha256()
    for name, tensor in sorted(state.items()):
        h.update(name.encode())
        t = tensor.detach().cpu().contiguous()
        h.update(str(t.dtype).encode())
        h.update(t.view(-1).view(torch.uint8).numpy().tobytes() if t.numel() else b"")
    return h.hexdigest()


def indices_hash(indices: np.ndarray) -> str:
    """SHA-256 of an index array."""
    return hashlib.sha256(np.ascontiguousarray(indices, dtype=np.int64).tobytes()).hexdigest()


def auto_backend(device: torch.device, num_images: int, eager_s_per_image: float,
                 params: int) -> str:
    """The backend `extract_backend: auto` picks: ONNX Runtime on the CPU when what it saves
    over the job is more than what it costs to set up, else eager.

    A pure function of its inputs, none of which is a clock: `eager_s_per_image` is estimated
    from the operations the prefix runs for one image of the job's input size
    (`prefix_cost.eager_seconds_per_image`), not timed, so the same command takes the same
    numerical path on a quiet and on a busy machine (`make_extractor` records the choice, and a
    resumed run reuses it). The model of ONNX Runtime is conservative: it saves at least
    ``1 - 1 / ORT_MIN_SPEEDUP`` of the eager time and costs ``ORT_SETUP_S +
    ORT_SETUP_S_PER_MPARAM`` per million weights to export and load, plus its check batch.
    Measured on the quiet 2-core CPU (channels-last input, 2 threads):

        prefix (pooled)        weights  export + session   eager ms/img   onnxruntime ms/img
        mobilenet_v2 96 px       2.2 M       0.26 s            1.4         (batch 512: x1.9-2.1)
        mobilenet_v2 224 px      2.2 M       0.28 s           15.1          5.2
        efficientnet_lite0 224   3.4 M       0.33 s            9.7          6.2
        inception_v3 75 px      21.8 M       0.91 s            5.6          3.8 (batch 512: x1.12-1.21)
        inception_v3 224 px     21.8 M       1.00 s           35.7         28.1

    (`python bench/extract_backends.py --no-compile` gives the set-up and img/s at batch 64;
    `prefix_cost` estimates the eager column from FLOPs and written elements: 2.2, 11.9, 12.8,
    2.6 and 35.8 ms.) So 128 InceptionV3 images at 224 px stay eager (ONNX Runtime would save
    ~0.9 s and cost ~1.2 s), 300 MobileNetV2 photos at 224 px go to ONNX Runtime (saves ~0.7 s,
    costs 0.35 s), and any split of thousands of images goes to ONNX Runtime. Off the CPU the
    prefix runs eagerly (ONNX Runtime runs here on its CPU provider only; compile is not
    measured on GPUs).
    """
    if device.type != "cpu":
        return "eager"
    saving = num_images * eager_s_per_image * (1 - 1 / ORT_MIN_SPEEDUP)
    cost = (ORT_SETUP_S + ORT_SETUP_S_PER_MPARAM * params / 1e6
            + CHECK_IMAGES * eager_s_per_image / ORT_MIN_SPEEDUP)
    return "onnxruntime" if saving > cost else "eager"


def _auto(prefix: nn.Module, sample: torch.Tensor, num_images: int,
          log: Callable[[str], None]) -> tuple[str, dict[str, Any]]:
    """`auto_backend` for this prefix and job: (backend, what the choice was made from).

    Counted, not timed (`prefix_cost`): the same answer at any machine load.
    """
    if sample.device.type != "cpu":
        return "eager", {"decided": "eager", "why": f"the frozen part runs eagerly on {sample.device.type}"}
    try:
        cost = count_cost(prefix, sample)
    except Exception as err:  # noqa: BLE001 - an operator the counters cannot follow: stay eager
        why = f"its operations could not be counted ({type(err).__name__}: {str(err)[:300]})"
        log(f"feature extraction: eager (auto: {why})")
        return "eager", {"decided": "eager", "why": why}
    per_image = eager_seconds_per_image(cost)
    backend = auto_backend(sample.device, num_images, per_image, cost.params)
    log(f"feature extraction: eager would take ~{per_image * num_images:.1f} s for {num_images:,} "
        f"images ({cost.gflops:.3g} GFLOP each, estimated from the operations, not timed), "
        f"so {backend} (auto)")
    return backend, {"decided": backend, "num_images": num_images, "params": cost.params,
                     "gflops_per_image": cost.gflops, "melements_per_image": cost.melements,
                     "estimated_eager_s": per_image * num_images}


def _onnxruntime(prefix: nn.Module, sample: torch.Tensor) -> Callable[[torch.Tensor], torch.Tensor]:
    """The prefix exported to ONNX and run by an ONNX Runtime CPU session (all cores, all graph
    optimisations); raises on any failure."""
    from transferlab.models.onnx_io import export_onnx, ort_session

    if sample.device.type != "cpu":
        raise RuntimeError(f"ONNX Runtime's CPU provider needs CPU inputs; this run is on {sample.device}")
    # Export outside inference mode (tracing refuses inference tensors); the fast exporter first:
    # it is paid on every run (see models/onnx_io.py).
    with torch.inference_mode(False), torch.no_grad():
        example = sample[:2].clone().contiguous()
        proto = export_onnx(prefix, example, exporters=("torchscript", "dynamo"))
    # As many threads as PyTorch's own: torchrun gives each rank one, a plain run all usable cores.
    # No spin-waiting: between two batches PyTorch prepares the next one, or trains a tail, on
    # the same cores. Measured on the quiet 2-core CPU, extraction of 4,096 images at batch 512
    # (median of 3 interleaved rounds): MobileNetV2 at 96 px up to blocks.5 927 img/s spinning,
    # 1,025 not; InceptionV3 at 75 px 485 and 491; MobileNetV2 training above blocks.5 at 224 px
    # 88-101 and 118-120. Against a plain (spinning) session on a ready batch in a tight loop it
    # stays at x0.93-x0.99 (bench/RESULTS.md).
    session = ort_session(proto.SerializeToString(), threads=torch.get_num_threads(), spin=False)
    input_name = session.get_inputs()[0].name

    def run(x: torch.Tensor) -> torch.Tensor:
        # ONNX Runtime reads C-contiguous NCHW; a channels-last batch is copied once here.
        return torch.from_numpy(session.run(None, {input_name: x.contiguous().numpy()})[0])

    return run


def make_extractor(prefix: nn.Module, backend: str, sample: torch.Tensor, num_images: int,
                   log: Callable[[str], None] = info, record: dict[str, Any] | None = None,
                   ) -> tuple[Callable[[torch.Tensor], torch.Tensor], str]:
    """Choose the fastest correct way to run the frozen prefix.

    A compiled or ONNX Runtime path is checked against eager on `sample` first; when it cannot be
    built or disagrees beyond its tolerance (`TOLERANCES`, relative to the largest eager output),
    extraction falls back to eager and the reason is logged and warned. Nothing here reads a
    clock to choose: the same inputs give the same backend at any machine load.

    Args:
        prefix: frozen module in eval mode.
        backend: one of EXTRACT_BACKENDS, or "auto": `auto_backend` on the prefix's counted cost.
        sample: one preprocessed input batch, used to check a fast path against eager.
        num_images: how many images will be extracted (auto uses a fast path only when it pays).
        log: where the choice and any fallback are reported.
        record: a dict that receives the choice, for the run's records (summary.json, last.pt):
            ``setting`` (`backend`), ``used`` (the backend returned), ``fallback`` (why a fast
            backend was not used after all, else None) and, for auto, ``auto`` (what it decided
            and from which counts). A resumed run passes the recorded ``used`` as `backend`.

    Returns:
        (function mapping an input batch to features, name of the backend used).
    """
    if backend not in (*EXTRACT_BACKENDS, "auto"):
        raise TransferlabError(f"extract_backend={backend!r}; use auto, {', '.join(EXTRACT_BACKENDS)}")
    record = {} if record is None else record
    record.update(setting=backend, used="eager", fallback=None)
    eager = prefix
    if backend == "auto":
        backend, record["auto"] = _auto(prefix, sample, num_images, log)
    if backend == "eager":
        return eager, "eager"
    # A compiled graph is specialised to the batch shape, so it is checked on the whole batch;
    # ONNX Runtime's batch axis is dynamic, and a smaller check batch halves its set-up time.
    check = sample if backend == "compile" else sample[:CHECK_IMAGES]
    with torch.inference_mode():
        reference = eager(check).float()
    try:
        start = time.perf_counter()  # reported only; the choice is made
        if backend == "compile":
            import torch._inductor.config as inductor_config

            compiled = torch.compile(prefix, dynamic=False)

            def fast(x: torch.Tensor) -> torch.Tensor:
                # Freezing folds the frozen weights into the graph (constant folding, conv+bn fusion).
                with inductor_config.patch(freezing=True):
                    return compiled(x)
        else:
            fast = _onnxruntime(prefix, sample)
        with torch.inference_mode():
            out = fast(check).float()
        error = (out - reference).abs().max().item()
        scale = reference.abs().max().item() or 1.0
        if not error <= TOLERANCES[backend] * scale:
            raise RuntimeError(f"outputs differ from eager by {error:.3g}, more than "
                               f"{TOLERANCES[backend]:g} x the output scale {scale:.3g}")
        log(f"feature extraction: {backend} ready in {time.perf_counter() - start:.1f} s "
            f"(max difference from eager {error:.2g})")
        record["used"] = backend
        return fast, backend
    except Exception as err:  # noqa: BLE001 - any compiler or exporter failure means: use eager
        reason = f"{type(err).__name__}: {str(err)[:500]}"
        warnings.warn(f"feature extraction: {backend} failed ({reason}); "
                      "falling back to eager PyTorch (slower, same results)", stacklevel=2)
        log(f"feature extraction: {backend} failed ({reason}); falling back to eager")
        # Eager is a numerical path of its own: recorded, so that a resumed run keeps to it.
        record["fallback"] = f"{backend} failed ({reason})"
        return eager, "eager"


@torch.inference_mode()
def extract(prefix: nn.Module, batches: object, *, backend: str = "auto", num_images: int,
            precision: Precision | None = None, desc: str = "extract", quiet: bool = False,
            log: Callable[[str], None] = info, out: np.ndarray | None = None,
            reuse: dict[str, Any] | None = None,
            record: dict[str, Any] | None = None) -> tuple[torch.Tensor, float, str]:
    """Run the frozen prefix over all batches.

    Args:
        prefix: frozen module (set to eval mode here).
        batches: iterable of (inputs, labels) in dataset order (a `Batches` without shuffling).
        backend: see `make_extractor`.
        num_images: images the `auto` choice is made for (all splits' when they share `reuse`).
        precision: autocast settings of the run (mixed precision on CUDA), None = float32.
        desc: progress bar label.
        quiet: no progress bar.
        log: where notes go.
        out: a preallocated float32 (num_images, ...) array (e.g. a memory-mapped .npy) to write
            the features into batch by batch instead of collecting them in memory.
        reuse: a dict shared by the calls for several splits of one prefix: the first call stores
            the extractor it built there and later calls use it, so an export or a compile (and
            the auto choice, made for `num_images`) happens once for all splits.
        record: receives the backend choice (`make_extractor`) when this call makes it.

    Returns:
        (float32 CPU features in input order, seconds, backend used); with `out`, the features
        are a tensor over `out`.
    """
    prefix.eval()
    precision = precision or Precision(None, False)
    outputs: list[torch.Tensor] = []
    extractor = None
    used = "eager"
    start = time.perf_counter()
    full = 0
    written = 0
    if reuse:
        extractor, used, full = reuse["extractor"], reuse["used"], reuse["full"]
    for x, _ in progress(batches, desc=desc, leave=False, quiet=quiet, unit="batch"):
        if extractor is None:
            extractor, used = make_extractor(prefix, backend, x, num_images, log, record=record)
            full = len(x)
            if reuse is not None:
                reuse.update(extractor=extractor, used=used, full=full)
            start = time.perf_counter()  # report the extraction rate without the compile time
        n = len(x)
        if used == "compile" and n < full:
            # A compiled graph is specialised to one batch shape: pad the last batch rather than
            # recompile for it (tens of seconds on the CPU).
            channels_last = x.dim() == 4 and x.is_contiguous(memory_format=torch.channels_last)
            x = torch.cat([x, x.new_zeros((full - n, *x.shape[1:]))])
            if channels_last:  # keep the strides the graph was specialised to
                x = x.contiguous(memory_format=torch.channels_last)
        with precision.autocast(x.device):
            y = extractor(x)[:n].float().cpu()
        if out is None:
            outputs.append(y)
        else:
            out[written:written + n] = y.numpy()
            written += n
    seconds = time.perf_counter() - start
    if out is not None:
        return torch.from_numpy(out), seconds, used
    feats = torch.cat(outputs) if outputs else torch.empty(0)
    return feats, seconds, used


def output_shape(prefix: nn.Module, sample: torch.Tensor) -> tuple[int, ...]:
    """The prefix's output shape for one input (without the batch dimension)."""
    with torch.inference_mode():
        out = prefix.eval()(sample[:1])
    return tuple(out.shape[1:])


def activation_bytes(prefix: nn.Module, sample: torch.Tensor, num_images: int) -> int:
    """Bytes the prefix's float32 outputs for `num_images` inputs would take."""
    return int(np.prod(output_shape(prefix, sample))) * 4 * num_images


def features_dir(cache_root: Path, key: str) -> Path:
    """Directory of one cached feature set."""
    return Path(cache_root) / "features" / key


def frozen_state_hash(model: nn.Module, tail: nn.Module) -> str:
    """Hash of the model's weights outside the trainable tail (the frozen prefix's identity)."""
    tail_ptrs = {t.data_ptr() for t in tail.state_dict().values()}
    frozen = {k: v for k, v in model.state_dict().items() if v.data_ptr() not in tail_ptrs}
    return state_hash(frozen)


def feature_cache_key(*, model_name: str, frozen: str, boundary: str, fingerprint: str, split: str,
                      indices: np.ndarray, input_size: tuple[int, int], mean: tuple[float, ...],
                      std: tuple[float, ...], interpolation: str, model_kwargs: Mapping[str, object],
                      precision: str) -> str:
    """The cache key of one split's features: everything that changes them, and nothing else.

    `transferlab train` and `transferlab rank` both key their caches with this function, so a
    ranking's pooled features are reused by a later head stage with the same model, weights,
    preprocessing and split indices (and the other way round).

    Args:
        model_name: the config's model name (registry name or timm:<name>).
        frozen: `frozen_state_hash` of the model and its trainable tail.
        boundary: the stage's `train` setting ("head" for pooled features).
        fingerprint: the dataset's fingerprint.
        split: "train", "val" or "test".
        indices: indices of the split's images in the dataset's split they come from.
        input_size, mean, std, interpolation: the preprocessing.
        model_kwargs: create_model kwargs that rebuild the architecture (pooling, padding options
            change the features but not the weights).
        precision: the extraction precision's name (fp32, bf16, fp16).
    """
    from transferlab.data.cache import stable_hash

    return stable_hash({
        # version 2: images resized as uint8 before scaling (data/transforms.py)
        "kind": "features", "version": 2, "model": model_name, "frozen": frozen,
        "boundary": boundary, "data": fingerprint, "split": split, "indices": indices_hash(indices),
        "input_size": list(input_size), "mean": list(mean), "std": list(std),
        "interpolation": interpolation, "model_kwargs": dict(model_kwargs), "precision": precision,
    })[:32]
