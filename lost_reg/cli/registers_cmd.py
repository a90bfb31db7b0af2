"""``lost-reg registers find``: the register neurons of a ViT, for ``--test-time-registers``.

Writes ``neurons.json`` (:class:`lost_reg.registers.RegisterNeurons`): the backbone and its weights,
the blocks and hidden units, the outlier block and cutoff, the outlier share before and after. See
:mod:`lost_reg.registers` for the method.
"""

from __future__ import annotations

import argparse
from pathlib import Path

from ..images import MAX_PIXELS
from .common import add_backbone_arguments, model_kwargs, whole_patch_images, write_json


def add_arguments(p: argparse.ArgumentParser) -> None:
    sub = p.add_subparsers(dest="action", required=True, metavar="ACTION")
    f = sub.add_parser("find", help="find the register neurons on calibration images", description=__doc__)
    f.add_argument("paths", nargs="+", metavar="PATH",
                   help="calibration images (~100): files, folders, glob patterns or .txt lists of paths")
    f.add_argument("--out", type=Path, required=True, help="neurons.json to write")
    add_backbone_arguments(f, features=False)
    g = f.add_argument_group("search")
    g.add_argument("--layer", type=int, default=None,
                   help="block whose high-norm patches are the outliers (default: the block with the most)")
    g.add_argument("--top-k", type=int, default=None,
                   help="number of neurons (default: 1, 2, 4… until the outliers at --layer drop to a tenth)")
    g.add_argument("--limit", type=int, default=100, help="calibration images to use")
    g.add_argument("--max-side", type=int, default=518, help="downscale images whose longer side exceeds this")
    g.add_argument("--max-pixels", type=int, default=MAX_PIXELS, help="skip larger images (decompression bombs)")
    g.add_argument("--quiet", action="store_true", help="no progress bar")


def find_main(args: argparse.Namespace) -> int:
    import torch

    from ..cache import weights_identity
    from ..datasets import ImageFolder
    from ..errors import LostRegError
    from ..images import normalize
    from ..models import create_backbone
    from ..pipeline import DTYPES, resolve_device
    from ..registers import find_register_neurons

    if args.test_time_registers is not None:
        raise LostRegError("--test-time-registers does not apply to `registers find`: it finds them")
    dataset = ImageFolder(args.paths)
    bb = create_backbone(args.backbone, args.weights, pos_resample=args.pos_resample, **model_kwargs(args.model_arg))
    device = resolve_device(args.device)
    model = bb.model.to(device)
    errors: list[dict] = []
    crops = list(whole_patch_images(dataset, min(args.limit, len(dataset)), bb.patch_size, args.max_side,
                                    args.max_pixels, errors, progress=not args.quiet))  # kept: the search passes over them more than once
    if not crops:
        raise LostRegError("no calibration image could be read")

    def images():
        for c in crops:
            yield normalize(c[None].to(device), [tuple(c.shape[-2:])], bb.mean, bb.std)

    with torch.autocast(device.type, dtype=DTYPES[args.dtype], enabled=args.dtype != "float32"):
        neurons = find_register_neurons(model, images, backbone=bb.name,
                                        weights=weights_identity(bb.name, args.weights),
                                        layer=args.layer, top_k=args.top_k)
    neurons.stats["errors"] = errors
    args.out.parent.mkdir(parents=True, exist_ok=True)
    neurons.save(args.out)
    st = neurons.stats
    blocks = ", ".join(f"{layer}: {len(units)}" for layer, units in neurons.layers.items())
    print(f"{neurons.count} register neurons (block: count; {blocks}) -> {args.out}")
    print(f"outlier patches at block {neurons.outlier_layer} (norm > {neurons.cutoff:.3g}): "
          f"{100 * st['outlier_share_before']:.2f} % before, {100 * st['outlier_share_after_on_trial_images']:.2f} % "
          f"with the test-time register (on {min(st['trial_images'], len(crops))} images)")
    if errors:
        write_json(args.out.with_name(args.out.name + ".errors.json"), {"errors": errors})
    return 0


ACTIONS = {"find": find_main}


def main(args: argparse.Namespace) -> int:
    return ACTIONS[args.action](args)
