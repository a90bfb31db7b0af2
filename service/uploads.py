"""Uploaded files to prepared images, refusing what is too big, not an image, corrupt or too small.

Everything here runs in the decoding pool, so at most ``decode_workers`` files are in memory at once
(Starlette keeps uploads in spooled temporary files). Sizes are checked before work: bytes while
reading the upload in chunks, pixels from the image header (PIL reads it lazily) before anything
is decoded, so a decompression bomb never gets decoded.
"""

from __future__ import annotations

from typing import BinaryIO

from lost_reg.errors import DataError, ImageTooSmall, NotAnImage, TooManyPixels
from lost_reg.images import Prepared, check_pixels, decode_image, header_size, prepare

from .errors import ServiceError

FORMATS = ("JPEG", "PNG", "WEBP", "TIFF", "BMP", "GIF")
"""Formats accepted (PIL names); others, e.g. EPS (which would run Ghostscript), are refused."""
CHUNK = 1 << 20


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
    try:
        check_pixels(*header_size(data, name, FORMATS), max_pixels, name)
        return prepare(decode_image(data, name=name), patch_size, max_side, prep, name=name)
    except NotAnImage as e:
        raise ServiceError(415, "not_an_image", str(e)) from e
    except TooManyPixels as e:
        raise ServiceError(413, "too_many_pixels", str(e).replace(" (--max-pixels)", "")) from e
    except ImageTooSmall as e:
        raise ServiceError(422, "image_too_small", str(e)) from e
    except DataError as e:
        raise ServiceError(422, "corrupt_image", str(e)) from e
