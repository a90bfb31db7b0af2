"""From a method's mask on the patch grid to a mask in the image's own pixels, chosen by name from one table.

A refiner takes the prepared image (its pixels on the network input, and how they map back to the
original) and the object's patches (bool [rows, cols], :attr:`~lost_reg.methods.Discovery.mask`) and
returns a bool [height, width] mask in original pixels: filled, and never outside the image.

``none``
    Each patch's square, clipped to the image and mapped back as the detection's box is
    (:meth:`~lost_reg.images.Prepared.to_original`): the mask's box is the detection's box.
"""

from __future__ import annotations

from collections.abc import Callable

import numpy as np

from .images import Prepared

Refiner = Callable[[Prepared, np.ndarray, int], np.ndarray]
"""``(prepared, grid_mask, patch_size) -> bool [height, width]`` in original pixels."""


def cell_edges(prepared: Prepared, cells: int, patch_size: int, axis: int) -> np.ndarray:
    """Where the grid's cell boundaries fall in original pixels along ``axis`` (0: rows, 1: columns), rounded
    and clipped as :meth:`~lost_reg.images.Prepared.to_original` maps a box: ``cells + 1`` edges."""
    valid, size, scale = prepared.valid[axis], prepared.size[1 - axis], prepared.scale[1 - axis]
    return np.array([min(size, int(round(min(k * patch_size, valid) / scale))) for k in range(cells + 1)])


def patches(prepared: Prepared, grid_mask: np.ndarray, patch_size: int) -> np.ndarray:
    """The ``none`` refiner: every pixel takes its patch's value (nearest neighbour), the padding cut off."""
    rows, cols = grid_mask.shape
    ys, xs = cell_edges(prepared, rows, patch_size, 0), cell_edges(prepared, cols, patch_size, 1)
    row_of = np.repeat(np.arange(rows), np.diff(ys))
    col_of = np.repeat(np.arange(cols), np.diff(xs))
    return np.ascontiguousarray(grid_mask.astype(bool)[row_of][:, col_of])


REFINERS: dict[str, Refiner] = {"none": patches}
DEFAULT_REFINE = "none"


def refine_mask(prepared: Prepared, grid_mask: np.ndarray, patch_size: int, kind: str = DEFAULT_REFINE) -> np.ndarray:
    """The object's mask in original pixels, bool [height, width], by the refiner ``kind`` (:data:`REFINERS`)."""
    if kind not in REFINERS:
        raise ValueError(f"unknown refiner {kind!r}: use one of {', '.join(REFINERS)}")
    mask = REFINERS[kind](prepared, grid_mask, patch_size)
    width, height = prepared.size
    if mask.shape != (height, width):
        raise ValueError(f"refiner {kind!r} gave a {mask.shape[1]}x{mask.shape[0]} mask for a {width}x{height} image")
    return mask
