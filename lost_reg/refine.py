"""From a patch-grid mask to a pixel mask in the original image: upsampled, optionally snapped to image edges.

A method's mask lives on the patch grid (14 or 16 pixels a patch). :func:`refine_mask` brings it to the
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

from collections.abc import Callable
from typing import TYPE_CHECKING

import cv2
import numpy as np
from scipy import ndimage

if TYPE_CHECKING:
    from .images import Prepared

Refiner = Callable[[np.ndarray, np.ndarray], np.ndarray]
"""(image uint8 [h, w, 3], soft mask float [h, w] in [0, 1]) → bool [h, w], on the network-input pixels."""


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


def _threshold(image: np.ndarray, soft: np.ndarray) -> np.ndarray:
    return soft >= 0.5


def guided_filter(guide: np.ndarray, src: np.ndarray, radius: int, eps: float) -> np.ndarray:
    """He et al.'s guided filter of ``src`` by a grey ``guide`` (both float32 [h, w], guide in [0, 1])."""
    size = (2 * radius + 1, 2 * radius + 1)

    def mean(x: np.ndarray) -> np.ndarray:
        return cv2.boxFilter(x, cv2.CV_32F, size, borderType=cv2.BORDER_REFLECT)

    mean_i, mean_p = mean(guide), mean(src)
    cov_ip = mean(guide * src) - mean_i * mean_p
    var_i = mean(guide * guide) - mean_i * mean_i
    a = cov_ip / (var_i + eps)
    b = mean_p - a * mean_i
    return mean(a) * guide + mean(b)


GUIDED_RADIUS = 8
GUIDED_EPS = 1e-3


def _guided(image: np.ndarray, soft: np.ndarray) -> np.ndarray:
    guide = cv2.cvtColor(image, cv2.COLOR_RGB2GRAY).astype(np.float32) / 255
    return guided_filter(guide, soft.astype(np.float32), GUIDED_RADIUS, GUIDED_EPS) >= 0.5


CRF_STEPS, CRF_POS_XY, CRF_POS_W, CRF_BI_XY, CRF_BI_RGB, CRF_BI_W = 10, 3, 7, 50, 5, 10
"""MaskCut's dense CRF: mean-field steps, Gaussian kernel (σ_xy, weight), bilateral kernel (σ_xy, σ_rgb, weight)."""


def _crf(image: np.ndarray, soft: np.ndarray) -> np.ndarray:
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
    crf.addPairwiseBilateral(sxy=CRF_BI_XY, srgb=CRF_BI_RGB, rgbim=np.ascontiguousarray(image), compat=CRF_BI_W)
    out = np.argmax(np.array(crf.inference(CRF_STEPS)).reshape(2, h, w), 0).astype(bool)
    hard = soft >= 0.5
    inter, union = (out & hard).sum(), (out | hard).sum()
    return out if union and inter / union >= 0.5 else hard


REFINERS: dict[str, Refiner | None] = {"none": None, "bilinear": _threshold, "guided": _guided, "crf": _crf}
"""Refiners by name; ``none`` maps the grid mask's patches straight to original pixels (:func:`patches`)."""
DEFAULT_REFINE = "guided"


def refine_mask(prepared: Prepared, grid_mask: np.ndarray, patch_size: int, kind: str = DEFAULT_REFINE,
                soft: np.ndarray | None = None) -> np.ndarray:
    """bool [H, W] in the original image's pixels from a bool [rows, cols] mask on the patch grid.

    ``soft`` (float [rows, cols] in [0, 1], optional) is a soft version of the mask that the refiners other
    than ``none`` upsample instead of the boolean one (e.g. each patch's similarity to the object).
    """
    if kind not in REFINERS:
        raise ValueError(f"unknown refiner {kind!r}: use one of {', '.join(REFINERS)}")
    grid = np.asarray(grid_mask, dtype=bool)
    vh, vw = prepared.valid
    width, height = prepared.size
    rows, cols = grid.shape
    if rows * patch_size < vh or cols * patch_size < vw:
        raise ValueError(f"a {rows}x{cols} grid of {patch_size}-pixel patches does not cover {vw}x{vh} pixels")
    refiner = REFINERS[kind]
    if refiner is None:
        return ndimage.binary_fill_holes(patches(prepared, grid, patch_size))
    image = np.ascontiguousarray(prepared.pixels[:, :vh, :vw].permute(1, 2, 0).numpy())
    source = grid if soft is None else np.clip(np.asarray(soft, np.float32), 0, 1)
    pixels = ndimage.binary_fill_holes(refiner(image, _grid_map(prepared, source, patch_size)))
    if (vw, vh) != (width, height):
        pixels = cv2.resize(pixels.astype(np.uint8), (width, height), interpolation=cv2.INTER_NEAREST).astype(bool)
    return pixels
