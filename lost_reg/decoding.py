"""Image decoding without torch: headers, pixel limits, decoders, and the fit onto the patch grid in NumPy.

What runs inside the decoding processes (:mod:`lost_reg.decoders`), so it imports only OpenCV, Pillow and
NumPy: a process that decodes untrusted files stays small, starts fast and can be killed. The pixel limit is
checked on what a decoder will allocate, not only on the size a header claims: a TIFF whose header says
64×64 may hold one 24000×24000 tile, and its tiles are checked too (:func:`check_header`). The jobs
(:func:`probe_job`, :func:`decode_job`) run under a CPU-time limit, and each process under an address-space
limit (:func:`limit_process`), so a file that would decode for minutes or take gigabytes is stopped.
"""

from __future__ import annotations

import io
import math
import os
import resource
import threading
import warnings
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import TypeVar

import cv2
import numpy as np
from PIL import Image, ImageOps, UnidentifiedImageError

from .errors import DataError, ImageTooSmall, NotAnImage, TooManyPixels

cv2.setNumThreads(1)  # decoding runs in several worker processes already
Image.init()  # register every plugin now: ``Image.open(formats=…)`` only knows registered ones
_PIL_LIMIT = threading.Lock()
MAX_PIXELS = 40_000_000
"""Default largest image (width × height), checked from the header before decoding: a 20000×20000
PNG of 48 KB would otherwise take gigabytes."""
PREPS = ("pad", "resize")
TIFF_TILE_WIDTH, TIFF_TILE_LENGTH = 322, 323
T = TypeVar("T")


def _open_header(source: str | Path | bytes, name: str, formats: Sequence[str] | None,
                 read: Callable[[Image.Image], T]) -> T:
    """``read(image)`` on the image opened by Pillow, header only (nothing decoded), its own size limit lifted;
    :class:`NotAnImage` when Pillow knows no such format (among ``formats``), DataError for a broken header."""
    def opened() -> T:
        with Image.open(io.BytesIO(source) if isinstance(source, bytes) else source, formats=formats) as im:
            return read(im)

    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", Image.DecompressionBombWarning)
            try:
                return opened()
            except Image.DecompressionBombError:
                with _PIL_LIMIT:  # a header over PIL's limit: read just its size with the limit lifted
                    saved, Image.MAX_IMAGE_PIXELS = Image.MAX_IMAGE_PIXELS, None
                    try:
                        return opened()
                    finally:
                        Image.MAX_IMAGE_PIXELS = saved
    except UnidentifiedImageError as e:
        accepted = f" in an accepted format ({', '.join(formats)})" if formats else ""
        raise NotAnImage(f"{name}: not an image{accepted}") from e
    except FileNotFoundError as e:
        raise DataError(f"{name}: cannot read ({e.strerror or e})") from e
    except (OSError, ValueError, SyntaxError, EOFError) as e:  # PIL's ways of saying "broken header"
        raise DataError(f"{name}: corrupt image header ({e})") from e


def header_size(source: str | Path | bytes, name: str, formats: Sequence[str] | None = None) -> tuple[int, int]:
    """(width, height) from the image header alone, nothing decoded.

    :class:`NotAnImage` when PIL knows no such format (among ``formats``, if given); DataError for a
    broken header. PIL's own decompression-bomb refusal is not the answer: the size is read anyway,
    so callers apply their own limit (:func:`check_pixels`) with their own message.
    """
    return _open_header(source, name, formats, lambda im: im.size)


def check_header(source: str | Path | bytes, name: str, max_pixels: int,
                 formats: Sequence[str] | None = None) -> tuple[int, int]:
    """(width, height) from the header, after checking it and the largest block the decoder allocates (a TIFF
    tile: its header may claim 64×64 and hold a 24000×24000 tile) against ``max_pixels``; nothing decoded."""
    def sizes(im: Image.Image) -> tuple[tuple[int, int], tuple[int, int] | None]:
        tags = getattr(im, "tag_v2", None)
        tile = (tags.get(TIFF_TILE_WIDTH), tags.get(TIFF_TILE_LENGTH)) if tags is not None else (None, None)
        return im.size, tile if all(isinstance(v, int) for v in tile) else None

    size, tile = _open_header(source, name, formats, sizes)
    check_pixels(*size, max_pixels, name)
    if tile is not None and tile[0] * tile[1] > max_pixels:
        raise TooManyPixels(f"{name}: a {tile[0]}x{tile[1]} tile = {tile[0] * tile[1]:,} pixels (in a {size[0]}x"
                            f"{size[1]} image) exceeds the limit of {max_pixels:,} per image (--max-pixels)")
    return size


def check_pixels(width: int, height: int, max_pixels: int, name: str) -> None:
    """:class:`TooManyPixels` when ``width`` × ``height`` exceeds ``max_pixels``."""
    if width * height > max_pixels:
        raise TooManyPixels(f"{name}: {width}x{height} = {width * height:,} pixels exceeds the limit of "
                            f"{max_pixels:,} per image (--max-pixels)")


def decode_image(source: str | Path | bytes, name: str | None = None, max_pixels: int | None = None) -> np.ndarray:
    """RGB uint8 [H, W, 3] from a file or encoded bytes.

    EXIF orientation is applied; grey, alpha, palette, CMYK and 16-bit images become 8-bit RGB.
    With ``max_pixels`` the header (and a TIFF's tiles) are checked first, so a decompression bomb is
    refused (:class:`TooManyPixels`) without being decoded, and so is the decoded image.
    """
    label = name or (str(source) if not isinstance(source, bytes) else "<bytes>")
    if isinstance(source, bytes):
        data = np.frombuffer(source, np.uint8)
    else:
        try:
            data = np.fromfile(source, np.uint8)
        except OSError as e:
            raise DataError(f"{label}: cannot read ({e.strerror or e})") from e
    if data.size == 0:
        raise DataError(f"{label}: empty file")
    if max_pixels is not None:
        try:
            check_header(data.tobytes(), label, max_pixels)
        except NotAnImage:
            pass  # a format only OpenCV reads: checked after decoding below (OpenCV caps it at 2**30 pixels)
    try:
        image = cv2.imdecode(data, cv2.IMREAD_COLOR)  # IMREAD_COLOR honours EXIF orientation
    except cv2.error as e:  # e.g. its allocation failing under the decoding process's memory limit
        raise DataError(f"{label}: OpenCV could not decode it ({str(e).strip().splitlines()[-1]})") from None
    image = _decode_with_pillow(data, label) if image is None else cv2.cvtColor(image, cv2.COLOR_BGR2RGB)
    if max_pixels is not None:
        check_pixels(image.shape[1], image.shape[0], max_pixels, label)
    return image


def _decode_with_pillow(data: np.ndarray, label: str) -> np.ndarray:
    """Fallback for formats OpenCV lacks (e.g. some CMYK JPEGs, GIF)."""
    try:
        with Image.open(io.BytesIO(data.tobytes())) as im:
            im = ImageOps.exif_transpose(im)
            if im.mode in ("I;16", "I;16B", "I"):
                im = Image.fromarray((np.asarray(im, np.float32) / 257.0).clip(0, 255).astype(np.uint8))
            return np.asarray(im.convert("RGB"))
    except UnidentifiedImageError as e:
        raise NotAnImage(f"{label}: not a readable image (unknown or unsupported format)") from e
    except (OSError, ValueError) as e:
        raise DataError(f"{label}: not a readable image ({e})") from e


def grid_size(width: int, height: int, patch_size: int, max_side: int | None = None,
              prep: str = "pad") -> tuple[int, int]:
    """(width, height) of the image on the network input: after ``max_side``, and for ``resize``
    the nearest multiples of the patch size (halves up; at least one patch)."""
    if max_side and max(height, width) > max_side:
        s = max_side / max(height, width)
        width, height = max(1, round(width * s)), max(1, round(height * s))
    if prep == "resize":
        width, height = (max(1, math.floor(v / patch_size + 0.5)) * patch_size for v in (width, height))
    elif prep != "pad":
        raise ValueError(f"prep must be one of {', '.join(PREPS)}, got {prep!r}")
    return width, height


@dataclass
class Fitted:
    """An image on the patch grid, in NumPy: what a decoding process hands back (see ``images.Prepared``)."""

    pixels: np.ndarray
    """uint8 [3, Hp, Wp]: the (resized) image at top-left, zeros in the padding."""
    valid: tuple[int, int]
    """(height, width) of the image inside ``pixels``."""
    size: tuple[int, int]
    """(width, height) of the original image."""


def fit(image: np.ndarray, patch_size: int, max_side: int | None = None, prep: str = "pad",
        name: str = "image") -> Fitted:
    """Resize (past ``max_side``; for ``resize`` onto the grid) and pad an RGB uint8 image to the patch grid.

    :class:`ImageTooSmall` when the image (after ``max_side``) is smaller than one patch: a grid of
    one mostly padded (or stretched) patch holds nothing to find.
    """
    h, w = image.shape[:2]
    vw, vh = grid_size(w, h, patch_size, max_side)
    if min(vw, vh) < patch_size:  # checked before any resize onto the grid could stretch it
        resized = "" if (vw, vh) == (w, h) else f" (downscaled to {vw}x{vh})"
        raise ImageTooSmall(f"{name}: {w}x{h}{resized} is smaller than one {patch_size}x{patch_size} patch")
    nw, nh = grid_size(w, h, patch_size, max_side, prep)
    resized = image if (nw, nh) == (w, h) else cv2.resize(
        image, (nw, nh), interpolation=cv2.INTER_AREA if nw * nh < w * h else cv2.INTER_LINEAR)
    vh, vw = resized.shape[:2]
    ph, pw = math.ceil(vh / patch_size) * patch_size, math.ceil(vw / patch_size) * patch_size
    pixels = np.zeros((3, ph, pw), np.uint8)
    pixels[:, :vh, :vw] = resized.transpose(2, 0, 1)
    return Fitted(pixels, (vh, vw), (w, h))


# ---- inside a decoding process ---------------------------------------------------------------------------


def limit_process(memory_bytes: int | None) -> None:
    """A decoding process's start: no core dumps, and at most ``memory_bytes`` of address space beyond what it
    holds now (an allocation past it fails: MemoryError, or the decoder's error), so one file cannot take
    the machine's memory."""
    resource.setrlimit(resource.RLIMIT_CORE, (0, 0))
    if memory_bytes is not None:
        _, hard = resource.getrlimit(resource.RLIMIT_AS)
        soft = _address_space() + memory_bytes
        resource.setrlimit(resource.RLIMIT_AS, (soft if hard == resource.RLIM_INFINITY else min(soft, hard), hard))


def _address_space() -> int:
    """This process's virtual memory size now, bytes."""
    with open(f"/proc/{os.getpid()}/statm") as f:
        return int(f.read().split()[0]) * resource.getpagesize()


@contextmanager
def _job(name: str, cpu_s: float) -> Iterator[None]:
    """A job's limits: SIGXCPU (the process ends) once it has used ``cpu_s`` of CPU time; MemoryError as
    :class:`TooManyPixels`."""
    usage = resource.getrusage(resource.RUSAGE_SELF)
    _, hard = resource.getrlimit(resource.RLIMIT_CPU)
    soft = math.ceil(usage.ru_utime + usage.ru_stime + cpu_s)
    resource.setrlimit(resource.RLIMIT_CPU, (soft if hard == resource.RLIM_INFINITY else min(soft, hard), hard))
    try:
        yield
    except MemoryError:
        raise TooManyPixels(f"{name}: decoding needs more memory than allowed for one image (--max-pixels)") from None


def ready() -> bool:
    """A job that does nothing: it starts the processes."""
    return True


def probe_job(data: bytes, name: str, max_pixels: int, formats: Sequence[str] | None, cpu_s: float) -> tuple[int, int]:
    """:func:`check_header` under a CPU-time budget (a header can be made slow to parse)."""
    with _job(name, cpu_s):
        return check_header(data, name, max_pixels, formats)


def decode_job(source: bytes | str, name: str, patch_size: int, max_side: int | None, prep: str,
               max_pixels: int | None, formats: Sequence[str] | None, cpu_s: float) -> Fitted:
    """Check the header (in ``formats``), decode and fit onto the patch grid, under a CPU-time budget: only
    the fitted image, at most ``max_side`` a side, goes back to the caller's process."""
    with _job(name, cpu_s):
        if formats is not None:  # only these formats (the service's): NotAnImage for others
            header_size(source, name, formats)
        return fit(decode_image(source, name=name, max_pixels=max_pixels), patch_size, max_side, prep, name=name)
