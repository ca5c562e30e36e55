"""One preprocessing path, from an image file to the model's input, for every consumer.

A run prepares an image in two steps, and everything that prepares images for a model (the
run's own training and test pass, `evaluate`, `rank`, `predict` on best.pt and on an exported
file, the export's metadata) builds both from one `PreprocessConfig`, the one a run records in
best.pt and every export:

1. Decode (`decode_plan`, `Preprocess.pixels`): the file becomes upright uint8 RGB at the
   stored size, by `data/images.decode`, the function that filled the run's dataset cache. For
   photos of mixed sizes the run stored each image by its shorter side and a centre crop at
   `stored_size` (e.g. 256 x 256; Pillow bicubic, JPEG decoded at a reduced scale while it still
   covers the size); an image kept at its native size (CIFAR's 32 px) is used as decoded.
2. Batch (`batch_transform`): `BatchTransform` in evaluation mode resizes the uint8 pixels to
   `input_size` (antialiased, the config's interpolation) and normalises them with mean and std.

So a photo gets in `predict` the very pixels it got in the run's test split: before, `predict`
went straight to 224 px in one resample (timm's transform) where the run resampled twice
(to 256 when decoding, to 224 per batch), and class probabilities moved by up to 0.19.

ImageNet weights (not a run) carry timm's rule instead: crop_mode "center" with crop_pct 0.875
means shorter side to input_size / crop_pct, then the centre input_size crop, here done by the
same decoder (step 2 then only normalises).
"""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from transferlab.data.images import SizePlan, decode, fit, max_image_pixels, to_rgb
from transferlab.errors import TransferlabError

if TYPE_CHECKING:  # torch is imported where a batch is made: `import transferlab.data` stays light
    import torch
    from PIL import Image

    from transferlab.data.transforms import BatchTransform

# ImageNet statistics (timm.data.IMAGENET_DEFAULT_MEAN / _STD), the default for models trained here.
IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)
CROP_MODES = ("center", "squash", "border")  # timm pretrained_cfg crop modes


@dataclasses.dataclass(frozen=True)
class PreprocessConfig:
    """How images must be prepared for a model (timm's `pretrained_cfg`, reduced to what we use).

    Attributes:
        input_size: (height, width) of the network input, pixels.
        mean: per-channel mean subtracted after scaling pixels to [0, 1] (RGB order).
        std: per-channel standard deviation divided by after subtracting the mean.
        interpolation: resize filter name ("bilinear", "bicubic", "nearest") of the batch resize.
        crop_pct: evaluation centre-crop fraction: resize to input_size / crop_pct, then crop.
        crop_mode: "center" or "border" (timm's evaluation transform: resize, then crop)
            or "squash" (resize the whole image to input_size, as transferlab training does; a
            run's best.pt records this with crop_pct 1.0).
        stored_size: (height, width) a run stored its images at by shorter side and centre crop
            when decoding (photos of mixed sizes), before the batch resize to input_size; None
            when the images went to the batch resize as decoded (or for weights not from a run).
    """

    input_size: tuple[int, int] = (224, 224)
    mean: tuple[float, float, float] = IMAGENET_MEAN
    std: tuple[float, float, float] = IMAGENET_STD
    interpolation: str = "bilinear"
    crop_pct: float = 1.0
    crop_mode: str = "center"
    stored_size: tuple[int, int] | None = None

    def __post_init__(self) -> None:
        # Normalise lists (YAML, JSON, checkpoints) to tuples so configs compare and hash equal.
        object.__setattr__(self, "input_size", tuple(int(v) for v in self.input_size))
        object.__setattr__(self, "mean", tuple(float(v) for v in self.mean))
        object.__setattr__(self, "std", tuple(float(v) for v in self.std))
        object.__setattr__(self, "crop_pct", float(self.crop_pct))
        if self.stored_size is not None:
            object.__setattr__(self, "stored_size", tuple(int(v) for v in self.stored_size))
            if len(self.stored_size) != 2 or min(self.stored_size) < 1:
                raise TransferlabError(f"stored_size must be (height, width) > 0, got {self.stored_size}")
        if len(self.input_size) != 2 or min(self.input_size) < 1:
            raise TransferlabError(f"input_size must be (height, width) > 0, got {self.input_size}")
        if len(self.mean) != 3 or len(self.std) != 3 or min(self.std) <= 0:
            raise TransferlabError(
                f"mean and std need 3 values (std > 0), got {self.mean}, {self.std}"
            )
        if not 0 < self.crop_pct <= 1:
            raise TransferlabError(f"crop_pct must be in (0, 1], got {self.crop_pct}")
        if self.crop_mode not in CROP_MODES:
            raise TransferlabError(
                f"crop_mode must be one of {', '.join(CROP_MODES)}, got {self.crop_mode!r}"
            )

    def to_dict(self) -> dict[str, Any]:
        """A JSON/YAML-friendly dict (lists instead of tuples)."""
        return {
            k: list(v) if isinstance(v, tuple) else v for k, v in dataclasses.asdict(self).items()
        }

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> PreprocessConfig:
        """Inverse of `to_dict`; unknown keys are ignored (timm cfgs carry many more)."""
        names = {f.name for f in dataclasses.fields(cls)}
        values = {k: v for k, v in d.items() if k in names}
        if "input_size" in values and len(values["input_size"]) == 3:  # timm's (C, H, W)
            values["input_size"] = tuple(values["input_size"])[1:]
        return cls(**values)


def decode_plan(cfg: PreprocessConfig) -> SizePlan | None:
    """Step 1's rule: how a decoded image is brought to the size the batch step resizes from.

    - `stored_size` (a run on photos of mixed sizes): shorter side and centre crop to it, the
      rule the run's dataset cache applied to every one of its images.
    - crop_mode "squash" (a run on images kept at their native size, a ranking): None, the
      image as decoded; the batch step resizes the whole of it.
    - otherwise (ImageNet weights; a run checkpoint from before `stored_size` was recorded):
      timm's evaluation rule, shorter side to input_size / crop_pct, then the centre crop.
      timm's "border" mode (letterbox) is read as "center": no model here uses it.
    """
    if cfg.stored_size is not None:
        return SizePlan(cfg.stored_size, resize=True)
    if cfg.crop_mode == "squash":
        return None
    return SizePlan(cfg.input_size, resize=True, crop_pct=cfg.crop_pct)


def batch_transform(cfg: PreprocessConfig, augment: str = "none",
                    native_size: Sequence[int] | None = None) -> BatchTransform:
    """Step 2: the `BatchTransform` to `cfg.input_size` with its mean, std and interpolation.

    Args:
        cfg: the preprocessing.
        augment: the training augmentation (see `BatchTransform.augment`); "none" returns the
            module in evaluation mode, the test pass's transform.
        native_size: (H, W) of the stored images (the crop presets' padding); default the
            stored size, else the input size.
    """
    from transferlab.data.transforms import BatchTransform

    native = native_size or cfg.stored_size or cfg.input_size
    transform = BatchTransform(cfg.input_size, mean=cfg.mean, std=cfg.std,
                               interpolation=cfg.interpolation, augment=augment, native_size=native)
    return transform.eval() if augment == "none" else transform


class Preprocess:
    """Image files (or decoded images) -> the model's input, both steps, as the run's test pass.

    Args:
        cfg: the preprocessing a model or an exported file records (`pretrained_cfg`).
        max_pixels: refuse files whose header claims more pixels (a decompression bomb; see
            `data.images.open_image`); None: $TRANSFERLAB_MAX_IMAGE_PIXELS, else the default.

    Attributes:
        cfg: that preprocessing.
        plan: step 1's rule (`decode_plan`).
        transform: step 2 (`batch_transform`), on the CPU.
    """

    def __init__(self, cfg: PreprocessConfig, max_pixels: int | None = None) -> None:
        self.cfg = cfg
        self.max_pixels = max_image_pixels(max_pixels)
        self.plan = decode_plan(cfg)
        self.transform = batch_transform(cfg)

    def pixels(self, image: str | Path | Image.Image | np.ndarray) -> np.ndarray:
        """Step 1: uint8 (H, W, 3) RGB at the stored size.

        A path is decoded by the dataset's own decoder, so a file gives exactly the pixels of
        its row in the run's dataset; a PIL image or a uint8 (H, W, 3) RGB array (already
        decoded, so without the decoder's reduced-scale JPEG decoding) gets the same rule.

        Raises:
            TransferlabError: a missing or unreadable file, one above the pixel limit, or an
                array that is not uint8 RGB.
        """
        if isinstance(image, (str, Path)):
            path = Path(image)
            if not path.is_file():
                raise TransferlabError(f"image {path} not found; check the path")
            return decode(path, str(path), self.plan, self.max_pixels)
        if isinstance(image, np.ndarray):
            if image.dtype != np.uint8 or image.ndim != 3 or image.shape[-1] != 3:
                raise TransferlabError(
                    f"an image array must be uint8 (H, W, 3) RGB, got {image.dtype} {image.shape}; "
                    "convert it with .astype(np.uint8) or pass the file")
            from PIL import Image

            image = Image.fromarray(image, "RGB")
        return fit(to_rgb(image.copy()), self.plan)

    def _tensor(self, image: str | Path | Image.Image | np.ndarray) -> torch.Tensor:
        """Step 1 as a uint8 (1, H, W, 3) tensor."""
        import torch

        pixels = self.pixels(image)
        # Pillow's arrays are read-only, and torch warns about wrapping those.
        return torch.from_numpy(pixels if pixels.flags.writeable else pixels.copy())[None]

    def resized(self, images: Sequence[str | Path | Image.Image | np.ndarray]) -> torch.Tensor:
        """Both steps without the scaling and normalisation: uint8 (B, h, w, 3) at the input size.

        What an exported ONNX or TorchScript model takes (as float32), which normalises in its graph.
        """
        import torch

        h, w = self.cfg.input_size
        out = torch.empty((len(images), h, w, 3), dtype=torch.uint8)
        for i, image in enumerate(images):  # one at a time: native-size images differ in size
            out[i] = self.transform.resize_pixels(self._tensor(image))[0]
        return out

    def __call__(self, images: Sequence[str | Path | Image.Image | np.ndarray]) -> torch.Tensor:
        """Both steps: normalised float (B, 3, h, w) at the input size, the model's input."""
        import torch

        out = torch.empty((len(images), 3, *self.cfg.input_size))
        with torch.no_grad():
            for i, image in enumerate(images):  # one at a time: native-size images differ in size
                out[i] = self.transform(self._tensor(image))[0]
        return out


__all__ = ["CROP_MODES", "IMAGENET_MEAN", "IMAGENET_STD", "Preprocess", "PreprocessConfig",
           "batch_transform", "decode_plan"]
