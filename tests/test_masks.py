"""Pixel masks (lost_reg.masks, lost_reg.refine): COCO RLE through pycocotools, polygons rasterised back by the
tools that read them (pycocotools for COCO's corner convention, cv2.fillPoly as Ultralytics and supervision do),
Label Studio's brush RLE against label-studio-sdk's own encoder and decoder (its venv), and the ``none``
refiner against the detection's box."""

from __future__ import annotations

import json
import subprocess
from dataclasses import replace

import cv2
import numpy as np
import pytest
from pycocotools import mask as mask_utils

from lost_reg import masks
from lost_reg.images import prepare
from lost_reg.methods import Lost, TokenCut
from lost_reg.pipeline import Localizer, with_masks
from lost_reg.refine import REFINERS, refine_masks

from .conftest import ROOT, external_tool, tiny_backbone

LABEL_STUDIO_PYTHON = ROOT / ".venv-labelstudio" / "bin" / "python"


def shapes() -> list[np.ndarray]:
    """Masks with what outlines are made of: curves, a diagonal staircase, thin parts, a hole, a speck, edges."""
    ellipse = np.zeros((60, 80), np.uint8)
    cv2.ellipse(ellipse, (40, 30), (25, 12), 20, 0, 360, 1, -1)
    ellipse[5:8, 5:50] = 1  # a second part, 3 pixels thin
    holed = np.zeros((120, 90), np.uint8)
    holed[10:100, 5:85] = 1
    holed[40:60, 30:50] = 0  # a hole
    holed[110, 2] = 1  # a speck
    stairs = np.tril(np.ones((40, 40), np.uint8))  # a diagonal staircase touching three borders
    corner = np.zeros((30, 30), np.uint8)
    corner[0, 29] = 1  # one pixel in a corner
    return [m.astype(bool) for m in (ellipse, holed, stairs, corner, np.ones((7, 9), bool))]


def iou(a: np.ndarray, b: np.ndarray) -> float:
    return float((a & b).sum() / max((a | b).sum(), 1))


def filled(mask: np.ndarray) -> np.ndarray:
    """The mask with its holes filled and its specks dropped: what polygons can carry."""
    out = np.zeros(mask.shape, np.uint8)
    contours, _ = cv2.findContours(masks.without_specks(mask).astype(np.uint8), cv2.RETR_EXTERNAL,
                                   cv2.CHAIN_APPROX_NONE)
    cv2.drawContours(out, contours, -1, 1, -1)
    return out.astype(bool)


def test_rle_round_trips_through_pycocotools_and_json():
    rng = np.random.default_rng(0)
    cases = [*shapes(), rng.random((33, 47)) < 0.5, np.zeros((5, 6), bool), np.ones((1, 1), bool)]
    for mask in cases:
        rle = json.loads(json.dumps(masks.encode(mask)))  # through JSON: counts stay text
        assert rle["size"] == list(mask.shape) and isinstance(rle["counts"], str)
        coco = {"size": rle["size"], "counts": rle["counts"].encode()}
        np.testing.assert_array_equal(mask_utils.decode(coco).astype(bool), mask)  # pycocotools' own reading
        np.testing.assert_array_equal(masks.decode(rle), mask)
        assert masks.area(rle) == mask.sum() == mask_utils.area(coco)
        assert masks.check(rle, mask.shape) is rle


def test_runs_read_as_pycocotools_writes_them():
    rng = np.random.default_rng(1)
    for _ in range(200):
        h, w = rng.integers(1, 50, 2)
        mask = rng.random((h, w)) < rng.random()
        runs = masks.counts(masks.encode(mask)["counts"])
        np.testing.assert_array_equal(np.repeat(np.arange(len(runs)) % 2, runs).reshape(w, h).T, mask)


@pytest.mark.parametrize(("rle", "problem"), [
    ({"size": [2, 2], "counts": "!!"}, "characters outside"),
    ({"size": [2, 2], "counts": "0a"}, "middle of a number"),
    ({"size": [2, 2], "counts": "1ooooooo1"}, "more than 6 characters"),
    ({"size": [2, 2], "counts": "3"}, "cover 3 pixels"),
    ({"size": [2, 2], "counts": "5"}, "cover 5 pixels"),  # runs past the buffer: pycocotools would write there
    ({"size": [2, 2], "counts": "4@"}, "negative run"),
    ({"size": [2, 2], "counts": 4}, "compressed string"),
    ({"size": [0, 2], "counts": ""}, "positive integers"),
    ({"size": [2, 2, 1], "counts": "4"}, "height, width"),
    ({"counts": "4"}, "is {"),
])
def test_check_refuses_what_pycocotools_would_misread(rle, problem):
    with pytest.raises(ValueError, match=problem):
        masks.check(rle)


def test_check_wants_the_images_size():
    rle = masks.encode(np.ones((4, 6), bool))
    masks.check(rle, (4, 6))
    with pytest.raises(ValueError, match=r"not the image's \[height, width\] \[6, 4\]"):
        masks.check(rle, (6, 4))


def test_corner_polygons_rasterise_back_in_pycocotools():
    for mask in shapes():
        polygons = masks.coco_polygons(mask)
        assert all(len(p) >= 6 and len(p) % 2 == 0 for p in polygons)
        back = masks.decode(masks.from_polygons(polygons, *mask.shape))
        np.testing.assert_array_equal(back, filled(mask))  # exact: vertices on pixel corners
        assert all(float(v).is_integer() for p in polygons for v in p)  # the outline's own corners, no cut ones
        assert all(0 <= v <= mask.shape[1] for p in polygons for v in p[0::2])
        assert all(0 <= v <= mask.shape[0] for p in polygons for v in p[1::2])
    ellipse, holed = shapes()[:2]
    parts = masks.polygons(ellipse)
    assert len(parts) == 2 and cv2.contourArea(parts[0].astype(np.float32)) > cv2.contourArea(parts[1].astype(np.float32))
    assert len(masks.polygons(holed)) == 1  # the speck is dropped, the hole filled
    assert masks.polygons(np.zeros((4, 4), bool)) == []


def test_centre_polygons_fill_back_as_ultralytics_and_supervision_fill_them():
    for mask in shapes():
        back = np.zeros(mask.shape, np.uint8)
        cv2.fillPoly(back, [np.round(p).astype(np.int32) for p in masks.polygons(mask, "centres")], 1)
        np.testing.assert_array_equal(back.astype(bool), filled(mask))
    corner = masks.polygons(shapes()[3], "centres")[0]
    assert corner.tolist() == [[29, 0]] * 3  # one pixel: the fewest points a polygon takes


def test_one_outline_joins_the_parts():
    ellipse = shapes()[0]
    outline = masks.one_outline(masks.polygons(ellipse, "centres"))
    back = np.zeros(ellipse.shape, np.uint8)
    cv2.fillPoly(back, [np.round(outline).astype(np.int32)], 1)
    back = back.astype(bool)
    assert (back & ellipse).sum() == ellipse.sum()  # both parts, whole
    assert iou(back, ellipse) > 0.98  # plus the thin path between them
    assert masks.one_outline([]).shape == (0, 2)


def test_brush_rle_is_label_studios_byte_for_byte(tmp_path):
    """label-studio-sdk (Label Studio's venv) encodes the same masks to the same bytes and decodes ours back."""
    python = external_tool("LOST_REG_LABEL_STUDIO_PYTHON", LABEL_STUDIO_PYTHON, "Label Studio (label-studio==1.23.2)")
    long_run = np.ones((300, 400), bool)
    long_run[0, 0] = False  # a run of over 65,536 values, which the format splits
    cases = [*shapes(), np.random.default_rng(2).random((20, 30)) < 0.5, long_run]
    (tmp_path / "masks.json").write_text(json.dumps(
        {"masks": [m.astype(int).tolist() for m in cases], "ours": [masks.brush_rle(m) for m in cases]}))
    script = """
import json, sys
import numpy as np
from label_studio_sdk.converter.brush import decode_rle, mask2rle
d = json.load(open(sys.argv[1]))
out = []
for m, ours in zip(d["masks"], d["ours"]):
    m = np.array(m, np.uint8)
    back = decode_rle(bytes(ours)).reshape(*m.shape, 4)
    out.append({"same_bytes": mask2rle(m * 255) == ours, "decoded": bool((back[..., 3] == m * 255).all())})
print(json.dumps(out))
"""
    done = subprocess.run([str(python), "-c", script, str(tmp_path / "masks.json")], capture_output=True, text=True,
                          timeout=300)
    assert done.returncode == 0, done.stderr[-3000:]
    assert json.loads(done.stdout) == [{"same_bytes": True, "decoded": True}] * len(cases)


@pytest.mark.parametrize(("size", "prep", "max_side"), [
    ((150, 100), "pad", None), ((150, 100), "resize", None), ((333, 250), "resize", 112), ((333, 250), "pad", 200),
    ((29, 60), "pad", None),
])
def test_none_refiner_is_the_boxs_patches_in_original_pixels(size, prep, max_side):
    width, height = size
    rng = np.random.default_rng(width)
    image = rng.integers(0, 255, (height, width, 3), dtype=np.uint8)
    prepared = prepare(image, 14, max_side, prep)
    rows, cols = prepared.pixels.shape[1] // 14, prepared.pixels.shape[2] // 14
    assert "none" in REFINERS
    np.testing.assert_array_equal(refine_masks(prepared, [np.ones((rows, cols), bool)], 14, "none")[0],
                                  np.ones((height, width), bool))
    for _ in range(20):
        grid = np.zeros((rows, cols), bool)
        r0, c0 = rng.integers(0, rows), rng.integers(0, cols)
        grid[r0:rng.integers(r0 + 1, rows + 1), c0:rng.integers(c0 + 1, cols + 1)] = True
        mask = refine_masks(prepared, [grid], 14, "none")[0]
        assert mask.shape == (height, width) and mask.dtype == bool
        r, c = np.flatnonzero(grid.any(1)), np.flatnonzero(grid.any(0))
        vh, vw = prepared.valid
        box = prepared.to_original((c[0] * 14, r[0] * 14, min((c[-1] + 1) * 14, vw), min((r[-1] + 1) * 14, vh)))
        if box[2] > box[0] and box[3] > box[1]:
            assert masks.box(masks.encode(mask)) == box  # what detection() maps the grid box to
        if prepared.scale == (1.0, 1.0):  # no resize: each patch's 14 x 14 square, cut at the image's edge
            np.testing.assert_array_equal(mask, np.kron(grid, np.ones((14, 14), bool))[:height, :width])
        else:  # nearest neighbour: each pixel's centre is in its patch, give or take a pixel of rounding
            sx, sy = prepared.scale
            ys, xs = np.nonzero(mask)
            near = np.zeros(len(ys), bool)
            for dy in (-sy, 0, sy):
                for dx in (-sx, 0, sx):
                    near |= grid[np.clip((ys + 0.5) * sy + dy, 0, vh - 1).astype(int) // 14,
                                 np.clip((xs + 0.5) * sx + dx, 0, vw - 1).astype(int) // 14]
            assert near.all()
    with pytest.raises(ValueError, match="unknown refiner 'crf2'"):
        refine_masks(prepared, [grid], 14, "crf2")


@pytest.mark.parametrize("method", [Lost(), TokenCut()])
def test_localizer_masks_match_their_boxes(method):
    localizer = Localizer(tiny_backbone(), method, prep="resize", max_side=140, device="cpu")
    rng = np.random.default_rng(3)
    images = [rng.integers(0, 255, (h, w, 3), dtype=np.uint8) for h, w in ((120, 200), (120, 200), (90, 70))]
    for image in images:
        prepared = [localizer.prepare(image)]
        plain = localizer.localize_prepared_multi(prepared, 3)[0]
        found = localizer.localize_prepared_multi(prepared, 3, refine="none")[0]
        assert [d.box for d in found] == [d.box for d in plain] and all(d.segmentation is None for d in plain)
        for d in found:
            assert d.segmentation["size"] == [image.shape[0], image.shape[1]]
            assert masks.box(d.segmentation) == d.box
            grid = d.result.mask
            assert masks.area(d.segmentation) == refine_masks(prepared[0], [grid], 14, "none")[0].sum() > 0
    assert localizer.timings.masks > 0
    read_back = replace(found[0], result=None, segmentation=None)  # as a detection loaded from a file is
    with pytest.raises(ValueError, match="no grid mask"):
        with_masks(prepared[0], [found[0], read_back], 14, "none")
