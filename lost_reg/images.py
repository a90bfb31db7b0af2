"""Image decoding and pre-processing: RGB, optional down-scaling, then onto the patch grid.

Two preparations (:data:`PREPS`) bring an image onto a whole number of patches:
``pad``     as in LOST and TokenCut: no resize, zero-padding bottom/right to a multiple of the
            patch size. Padding is zero *after* normalisation (the mean colour), as in the
            reference. A partly padded last row or column is unlike every real patch, so its
            patches can look "object-like" (README, Preparation).
``resize``  each side scaled to the nearest multiple of the patch size (at most half a patch
            away), so no patch holds padding; boxes are mapped back per axis.
Decoding keeps the work that needs a whole image (EXIF orientation, colour conversion) on the
CPU; normalisation happens later on the device (see :mod:`lost_reg.pipeline`). The decoders and the fit
onto the grid are NumPy code in :mod:`lost_reg.decoding` (what decoding processes run); this module adds
the torch side.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from .decoding import (  # noqa: F401 (this module's API: decoding lives where no torch is imported)
    MAX_PIXELS, PREPS, Fitted, check_header, check_pixels, decode_image, fit, grid_size, header_size,
)


@dataclass
class Prepared:
    """One image ready for batching: uint8 pixels on the patch grid, and how to map back."""

    pixels: torch.Tensor
    """uint8 [3, Hp, Wp]: the (resized) image at top-left, zeros in the padding."""
    valid: tuple[int, int]
    """(height, width) of the image inside ``pixels``."""
    size: tuple[int, int]
    """(width, height) of the original image."""

    @classmethod
    def of(cls, fitted: Fitted) -> Prepared:
        """A decoding process's NumPy answer as a Prepared image (no copy)."""
        return cls(pixels=torch.from_numpy(fitted.pixels), valid=fitted.valid, size=fitted.size)

    @property
    def scale(self) -> tuple[float, float]:
        """Network-input pixels per original pixel, (x, y): (1.0, 1.0) when neither resized nor padded away."""
        return self.valid[1] / self.size[0], self.valid[0] / self.size[1]

    def to_original(self, box: tuple[int, int, int, int]) -> tuple[int, int, int, int]:
        """A box (x0, y0, x1, y1) in network-input pixels → original pixels, clipped to the image."""
        (sx, sy), (w, h) = self.scale, self.size
        x0, y0, x1, y1 = box
        return int(round(x0 / sx)), int(round(y0 / sy)), min(w, int(round(x1 / sx))), min(h, int(round(y1 / sy)))


def prepare(image: np.ndarray, patch_size: int, max_side: int | None = None, prep: str = "pad",
            name: str = "image") -> Prepared:
    """Resize (past ``max_side``; for ``resize`` onto the grid) and pad an RGB uint8 image to the patch grid
    (:func:`~lost_reg.decoding.fit`; :class:`ImageTooSmall` when it is smaller than one patch)."""
    return Prepared.of(fit(image, patch_size, max_side, prep, name=name))


def read_image(source: str | Path | bytes, name: str, patch_size: int, max_side: int | None = None,
               prep: str = "pad", max_pixels: int | None = None) -> Prepared:
    """An image file (or its bytes) decoded and prepared in this process: the ray engine's decoding tasks; the loop,
    the token analyses and the service decode in killable processes (:class:`~lost_reg.decoders.DecodePool`)."""
    return prepare(decode_image(source, name=name, max_pixels=max_pixels), patch_size, max_side, prep, name=name)


def normalize(pixels: torch.Tensor, valid: list[tuple[int, int]], mean: tuple, std: tuple) -> torch.Tensor:
    """Float [B, 3, Hp, Wp] from uint8 pixels: ImageNet-style normalisation, padding set to zero."""
    m, s = (torch.tensor(v, device=pixels.device).view(1, 3, 1, 1) for v in (mean, std))
    x = (pixels.float().div_(255) - m) / s
    vh, vw = torch.tensor(valid, device=x.device).view(-1, 2, 1, 1, 1).unbind(1)  # each [B, 1, 1, 1]
    rows, cols = (torch.arange(n, device=x.device) for n in x.shape[-2:])
    return x * ((rows.view(-1, 1) < vh) & (cols < vw))
