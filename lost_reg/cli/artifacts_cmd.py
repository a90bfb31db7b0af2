"""``lost-reg artifacts``: the registers paper's §2 analysis of high-norm tokens for any backbone.

Writes to ``OUT``: ``report.json`` (per layer: patch-norm median / p99 / max, the outlier
cutoff and share, CLS and register norms; at ``--layer``: the outliers' and normal patches'
cosine similarity to their 4 neighbours after the patch embedding), ``norms_layerNN.png`` (a
histogram per layer) and ``norms.png`` (all layers). See :mod:`lost_reg.artifacts` for the
cutoff rule; ``--layer`` picks the layer whose outliers are compared (default: the last).
"""

from __future__ import annotations

import numpy as np

from ..artifacts import analyse, collect, histogram_png, normalised
from ..config import ArtifactsConfig
from ..datasets import ImageFolder
from ..devices import autocast
from ..errors import LostRegError
from ..loop import FailedImage
from ..models import create_backbone
from ..pipeline import Localizer, source_of
from ..vis import montage, write_png
from .common import run_info, whole_patch_images, write_json

CONFIG = ArtifactsConfig


def run(config: ArtifactsConfig) -> int:
    """The high-norm token analysis of ``config``'s backbone on its images, written to ``config.out``."""
    dataset = ImageFolder(config.paths)
    layer = -1 if config.layer is None else config.layer  # the layer whose outliers are compared: the last by default
    backbone = create_backbone(source_of(config), features=config.features, layer=layer,
                               test_time_registers=config.test_time_registers)
    localizer = Localizer(backbone, device=config.device, dtype=config.dtype)
    bb = localizer.backbone
    errors: list[FailedImage] = []

    limit = len(dataset) if config.limit is None else min(config.limit, len(dataset))
    crops = whole_patch_images(dataset, limit, bb.patch_size, config.max_side, config.max_pixels, errors,
                               progress=not config.quiet)
    images = normalised(crops, localizer.device, bb.mean, bb.std)

    with autocast(localizer.device, localizer.dtype):
        stats = collect(bb.model, images)
    if not stats.neighbour_cos:
        raise LostRegError("no readable image to analyse")
    report = analyse(stats, bb.num_registers, layer, min_gap=config.min_gap,
                     min_separation=config.min_separation, max_share=config.max_share)
    config.out.mkdir(parents=True, exist_ok=True)
    tiles = []
    for layer in report["layers"]:
        i = layer["layer"]
        norms = np.concatenate([n.ravel() for n in stats.patch_norms[i]])
        share = f"{100 * layer['outlier_share']:.2f}% outliers" if layer["cutoff"] else "no outliers"
        tile = histogram_png(norms, layer["cutoff"], f"layer {i}: {share}", layer["cls_norm"],
                             layer["register_norms"])
        write_png(config.out / f"norms_layer{i:02d}.png", np.ascontiguousarray(tile[..., ::-1]))  # BGR → RGB
        tiles.append(tile)
    write_png(config.out / "norms.png", np.ascontiguousarray(montage(tiles, columns=4)[..., ::-1]))
    write_json(config.out / "report.json", {**report, "errors": [e.to_json() for e in errors],
                                             **run_info(config, localizer)})
    out = report["outliers"]
    cos = out["neighbour_cosine"]
    print(f"{report['images']} images, layer {out['layer']}: "
          + (f"{100 * out['share']:.2f}% high-norm patch tokens (cutoff {out['cutoff']:.1f}); "
             f"neighbour cosine after patch embedding: outliers {cos['outliers']:.3f}, normal {cos['normal']:.3f}"
             if out["cutoff"] else "no high-norm outliers (one mode of norms)")
          + f" -> {config.out / 'report.json'}")
    return 0
