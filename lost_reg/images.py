"""Image decoding and LOST's pre-processing: RGB, optional down-scaling, zero-padding.

As in LOST, images are not resized by default; they are padded bottom/right to a multiple of
the patch size. Padding is zero *after* normalisation (the mean colour), as in the reference.
Decoding keeps the work that needs a whole image (EXIF orientation, colour conversion) on the
CPU; normalisation happens later on the device (see :mod:`lost_reg.pipeline`).
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path

import cv2
import numpy as np
import torch

from .errors import DataError

cv2.setNumThreads(1)  # decoding runs in several worker processes already


def decode_image(source: str | Path | bytes, name: str | None = None) -> np.ndarray:
    """RGB uint8 [H, W, 3] from a file or encoded bytes.

    EXIF orientation is applied; grey, alpha, palette, CMYK and 16-bit images become 8-bit RGB.
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
    image = cv2.imdecode(data, cv2.IMREAD_COLOR)  # IMREAD_COLOR honours EXIF orientation
    if image is None:
        image = _decode_with_pillow(data, label)
    else:
        image = cv2.cvtColor(image, cv2.COLOR_BGR2RGB)
    return image


def _decode_with_pillow(data: np.ndarray, label: str) -> np.ndarray:
    """Fallback for formats OpenCV lacks (e.g. some CMYK JPEGs, GIF)."""
    import io

    from PIL import Image, ImageOps, UnidentifiedImageError

    try:
        with Image.open(io.BytesIO(data.tobytes())) as im:
            im = ImageOps.exif_transpose(im)
            if im.mode in ("I;16", "I;16B", "I"):
                im = Image.fromarray((np.asarray(im, np.float32) / 257.0).clip(0, 255).astype(np.uint8))
            return np.asarray(im.convert("RGB"))
    except UnidentifiedImageError as e:
        raise DataError(f"{label}: not a readable image (unknown or unsupported format)") from e
    except (OSError, ValueError) as e:
        raise DataError(f"{label}: not a readable image ({e})") from e


@dataclass
class Prepared:
    """One image ready for batching: uint8 pixels padded to the patch grid, and how to map back."""

    pixels: torch.Tensor
    """uint8 [3, Hp, Wp]: the (resized) image at top-left, zeros in the padding."""
    valid: tuple[int, int]
    """(height, width) of the image inside ``pixels``."""
    size: tuple[int, int]
    """(width, height) of the original image."""

    @property
    def scale(self) -> float:
        """Network-input pixels per original pixel (1.0 without --max-side)."""
        return self.valid[1] / self.size[0]


def prepare(image: np.ndarray, patch_size: int, max_side: int | None = None) -> Prepared:
    """Resize (only if ``max_side`` is exceeded) and pad an RGB uint8 image to the patch grid."""
    h, w = image.shape[:2]
    if h < 1 or w < 1:
        raise DataError(f"empty image ({w}x{h})")
    if max_side and max(h, w) > max_side:
        s = max_side / max(h, w)
        nw, nh = max(1, round(w * s)), max(1, round(h * s))
        resized = cv2.resize(image, (nw, nh), interpolation=cv2.INTER_AREA)
    else:
        resized = image
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
