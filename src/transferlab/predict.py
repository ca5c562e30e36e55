"""Top-k predictions on image files, with each model's own preprocessing and class names.

Images are prepared by the one preprocessing path (`data.preprocess.Preprocess`) from the
model's `pretrained_cfg`: for a transferlab run's `best.pt` the run's own test pass (the file
decoded to the stored size by the dataset's decoder, then the batch resize and normalisation),
so a file of the run's test split gives the logits it gave there; for ImageNet-style weights
timm's evaluation rule (shorter side to input_size / crop_pct, centre crop, normalise). An
exported `.onnx` file (`transferlab export`) is run with ONNX Runtime on the same resized
pixels, from the preprocessing and class names in its metadata.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
from PIL import Image, UnidentifiedImageError
from timm.data import ImageNetInfo

from transferlab.choices import IMAGE_SUFFIXES
from transferlab.data.images import max_image_pixels
from transferlab.data.preprocess import Preprocess
from transferlab.errors import TransferlabError
from transferlab.export import ExportedClassifier, OnnxClassifier, TorchScriptClassifier
from transferlab.models import (
    PreprocessConfig,
    TransferModel,
    create_model,
    find_weights,
    get_model_entry,
    model_from_checkpoint,
    read_weights,
)

IMAGENET_CLASSES = 1000
UNKNOWN = "unknown"  # the answer below min_confidence
ONNX_SUFFIX = ".onnx"
TORCHSCRIPT_SUFFIX = ".torchscript.pt"  # `transferlab export --format torchscript`
Predictor = TransferModel | OnnxClassifier | TorchScriptClassifier


@dataclasses.dataclass(frozen=True)
class ClassScore:
    """One of the top classes for an image."""

    index: int
    name: str
    prob: float


@dataclasses.dataclass(frozen=True)
class Prediction:
    """The top classes for one image, best first."""

    image: str
    top: list[ClassScore]
    answer: str = ""  # the top-1 class, or UNKNOWN when its probability is below min_confidence

    def to_dict(self) -> dict[str, Any]:
        """`{"image": PATH, "top": [{"index", "name", "prob"}, ...], "answer": NAME}` (`--json`)."""
        return dataclasses.asdict(self)


def eval_transform(cfg: PreprocessConfig) -> Callable[[Image.Image], torch.Tensor]:
    """PIL image -> normalised (3, H, W) tensor, as the run's (or the weights') test pass prepares it.

    Both steps of `data.preprocess.Preprocess`: the stored-size rule, then the batch resize and
    normalisation. A file path given to `Preprocess` directly is decoded exactly as the run's
    dataset decoded it (this takes an image already decoded).
    """
    prepare = Preprocess(cfg)
    return lambda image: prepare([image])[0]


def pixel_transform(cfg: PreprocessConfig) -> Callable[[Image.Image], torch.Tensor]:
    """PIL image -> (3, H, W) float in [0, 1], resized as `eval_transform` resizes, not normalised."""
    prepare = Preprocess(cfg)
    return lambda image: prepare.resized([image])[0].permute(2, 0, 1).float().div(255.0)


def expand_images(paths: Sequence[str | Path]) -> list[str]:
    """Image files from files and folders: a folder gives its images, recursively, sorted.

    Raises:
        TransferlabError: if a path does not exist or a folder holds no image.
    """
    files: list[str] = []
    for path in map(Path, paths):
        if path.is_dir():
            found = sorted(
                str(p) for p in path.rglob("*")
                if p.suffix.lower() in IMAGE_SUFFIXES and p.is_file()
            )
            if not found:
                raise TransferlabError(
                    f"folder {path} holds no images ({', '.join(IMAGE_SUFFIXES)}); check the path"
                )
            files.extend(found)
        elif path.exists():
            files.append(str(path))
        else:
            raise TransferlabError(f"image {path} not found; check the path")
    return files


def class_names(model: Predictor) -> list[str]:
    """The model's class names: its dataset's, ImageNet's for a 1000-class head, else indices."""
    if model.classes is not None:
        return list(model.classes)
    if model.num_classes == IMAGENET_CLASSES:
        info = ImageNetInfo()  # timm ships the ImageNet-1k synsets and descriptions
        return [info.index_to_description(i) for i in range(IMAGENET_CLASSES)]
    return [str(i) for i in range(model.num_classes)]


def load_image(path: str | Path | Image.Image, max_pixels: int | None = None) -> Image.Image:
    """An upright RGB PIL image, decoded as the dataset loaders decode (EXIF orientation applied,
    transparency on white, 16-bit scaled). An image already in memory (a PIL image) is converted
    the same way.

    Args:
        path: the image file, or a PIL image.
        max_pixels: refuse a file whose header claims more pixels (a decompression bomb);
            None: $TRANSFERLAB_MAX_IMAGE_PIXELS, else the default limit.

    Raises:
        TransferlabError: the file is missing, not an image, or above the pixel limit.
    """
    from transferlab.data.images import decode_failure, open_image, to_rgb

    if isinstance(path, Image.Image):
        return to_rgb(path.copy())  # exif_transpose works in place: leave the caller's image be
    if not Path(path).exists():
        raise TransferlabError(f"image {path} not found; check the path")
    limit = max_image_pixels(max_pixels)
    with open_image(Path(path), str(path), limit) as image:
        try:
            return to_rgb(image)
        except Image.DecompressionBombError as err:  # an animation frame larger than its header
            raise decode_failure(Path(path), str(path), limit, err) from err
        except (UnidentifiedImageError, OSError) as err:
            raise TransferlabError(f"{path} is not a readable image ({err})") from err


@torch.no_grad()
def predict_images(
    model: Predictor,
    images: Sequence[str | Path | Image.Image],
    top: int = 5,
    batch_size: int = 32,
    device: str | torch.device = "cpu",
    max_pixels: int | None = None,
    min_confidence: float | None = None,
) -> list[Prediction]:
    """Top-`top` classes with probabilities for each image file (or PIL image), in input order.

    The probabilities are softmax(logits / T) with the model's temperature T (fitted by its run
    on the validation split; 1 for weights without one), so a 0.9 means about 90% right. An image
    whose top-1 probability is below `min_confidence` is answered UNKNOWN (its top classes are
    still listed). An `OnnxClassifier` runs with ONNX Runtime on the CPU whatever `device` says.
    Images whose header claims more than `max_pixels` pixels are refused (see `load_image`).
    """
    if top < 1:
        raise TransferlabError(f"top must be >= 1, got {top}")
    if min_confidence is not None and not 0.0 <= min_confidence <= 1.0:
        raise TransferlabError(f"min_confidence must be a probability in [0, 1], got {min_confidence}")
    if batch_size < 1:
        raise TransferlabError(f"batch_size must be >= 1, got {batch_size}")
    limit = max_image_pixels(max_pixels)
    top = min(top, model.num_classes)
    names = class_names(model)
    onnx = isinstance(model, ExportedClassifier)
    # One preprocessing path (data/preprocess.py): each file decoded to the stored size by the
    # dataset's own decoder, then the run's batch resize; normalisation here for a PyTorch model,
    # in the graph for an exported one, which takes the resized pixels as float in [0, 255].
    prepare = Preprocess(model.pretrained_cfg, max_pixels=limit)
    temperature = float(getattr(model, "temperature", 1.0) or 1.0)
    if not onnx:
        model = model.to(device).eval()
    results: list[Prediction] = []
    for start in range(0, len(images), batch_size):
        paths = images[start : start + batch_size]
        if onnx:
            pixels = prepare.resized(paths).numpy().astype(np.float32)
            logits = torch.from_numpy(model(pixels))
        else:
            logits = model(prepare(paths).to(device))
        probs = (logits.float() / temperature).softmax(dim=1)
        values, indices = probs.topk(top, dim=1)
        for path, vals, idxs in zip(paths, values.tolist(), indices.tolist(), strict=True):
            scores = [ClassScore(i, names[i], round(v, 6)) for v, i in zip(vals, idxs, strict=True)]
            # Decided on the unrounded probability, so "below P" is exact.
            sure = min_confidence is None or vals[0] >= min_confidence
            results.append(Prediction(str(path), scores, scores[0].name if sure else UNKNOWN))
    return results


def load_predict_model(
    model_name: str | None,
    weights: str | Path | None = None,
    weights_dir: str | Path | None = None,
    pretrained: bool = False,
) -> Predictor:
    """A model with a trained classifier, ready to predict.

    Args:
        model_name: registry name; may be omitted for a transferlab checkpoint or export (they
            record it).
        weights: a transferlab `best.pt`, a `transferlab export` file (.onnx runs with ONNX
            Runtime, .torchscript.pt with TorchScript), or a weights file with a classifier (e.g. ImageNet).
        weights_dir: a folder holding a weights file for `model_name` (see `create_model`).
        pretrained: download timm's ImageNet weights instead.

    Raises:
        TransferlabError: if nothing says which weights to use, or they have no classifier.
    """
    source = None
    if weights is not None and Path(weights).suffix == ONNX_SUFFIX:
        onnx_model = OnnxClassifier(weights)
        if model_name is not None and model_name != onnx_model.model_name:
            raise TransferlabError(
                f"{weights} holds a {onnx_model.model_name} model, not {model_name}; drop --model"
            )
        return onnx_model
    if weights is not None and str(weights).endswith(TORCHSCRIPT_SUFFIX):
        scripted = TorchScriptClassifier(weights)
        if model_name is not None and model_name != scripted.model_name:
            raise TransferlabError(
                f"{weights} holds a {scripted.model_name} model, not {model_name}; drop --model"
            )
        return scripted
    if weights is not None and Path(weights).suffix == ".safetensors" and model_name is None:
        # A `transferlab export --format safetensors` file names its model.
        source = read_weights(weights)
        model_name = source.metadata.get("transferlab_model")
    if weights is not None and Path(weights).suffix != ".safetensors":
        source = read_weights(weights)
        if source.checkpoint is not None:
            model = model_from_checkpoint(source.checkpoint, origin=str(weights))
            if model_name is not None and model_name != model.model_name:
                raise TransferlabError(
                    f"{weights} holds a {model.model_name} model, not {model_name}; drop --model"
                )
            return model
    if model_name is None:
        raise TransferlabError("--model is required unless --weights is a transferlab checkpoint")
    if weights is None and weights_dir is None and not pretrained:
        raise TransferlabError(
            "say which weights to use: --weights FILE, --weights-dir DIR or --pretrained"
        )
    num_classes, head = IMAGENET_CLASSES, "linear"  # the classifier of ImageNet weights
    if weights is not None or weights_dir is not None:
        entry = get_model_entry(model_name)
        path = (
            weights
            if weights is not None
            else find_weights(weights_dir, entry.accepts(), model_name)
        )
        if source is None or path != weights:
            source = read_weights(path)
        if source.num_classes == 0:
            raise TransferlabError(
                f"{Path(path).name} has no classifier (backbone only), so it cannot predict classes; "
                "fine-tune it with `transferlab train` and predict with the run's best.pt"
            )
        num_classes = source.num_classes or num_classes
        head = source.model_kwargs().get("head", head)
        weights, weights_dir = source, None  # create_model takes the file already read
    model = create_model(
        model_name,
        num_classes=num_classes,
        pretrained=pretrained,
        weights=weights,
        weights_dir=weights_dir,
        head=head,
    )
    if not model.head_pretrained:
        raise TransferlabError(
            f"the weights for {model_name} did not include a usable classifier ({model.load_report}); "
            "predict needs trained class weights"
        )
    return model
