"""Schemathesis hooks (``SCHEMATHESIS_HOOKS=tests.schemathesis_hooks``) for ``POST /v1/boxes`` and ``/v1/export``.

- Real images for the ``images`` parts. The schema says they are PNG or JPEG files; random bytes never
  decode, so every schema-valid request would be refused as "not an image". These strategies draw real
  square images (square: any allowed ``max_side`` keeps them at least one patch wide); negative tests
  still send whatever breaks the schema.
- One kind of negative example is skipped: an option turned into an *empty* array. In multipart an empty
  array is no part at all, so what goes over the wire is a valid request (the option left out), which the
  server rightly accepts; schemathesis would count that as a schema-violating request accepted. Arrays
  with values are kept: they become repeated fields, which the server refuses (422).
- ``/v1/export``: a box must lie inside its image, and a mask (``segmentation``) must be an RLE of its image's
  size whose runs cover it, which JSON Schema cannot say (they relate fields, or need decoding). Well-typed
  boxes are moved inside their well-typed image; a well-typed mask becomes a valid one of its image's size
  (dropped past the images' pixel budget of a request, or on an image too large for one RLE run);
  anything else is left as drawn, so negative examples keep their violation.
"""

from __future__ import annotations

import cv2
import numpy as np
import schemathesis
from hypothesis import strategies as st

from lost_reg import masks

MASKED_PIXELS = 50_000_000
"""Pixels of the images given masks in one example, well under the server's budget per request (413 past it)."""


def _image(side: int, seed: int, ext: str) -> bytes:
    pixels = np.random.default_rng(seed).integers(0, 256, (side, side, 3), dtype=np.uint8)
    ok, data = cv2.imencode(ext, pixels)
    assert ok
    return data.tobytes()


for media_type, ext in (("image/png", ".png"), ("image/jpeg", ".jpg")):
    schemathesis.openapi.media_type(media_type, st.builds(_image, st.integers(16, 80), st.integers(0, 2**32 - 1),
                                                          st.just(ext)))


@schemathesis.hook
def filter_body(ctx, body) -> bool:
    """Skip bodies whose only schema violation vanishes in multipart encoding (see above)."""
    fields = getattr(body, "body", body)  # a form with per-part content types wraps the fields
    return not (isinstance(fields, dict) and any(k != "images" and v == [] for k, v in fields.items()))


def _inside(box: list[int], width: int, height: int) -> list[int]:
    """A box inside a width × height image, made from any four integers."""
    x0, y0 = box[0] % width, box[1] % height
    return [x0, y0, x0 + 1 + box[2] % (width - x0), y0 + 1 + box[3] % (height - y0)]


def _is_int(v, low: float = -float("inf"), high: float = float("inf")) -> bool:
    """An integer as JSON Schema counts them (4.0 is one; true is not)."""
    return (type(v) is int or (type(v) is float and v.is_integer())) and low <= v <= high


@schemathesis.hook
def map_case(ctx, case):
    """Move well-typed export boxes inside their images (see above); a case hook, so every phase gets it."""
    body = case.body
    if case.operation.path != "/v1/export" or not isinstance(body, dict) or not isinstance(body.get("images"), list):
        return case
    masked = 0
    for image in body["images"]:
        if not (isinstance(image, dict) and _is_int(image.get("width"), 1, 1_000_000)
                and _is_int(image.get("height"), 1, 1_000_000) and isinstance(image.get("objects"), list)):
            continue
        width, height = int(image["width"]), int(image["height"])
        for obj in image["objects"]:
            box = obj.get("box") if isinstance(obj, dict) else None
            if isinstance(box, list) and len(box) == 4 and all(_is_int(v) for v in box):
                obj["box"] = _inside([int(v) for v in box], width, height)
            if isinstance(obj, dict) and _is_mask(obj.get("segmentation")):
                if width * height <= 2**24 and masked + width * height <= MASKED_PIXELS:
                    obj["segmentation"] = _empty_mask(height, width)
                    masked += width * height
                else:
                    del obj["segmentation"]
    return case


def _is_mask(value) -> bool:
    """A well-typed ``segmentation``: ``{"size": [int, int], "counts": str}``."""
    return (isinstance(value, dict) and set(value) == {"size", "counts"} and isinstance(value["counts"], str)
            and isinstance(value["size"], list) and len(value["size"]) == 2 and all(_is_int(v) for v in value["size"]))


def _empty_mask(height: int, width: int) -> dict:
    """The RLE of an empty mask of that size (one run, written by pycocotools)."""
    return masks.encode(np.zeros((height, width), bool))
