"""Uploaded files to prepared images, refusing what is too big, not an image, corrupt or too small.

Everything here runs in the decoding pool, so at most ``decode_workers`` files are in memory at once
(Starlette keeps uploads in spooled temporary files). Sizes are checked before work: bytes while
reading the upload in chunks, pixels from the image header (and a TIFF's tiles) before anything
is decoded, so a decompression bomb never gets decoded. Headers are read and images decoded in the
decoding processes (:mod:`lost_reg.decoders`): a file that would parse or decode for minutes is stopped
at ``decode_timeout_s`` (422 ``decode_timeout``), one that needs gigabytes at the memory limit (413).
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import Any, BinaryIO

from starlette.formparsers import MultiPartException, MultiPartParser

from lost_reg.decoders import DecodePool
from lost_reg.errors import DataError, DecodeTimeout, ImageTooSmall, NotAnImage, TooManyPixels
from lost_reg.images import Prepared

from .errors import ServiceError
from .fair import Watch

FORMATS = ("JPEG", "PNG", "WEBP", "TIFF", "BMP", "GIF")
"""Formats accepted (PIL names); others, e.g. EPS (which would run Ghostscript), are refused."""
HEADER_BYTES = 256 * 1024
"""Where an image's size is looked for first (a JPEG's EXIF may push it further: then the whole file is read)."""


class FileTooLarge(MultiPartException):
    """A file part passed the per-file limit while the body was still streaming in."""

    def __init__(self, filename: str, limit: int) -> None:
        super().__init__(f"{filename}: larger than the {limit / 2**20:g} MB limit per file")


class LimitedMultiPartParser(MultiPartParser):
    """Starlette's multipart parser that refuses a file as soon as it passes ``max_file_size`` bytes
    (raising :class:`FileTooLarge` mid-stream, so the rest of the body is never read or spooled), calls
    ``on_file`` as each file part starts (admission: it may raise to refuse the request there), records
    whether the body reached its closing boundary (:attr:`complete`), and takes a part with a non-text
    ``Content-Type`` for a file even without a ``filename`` (RFC 7578 makes it optional).

    The one place that reads a Starlette private (``_current_part``, the part being parsed): its parser
    offers per-part callbacks but no public view of the part they are called for."""

    def __init__(self, *args: Any, max_file_size: int, on_file: Callable[[], None], **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.max_file_size = max_file_size
        self.on_file = on_file
        self.complete = False
        self._file_bytes = 0

    def on_part_begin(self) -> None:
        super().on_part_begin()
        self._file_bytes = 0

    def on_headers_finished(self) -> None:
        part = self._current_part
        content_type = next((v for k, v in part.item_headers if k.lower() == b"content-type"), b"text/plain")
        if not content_type.lower().startswith(b"text/") and b"filename" not in (part.content_disposition or b""):
            part.content_disposition = (part.content_disposition or b"") + b'; filename=""'
        super().on_headers_finished()
        if part.file is not None:
            self.on_file()

    def on_part_data(self, data: bytes, start: int, end: int) -> None:
        part = self._current_part
        if part.file is not None:
            self._file_bytes += end - start
            if self._file_bytes > self.max_file_size:
                raise FileTooLarge(part.file.filename or part.field_name, self.max_file_size)
        super().on_part_data(data, start, end)

    def on_end(self) -> None:
        super().on_end()
        self.complete = True


def upload_size(watch: Watch, decoders: DecodePool, file: BinaryIO, name: str) -> tuple[int, int]:
    """Width and height of an uploaded file from its header (read in a decoding process, nothing decoded), or a
    ServiceError saying why not (413 past ``max_pixels``, a TIFF's tiles included)."""
    file.seek(0)
    head = file.read(HEADER_BYTES)
    if not head:
        raise ServiceError(422, "empty_file", f"{name}: the upload is empty")
    with _as_service_errors():
        try:
            return decoders.result(watch(decoders.probe(head, name, FORMATS)), name)
        except (TooManyPixels, DecodeTimeout):
            raise
        except DataError:
            if len(head) < HEADER_BYTES:
                raise
        file.seek(0)
        return decoders.result(watch(decoders.probe(file.read(), name, FORMATS)), name)


def load_upload(watch: Watch, decoders: DecodePool, file: BinaryIO, name: str, patch_size: int, max_side: int,
                prep: str) -> Prepared:
    """An uploaded file (its size already held to the limit by :class:`LimitedMultiPartParser`) as a prepared
    image, or a ServiceError saying why not."""
    file.seek(0)
    data = file.read()
    if not data:
        raise ServiceError(422, "empty_file", f"{name}: the upload is empty")
    return decode_upload(watch, decoders, data, name, patch_size, max_side, prep)


def decode_upload(watch: Watch, decoders: DecodePool, data: bytes, name: str, patch_size: int, max_side: int,
                  prep: str) -> Prepared:
    """Check the header, decode, and bring onto the patch grid (``prep``, after ``max_side``), in a decoding
    process under its deadline and memory limit."""
    with _as_service_errors():
        return decoders.result(watch(decoders.decode(data, name, patch_size, max_side, prep, FORMATS)), name)


@contextmanager
def _as_service_errors() -> Iterator[None]:
    """The library's image errors as the statuses a client gets."""
    try:
        yield
    except NotAnImage as e:
        raise ServiceError(415, "not_an_image", str(e)) from e
    except TooManyPixels as e:
        raise ServiceError(413, "too_many_pixels", str(e).replace(" (--max-pixels)", "")) from e
    except ImageTooSmall as e:
        raise ServiceError(422, "image_too_small", str(e)) from e
    except DecodeTimeout as e:
        raise ServiceError(422, "decode_timeout", f"{e} (LOST_REG_DECODE_TIMEOUT_S)") from e
    except DataError as e:
        raise ServiceError(422, "corrupt_image", str(e)) from e
