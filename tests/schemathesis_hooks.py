"""Schemathesis hooks (``SCHEMATHESIS_HOOKS=tests.schemathesis_hooks``) for ``POST /v1/boxes``.

- Real images for the ``images`` parts. The schema says they are PNG or JPEG files; random bytes never
  decode, so every schema-valid request would be refused as "not an image". These strategies draw real
  square images (square: any allowed ``max_side`` keeps them at least one patch wide); negative tests
  still send whatever breaks the schema.
- One kind of negative example is skipped: an option turned into an *empty* array. In multipart an empty
  array is no part at all, so what goes over the wire is a valid request (the option left out), which the
  server rightly accepts; schemathesis would count that as a schema-violating request accepted. Arrays
  with values are kept: they become repeated fields, which the server refuses (422).
"""

from __future__ import annotations

import cv2
import numpy as np
import schemathesis
from hypothesis import strategies as st


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

