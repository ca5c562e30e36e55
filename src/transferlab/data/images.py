"""Decode one image file of any kind into uint8 RGB at the stored size.

Every Pillow mode becomes correct RGB: EXIF orientation applied (phones store photos rotated and
say so in a tag), transparency composited on white (not on the black that the colour channels
of transparent pixels often hold), 16-bit greyscale scaled to 8 bits (Pillow's own conversion
clips everything above 255 to white), palette, CMYK and the rest through Pillow's converters.
"""

from __future__ import annotations

import math
import os
import warnings
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from PIL import Image, ImageOps, UnidentifiedImageError

from transferlab.errors import TransferlabError

# EXIF orientations 5 to 8 turn the image by 90 degrees: stored width and height swap.
_EXIF_ORIENTATION = 0x0112
_SWAPS_SIDES = {5, 6, 7, 8}
_SIXTEEN_BIT = {"I;16", "I;16L", "I;16B", "I;16N", "I"}

# A guard against decompression bombs: a few kilobytes of PNG can claim 50,000 x 50,000 pixels
# (7.5 GB decoded). 250 megapixels is above the largest phone sensors (200 MP); Pillow's own
# default would refuse those at 179 MP.
DEFAULT_MAX_IMAGE_PIXELS = 250_000_000
MAX_PIXELS_ENV = "TRANSFERLAB_MAX_IMAGE_PIXELS"


@dataclass(frozen=True)
class SizePlan:
    """How every image is brought to the stored size.

    Attributes:
        size: stored (height, width).
        resize: False when every image already has `size` (stored as decoded).
        crop_pct: the share of the resized image's covering side the centre crop keeps: 1.0
            resizes so the image just covers `size` (the run's stored-size rule); below 1 it
            resizes to `size` / crop_pct first (timm's evaluation rule for ImageNet weights).
    """

    size: tuple[int, int]
    resize: bool
    crop_pct: float = 1.0


class ImageError(TransferlabError):
    """An image file that cannot be read."""


class ImageTooLargeError(ImageError):
    """An image whose header claims more pixels than the limit (a possible decompression bomb)."""


def max_image_pixels(limit: int | None = None) -> int:
    """The pixel limit to decode under: `limit`, else $TRANSFERLAB_MAX_IMAGE_PIXELS, else the default.

    Raises:
        TransferlabError: a limit (or the environment variable) that is not a positive integer.
    """
    if limit is None:
        text = os.environ.get(MAX_PIXELS_ENV, "").strip().replace("_", "").replace(",", "")
        if not text:
            return DEFAULT_MAX_IMAGE_PIXELS
        try:
            limit = int(text)
        except ValueError:
            limit = 0
        if limit < 1:
            raise TransferlabError(f"${MAX_PIXELS_ENV}={os.environ[MAX_PIXELS_ENV]!r} must be a "
                                   "positive number of pixels, e.g. 400000000; unset it for "
                                   f"the default {DEFAULT_MAX_IMAGE_PIXELS:,}")
    if limit < 1:
        raise TransferlabError(f"max_image_pixels={limit} must be a positive number of pixels")
    return int(limit)


@contextmanager
def open_image(path: Path, rel: str, max_pixels: int) -> Iterator[Image.Image]:
    """`Image.open(path)` (the header only) that refuses more than `max_pixels` pixels.

    Pillow's own guard (`Image.MAX_IMAGE_PIXELS`) is the mechanism: it checks the header's size
    before anything is decoded (and each frame of an animation as it loads). It only warns
    between the limit and twice the limit; that warning is an error here, so the limit in the
    message is the one applied. The limit holds inside the `with` block only: Pillow's global is
    restored afterwards, so other code in the process keeps its own.

    Raises:
        ImageTooLargeError: the header claims more pixels than `max_pixels`.
        ImageError: the file is not a readable image.
    """
    previous = Image.MAX_IMAGE_PIXELS
    Image.MAX_IMAGE_PIXELS = max_pixels
    try:
        try:
            with warnings.catch_warnings():
                warnings.simplefilter("error", Image.DecompressionBombWarning)
                im = Image.open(path)
        except (Image.DecompressionBombError, Image.DecompressionBombWarning) as err:
            raise _too_large(path, rel, max_pixels) from err
        except (UnidentifiedImageError, OSError, ValueError, SyntaxError) as err:
            raise _unreadable(path, rel, err) from err
        with im:
            yield im
    finally:
        Image.MAX_IMAGE_PIXELS = previous


def decode_failure(path: Path, rel: str, max_pixels: int, err: BaseException) -> ImageError:
    """The error for an exception raised while decoding `path` (after `open_image`)."""
    if isinstance(err, Image.DecompressionBombError):
        return _too_large(path, rel, max_pixels)
    return _unreadable(path, rel, err)


def _too_large(path: Path, rel: str, max_pixels: int) -> ImageTooLargeError:
    previous = Image.MAX_IMAGE_PIXELS
    try:  # the size the header claims, read without Pillow's guard (nothing is decoded)
        Image.MAX_IMAGE_PIXELS = None
        with Image.open(path) as im:
            w, h = im.size
        claims = f" claims {w:,} x {h:,} = {w * h:,} pixels, which is"
    except Exception:  # noqa: BLE001 - the message only loses the numbers
        claims = " is"
    finally:
        Image.MAX_IMAGE_PIXELS = previous
    return ImageTooLargeError(
        f"{rel}{claims} above the limit of {max_pixels:,} pixels (a guard against "
        f"decompression bombs). Remove that file ({path}), or if you trust it raise the limit "
        f"with max_image_pixels or the environment variable {MAX_PIXELS_ENV}.")


def _unreadable(path: Path, rel: str, err: BaseException) -> ImageError:
    return ImageError(f"{rel} is not a readable image ({type(err).__name__}: {err}). "
                      f"Remove or replace that file ({path}).")


def header_size(path: Path, rel: str, max_pixels: int | None = None) -> tuple[int, int]:
    """(height, width) as displayed (after EXIF rotation), read from the file's header only.

    Raises:
        ImageTooLargeError: more than `max_pixels` pixels (None: `max_image_pixels()`).
        ImageError: not a readable image.
    """
    with open_image(path, rel, max_image_pixels(max_pixels)) as im:
        w, h = im.size
        try:
            orientation = im.getexif().get(_EXIF_ORIENTATION)
        except Exception:  # noqa: BLE001 - a broken EXIF block only loses the rotation
            orientation = None
    return (w, h) if orientation in _SWAPS_SIDES else (h, w)


def to_rgb(im: Image.Image) -> Image.Image:
    """The image as 8-bit RGB, upright, transparency on white."""
    ImageOps.exif_transpose(im, in_place=True)  # in place: no copy of the (usual) upright image
    if im.mode in _SIXTEEN_BIT:
        # Scale the full 16-bit range to 8 bits (x / 257 maps 65535 to 255), rounding.
        wide = np.asarray(im, dtype=np.float64)
        im = Image.fromarray(np.clip(np.rint(wide / 257.0), 0, 255).astype(np.uint8), "L")
    elif im.mode == "F":
        wide = np.asarray(im, dtype=np.float64)
        scale = 255.0 if wide.max(initial=0.0) <= 1.0 else 1.0  # [0, 1] floats or 0..255 values
        im = Image.fromarray(np.clip(np.rint(wide * scale), 0, 255).astype(np.uint8), "L")
    if im.mode in ("RGBA", "LA", "PA", "La", "RGBa") or (
        im.mode in ("P", "L", "RGB") and "transparency" in im.info
    ):
        rgba = im.convert("RGBA")
        white = Image.new("RGBA", rgba.size, (255, 255, 255, 255))
        return Image.alpha_composite(white, rgba).convert("RGB")
    return im if im.mode == "RGB" else im.convert("RGB")


def _shorter_side_then_crop(img: Image.Image, size: tuple[int, int], crop_pct: float = 1.0) -> Image.Image:
    """Scale so the image covers `size` (h, w) / crop_pct, keeping the aspect ratio, then centre-crop.

    For a square target this is torchvision's evaluation convention (Resize(s / crop_pct) +
    CenterCrop(s)).
    """
    th, tw = size
    w, h = img.size
    if (w, h) == (tw, th) and crop_pct == 1.0:
        return img
    scale = max(th / h, tw / w) / crop_pct
    # Resample only the centred region that the crop keeps (Pillow's `box`): the same result as
    # resizing the whole image and then cropping, without computing pixels that are thrown away.
    # Pillow's filters antialias when shrinking (the filter widens with the scale).
    bw, bh = min(w, tw / scale), min(h, th / scale)  # min: float rounding must not leave the image
    left, top = max(0.0, (w - bw) / 2), max(0.0, (h - bh) / 2)
    return img.resize((tw, th), Image.BICUBIC, box=(left, top, left + bw, top + bh))


def fit(img: Image.Image, plan: SizePlan | None, rel: str = "the image") -> np.ndarray:
    """An upright RGB image brought to the plan's size, as uint8 (H, W, 3); None keeps its size.

    Raises:
        ImageError: the image has another size than a no-resize plan says.
    """
    if plan is not None:
        h, w = plan.size
        if plan.resize:
            img = _shorter_side_then_crop(img, plan.size, plan.crop_pct)
        elif img.size != (w, h):
            raise ImageError(f"{rel} is {img.size[1]}x{img.size[0]}, expected {h}x{w} like the other "
                             "images; the folder changed while it was being read. Run again.")
    return np.asarray(img, dtype=np.uint8)


def decode(path: Path, rel: str, plan: SizePlan | None, max_pixels: int | None = None) -> np.ndarray:
    """Decode the file at `path` to a uint8 (H, W, 3) array of the plan's size.

    The one decoder of image files: the dataset cache and `predict` (data/preprocess.py) both
    call it, so a file gives the same pixels in both.

    Args:
        path: the file.
        rel: its name for error messages (relative to the dataset source).
        plan: the stored size; None keeps the decoded size.
        max_pixels: refuse files whose header claims more pixels (see `open_image`); None:
            `max_image_pixels()`.

    Raises:
        ImageTooLargeError: more than `max_pixels` pixels.
        ImageError: the file is not a readable image, or has another size than a no-resize plan says.
    """
    max_pixels = max_image_pixels(max_pixels)
    with open_image(path, rel, max_pixels) as im:
        try:
            if plan is not None and plan.resize and im.format == "JPEG":
                # Let libjpeg decode at 1/2, 1/4 or 1/8 scale while the result still covers the
                # target: a 12-megapixel photo is never decoded in full to be shrunk to 256 px.
                side = math.ceil(max(plan.size) / plan.crop_pct)
                im.draft("RGB", (side, side))
            im.load()
            img = to_rgb(im)
        except (Image.DecompressionBombError,  # an animation frame larger than its header
                UnidentifiedImageError, OSError, ValueError, SyntaxError) as err:
            raise decode_failure(path, rel, max_pixels, err) from err
    return fit(img, plan, rel)
