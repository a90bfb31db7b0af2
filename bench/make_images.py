"""Generate N deterministic VOC-sized JPEGs (500×375, a share 375×500) in the Pascal VOC layout.

Each image is a seeded scene: a two-colour gradient background with mild noise and blotches, a
few small distractor shapes, and one large *main object* (ellipse, rectangle or polygon, textured
with stripes or noise). The main object's box is written as a VOC ``<object>``, so

    python bench/make_images.py --n 5000 --out /tmp/vocgen
    lost-reg eval --dataset voc07 --root /tmp/vocgen --out runs/vocgen

runs on the result, and ``/tmp/vocgen/VOC2007/JPEGImages`` is a plain image folder for
``bench/bench_pipeline.py --image-dir``. The CorLoc on these images says nothing about real
photos; they exist to time decoding and the backbone on realistic sizes and JPEG payloads
(~40–80 KB each at quality 90, about what VOC's photos weigh).

Deterministic: the same ``--seed``/``--n``/``--portrait`` give byte-identical files with the same
OpenCV build (image ``i`` depends only on the seed and ``i``, so a larger ``--n`` extends a smaller
set). Existing files are kept unless ``--force``.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import cv2
import numpy as np

WIDTH, HEIGHT = 500, 375
CLASS_NAME = "blob"


def scene(index: int, seed: int, portrait_share: float) -> tuple[np.ndarray, tuple[int, int, int, int]]:
    """RGB uint8 image and the main object's box (xmin, ymin, xmax, ymax), 1-based inclusive (VOC)."""
    rng = np.random.default_rng([seed, index])
    portrait = rng.random() < portrait_share
    w, h = (HEIGHT, WIDTH) if portrait else (WIDTH, HEIGHT)

    # background: a linear gradient between two colours, some low-frequency blotches, fine noise
    c0, c1 = rng.integers(0, 256, 3), rng.integers(0, 256, 3)
    angle = rng.uniform(0, np.pi)
    yy, xx = np.mgrid[0:h, 0:w].astype(np.float32)
    t = (np.cos(angle) * xx / w + np.sin(angle) * yy / h)
    t = (t - t.min()) / max(float(t.max() - t.min()), 1e-6)
    image = (c0[None, None] * (1 - t[..., None]) + c1[None, None] * t[..., None]).astype(np.float32)
    blotch = cv2.resize(rng.normal(0, 18, (6, 8, 3)).astype(np.float32), (w, h), interpolation=cv2.INTER_CUBIC)
    image += blotch + rng.normal(0, 6, (h, w, 3)).astype(np.float32)
    image = np.clip(image, 0, 255).astype(np.uint8)

    for _ in range(int(rng.integers(2, 7))):  # distractors: small shapes
        color = tuple(int(v) for v in rng.integers(0, 256, 3))
        cx, cy = int(rng.integers(0, w)), int(rng.integers(0, h))
        r = int(rng.integers(6, max(8, min(w, h) // 10)))
        if rng.random() < 0.5:
            cv2.circle(image, (cx, cy), r, color, -1, cv2.LINE_AA)
        else:
            cv2.rectangle(image, (cx - r, cy - r), (cx + r, cy + r), color, -1)

    # the main object: 15–55 % of each side, drawn into its own mask so its box is exact
    ow, oh = int(w * rng.uniform(0.15, 0.55)), int(h * rng.uniform(0.15, 0.55))
    x0, y0 = int(rng.integers(0, w - ow)), int(rng.integers(0, h - oh))
    mask = np.zeros((h, w), np.uint8)
    kind = rng.integers(0, 3)
    if kind == 0:
        cv2.ellipse(mask, (x0 + ow // 2, y0 + oh // 2), (ow // 2, oh // 2), 0, 0, 360, 255, -1)
    elif kind == 1:
        cv2.rectangle(mask, (x0, y0), (x0 + ow - 1, y0 + oh - 1), 255, -1)
    else:
        pts = np.stack([rng.integers(x0, x0 + ow, 6), rng.integers(y0, y0 + oh, 6)], -1).astype(np.int32)
        cv2.fillPoly(mask, [cv2.convexHull(pts)], 255)
    color = rng.integers(0, 256, 3).astype(np.float32)
    if rng.random() < 0.5:  # stripes
        period = rng.uniform(6, 20)
        texture = 40 * np.sin((xx + yy * rng.uniform(-1, 1)) * 2 * np.pi / period)[..., None]
    else:
        texture = cv2.GaussianBlur(rng.normal(0, 30, (h, w, 3)).astype(np.float32), (0, 0), 2)
    obj = np.clip(color[None, None] + texture, 0, 255)
    inside = mask > 0
    image[inside] = obj[inside].astype(np.uint8)

    ys, xs = np.nonzero(inside)
    if len(xs) == 0:  # degenerate polygon: fall back to the sampled rectangle
        box = (x0 + 1, y0 + 1, x0 + ow, y0 + oh)
    else:
        box = (int(xs.min()) + 1, int(ys.min()) + 1, int(xs.max()) + 1, int(ys.max()) + 1)
    return image, box


def voc_xml(image_id: str, width: int, height: int, box: tuple[int, int, int, int]) -> str:
    xmin, ymin, xmax, ymax = box
    return (
        "<annotation>\n"
        "\t<folder>VOC2007</folder>\n"
        f"\t<filename>{image_id}.jpg</filename>\n"
        "\t<source><database>lost-reg bench/make_images.py (synthetic)</database></source>\n"
        f"\t<size><width>{width}</width><height>{height}</height><depth>3</depth></size>\n"
        "\t<segmented>0</segmented>\n"
        "\t<object>\n"
        f"\t\t<name>{CLASS_NAME}</name><pose>Unspecified</pose><truncated>0</truncated><difficult>0</difficult>\n"
        f"\t\t<bndbox><xmin>{xmin}</xmin><ymin>{ymin}</ymin><xmax>{xmax}</xmax><ymax>{ymax}</ymax></bndbox>\n"
        "\t</object>\n"
        "</annotation>\n"
    )


def make_images(out: Path, n: int, seed: int = 0, portrait_share: float = 0.25, quality: int = 90,
                force: bool = False) -> Path:
    """Write ``n`` images and annotations under ``out/VOC2007``; returns the JPEGImages folder."""
    voc = out / "VOC2007"
    jpegs, annotations, sets = voc / "JPEGImages", voc / "Annotations", voc / "ImageSets" / "Main"
    for d in (jpegs, annotations, sets):
        d.mkdir(parents=True, exist_ok=True)
    ids = [f"gen_{seed:03d}_{i:06d}" for i in range(n)]
    for i, image_id in enumerate(ids):
        jpg, xml = jpegs / f"{image_id}.jpg", annotations / f"{image_id}.xml"
        if jpg.is_file() and xml.is_file() and not force:
            continue
        image, box = scene(i, seed, portrait_share)
        ok, data = cv2.imencode(".jpg", cv2.cvtColor(image, cv2.COLOR_RGB2BGR), [cv2.IMWRITE_JPEG_QUALITY, quality])
        if not ok:
            raise RuntimeError(f"JPEG encoding failed for {image_id}")
        data.tofile(str(jpg))
        xml.write_text(voc_xml(image_id, image.shape[1], image.shape[0], box))
    (sets / "trainval.txt").write_text("".join(f"{i}\n" for i in ids))
    return jpegs


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--out", type=Path, required=True, help="root folder; images go to OUT/VOC2007/JPEGImages")
    p.add_argument("--n", type=int, default=128, help="number of images")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--portrait", type=float, default=0.25, help="share of 375x500 (portrait) images")
    p.add_argument("--quality", type=int, default=90, help="JPEG quality")
    p.add_argument("--force", action="store_true", help="rewrite files that exist")
    args = p.parse_args(argv)
    if args.n < 1:
        p.error("--n must be at least 1")
    jpegs = make_images(args.out, args.n, args.seed, args.portrait, args.quality, args.force)
    print(f"{args.n} images in {jpegs} (VOC layout under {args.out}/VOC2007)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
