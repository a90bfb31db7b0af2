"""What several commands share: the dataset with its skipped annotations, the run's record, token crops."""

from __future__ import annotations

import json
import platform
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import timm
import torch
from tqdm import tqdm

from ..version import __version__
from ..datasets import Dataset, DatasetOptions, dataset_from
from ..devices import bf16_hardware
from ..errors import LostRegError
from ..files import write_text
from ..decoders import DECODE_TIMEOUT_S, DecodePool
from ..loop import DECODE_WALL_S, FailedImage
from ..options import Options
from ..pipeline import Localizer, RunPlan


def dataset_of(options: DatasetOptions) -> Dataset:
    """The dataset the options describe; the annotations it had to skip are printed, one line per reason."""
    dataset = dataset_from(options)
    for line in skipped_lines(dataset.skipped):
        print(line)
    return dataset


def skipped_lines(skipped: list[tuple[str, str]], first: int = 3) -> list[str]:
    """One line per reason: an image's own, or how many share it and the first few (summary.json has all)."""
    by_reason: dict[str, list[str]] = {}
    for image_id, reason in skipped:
        by_reason.setdefault(reason, []).append(image_id)
    return [f"skipped {ids[0]}: {reason}" if len(ids) == 1 else
            f"skipped {len(ids):,} images, {reason}: {', '.join(ids[:first])}… (all in summary.json)"
            for reason, ids in by_reason.items()]


def run_info(config: Options, localizer: Localizer, plan: RunPlan | None = None) -> dict[str, Any]:
    """Configuration, the run plan and versions, for the summary files (``--config`` reads the configuration back)."""
    bb = localizer.backbone
    return {
        "config": config.record(),
        "method": {"name": localizer.method.name, **localizer.method.options()},
        "backbone": {"name": bb.name, "patch_size": bb.patch_size, "registers": bb.num_registers,
                     "test_time_registers": bb.test_time_registers,
                     "test_time_register_neurons": bb.test_time_register_neurons,
                     "prefix_tokens": bb.num_prefix_tokens, "features": bb.features, "layer": bb.layer,
                     "source": bb.source,
                     "prep": localizer.prep,
                     "device": str(localizer.device), "dtype": localizer.dtype,
                     "native_bf16": bf16_hardware(localizer.device)},
        **({"plan": plan.describe()} if plan else {}),
        "versions": {"lost_reg": __version__, "torch": torch.__version__, "timm": timm.__version__,
                     "python": platform.python_version()},
    }


def whole_patch_images(dataset: Dataset, limit: int, patch_size: int, max_side: int | None, max_pixels: int,
                       errors: list[FailedImage], progress: bool = True) -> Iterator[torch.Tensor]:
    """uint8 [3, H, W] crops of the first ``limit`` images onto whole patches (no padding: it would skew token
    norms), one at a time, for the token analyses (``artifacts``, ``registers find``); unreadable images go to
    ``errors``; decoded in a killable process, as ``eval`` decodes (a hostile file is stopped, never the run)."""
    pool = DecodePool(1, timeout_s=DECODE_WALL_S, max_pixels=max_pixels, cpu_s=DECODE_TIMEOUT_S)
    try:
        for i in tqdm(range(limit), unit="img", disable=not progress, dynamic_ncols=True):
            sample = dataset[i]
            try:
                p = pool.result(pool.decode(sample.path, sample.image_id, patch_size, max_side, "pad"),
                                sample.image_id)
            except LostRegError as e:
                errors.append(FailedImage(sample.image_id, str(sample.path), str(e)))
                tqdm.write(f"skipped {e}")
                continue
            vh, vw = (v // patch_size * patch_size for v in p.valid)
            yield p.pixels[:, :vh, :vw]
    finally:
        pool.close()


def write_json(path: Path, data: dict[str, Any]) -> None:
    """Write atomically so a crash never leaves half a file."""
    write_text(path, json.dumps(data, indent=2) + "\n")
