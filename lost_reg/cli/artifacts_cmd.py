"""``lost-reg artifacts``: the registers paper's §2 analysis of high-norm tokens for any backbone.

Writes to ``OUT``: ``report.json`` (per layer: patch-norm median / p99 / max, the outlier
cutoff and share, CLS and register norms; at ``--layer``: the outliers' and normal patches'
cosine similarity to their 4 neighbours after the patch embedding), ``norms_layerNN.png`` (a
histogram per layer) and ``norms.png`` (all layers). See :mod:`lost_reg.artifacts` for the
cutoff rule; ``--layer`` picks the layer whose outliers are compared (default: the last).
"""

from __future__ import annotations

import argparse
from pathlib import Path

import cv2
import numpy as np
import torch

from ..artifacts import (
    MAX_SHARE,
    MIN_GAP,
    MIN_SEPARATION,
    analyse,
    collect,
    histogram_png,
)
from ..errors import LostRegError
from ..images import MAX_PIXELS, normalize
from ..models import create_backbone
from ..pipeline import DTYPES, Localizer
from ..vis import montage
from .common import (
    add_backbone_arguments,
    model_kwargs,
    run_info,
    whole_patch_images,
    write_json,
)


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("paths", nargs="+", metavar="PATH",
                   help="images: files, folders (searched recursively), glob patterns or .txt lists of paths")
    p.add_argument("--out", type=Path, required=True, help="output folder: report.json and histogram PNGs")
    add_backbone_arguments(p)
    g = p.add_argument_group("analysis")
    g.add_argument("--max-side", type=int, default=518, help="resize images so the longer side is at most this")
    g.add_argument("--limit", type=int, default=None, help="analyse the first N images only")
    g.add_argument("--min-gap", type=float, default=MIN_GAP,
                   help="outliers need a median norm this many times the others'")
    g.add_argument("--min-separation", type=float, default=MIN_SEPARATION,
                   help="outliers need this Ashman's D (log-norms) from the others")
    g.add_argument("--max-share", type=float, default=MAX_SHARE, help="outliers are at most this share of tokens")
    g.add_argument("--max-pixels", type=int, default=MAX_PIXELS,
                   help="skip (and report) images whose header declares more pixels than this: decompression bombs")
    g.add_argument("--quiet", action="store_true", help="no progress bar")


def main(args: argparse.Namespace) -> int:
    from ..datasets import ImageFolder

    dataset = ImageFolder(args.paths)
    layer = -1 if args.layer is None else args.layer  # the layer whose outliers are compared: the last by default
    backbone = create_backbone(args.backbone, args.weights, features=args.features, layer=layer,
                               test_time_registers=args.test_time_registers, pos_resample=args.pos_resample,
                               **model_kwargs(args.model_arg))
    localizer = Localizer(backbone, device=args.device, dtype=args.dtype)
    bb = localizer.backbone
    ps = bb.patch_size
    errors = []

    limit = len(dataset) if args.limit is None else min(args.limit, len(dataset))
    crops = whole_patch_images(dataset, limit, ps, args.max_side, args.max_pixels, errors, progress=not args.quiet)
    images = (normalize(c[None].to(localizer.device), [tuple(c.shape[-2:])], bb.mean, bb.std) for c in crops)

    with torch.autocast(localizer.device.type, dtype=DTYPES[args.dtype], enabled=args.dtype != "float32"):
        stats = collect(bb.model, images)
    if not stats.neighbour_cos:
        raise LostRegError("no readable image to analyse")
    report = analyse(stats, bb.num_registers, layer, min_gap=args.min_gap,
                     min_separation=args.min_separation, max_share=args.max_share)
    args.out.mkdir(parents=True, exist_ok=True)
    tiles = []
    for layer in report["layers"]:
        i = layer["layer"]
        norms = np.concatenate([n.ravel() for n in stats.patch_norms[i]])
        share = f"{100 * layer['outlier_share']:.2f}% outliers" if layer["cutoff"] else "no outliers"
        tile = histogram_png(norms, layer["cutoff"], f"layer {i}: {share}", layer["cls_norm"],
                             layer["register_norms"])
        cv2.imwrite(str(args.out / f"norms_layer{i:02d}.png"), tile)
        tiles.append(tile)
    cv2.imwrite(str(args.out / "norms.png"), montage(tiles, columns=4))
    write_json(args.out / "report.json", {**report, "errors": errors, **run_info(args, localizer)})
    out = report["outliers"]
    cos = out["neighbour_cosine"]
    print(f"{report['images']} images, layer {out['layer']}: "
          + (f"{100 * out['share']:.2f}% high-norm patch tokens (cutoff {out['cutoff']:.1f}); "
             f"neighbour cosine after patch embedding: outliers {cos['outliers']:.3f}, normal {cos['normal']:.3f}"
             if out["cutoff"] else "no high-norm outliers (one mode of norms)")
          + f" -> {args.out / 'report.json'}")
    return 0

