"""``lost-reg registers find``: the register neurons of a ViT, for ``--test-time-registers``.

Writes ``neurons.json`` (:class:`lost_reg.registers.RegisterNeurons`): the backbone and its weights,
the blocks and hidden units, the outlier block and cutoff, the outlier share before and after. See
:mod:`lost_reg.registers` for the method.
"""

from __future__ import annotations

import argparse
from typing import Any

from ..artifacts import normalised
from ..config import RegistersFindConfig
from ..datasets import ImageFolder
from ..devices import autocast, resolve_device
from ..errors import LostRegError
from ..pipeline import source_of
from ..recipes import resolve_dtype
from ..registers import find_register_neurons
from .common import whole_patch_images, write_json
from .options import add_options, from_args


def add_arguments(p: argparse.ArgumentParser, saved: dict[str, Any] | None = None) -> None:
    sub = p.add_subparsers(dest="action", required=True, metavar="ACTION")
    f = sub.add_parser("find", help="find the register neurons on calibration images", description=__doc__)
    add_options(f, RegistersFindConfig, saved=saved)


def find(config: RegistersFindConfig) -> int:
    """The register neurons of ``config``'s backbone on its calibration images, written to ``config.out``."""
    from ..models import create_backbone

    if config.test_time_registers is not None:
        raise LostRegError("--test-time-registers does not apply to `registers find`: it finds them")
    dataset = ImageFolder(config.paths)
    source = source_of(config)
    bb = create_backbone(source)
    device = resolve_device(config.device)
    model = bb.model.to(device)
    errors: list = []
    # kept in memory: the search passes over them more than once
    crops = list(whole_patch_images(dataset, min(config.limit, len(dataset)), bb.patch_size, config.max_side,
                                    config.max_pixels, errors, progress=not config.quiet))
    if not crops:
        raise LostRegError("no calibration image could be read")
    with autocast(device, resolve_dtype(source.family, device, config.dtype)):
        neurons = find_register_neurons(model, lambda: normalised(crops, device, bb.mean, bb.std), backbone=bb.name,
                                        weights=source.identity, layer=config.layer, top_k=config.top_k)
    neurons.stats["errors"] = [e.to_json() for e in errors]
    config.out.parent.mkdir(parents=True, exist_ok=True)
    neurons.save(config.out)
    st = neurons.stats
    blocks = ", ".join(f"{layer}: {len(units)}" for layer, units in neurons.layers.items())
    print(f"{neurons.count} register neurons (block: count; {blocks}) -> {config.out}")
    print(f"outlier patches at block {neurons.outlier_layer} (norm > {neurons.cutoff:.3g}): "
          f"{100 * st['outlier_share_before']:.2f} % before, {100 * st['outlier_share_after_on_trial_images']:.2f} % "
          f"with the test-time register (on {min(st['trial_images'], len(crops))} images)")
    if errors:
        write_json(config.out.with_name(config.out.name + ".errors.json"), {"errors": neurons.stats["errors"]})
    return 0


def main(args: argparse.Namespace) -> int:
    """``lost-reg registers ACTION``: ``find``, its one action."""
    return find(from_args(RegistersFindConfig, args))
