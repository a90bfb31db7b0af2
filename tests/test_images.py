"""Decoding odd images and the padding/normalisation LOST expects."""

from __future__ import annotations

import io

import cv2
import numpy as np
import pytest
import torch
from PIL import Image

from lost_reg import DataError
from lost_reg.errors import ImageTooSmall, NotAnImage, TooManyPixels
from lost_reg.images import decode_image, header_size, normalize, prepare


def encode(im: Image.Image, fmt: str, **kw) -> bytes:
    buf = io.BytesIO()
    im.save(buf, fmt, **kw)
    return buf.getvalue()


@pytest.fixture
def rgb() -> np.ndarray:
    y, x = np.mgrid[0:40, 0:60]
    return np.stack([x * 4, y * 6, np.full_like(x, 200)], -1).astype(np.uint8)


def test_rgb_png_round_trip(rgb):
    out = decode_image(encode(Image.fromarray(rgb), "PNG"))
    np.testing.assert_array_equal(out, rgb)


@pytest.mark.parametrize("mode", ["L", "RGBA", "P", "CMYK", "I;16"])
def test_modes_become_rgb(rgb, mode):
    im = Image.fromarray(rgb)
    if mode == "I;16":
        im = Image.fromarray((np.asarray(im.convert("L"), np.uint16) * 257))
        data = encode(im, "PNG")
    elif mode == "CMYK":
        data = encode(im.convert("CMYK"), "JPEG", quality=95)
    else:
        data = encode(im.convert(mode), "PNG")
    out = decode_image(data)
    assert out.shape == (40, 60, 3) and out.dtype == np.uint8
    if mode in ("L", "I;16"):
        ref = np.asarray(Image.fromarray(rgb).convert("L"))
        assert np.abs(out[..., 0].astype(int) - ref).max() <= 1
    elif mode != "P":
        assert np.abs(out.astype(int) - rgb).mean() < 8  # CMYK JPEG is lossy, not inverted or swapped


def test_exif_orientation_is_applied(rgb):
    im = Image.fromarray(rgb)
    exif = Image.Exif()
    exif[0x0112] = 6  # rotate 90° clockwise to display
    out = decode_image(encode(im, "JPEG", quality=95, exif=exif.tobytes()))
    assert out.shape == (60, 40, 3)
    ref = cv2.rotate(rgb, cv2.ROTATE_90_CLOCKWISE)
    assert np.abs(out.astype(int) - ref).mean() < 8


def test_bad_data_is_a_data_error(tmp_path):
    with pytest.raises(DataError, match="empty"):
        decode_image(b"")
    with pytest.raises(DataError, match="not a readable image"):
        decode_image(b"GIF89a this is garbage", name="x.gif")
    with pytest.raises(DataError, match="cannot read"):
        decode_image(tmp_path / "missing.jpg")
    truncated = tmp_path / "t.jpg"
    truncated.write_bytes(encode(Image.new("RGB", (64, 64)), "JPEG")[:100])
    with pytest.raises(DataError):
        decode_image(truncated)


def test_prepare_pads_bottom_right_and_resizes_only_past_max_side(rgb):
    p = prepare(rgb, 16)
    assert p.pixels.shape == (3, 48, 64) and p.valid == (40, 60) and p.size == (60, 40) and p.scale == (1.0, 1.0)
    assert p.pixels[:, 40:].eq(0).all() and p.pixels[:, :, 60:].eq(0).all()
    small = prepare(rgb, 16, max_side=30)
    assert small.valid == (20, 30) and small.pixels.shape == (3, 32, 32) and small.scale == (0.5, 0.5)
    assert prepare(rgb, 16, max_side=100).valid == (40, 60)


def test_resize_prep_puts_every_side_on_the_grid_and_maps_boxes_back(rgb):
    p = prepare(rgb, 16, prep="resize")  # 60x40 → 64x48: the nearest multiples of 16
    assert p.pixels.shape == (3, 48, 64) and p.valid == (48, 64) and p.scale == (64 / 60, 48 / 40)
    assert p.to_original((0, 0, 64, 48)) == (0, 0, 60, 40)
    assert p.to_original((16, 16, 32, 32)) == (15, 13, 30, 27)
    small = prepare(rgb, 16, max_side=30, prep="resize")  # 30x20 → 32x16
    assert small.valid == (16, 32) and small.size == (60, 40)
    assert prepare(rgb[:20, :30], 16, prep="resize").valid == (16, 32)  # 20 → 16, 30 → 32: the nearest multiples
    with pytest.raises(ImageTooSmall, match="5x5 is smaller than one 16x16 patch"):
        prepare(rgb[:5, :5], 16, prep="resize", name="tiny")  # nothing to find, whatever the preparation
    with pytest.raises(ImageTooSmall, match="downscaled to 20x13"):
        prepare(rgb, 16, max_side=20)
    with pytest.raises(ValueError, match="prep"):
        prepare(rgb, 16, prep="crop")


def test_normalize_sets_padding_to_zero(rgb):
    p = prepare(rgb, 16)
    x = normalize(p.pixels[None], [p.valid], (0.5, 0.5, 0.5), (0.25, 0.25, 0.25))
    assert x[0, :, 40:].eq(0).all() and x[0, :, :, 60:].eq(0).all()
    torch.testing.assert_close(x[0, 2, 0, 0], torch.tensor((200 / 255 - 0.5) / 0.25))


def png_bomb(width: int, height: int) -> bytes:
    """A tiny PNG whose header declares ``width`` × ``height`` pixels (one zlib stream of zeros)."""
    import struct
    import zlib

    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data) & 0xFFFFFFFF)

    ihdr = struct.pack(">IIBBBBB", width, height, 8, 0, 0, 0, 0)  # 8-bit greyscale
    rows = zlib.compressobj(9)
    body = b"".join(rows.compress(b"\0" * (width + 1)) for _ in range(min(height, 64))) + rows.flush()
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) + chunk(b"IDAT", body) + chunk(b"IEND", b"")


def test_a_decompression_bomb_is_refused_from_its_header_with_our_limit(tmp_path):
    bomb = tmp_path / "bomb.png"
    bomb.write_bytes(png_bomb(20_000, 20_000))
    assert bomb.stat().st_size < 100_000
    assert header_size(bomb, "bomb.png") == (20_000, 20_000)  # past PIL's own limit: its size is still read
    with pytest.raises(TooManyPixels, match=r"20000x20000 = 400,000,000 pixels exceeds the limit of 40,000,000"):
        decode_image(bomb, max_pixels=40_000_000)
    with pytest.raises(NotAnImage):
        header_size(b"just text", "t.txt")
    ok = tmp_path / "ok.png"
    Image.new("RGB", (30, 20)).save(ok)
    assert decode_image(ok, max_pixels=600).shape == (20, 30, 3)
    with pytest.raises(TooManyPixels):
        decode_image(ok, max_pixels=599)
