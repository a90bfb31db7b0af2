"""Uploaded files to prepared images, refusing what is too big, not an image, corrupt or too small.

Everything here runs in the decoding pool, so at most ``decode_workers`` files are in memory at once
(uploads are kept in spooled temporary files). Sizes are checked before work: bytes while
reading the upload in chunks, pixels from the image header (and a TIFF's tiles) before anything
is decoded, so a decompression bomb never gets decoded. Headers are read and images decoded in the
decoding processes (:mod:`lost_reg.decoders`): a file that would parse or decode for minutes is stopped
at ``decode_timeout_s`` (422 ``decode_timeout``), one that needs gigabytes at the memory limit (413).
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Callable, Iterator
from contextlib import contextmanager
from tempfile import SpooledTemporaryFile
from typing import BinaryIO, cast

from python_multipart import MultipartParser
from python_multipart.exceptions import FormParserError
from python_multipart.multipart import parse_options_header
from starlette.datastructures import FormData, Headers, UploadFile

from lost_reg.decoders import DecodePool
from lost_reg.errors import DataError, DecodeTimeout, ImageTooSmall, NotAnImage, TooManyPixels
from lost_reg.images import Prepared

from .errors import ServiceError
from .fair import Watch

FORMATS = ("JPEG", "PNG", "WEBP", "TIFF", "BMP", "GIF")
"""Formats accepted (PIL names); others, e.g. EPS (which would run Ghostscript), are refused."""
HEADER_BYTES = 256 * 1024
"""Where an image's size is looked for first (a JPEG's EXIF may push it further: then the whole file is read)."""
SPOOL_BYTES = 2**20
"""An upload stays in memory up to this size, then rolls over to a temporary file (as in Starlette's parser)."""


class MultipartForm:
    """A multipart body streamed through python-multipart's parser into a Starlette form, under the service's
    limits: a file is refused (413) as soon as it passes ``max_file_size`` bytes, so the rest of the body is never
    read or spooled; ``on_file`` is called as each file part starts (admission: it may raise to refuse the request
    there); a part with a non-text ``Content-Type`` is a file even without a ``filename`` (RFC 7578 makes it
    optional). Files go to spooled temporary files, as Starlette's own parser keeps them."""

    def __init__(self, content_type: str, *, max_files: int, max_fields: int, max_part_size: int,
                 max_file_size: int, on_file: Callable[[], None]) -> None:
        _, params = parse_options_header(content_type)
        if b"boundary" not in params:
            raise _bad("Missing boundary in multipart.")
        self.charset = params.get(b"charset", b"utf-8").decode("latin-1")
        self.max_files, self.max_fields, self.max_part_size, self.max_file_size = (max_files, max_fields,
                                                                                   max_part_size, max_file_size)
        self.on_file = on_file
        self.items: list[tuple[str, str | UploadFile]] = []
        self.files: list[UploadFile] = []
        self.fields, self.complete = 0, False
        self._writes: list[tuple[UploadFile, bytes]] = []
        self._begin()
        self._parser = MultipartParser(params[b"boundary"], {
            "on_part_begin": self._begin, "on_header_field": lambda data, a, b: self._field.extend(data[a:b]),
            "on_header_value": lambda data, a, b: self._value.extend(data[a:b]), "on_header_end": self._header_end,
            "on_headers_finished": self._headers_finished, "on_part_data": self._data, "on_part_end": self._end,
            "on_end": lambda: setattr(self, "complete", True)})

    async def parse(self, stream: AsyncIterator[bytes]) -> FormData:
        """The form, its files written and rewound; every file closed when the body is refused or breaks off."""
        try:
            async for chunk in stream:
                self._parser.write(chunk)
                for file, data in self._writes:  # off the callbacks: a rolled-over file writes in a thread
                    await file.write(data)
                self._writes.clear()
            self._parser.finalize()
            if not self.complete:
                raise ServiceError(400, "bad_multipart", "the multipart body ends before its closing boundary")
            for file in self.files:
                await file.seek(0)
        except BaseException as e:
            for file in self.files:
                file.file.close()
            if isinstance(e, FormParserError):
                raise _bad("Invalid multipart data.") from e
            raise
        return FormData(self.items)

    def _begin(self) -> None:
        self._headers: list[tuple[bytes, bytes]] = []
        self._field, self._value, self._text = bytearray(), bytearray(), bytearray()
        self._name, self._size = "", 0
        self._file: UploadFile | None = None

    def _header_end(self) -> None:
        self._headers.append((bytes(self._field).lower(), bytes(self._value)))
        self._field, self._value = bytearray(), bytearray()

    def _headers_finished(self) -> None:
        headers = dict(self._headers)
        _, options = parse_options_header(headers.get(b"content-disposition", b""))
        if b"name" not in options:
            raise _bad('The Content-Disposition header field "name" must be provided.')
        self._name = self._decode(options[b"name"])
        if b"filename" in options or not headers.get(b"content-type", b"text/plain").lower().startswith(b"text/"):
            if len(self.files) >= self.max_files:
                raise ServiceError(413, "too_many_files", f"at most {self.max_files} files per request")
            self._file = UploadFile(cast(BinaryIO, SpooledTemporaryFile(max_size=SPOOL_BYTES)), size=0,
                                    filename=self._decode(options.get(b"filename", b"")),
                                    headers=Headers(raw=self._headers))
            self.files.append(self._file)
            self.on_file()
            return
        self.fields += 1
        if self.fields > self.max_fields:
            raise _bad(f"Too many fields. Maximum number of fields is {self.max_fields}.")

    def _data(self, data: bytes, start: int, end: int) -> None:
        if self._file is None:
            if len(self._text) + end - start > self.max_part_size:
                raise _bad(f"Part exceeded maximum size of {int(self.max_part_size / 1024)}KB.")
            self._text += data[start:end]
            return
        self._size += end - start
        if self._size > self.max_file_size:
            raise ServiceError(413, "file_too_large", f"{self._file.filename or self._name}: larger than the "
                               f"{self.max_file_size / 2**20:g} MB limit per file")
        self._writes.append((self._file, data[start:end]))

    def _end(self) -> None:
        self.items.append((self._name, self._file if self._file is not None else self._decode(self._text)))

    def _decode(self, value: bytes) -> str:
        try:
            return value.decode(self.charset)
        except (UnicodeDecodeError, LookupError):  # as Starlette: an unknown charset or bad bytes read as latin-1
            return value.decode("latin-1")


def _bad(message: str) -> ServiceError:
    return ServiceError(400, "bad_multipart", f"cannot parse the multipart body: {message}")


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
        except DataError as e:  # past max_pixels or too slow: final; else the size may lie past HEADER_BYTES
            if isinstance(e, TooManyPixels | DecodeTimeout) or len(head) < HEADER_BYTES:
                raise
        file.seek(0)
        return decoders.result(watch(decoders.probe(file.read(), name, FORMATS)), name)


def decode_upload(watch: Watch, decoders: DecodePool, data: bytes | BinaryIO, name: str, patch_size: int,
                  max_side: int, prep: str) -> Prepared:
    """An upload's bytes (or its file, held to the size limit by :class:`MultipartForm`) checked, decoded and brought
    onto the patch grid (``prep``, after ``max_side``) in a decoding process under its deadline and memory limit;
    a ServiceError saying why not."""
    if not isinstance(data, bytes):
        data.seek(0)
        data = data.read()
        if not data:
            raise ServiceError(422, "empty_file", f"{name}: the upload is empty")
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
