"""Pixel masks as the annotation tools write them: COCO run-length encoding, polygons, Label Studio's brush RLE.

A mask is a bool [height, width] array in an image's original pixels. Its portable form is COCO's compressed
RLE, ``{"size": [height, width], "counts": str}`` (pycocotools encodes, decodes and measures it); the
polygons (OpenCV's ``findContours``) and Label Studio's brush RLE are made from it for the formats that
want them.

Polygons come in two conventions, because the tools rasterise them in two ways:

``corners`` (COCO, Label Studio, CVAT)
    Vertices on pixel corners: pixel (x, y) is the square [x, x + 1) × [y, y + 1), so a polygon is the exact
    outline of its pixels and pycocotools rasterises it back to them. Traced on the mask upsampled twice and
    grown by one sample right and down, where each pixel's closed square is a block of samples.
``centres`` (YOLO: Ultralytics and supervision fill polygons with ``cv2.fillPoly``)
    Vertices on the centres of the outline's pixels, which ``cv2.fillPoly`` fills back to them.

Polygons carry no holes (a hole is filled: use RLE for exact masks) and drop specks: parts under
:data:`SPECK` of the largest part, which is always kept.
"""

from __future__ import annotations

from typing import Any

import cv2
import numpy as np
from pycocotools import mask as mask_utils
from scipy.spatial import cKDTree

RLE = dict[str, Any]
"""COCO compressed RLE: ``{"size": [height, width], "counts": str}``."""
SPECK = 0.01
"""A part of a mask smaller than this share of its largest part is left out of its polygons."""
CONVENTIONS = ("corners", "centres")


# ------------------------------------------------------------------------------------------- COCO RLE


def encode(mask: np.ndarray) -> RLE:
    """A bool [height, width] mask as COCO compressed RLE (counts as text, ready for JSON)."""
    rle = mask_utils.encode(np.asfortranarray(mask, dtype=np.uint8))
    return {"size": [int(v) for v in rle["size"]], "counts": rle["counts"].decode("ascii")}


def decode(rle: RLE) -> np.ndarray:
    """bool [height, width] from COCO RLE (checked first: pycocotools itself trusts its input)."""
    check(rle)
    return mask_utils.decode(_coco(rle)).astype(bool)


def area(rle: RLE) -> int:
    """The mask's pixel count."""
    return int(mask_utils.area(_coco(rle)))


def box(rle: RLE) -> tuple[int, int, int, int] | None:
    """The mask's box (x0, y0, x1, y1), max exclusive, or None when it is empty."""
    if area(rle) == 0:
        return None
    x, y, w, h = (int(round(v)) for v in mask_utils.toBbox(_coco(rle)))
    return x, y, x + w, y + h


def _coco(rle: RLE) -> dict:
    return {"size": list(rle["size"]), "counts": rle["counts"].encode("ascii") if isinstance(rle["counts"], str)
            else rle["counts"]}


def counts(text: str) -> np.ndarray:
    """The run lengths of a COCO compressed RLE string (ValueError for anything pycocotools would misread).

    pycocotools' ``rleFrString`` reads any bytes: a character outside ``0``…``o``, a number of more than six
    characters or a negative run gives runs that overflow its decoding buffer. So every string from outside
    is read here first: 6 bits per character, 5 of value, the 6th "more follows"; the last character's 5th
    bit is the sign; from the fourth run on, each is stored as its difference to the run two before.
    """
    c = np.frombuffer(text.encode("ascii", "replace"), np.uint8).astype(np.int64) - 48
    if c.size == 0:
        return np.zeros(0, np.int64)
    if ((c < 0) | (c > 63)).any():
        raise ValueError("RLE counts hold characters outside COCO's '0'…'o'")
    more = (c & 0x20) != 0
    if more[-1]:
        raise ValueError("RLE counts end in the middle of a number")
    ends = np.flatnonzero(~more)
    starts = np.r_[0, ends[:-1] + 1]
    lengths = ends - starts + 1
    if lengths.max() > 6:
        raise ValueError("RLE counts hold a number of more than 6 characters")
    group = np.repeat(np.arange(len(ends)), lengths)
    shift = 5 * (np.arange(c.size) - starts[group])
    x = np.bincount(group, weights=(c & 0x1F) << shift, minlength=len(ends)).astype(np.int64)
    negative = (c[ends] & 0x10) != 0
    x[negative] -= np.int64(1) << (5 * lengths[negative])
    runs = x.copy()
    runs[2::2] = np.cumsum(x[2::2])
    runs[1::2] = np.cumsum(x[1::2])
    return runs


def check(rle: Any, size: tuple[int, int] | None = None) -> RLE:
    """``rle`` if it is a COCO compressed RLE of a ``size`` (height, width) mask whose runs cover it exactly,
    else ValueError; safe for input from outside (see :func:`counts`)."""
    if not isinstance(rle, dict) or set(rle) != {"size", "counts"}:
        raise ValueError('an RLE is {"size": [height, width], "counts": str}')
    shape, text = rle["size"], rle["counts"]
    if not (isinstance(shape, list | tuple) and len(shape) == 2 and all(type(v) is int and v > 0 for v in shape)):
        raise ValueError("RLE size must be [height, width], two positive integers")
    if size is not None and tuple(shape) != tuple(size):
        raise ValueError(f"RLE size {list(shape)} is not the image's [height, width] {list(size)}")
    if not isinstance(text, str):
        raise ValueError("RLE counts must be COCO's compressed string")
    runs = counts(text)
    if (runs < 0).any():
        raise ValueError("RLE counts hold a negative run")
    if int(runs.sum()) != shape[0] * shape[1]:
        raise ValueError(f"RLE runs cover {int(runs.sum())} pixels, not the {shape[0]}×{shape[1]} mask's")
    return rle


def from_polygons(polygons: list[list[float]], height: int, width: int) -> RLE:
    """The mask pycocotools rasterises from COCO polygons (``[x0, y0, x1, y1, …]`` flat lists, corner convention)."""
    rle = mask_utils.merge(mask_utils.frPyObjects([list(map(float, p)) for p in polygons], height, width))
    return {"size": [int(v) for v in rle["size"]], "counts": rle["counts"].decode("ascii")}


# ------------------------------------------------------------------------------------------- polygons


def without_specks(mask: np.ndarray, speck: float = SPECK) -> np.ndarray:
    """The mask without its parts (8-connected) smaller than ``speck`` of its largest."""
    n, labels, stats, _ = cv2.connectedComponentsWithStats(mask.astype(np.uint8), connectivity=8)
    if n <= 2:
        return mask.astype(bool)
    sizes = stats[1:, cv2.CC_STAT_AREA]
    keep = np.r_[False, sizes >= speck * sizes.max()]
    return keep[labels]


def polygons(mask: np.ndarray, convention: str = "corners", speck: float = SPECK) -> list[np.ndarray]:
    """The outlines of the mask's parts, largest first, as float [n, 2] (x, y) arrays in ``convention``
    (module doc); holes filled, specks dropped; an empty mask has none. A ``centres`` outline of a part one
    pixel thin has its points repeated up to three, the fewest a polygon takes."""
    if convention not in CONVENTIONS:
        raise ValueError(f"convention must be one of {', '.join(CONVENTIONS)}")
    clean = without_specks(mask, speck)
    rows, cols = np.flatnonzero(clean.any(1)), np.flatnonzero(clean.any(0))
    if not rows.size:
        return []
    y0, y1, x0, x1 = rows[0], rows[-1] + 1, cols[0], cols[-1] + 1
    grid, scale = clean[y0:y1, x0:x1].astype(np.uint8), 1.0
    if convention == "corners":  # upsampled twice, each sample OR-ed into the one right and the one below
        grid, scale = np.pad(grid.repeat(2, 0).repeat(2, 1), ((0, 1), (0, 1))), 0.5
        grid[1:] |= grid[:-1]
        grid[:, 1:] |= grid[:, :-1]
    found = cv2.findContours(grid, cv2.RETR_EXTERNAL, cv2.CHAIN_APPROX_SIMPLE)[0]
    outlines = []
    for contour in found:
        points = contour.reshape(-1, 2).astype(np.float64) * scale + (x0, y0)
        if convention == "corners":
            points = _square_corners(points)
        if len(points) < 3:
            points = np.concatenate([points, points[-1:].repeat(3 - len(points), 0)])
        outlines.append(points)
    return sorted(outlines, key=lambda p: -abs(cv2.contourArea(p.astype(np.float32))))


def _square_corners(points: np.ndarray) -> np.ndarray:
    """The outline with its concave corners square: the 8-connected trace on the doubled grid cuts each one by
    a half-pixel diagonal (two points, each half-way along one axis); both become the corner they cut."""
    whole = np.flatnonzero((points % 1 == 0).all(1))
    if not len(whole):
        return points
    points = np.roll(points, -whole[0], axis=0)  # start on a true corner, so no cut pair wraps around
    half = points % 1 != 0
    out, i, n = [], 0, len(points)
    while i < n:
        a = points[i]
        if (i + 1 < n and half[i].sum() == 1 and half[i + 1].sum() == 1 and (half[i] != half[i + 1]).all()
                and (np.abs(points[i + 1] - a) == 0.5).all()):
            out.append((a[0], points[i + 1][1]) if half[i][1] else (points[i + 1][0], a[1]))
            i += 2
        else:
            out.append(tuple(a))
            i += 1
    return np.array(out, dtype=np.float64)


def coco_polygons(mask: np.ndarray, speck: float = SPECK) -> list[list[float]]:
    """COCO's ``segmentation`` polygons: ``[x0, y0, x1, y1, …]`` flat lists, corner convention."""
    return [[round(float(v), 2) for v in p.ravel()] for p in polygons(mask, "corners", speck)]


def one_outline(parts: list[np.ndarray]) -> np.ndarray:
    """Several outlines as one, each joined to the next at their closest points by a path there and back, as
    Ultralytics joins an object's COCO polygons for its one-line YOLO segments; empty for no part."""
    if not parts:
        return np.zeros((0, 2))
    if len(parts) == 1:
        return parts[0]
    links = []  # (vertex of part k, vertex of part k + 1) closest to each other
    for a, b in zip(parts, parts[1:]):
        distance, nearest = cKDTree(b).query(a)
        i = int(np.argmin(distance))
        links.append((i, int(nearest[i])))

    def walk(k: int, entry: int) -> list[np.ndarray]:
        part = np.roll(parts[k], -entry, axis=0)
        if k == len(parts) - 1:
            return [part, part[:1]]
        out_at = (links[k][0] - entry) % len(part)
        return [part[:out_at + 1], *walk(k + 1, links[k][1]), part[out_at:], part[:1]]

    return np.concatenate(walk(0, 0))


# ------------------------------------------------------------------------------------ Label Studio brush

_BRUSH_SIZES = (3, 4, 8, 16)
"""Bits of a run's length-minus-one in Label Studio's brush RLE, by the 2-bit size index each run starts with."""


def brush_rle(mask: np.ndarray) -> list[int]:
    """Label Studio's brush RLE (``value.rle`` of a ``brushlabels`` result) of a bool [height, width] mask.

    The format is thi.ng's rle-pack over the mask's RGBA bytes (each pixel 255 or 0 four times, row by row),
    as ``label_studio_sdk.converter.brush.mask2rle`` writes it, byte for byte (tests compare): a header (32
    bits: the number of values; 5: word size − 1 = 7; 4 × 4: the run-length sizes − 1), then per run
    ``1``, a 2-bit size index, length − 1 in that many bits, the 8-bit value; runs over 65,536 values split.
    Written here rather than imported: the SDK pins opencv-python-headless < 4.13 and brings pandas, nltk
    and a code generator, and its encoder builds the bit string character by character.
    """
    flat = mask.reshape(-1).astype(np.uint8)
    edges = np.flatnonzero(flat[1:] != flat[:-1]) + 1
    starts = np.r_[0, edges]
    lengths = 4 * np.diff(np.r_[starts, flat.size])
    values = np.where(flat[starts] > 0, 255, 0)
    index = np.select([lengths <= 8, lengths <= 16, lengths <= 256], [0, 1, 2], 3)
    full = np.where(index == 3, (lengths - 1) // 65536, 0)  # 65,536-long pieces before a long run's rest
    pieces = full + 1
    run = np.repeat(np.arange(len(lengths)), pieces)
    first = np.repeat(np.cumsum(pieces) - pieces, pieces)
    is_full = np.arange(len(run)) - first < full[run]
    piece_length = np.where(is_full, 65536, lengths[run] - 65536 * full[run])
    size = np.asarray(_BRUSH_SIZES)[index[run]]
    bits = 3 + size + 8
    token = (1 << (bits - 1)) | (index[run] << (bits - 3)) | ((piece_length - 1) << 8) | values[run]
    width = 27
    table = (token[:, None] >> np.arange(width - 1, -1, -1)) & 1
    used = np.arange(width)[None, :] >= (width - bits)[:, None]
    header = f"{4 * flat.size:032b}{7:05b}" + "".join(f"{s - 1:04b}" for s in _BRUSH_SIZES)
    stream = np.concatenate([np.frombuffer(header.encode(), np.uint8) - 48, table[used].astype(np.uint8)])
    stream = np.concatenate([stream, np.zeros(8 - stream.size % 8, np.uint8)])  # as the SDK: 1 to 8 zeros
    return np.packbits(stream).tolist()
