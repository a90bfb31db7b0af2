"""Image decoding and pre-processing: RGB, optional down-scaling, then onto the patch grid.

Two preparations (:data:`PREPS`) bring an image onto a whole number of patches:
``pad``     as in LOST and TokenCut: no resize, zero-padding bottom/right to a multiple of the
            patch size. Padding is zero *after* normalisation (the mean colour), as in the
            reference. A partly padded last row or column is unlike every real patch, so its
            patches can look "object-like" (README, Preparation).
``resize``  each side scaled to the nearest multiple of the patch size (at most half a patch
            away), so no patch holds padding; boxes are mapped back per axis.
Decoding keeps the work that needs a whole image (EXIF orientation, colour conversion) on the
CPU; normalisation happens later on the device (see :mod:`lost_reg.pipeline`).
"""

from __future__ import annotations

import io
import math
import threading
import warnings
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import cv2
import numpy as np
import torch
from PIL import Image, ImageOps, UnidentifiedImageError

from .errors import DataError, ImageTooSmall, NotAnImage, TooManyPixels

cv2.setNumThreads(1)  # decoding runs in several worker processes already
Image.init()  # register every plugin now: ``Image.open(formats=…)`` only knows registered ones
_PIL_LIMIT = threading.Lock()
MAX_PIXELS = 40_000_000
"""Default largest image (width × height), checked from the header before decoding: a 20000×20000
PNG of 48 KB would otherwise take gigabytes."""


def header_size(source: str | Path | bytes, name: str, formats: Sequence[str] | None = None) -> tuple[int, int]:
    """(width, height) from the image header alone, nothing decoded.

    :class:`NotAnImage` when PIL knows no such format (among ``formats``, if given); DataError for a
    broken header. PIL's own decompression-bomb refusal is not the answer: the size is read anyway,
    so callers apply their own limit (:func:`check_pixels`) with their own message.
    """
    def size() -> tuple[int, int]:
        with Image.open(io.BytesIO(source) if isinstance(source, bytes) else source, formats=formats) as im:
            return im.size

    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", Image.DecompressionBombWarning)
            try:
                return size()
            except Image.DecompressionBombError:
                with _PIL_LIMIT:  # a header over PIL's limit: read just its size with the limit lifted
                    saved, Image.MAX_IMAGE_PIXELS = Image.MAX_IMAGE_PIXELS, None
                    try:
                        return size()
                    finally:
                        Image.MAX_IMAGE_PIXELS = saved
    except UnidentifiedImageError as e:
        accepted = f" in an accepted format ({', '.join(formats)})" if formats else ""
        raise NotAnImage(f"{name}: not an image{accepted}") from e
    except FileNotFoundError as e:
        raise DataError(f"{name}: cannot read ({e.strerror or e})") from e
    except (OSError, ValueError, SyntaxError, EOFError) as e:  # PIL's ways of saying "broken header"
        raise DataError(f"{name}: corrupt image header ({e})") from e


def check_pixels(width: int, height: int, max_pixels: int, name: str) -> None:
    """:class:`TooManyPixels` when ``width`` × ``height`` exceeds ``max_pixels``."""
    if width * height > max_pixels:
        raise TooManyPixels(f"{name}: {width}x{height} = {width * height:,} pixels exceeds the limit of "
                            f"{max_pixels:,} per image (--max-pixels)")


def decode_image(source: str | Path | bytes, name: str | None = None, max_pixels: int | None = None) -> np.ndarray:
    """RGB uint8 [H, W, 3] from a file or encoded bytes.

    EXIF orientation is applied; grey, alpha, palette, CMYK and 16-bit images become 8-bit RGB.
    With ``max_pixels`` the size is checked from the header first, so a decompression bomb is
    refused (:class:`TooManyPixels`) without being decoded.
    """
    label = name or (str(source) if not isinstance(source, bytes) else "<bytes>")
    if isinstance(source, bytes):
        data = np.frombuffer(source, np.uint8)
    else:
        try:
            data = np.fromfile(source, np.uint8)
        except OSError as e:
            raise DataError(f"{label}: cannot read ({e.strerror or e})") from e
    if data.size == 0:
        raise DataError(f"{label}: empty file")
    if max_pixels is not None:
        try:
            check_pixels(*header_size(data.tobytes(), label), max_pixels, label)
        except NotAnImage:
            pass  # a format only OpenCV reads: checked after decoding below (OpenCV caps it at 2**30 pixels)
    image = cv2.imdecode(data, cv2.IMREAD_COLOR)  # IMREAD_COLOR honours EXIF orientation
    if image is None:
        image = _decode_with_pillow(data, label)
    else:
        image = cv2.cvtColor(image, cv2.COLOR_BGR2RGB)
    if max_pixels is not None:
        check_pixels(image.shape[1], image.shape[0], max_pixels, label)
    return image


def _decode_with_pillow(data: np.ndarray, label: str) -> np.ndarray:
    """Fallback for formats OpenCV lacks (e.g. some CMYK JPEGs, GIF)."""
    try:
        with Image.open(io.BytesIO(data.tobytes())) as im:
            im = ImageOps.exif_transpose(im)
            if im.mode in ("I;16", "I;16B", "I"):
                im = Image.fromarray((np.asarray(im, np.float32) / 257.0).clip(0, 255).astype(np.uint8))
            return np.asarray(im.convert("RGB"))
    except UnidentifiedImageError as e:
        raise NotAnImage(f"{label}: not a readable image (unknown or unsupported format)") from e
    except (OSError, ValueError) as e:
        raise DataError(f"{label}: not a readable image ({e})") from e


PREPS = ("pad", "resize")


@dataclass
class Prepared:
    """One image ready for batching: uint8 pixels on the patch grid, and how to map back."""

    pixels: torch.Tensor
    """uint8 [3, Hp, Wp]: the (resized) image at top-left, zeros in the padding."""
    valid: tuple[int, int]
    """(height, width) of the image inside ``pixels``."""
    size: tuple[int, int]
    """(width, height) of the original image."""

    @property
    def scale(self) -> tuple[float, float]:
        """Network-input pixels per original pixel, (x, y): (1.0, 1.0) when neither resized nor padded away."""
        return self.valid[1] / self.size[0], self.valid[0] / self.size[1]

    def to_original(self, box: tuple[int, int, int, int]) -> tuple[int, int, int, int]:
        """A box (x0, y0, x1, y1) in network-input pixels → original pixels, clipped to the image."""
        (sx, sy), (w, h) = self.scale, self.size
        x0, y0, x1, y1 = box
        return int(round(x0 / sx)), int(round(y0 / sy)), min(w, int(round(x1 / sx))), min(h, int(round(y1 / sy)))


def grid_size(width: int, height: int, patch_size: int, max_side: int | None = None,
              prep: str = "pad") -> tuple[int, int]:
    """(width, height) of the image on the network input: after ``max_side``, and for ``resize``
    the nearest multiples of the patch size (halves up; at least one patch)."""
    if max_side and max(height, width) > max_side:
        s = max_side / max(height, width)
        width, height = max(1, round(width * s)), max(1, round(height * s))
    if prep == "resize":
        width, height = (max(1, math.floor(v / patch_size + 0.5)) * patch_size for v in (width, height))
    elif prep != "pad":
        raise ValueError(f"prep must be one of {', '.join(PREPS)}, got {prep!r}")
    return width, height


def prepare(image: np.ndarray, patch_size: int, max_side: int | None = None, prep: str = "pad",
            name: str = "image") -> Prepared:
    """Resize (past ``max_side``; for ``resize`` onto the grid) and pad an RGB uint8 image to the patch grid.

    :class:`ImageTooSmall` when the image (after ``max_side``) is smaller than one patch: a grid of
    one mostly padded (or stretched) patch holds nothing to find.
    """
    h, w = image.shape[:2]
    vw, vh = grid_size(w, h, patch_size, max_side)
    if min(vw, vh) < patch_size:  # checked before any resize onto the grid could stretch it
        resized = "" if (vw, vh) == (w, h) else f" (downscaled to {vw}x{vh})"
        raise ImageTooSmall(f"{name}: {w}x{h}{resized} is smaller than one {patch_size}x{patch_size} patch")
    nw, nh = grid_size(w, h, patch_size, max_side, prep)
    resized = image if (nw, nh) == (w, h) else cv2.resize(
        image, (nw, nh), interpolation=cv2.INTER_AREA if nw * nh < w * h else cv2.INTER_LINEAR)
    vh, vw = resized.shape[:2]
    ph, pw = math.ceil(vh / patch_size) * patch_size, math.ceil(vw / patch_size) * patch_size
    pixels = torch.zeros(3, ph, pw, dtype=torch.uint8)
    pixels[:, :vh, :vw] = torch.from_numpy(np.ascontiguousarray(resized)).permute(2, 0, 1)
    return Prepared(pixels=pixels, valid=(vh, vw), size=(w, h))


def normalize(pixels: torch.Tensor, valid: list[tuple[int, int]], mean: tuple, std: tuple) -> torch.Tensor:
    """Float [B, 3, Hp, Wp] from uint8 pixels: ImageNet-style normalisation, padding set to zero."""
    x = pixels.float().div_(255)
    m = torch.tensor(mean, device=x.device).view(1, 3, 1, 1)
    s = torch.tensor(std, device=x.device).view(1, 3, 1, 1)
    x = (x - m) / s
    hp, wp = x.shape[-2:]
    vh = torch.tensor([v[0] for v in valid], device=x.device).view(-1, 1, 1, 1)
    vw = torch.tensor([v[1] for v in valid], device=x.device).view(-1, 1, 1, 1)
    inside = (torch.arange(hp, device=x.device).view(1, 1, -1, 1) < vh) & (
        torch.arange(wp, device=x.device).view(1, 1, 1, -1) < vw
    )
    return x * inside
