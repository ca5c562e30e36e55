"""`tl.load(path) -> Classifier`: one object for a trained model, whatever form it was saved in.

A run directory, its `best.pt`, or a file of `transferlab export` (`.onnx`, `.torchscript.pt`,
`.safetensors`), or a registry model with ImageNet weights. `Classifier.predict` takes image
files, folders, PIL images and uint8 arrays, and runs them through
`transferlab.predict.predict_images`, the code `transferlab predict` runs: the images are
prepared from what the model recorded (as its run evaluated), so Python and the command line
give the same numbers.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

from transferlab.api import html
from transferlab.api.predictions import Prediction, Predictions
from transferlab.errors import TransferlabError
from transferlab.runfiles import BEST

# What `predict` takes: a path (file or folder), a PIL image, a uint8 array (H, W, 3) or a batch
# (N, H, W, 3), or a list of any of these.
Images = Any  # str | os.PathLike | PIL.Image.Image | np.ndarray | a sequence of these


class Classifier:
    """A trained model ready to predict, with every choice it makes visible.

    Attributes:
        source: where it was loaded from (a file, or the model name with its weights).
        model: what runs: a `TransferModel` (PyTorch) or an exported file's runner (ONNX
            Runtime, TorchScript).
        model_name: the registry name of the architecture.
        classes: class names in label order.
        input_size: (height, width) the images are brought to.
        preprocess: the full recipe: input size, resize rule (`crop_mode`, `crop_pct`),
            interpolation, mean and std (a `PreprocessConfig`).
        device: where a PyTorch model runs (exported files run on the CPU).
        runtime: "pytorch", "onnxruntime" or "torchscript".
    """

    def __init__(self, model: Any, source: str, device: str | None = None) -> None:
        from transferlab.export import OnnxClassifier, TorchScriptClassifier
        from transferlab.predict import class_names
        from transferlab.training.device import select_device

        self.model = model
        self.source = source
        self.model_name: str = str(model.model_name)
        self.classes: list[str] = class_names(model)
        self.preprocess = model.pretrained_cfg
        self.input_size: tuple[int, int] = tuple(self.preprocess.input_size)
        self.runtime = ("onnxruntime" if isinstance(model, OnnxClassifier) else
                        "torchscript" if isinstance(model, TorchScriptClassifier) else "pytorch")
        self.device = str(select_device(device or "auto")) if self.runtime == "pytorch" else "cpu"

    def predict(self, images: Images, top: int = 5, batch_size: int = 32,
                max_pixels: int | None = None, min_confidence: float | None = None) -> Predictions:
        """The top classes of each image, best first.

        Args:
            images: an image file, a folder (its images, recursively, sorted by path), a PIL
                image, a uint8 numpy array (H, W, 3) or a batch (N, H, W, 3), or a list of these.
            top: classes per image (at most the number of classes).
            batch_size: images per forward pass.
            max_pixels: refuse image files with more pixels (decompression bombs); None:
                $TRANSFERLAB_MAX_IMAGE_PIXELS, else 250,000,000.
            min_confidence: answer "unknown" (`Prediction.label`) when the top-1 probability is
                below this; `Run.evaluate()` shows the accuracy and coverage each value gives.

        Returns:
            One `Prediction` per image, in input order (a folder's images in path order).

        Raises:
            TransferlabError: a missing path, a folder without images, an unreadable image or
                an array that is not uint8 RGB.
        """
        from transferlab.predict import predict_images

        sources, names, pictures = as_images(images)
        raw = predict_images(self.model, sources, top=top, batch_size=batch_size, device=self.device,
                             max_pixels=max_pixels, min_confidence=min_confidence)
        return Predictions(
            Prediction(source=name, top=[(s.name, s.prob) for s in r.top],
                       indices=[s.index for s in r.top], image=picture, answer=r.answer or None)
            for name, picture, r in zip(names, pictures, raw, strict=True))

    def __repr__(self) -> str:
        return (f"Classifier({self.model_name}, {len(self.classes)} classes, input {self.input_size}, "
                f"{self.runtime}, from {self.source})")

    def _repr_html_(self) -> str:
        p = self.preprocess
        shown = ", ".join(self.classes[:20]) + (" ..." if len(self.classes) > 20 else "")
        rows = [("model", self.model_name), ("source", self.source), ("runtime", self.runtime),
                ("device", self.device), ("classes", f"{len(self.classes)}: {shown}"),
                ("input size", f"{self.input_size[0]} x {self.input_size[1]}"),
                ("resize", f"{p.crop_mode}, crop_pct {p.crop_pct:g}, {p.interpolation}"),
                ("mean / std", f"{tuple(p.mean)} / {tuple(p.std)}")]
        return html.title("Classifier") + html.table(rows)


def as_images(images: Images) -> tuple[list[Any], list[str], list[Any]]:
    """(what predict_images takes, a name for each image, its in-memory PIL image or None).

    Files and folders stay paths (predict decodes them as the CLI does); PIL images and arrays
    become PIL images.
    """
    import numpy as np
    from PIL import Image

    from transferlab.predict import expand_images

    if isinstance(images, (str, os.PathLike, Image.Image)) or (
            isinstance(images, np.ndarray) and images.ndim in (3, 4)):
        images = [images]
    sources: list[Any] = []
    names: list[str] = []
    pictures: list[Any] = []
    for item in images:
        if isinstance(item, (str, os.PathLike)):
            files = expand_images([item])
            sources += files
            names += files
            pictures += [None] * len(files)
            continue
        for picture in _in_memory(item):
            names.append(f"image[{len(pictures)}]")
            sources.append(picture)
            pictures.append(picture)
    if not sources:
        raise TransferlabError("no images to predict; pass a file, a folder, a PIL image or an array")
    return sources, names, pictures


def _in_memory(item: Any) -> list[Any]:
    """A PIL image, or the images of a uint8 array (H, W, 3) or (N, H, W, 3), as PIL images."""
    import numpy as np
    from PIL import Image

    if isinstance(item, Image.Image):
        return [item]
    if isinstance(item, np.ndarray):
        if item.dtype != np.uint8 or item.ndim not in (3, 4) or item.shape[-1] != 3:
            raise TransferlabError(
                f"an image array must be uint8 RGB (H, W, 3) or a batch (N, H, W, 3), got "
                f"{item.dtype} {item.shape}; convert with (x * 255).round().astype(np.uint8) or "
                "add/drop the channel axis")
        batch = item[None] if item.ndim == 3 else item
        return [Image.fromarray(np.ascontiguousarray(a), "RGB") for a in batch]
    raise TransferlabError(
        f"cannot predict a {type(item).__name__}; pass a path, a folder, a PIL image or a uint8 "
        "array (H, W, 3) / (N, H, W, 3)")


def load(path: str | os.PathLike | None = None, *, model: str | None = None,
         weights_dir: str | os.PathLike | None = None, pretrained: bool = False,
         device: str | None = None) -> Classifier:
    """A trained model from any form it was saved in.

    Args:
        path: a run directory (its `best.pt`), a `best.pt`, a file written by
            `transferlab export` (`.onnx`, `.torchscript.pt`, `.safetensors`), or a weights file
            with an ImageNet classifier (then `model` names the architecture).
        model: the registry name; needed only when nothing in the file records it.
        weights_dir: instead of `path`: the folder holding `model`'s weights file.
        pretrained: instead of `path`: timm's ImageNet weights for `model` (online).
        device: where a PyTorch model runs: auto (CUDA, then MPS, then the CPU), cpu, cuda, ...

    Returns:
        The `Classifier`.

    Raises:
        TransferlabError: nothing says which weights, a missing or unreadable file, or
            weights without a classifier.
    """
    from transferlab.predict import load_predict_model

    weights = None
    if path is not None:
        path = Path(path).expanduser()
        if path.is_dir():
            if not (path / BEST).is_file():
                raise TransferlabError(
                    f"{path} holds no {BEST}; pass a run directory written by training (it writes "
                    f"{BEST} when its first stage ends) or a model file")
            path = path / BEST
        weights = path
    if weights is None and weights_dir is None and not pretrained:
        raise TransferlabError("say which model to load: a run directory or model file, or a "
                               "model name with weights_dir or pretrained=True")
    predictor = load_predict_model(model, weights, weights_dir, pretrained)
    source = str(weights) if weights is not None else (
        f"{model} ({'weights in ' + str(weights_dir) if weights_dir else 'ImageNet, timm hub'})")
    return Classifier(predictor, source, device=device)
