"""From a patch-grid mask to a pixel mask in the original image: upsampled, optionally snapped to image edges.

A method's mask lives on the patch grid (14 or 16 pixels a patch). :func:`refine_masks` brings an image's masks to the
original image's pixels, picking the refiner by name from :data:`REFINERS`:

``none``       each patch's square, clipped to the image and mapped back as the detection's box is
               (:meth:`~lost_reg.images.Prepared.to_original`): blocks of whole patches, whose box is the
               detection's box.
``bilinear``   the grid map upsampled bilinearly (patch centres interpolated) and cut at 0.5: the blocks'
               corners rounded, no image read.
``guided``     the bilinear map smoothed by a guided filter (He, Sun & Tang, ECCV 2010) with the image's
               luminance as the guide, then cut at 0.5: the mask's border moves to the nearest image edge
               within about a patch. A few box filters per mask (OpenCV), whatever the mask's size.
``crf``        MaskCut's refinement (CutLER, ``maskcut/crf.py``): a fully connected CRF (Krähenbühl &
               Koltun) over the pixels with the bilinear map as unary, a Gaussian and a bilateral
               (position + colour) kernel, 10 mean-field steps, through ``pydensecrf2`` (``pip install
               pydensecrf2``); MaskCut's parameters. Where it keeps less than half of the mask (IoU < 0.5
               with it), MaskCut drops the mask; here the unrefined mask is kept instead.

The other refiners work on the network-input pixels (``prepared.pixels``' valid region: the original
image as the backbone saw it, resized or downscaled), and their result is resized to the original size
by nearest neighbour. Every mask is filled (holes closed, as MaskCut does): bool [H, W] of the original
image, never outside it. Chosen by mask AP and time (README, Multi-object discovery and masks).
"""

from __future__ import annotations

import functools
from collections.abc import Callable, Sequence
from typing import TYPE_CHECKING

import cv2
import numpy as np

if TYPE_CHECKING:
    from .images import Prepared

Refiner = Callable[[np.ndarray], Callable[[np.ndarray], np.ndarray]]
"""image uint8 [h, w, 3] → (soft mask float [h, w] in [0, 1] → bool [h, w]), on the network-input pixels: what
depends on the image alone is computed once for all its masks."""


def cell_edges(prepared: Prepared, cells: int, patch_size: int, axis: int) -> np.ndarray:
    """Where the grid's cell boundaries fall in original pixels along ``axis`` (0: rows, 1: columns), rounded
    and clipped as :meth:`~lost_reg.images.Prepared.to_original` maps a box: ``cells + 1`` edges."""
    valid, size, scale = prepared.valid[axis], prepared.size[1 - axis], prepared.scale[1 - axis]
    return np.array([min(size, int(round(min(k * patch_size, valid) / scale))) for k in range(cells + 1)])


def patches(prepared: Prepared, grid_mask: np.ndarray, patch_size: int) -> np.ndarray:
    """The ``none`` refiner: every original pixel takes its patch's value (nearest neighbour), the padding cut off."""
    rows, cols = grid_mask.shape
    ys, xs = cell_edges(prepared, rows, patch_size, 0), cell_edges(prepared, cols, patch_size, 1)
    row_of = np.repeat(np.arange(rows), np.diff(ys))
    col_of = np.repeat(np.arange(cols), np.diff(xs))
    return np.ascontiguousarray(grid_mask.astype(bool)[row_of][:, col_of])


def _grid_map(prepared: Prepared, grid: np.ndarray, patch_size: int) -> np.ndarray:
    """A [rows, cols] map bilinearly on the valid region of the network input [vh, vw] (patch centres on their
    pixels)."""
    rows, cols = grid.shape
    vh, vw = prepared.valid
    up = cv2.resize(grid.astype(np.float32), (cols * patch_size, rows * patch_size), interpolation=cv2.INTER_LINEAR)
    return up[:vh, :vw]


def fill_holes(mask: np.ndarray) -> np.ndarray:
    """The bool mask with its holes filled: what :func:`scipy.ndimage.binary_fill_holes` gives (background
    4-connected to the outside stays), by one OpenCV flood fill from a frame around it (~10× faster)."""
    h, w = mask.shape
    framed = np.zeros((h + 2, w + 2), np.uint8)
    framed[1:-1, 1:-1] = mask
    cv2.floodFill(framed, None, (0, 0), 2, flags=4)  # the outside: background reached from the frame
    return framed[1:-1, 1:-1] != 2


def _threshold(image: np.ndarray) -> Callable[[np.ndarray], np.ndarray]:
    return lambda soft: soft >= 0.5


def _box_mean(x: np.ndarray, radius: int) -> np.ndarray:
    return cv2.boxFilter(x, cv2.CV_32F, (2 * radius + 1, 2 * radius + 1), borderType=cv2.BORDER_REFLECT)


class GuidedFilter:
    """He et al.'s guided filter by a grey ``guide`` (float32 [h, w] in [0, 1]); the guide's own local means
    and variances are computed once, for every source filtered by it."""

    def __init__(self, guide: np.ndarray, radius: int, eps: float):
        self.guide, self.radius, self.eps = guide, radius, eps
        self.mean_i = _box_mean(guide, radius)
        self.var_i = _box_mean(guide * guide, radius) - self.mean_i * self.mean_i

    def __call__(self, src: np.ndarray) -> np.ndarray:
        """``src`` (float32 [h, w]) filtered."""
        mean_p = _box_mean(src, self.radius)
        cov_ip = _box_mean(self.guide * src, self.radius) - self.mean_i * mean_p
        a = cov_ip / (self.var_i + self.eps)
        b = mean_p - a * self.mean_i
        return _box_mean(a, self.radius) * self.guide + _box_mean(b, self.radius)


GUIDED_RADIUS = 8
GUIDED_EPS = 1e-3


def _guided(image: np.ndarray) -> Callable[[np.ndarray], np.ndarray]:
    guide = cv2.cvtColor(image, cv2.COLOR_RGB2GRAY).astype(np.float32) / 255
    smooth = GuidedFilter(guide, GUIDED_RADIUS, GUIDED_EPS)
    return lambda soft: smooth(soft.astype(np.float32)) >= 0.5


CRF_STEPS, CRF_POS_XY, CRF_POS_W, CRF_BI_XY, CRF_BI_RGB, CRF_BI_W = 10, 3, 7, 50, 5, 10
"""MaskCut's dense CRF: mean-field steps, Gaussian kernel (σ_xy, weight), bilateral kernel (σ_xy, σ_rgb, weight)."""


def _crf(image: np.ndarray) -> Callable[[np.ndarray], np.ndarray]:
    return functools.partial(_crf_one, image)


def _crf_one(image: np.ndarray, soft: np.ndarray) -> np.ndarray:
    try:
        import pydensecrf.densecrf as dcrf
        from pydensecrf.utils import unary_from_softmax
    except ImportError as e:
        raise ImportError("the crf refiner needs pydensecrf2: pip install pydensecrf2") from e
    h, w = soft.shape
    logits = np.stack([1 - soft, soft]).astype(np.float32)
    probs = np.exp(logits) / np.exp(logits).sum(0, keepdims=True)  # MaskCut: softmax of the {0, 1} map
    crf = dcrf.DenseCRF2D(w, h, 2)
    crf.setUnaryEnergy(np.ascontiguousarray(unary_from_softmax(probs)))
    crf.addPairwiseGaussian(sxy=CRF_POS_XY, compat=CRF_POS_W)
    crf.addPairwiseBilateral(sxy=CRF_BI_XY, srgb=CRF_BI_RGB, rgbim=image, compat=CRF_BI_W)
    out = np.argmax(np.array(crf.inference(CRF_STEPS)).reshape(2, h, w), 0).astype(bool)
    hard = soft >= 0.5
    inter, union = (out & hard).sum(), (out | hard).sum()
    return out if union and inter / union >= 0.5 else hard


REFINERS: dict[str, Refiner | None] = {"none": None, "bilinear": _threshold, "guided": _guided, "crf": _crf}
"""Refiners by name; ``none`` maps the grid mask's patches straight to original pixels (:func:`patches`)."""
DEFAULT_REFINE = "guided"


def refine_masks(prepared: Prepared, grid_masks: Sequence[np.ndarray], patch_size: int,
                 kind: str = DEFAULT_REFINE) -> list[np.ndarray]:
    """bool [H, W] masks in the original image's pixels from bool [rows, cols] masks on its patch grid: the
    image is read once for all of them."""
    if kind not in REFINERS:
        raise ValueError(f"unknown refiner {kind!r}: use one of {', '.join(REFINERS)}")
    vh, vw = prepared.valid
    width, height = prepared.size
    grids = [np.asarray(m, dtype=bool) for m in grid_masks]
    for rows, cols in {g.shape for g in grids}:
        if rows * patch_size < vh or cols * patch_size < vw:
            raise ValueError(f"a {rows}x{cols} grid of {patch_size}-pixel patches does not cover {vw}x{vh} pixels")
    make = REFINERS[kind]
    if not grids:
        return []
    if make is None:
        return [fill_holes(patches(prepared, g, patch_size)) for g in grids]
    refiner = make(np.ascontiguousarray(prepared.pixels[:, :vh, :vw].permute(1, 2, 0).numpy()))
    out = []
    for g in grids:
        pixels = fill_holes(refiner(_grid_map(prepared, g, patch_size)))
        if (vw, vh) != (width, height):
            pixels = cv2.resize(pixels.astype(np.uint8), (width, height), interpolation=cv2.INTER_NEAREST).astype(bool)
        out.append(pixels)
    return out
