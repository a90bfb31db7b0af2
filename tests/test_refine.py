"""Patch-grid masks to pixel masks (lost_reg/refine.py): shapes, clipping, filling, and edges found."""

from __future__ import annotations

import importlib.util

import numpy as np
import pytest
from scipy import ndimage

from lost_reg.images import prepare
from lost_reg.refine import DEFAULT_REFINE, REFINERS, fill_holes, refine_masks

KINDS = [k for k in REFINERS if k != "crf" or importlib.util.find_spec("pydensecrf")]


def step_image(width: int = 140, height: int = 98, edge: int = 61) -> np.ndarray:
    """RGB uint8: dark left of column ``edge``, bright from it on (with a little texture)."""
    rng = np.random.default_rng(0)
    image = np.full((height, width, 3), 40, np.uint8)
    image[:, edge:] = 210
    return (image.astype(int) + rng.integers(-5, 6, image.shape)).clip(0, 255).astype(np.uint8)


@pytest.mark.parametrize("kind", KINDS)
@pytest.mark.parametrize("prep, max_side, size", [("resize", None, (150, 101)), ("pad", None, (150, 101)),
                                                  ("resize", 56, (300, 203)), ("pad", 70, (97, 260))])
def test_every_refiner_gives_a_filled_mask_of_the_original_size(kind, prep, max_side, size):
    width, height = size
    image = step_image(width, height, edge=width // 2)
    p = prepare(image, 14, max_side, prep)
    rows, cols = p.pixels.shape[1] // 14, p.pixels.shape[2] // 14
    grid = np.zeros((rows, cols), bool)
    grid[:, cols // 2:] = True
    grid[rows // 2, -1] = False  # a hole on the border stays a notch; inside holes are filled
    out = refine_masks(p, [grid], 14, kind)[0]
    assert out.shape == (height, width) and out.dtype == bool
    assert out[:, -3:].mean() > 0.5 and not out[:, :3].any()  # on the object's side, never beyond the image


@pytest.mark.parametrize("kind", KINDS)
def test_empty_full_and_holed_masks(kind):
    p = prepare(step_image(), 14, None, "resize")
    rows, cols = p.pixels.shape[1] // 14, p.pixels.shape[2] // 14
    empty, full = refine_masks(p, [np.zeros((rows, cols), bool), np.ones((rows, cols), bool)], 14, kind)
    assert not empty.any() and refine_masks(p, [full], 14, "none")[0].all()
    ring = np.zeros((rows, cols), bool)
    ring[1:6, 1:6] = True
    ring[3, 3] = False
    assert refine_masks(p, [ring], 14, "none")[0][3 * 14 + 7, 3 * 14 + 7]  # the hole is filled


def test_the_default_refiner_moves_a_patch_border_to_the_image_edge():
    edge = 61  # inside patch column 4 (56..69)
    image = step_image(edge=edge)
    p = prepare(image, 14, None, "pad")
    truth = np.zeros(image.shape[:2], bool)
    truth[:, edge:] = True
    grid = np.zeros((7, 10), bool)
    grid[:, 4:] = True  # the patch grid can only say "from column 56"

    def iou(m: np.ndarray) -> float:
        return (m & truth).sum() / (m | truth).sum()

    assert iou(refine_masks(p, [grid], 14, DEFAULT_REFINE)[0]) > iou(refine_masks(p, [grid], 14, "none")[0]) + 0.03
    assert iou(refine_masks(p, [grid], 14, DEFAULT_REFINE)[0]) > 0.97


def test_hole_filling_is_scipys():
    """fill_holes keeps exactly the background 4-connected to the outside, as scipy's binary_fill_holes."""
    rng = np.random.default_rng(0)
    for density in (0.3, 0.5, 0.6, 0.7):
        for shape in ((1, 1), (1, 9), (7, 5), (40, 33)):
            masks = rng.random((20, *shape)) < density
            for m in masks:
                np.testing.assert_array_equal(fill_holes(m), ndimage.binary_fill_holes(m))
    diagonal = np.array([[0, 1, 0], [1, 0, 1], [0, 1, 0]], bool)  # the centre touches the outside only diagonally
    assert fill_holes(diagonal)[1, 1]


@pytest.mark.parametrize("kind", KINDS)
def test_an_images_masks_at_once_equal_one_by_one(kind):
    p = prepare(step_image(150, 101, edge=75), 14, 56, "pad")
    rows, cols = p.pixels.shape[1] // 14, p.pixels.shape[2] // 14
    grids = np.random.default_rng(1).random((4, rows, cols)) < 0.5
    for together, alone in zip(refine_masks(p, grids, 14, kind), grids):
        np.testing.assert_array_equal(together, refine_masks(p, [alone], 14, kind)[0])


def test_bad_arguments():
    p = prepare(step_image(), 14, None, "resize")
    grid = np.zeros((7, 10), bool)
    grid[:, 5:] = True
    assert refine_masks(p, [], 14, DEFAULT_REFINE) == []  # an image with no object
    with pytest.raises(ValueError, match="unknown refiner"):
        refine_masks(p, [grid], 14, "magic")
    with pytest.raises(ValueError, match="does not cover"):
        refine_masks(p, [grid[:3]], 14, "none")
