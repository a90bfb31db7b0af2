"""Small hostile files that cost a decoder or a client much more than their size (issue 25), made in a second
or less: the tests and ``bench/bench_service_load.py`` send them to a real server."""

from __future__ import annotations

import gzip
import io
import struct
import zlib

import numpy as np
from PIL import Image


def scan_bomb(side: int, repeats: int) -> bytes:
    """A ``side``×``side`` progressive JPEG whose last scan is repeated ``repeats`` times: every repeat is a
    valid refinement scan that the decoder runs over the whole image, so a file of ~``90 × repeats`` bytes
    decodes for minutes (libjpeg-turbo's ``-maxscans`` would stop it; neither OpenCV nor Pillow sets one)."""
    flat = np.full((side, side, 3), 128, np.uint8)
    buffer = io.BytesIO()
    Image.fromarray(flat).save(buffer, "JPEG", progressive=True, quality=90)
    data = buffer.getvalue()
    last = data.rindex(b"\xff\xda")  # the last start-of-scan: entropy-coded data never holds 0xFFDA
    assert data.endswith(b"\xff\xd9")
    return data[:last] + data[last:-2] * repeats + b"\xff\xd9"


def tile_bomb(tile: int, side: int = 64) -> bytes:
    """A TIFF whose header says ``side``×``side`` holding one ``tile``×``tile`` RGB tile of zeros, deflated (a
    24000² tile: 1.7 GB decoded from a 1.7 MB file); Pillow's size check reads the header's 64×64."""
    compressor = zlib.compressobj(9)
    zeros = bytes(8 * 2**20)
    total, parts = tile * tile * 3, []
    while total > 0:
        parts.append(compressor.compress(zeros[:min(total, len(zeros))]))
        total -= len(zeros)
    payload = b"".join(parts) + compressor.flush()
    entries = [(256, 4, 1, side), (257, 4, 1, side), (258, 3, 3, None), (259, 3, 1, 8), (262, 3, 1, 2),
               (277, 3, 1, 3), (284, 3, 1, 1), (322, 4, 1, tile), (323, 4, 1, tile), (324, 4, 1, None),
               (325, 4, 1, len(payload))]
    ifd_at = 8
    bits_at = ifd_at + 2 + 12 * len(entries) + 4
    data_at = bits_at + 6
    ifd = struct.pack("<H", len(entries))
    for tag, kind, count, value in entries:
        value = {258: bits_at, 324: data_at}.get(tag, value)
        packed = struct.pack("<HHI", tag, kind, count)
        ifd += packed + (struct.pack("<HH", value, 0) if kind == 3 and count == 1 else struct.pack("<I", value))
    return b"II*\0" + struct.pack("<I", ifd_at) + ifd + b"\0\0\0\0" + struct.pack("<HHH", 8, 8, 8) + payload


def padded_jpeg(pixels: np.ndarray, padding: int) -> bytes:
    """A JPEG with ``padding`` 0xFF fill bytes before its frame header (allowed before any marker): Pillow
    reads them one at a time in Python."""
    buffer = io.BytesIO()
    Image.fromarray(pixels).save(buffer, "JPEG")
    data = buffer.getvalue()
    at = data.index(b"\xff\xc0")
    return data[:at] + b"\xff" * padding + data[at:]


def nested_gzip(megabytes: int) -> bytes:
    """``megabytes`` MB of zeros gzipped twice (for ``Content-Encoding: gzip, gzip``): a few KB on the wire."""
    return gzip.compress(gzip.compress(bytes(megabytes * 2**20), 9), 9)
