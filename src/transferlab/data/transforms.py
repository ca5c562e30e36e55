"""Preprocessing and augmentation on batches of uint8 images, on whichever device trains.

Images stay at their native size in memory (60,000 CIFAR images upscaled to 224 px would be 9 GB);
each batch is augmented at the native size, then resized to the model's input size and normalised
on the device. Channel order is RGB from decoding to the model: the 2018 study's upscaled images
turned purple through a BGR/RGB mix-up, and tests/test_transforms.py guards against that.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import nn
from torchvision.transforms import v2
from torchvision.transforms.v2 import functional as TF

from transferlab.choices import AUGMENTATIONS

# Random resized crop of the `photo` preset: area share and aspect-ratio range of the crop. Far milder
# than torchvision's ImageNet default (0.08-1): a few fine-tuning epochs should see whole objects.
PHOTO_SCALE = (0.5, 1.0)
PHOTO_RATIO = (3 / 4, 4 / 3)


def _uniform(n: int, low: float, high: float, g: torch.Generator, device: torch.device) -> torch.Tensor:
    return torch.rand(n, generator=g, device="cpu").to(device) * (high - low) + low


def random_flip(x: torch.Tensor, g: torch.Generator) -> torch.Tensor:
    """Flip each image of a (B, C, H, W) batch left-right with probability 1/2."""
    mask = (torch.rand(x.shape[0], generator=g) < 0.5).to(x.device)
    return torch.where(mask[:, None, None, None], x.flip(-1), x)


def random_crop(x: torch.Tensor, pad: int, g: torch.Generator) -> torch.Tensor:
    """Reflect-pad a (B, C, H, W) batch by `pad` and cut each image at its own random offset."""
    b, c, h, w = x.shape
    # Contiguous NCHW makes the padded batch a plain (B, C, Hp * Wp) view for one gather: several
    # times faster than advanced indexing with broadcast row/column indices.
    xp = F.pad(x.contiguous(), (pad, pad, pad, pad), mode="reflect")
    wp = w + 2 * pad
    top = torch.randint(0, 2 * pad + 1, (b,), generator=g).to(x.device)
    left = torch.randint(0, 2 * pad + 1, (b,), generator=g).to(x.device)
    rows = top[:, None] + torch.arange(h, device=x.device)
    cols = left[:, None] + torch.arange(w, device=x.device)
    index = (rows[:, :, None] * wp + cols[:, None, :]).reshape(b, 1, h * w)
    return torch.gather(xp.reshape(b, c, -1), 2, index.expand(b, c, h * w)).view(b, c, h, w)


def random_affine(
    x: torch.Tensor, degrees: float, translate: float, shear: float, g: torch.Generator
) -> torch.Tensor:
    """Rotate, shift and shear each image of a (B, C, H, W) float batch with its own parameters.

    Like Keras' ImageDataGenerator (fill_mode='nearest'), pixels from outside the image repeat
    the border. One batched grid_sample instead of a Python loop of per-image warps.
    """
    b, _, h, w = x.shape
    dev = x.device
    angle = torch.deg2rad(_uniform(b, -degrees, degrees, g, dev))
    sh = torch.deg2rad(_uniform(b, -shear, shear, g, dev))
    tx = _uniform(b, -translate, translate, g, dev) * w
    ty = _uniform(b, -translate, translate, g, dev) * h
    # Forward map in pixel units about the centre: rotation after shear, then translation.
    cos, sin, tan = torch.cos(angle), torch.sin(angle), torch.tan(sh)
    fwd = torch.zeros(b, 3, 3, device=dev)
    fwd[:, 0, 0], fwd[:, 0, 1] = cos, cos * tan - sin
    fwd[:, 1, 0], fwd[:, 1, 1] = sin, sin * tan + cos
    fwd[:, 0, 2], fwd[:, 1, 2], fwd[:, 2, 2] = tx, ty, 1.0
    # affine_grid wants output->input in normalised coordinates: conjugate the inverse map.
    norm = torch.diag(torch.tensor([2.0 / w, 2.0 / h, 1.0], device=dev))
    theta = norm @ torch.linalg.inv(fwd) @ torch.linalg.inv(norm)
    grid = F.affine_grid(theta[:, :2], list(x.shape), align_corners=False)
    return F.grid_sample(x, grid, mode="bilinear", padding_mode="border", align_corners=False)


def random_resized_crop(
    x: torch.Tensor, size: Sequence[int], scale: Sequence[float], ratio: Sequence[float],
    g: torch.Generator,
) -> torch.Tensor:
    """Cut a random box from each image of a float (B, C, H, W) batch and resize it to `size`.

    torchvision's RandomResizedCrop for a whole batch in one `roi_align` call: each box covers a
    share in `scale` of the image area with a width/height ratio in `ratio` (log-uniform). The
    bilinear samples are averaged over each output pixel's footprint, which antialiases shrinking.
    """
    from torchvision.ops import roi_align

    b, _, h, w = x.shape
    dev = x.device
    area = _uniform(b, scale[0], scale[1], g, dev) * (h * w)
    log_r = _uniform(b, float(torch.log(torch.tensor(ratio[0]))), float(torch.log(torch.tensor(ratio[1]))), g, dev)
    r = torch.exp(log_r)
    bw = torch.sqrt(area * r).clamp(max=w)
    bh = torch.sqrt(area / r).clamp(max=h)
    x0 = _uniform(b, 0.0, 1.0, g, dev) * (w - bw)
    y0 = _uniform(b, 0.0, 1.0, g, dev) * (h - bh)
    boxes = torch.stack([torch.arange(b, device=dev, dtype=x.dtype), x0, y0, x0 + bw, y0 + bh], dim=1)
    return roi_align(x, boxes.to(x.dtype), output_size=(int(size[0]), int(size[1])),
                     spatial_scale=1.0, sampling_ratio=-1, aligned=True)


def build_per_image_augmentation(name: str) -> v2.Transform | None:
    """The part of a preset that has no batched form: torchvision v2 applied image by image."""
    if name == "strong":
        return v2.Compose(
            [
                v2.TrivialAugmentWide(),
                v2.ToDtype(torch.float32, scale=True),
                v2.RandomErasing(p=0.25),
            ]
        )
    return None


class BatchTransform(nn.Module):
    """uint8 (B, H, W, 3) RGB batch -> normalised float (B, 3, h, w) at the model's input size.

    Augmentation applies only in training mode (`.train()`), independently per image. Passing a
    `seed` makes the random choices repeatable without touching the global RNG.

    Args:
        input_size: (h, w) the model expects.
        mean: per-channel RGB mean in [0, 1] units.
        std: per-channel RGB standard deviation in [0, 1] units.
        interpolation: "bilinear" or "bicubic" (or "nearest") for the resize.
        augment: one of AUGMENTATIONS.
        native_size: (H, W) of the stored images, needed by the crop presets.
    """

    def __init__(
        self,
        input_size: Sequence[int],
        mean: Sequence[float] = (0.5, 0.5, 0.5),
        std: Sequence[float] = (0.5, 0.5, 0.5),
        interpolation: str = "bilinear",
        augment: str = "none",
        native_size: Sequence[int] = (32, 32),
    ) -> None:
        super().__init__()
        if augment not in AUGMENTATIONS:
            raise ValueError(f"unknown augmentation {augment!r}: choose from {', '.join(AUGMENTATIONS)}")
        self.input_size = (int(input_size[0]), int(input_size[1]))
        self.interpolation = v2.InterpolationMode(interpolation)
        self.augment_name = augment
        self.pad = max(1, int(native_size[0]) // 8)
        self.per_image = build_per_image_augmentation(augment)
        # Buffers follow the module to the device; shaped for (B, 3, h, w) broadcasting.
        self.register_buffer("mean", torch.tensor(mean, dtype=torch.float32).view(1, 3, 1, 1), persistent=False)
        self.register_buffer("std", torch.tensor(std, dtype=torch.float32).view(1, 3, 1, 1), persistent=False)

    def augment(self, images: torch.Tensor, seed: int | None = None) -> torch.Tensor:
        """Augment a uint8 (B, 3, H, W) batch, each image independently; returns float in [0, 1].

        Presets:
            none: nothing.
            study: the 2018 Keras ImageDataGenerator: shear 0.2 (Keras 2 reads shear_range in
                degrees), rotation up to 90 degrees, width and height shift 0.2, horizontal flip.
            standard: reflect-pad by 1/8 of the side and crop back, plus horizontal flip.
            strong: standard, then TrivialAugmentWide and random erasing (torchvision v2, per image).
            photo: random resized crop (PHOTO_SCALE of the area, PHOTO_RATIO aspect) straight to
                the input size, plus horizontal flip: the usual fine-tuning augmentation for photos.
        """
        g = torch.Generator()
        g.manual_seed(seed if seed is not None else int(torch.randint(0, 2**62, (1,))))
        name = self.augment_name
        if name in ("standard", "strong"):
            # TrivialAugment's colour ops are defined on uint8, so crop/flip the uint8 batch first.
            x = random_flip(random_crop(images, self.pad, g), g)
            if name == "standard":
                return x.float().div_(255.0)
            # v2 draws from torch's global RNG; forking keeps the caller's stream untouched.
            with torch.random.fork_rng(devices=[]):
                torch.manual_seed(int(torch.randint(0, 2**62, (1,), generator=g)))
                return torch.stack([self.per_image(img) for img in x])
        x = images.float().div_(255.0)
        if name == "photo":
            return random_flip(random_resized_crop(x, self.input_size, PHOTO_SCALE, PHOTO_RATIO, g), g)
        if name == "study":
            x = random_flip(random_affine(x, 90.0, 0.2, 0.2, g), g)
        return x

    def forward(self, images: torch.Tensor, seed: int | None = None) -> torch.Tensor:
        """Transform a uint8 (B, H, W, 3) batch; see the class docstring."""
        if images.dtype != torch.uint8 or images.ndim != 4 or images.shape[-1] != 3:
            raise ValueError(f"expected uint8 (B, H, W, 3) images, got {images.dtype} {tuple(images.shape)}")
        x = images.permute(0, 3, 1, 2)
        if self.training and self.augment_name != "none":
            x = self.augment(x, seed)
        else:
            x = self._resize_uint8(x).float().div_(255.0)
        if tuple(x.shape[-2:]) != self.input_size:  # an augmentation that kept the stored size
            x = TF.resize(x, list(self.input_size), interpolation=self.interpolation, antialias=True)
        return (x - self.mean) / self.std

    def _resize_uint8(self, x: torch.Tensor) -> torch.Tensor:
        """A uint8 (B, 3, H, W) batch resized to the input size (unchanged when it has it)."""
        if tuple(x.shape[-2:]) == self.input_size:
            return x
        # Resize the uint8 batch, then scale: torchvision's uint8 antialiased resize (a
        # channels-last batch, as this permuted NHWC one is) is PIL's own resampling,
        # 2-4x faster on the CPU than resizing floats (64 images 256 -> 224 px, 2 cores:
        # 21-23 ms against 80-89 ms; 512 images 32 -> 96 px: 25-29 ms against 59-62 ms),
        # and on smooth photos within one grey level of the float result.
        return TF.resize(x, list(self.input_size), interpolation=self.interpolation, antialias=True)

    def resize_pixels(self, images: torch.Tensor) -> torch.Tensor:
        """uint8 (B, H, W, 3) -> uint8 (B, h, w, 3) at the input size: the evaluation resize alone.

        What an exported model (which scales and normalises in its graph) is fed: the very
        pixels `forward` scales and normalises in evaluation mode.
        """
        if images.dtype != torch.uint8 or images.ndim != 4 or images.shape[-1] != 3:
            raise ValueError(f"expected uint8 (B, H, W, 3) images, got {images.dtype} {tuple(images.shape)}")
        return self._resize_uint8(images.permute(0, 3, 1, 2)).permute(0, 2, 3, 1)

    def extra_repr(self) -> str:
        return f"input_size={self.input_size}, interpolation={self.interpolation.value}, augment={self.augment_name}"
