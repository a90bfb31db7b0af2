"""Uploaded files to prepared images, refusing what is too big, not an image, corrupt or too small.

Everything here runs in the decoding pool, so at most ``decode_workers`` files are in memory at once
(Starlette keeps uploads in spooled temporary files). Sizes are checked before work: bytes while
reading the upload in chunks, pixels from the image header (PIL reads it lazily) before anything
is decoded, so a decompression bomb never gets decoded.
"""

from __future__ import annotations

import io
import warnings
from typing import BinaryIO

from PIL import Image, UnidentifiedImageError

from lost_reg.errors import DataError
from lost_reg.images import Prepared, decode_image, grid_size, prepare

from .errors import ServiceError

FORMATS = ("JPEG", "PNG", "WEBP", "TIFF", "BMP", "GIF")
"""Formats accepted (PIL names); others, e.g. EPS (which would run Ghostscript), are refused."""
CHUNK = 1 << 20

Image.init()  # register every plugin now: ``Image.open(formats=…)`` only knows registered ones


def load_upload(file: BinaryIO, name: str, limit: int, patch_size: int, max_side: int, max_pixels: int,
                prep: str) -> Prepared:
    """An uploaded file as a prepared image, or a ServiceError saying why not."""
    return decode_upload(read_upload(file, name, limit), name, patch_size, max_side, max_pixels, prep)


def read_upload(file: BinaryIO, name: str, limit: int) -> bytes:
    """The file's bytes, read in chunks and given up as soon as they pass ``limit``."""
    chunks: list[bytes] = []
    size = 0
    while chunk := file.read(CHUNK):
        size += len(chunk)
        if size > limit:
            raise ServiceError(413, "file_too_large", f"{name}: larger than the {limit / 2**20:g} MB limit per file")
        chunks.append(chunk)
    if not size:
        raise ServiceError(422, "empty_file", f"{name}: the upload is empty")
    return b"".join(chunks)


def decode_upload(data: bytes, name: str, patch_size: int, max_side: int, max_pixels: int, prep: str) -> Prepared:
    """Check the header, decode, and bring onto the patch grid (``prep``, after ``max_side``)."""
    width, height = _header_size(data, name)
    if width * height > max_pixels:
        raise ServiceError(413, "too_many_pixels",
                           f"{name}: {width}x{height} pixels exceeds the limit of {max_pixels:,} per image")
    try:
        image = decode_image(data, name=name)
    except DataError as e:
        raise ServiceError(422, "corrupt_image", str(e)) from e
    h, w = image.shape[:2]
    vw, vh = grid_size(w, h, patch_size, max_side)
    if min(vh, vw) < patch_size:  # checked before any resize onto the grid could stretch it
        resized = "" if (vw, vh) == (w, h) else f" (resized to {vw}x{vh})"
        raise ServiceError(422, "image_too_small",
                           f"{name}: {width}x{height}{resized} is smaller than one {patch_size}x{patch_size} patch")
    return prepare(image, patch_size, max_side, prep)


def _header_size(data: bytes, name: str) -> tuple[int, int]:
    """(width, height) from the header alone; 415 for what is no image of an accepted format."""
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", Image.DecompressionBombWarning)  # our own limit applies
            with Image.open(io.BytesIO(data), formats=FORMATS) as im:
                return im.size
    except Image.DecompressionBombError as e:
        raise ServiceError(413, "too_many_pixels", f"{name}: {e}") from e
    except UnidentifiedImageError as e:
        raise ServiceError(415, "not_an_image",
                           f"{name}: not an image in an accepted format ({', '.join(FORMATS)})") from e
    except (OSError, ValueError, SyntaxError, EOFError) as e:  # PIL's ways of saying "broken header"
        raise ServiceError(422, "corrupt_image", f"{name}: corrupt image header ({e})") from e
