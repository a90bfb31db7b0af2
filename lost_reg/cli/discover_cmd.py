"""``lost-reg discover``: boxes for an unlabeled image set, written for annotation tools.

Every image gets up to ``--max-objects`` boxes of the category ``object`` with a score (see
:mod:`lost_reg.scores`); ``--min-score`` drops boxes, and so images, where nothing stands out.
Each object also gets its pixel mask (``--refine``) in the formats that hold masks, unless
``--no-masks``. Formats and how to import each into CVAT or Label Studio: :mod:`lost_reg.export`.

It runs on an engine (:mod:`lost_reg.engines`): ``local`` appends results to ``OUT.partial.jsonl``
as they are made, so a killed run loses nothing and ``--resume`` skips the images in it; ``ray``
writes them per chunk under ``OUT.ray/`` and ``--resume`` skips the finished chunks. The output in
``--format`` is written at the end, atomically; unreadable images are listed in ``OUT.errors.json``
and skipped. ``--shard i/n``
(1 ≤ i ≤ n) keeps the images whose id hashes to shard i, so n machines given the same inputs
split them without overlap. To merge shards, concatenate their ``OUT.partial.jsonl`` files into
``ALL.partial.jsonl`` and run the same command without ``--shard`` with ``--out ALL --resume``:
every image is done, so only the export is written.
"""

from __future__ import annotations

import json
from pathlib import Path

from ..datasets import ImageFolder
from ..engines import DiscoverConfig, file_name, in_shard, run as run_engine
from ..errors import LostRegError
from ..export import ExportOptions, coco_image_ids, export, load_hint, local_files_prefix
from ..pipeline import plan_run
from .common import write_json

CONFIG = DiscoverConfig


def run(config: DiscoverConfig) -> int:
    """Boxes for ``config.paths`` on the configured engine, exported in ``config.format``."""
    dataset = ImageFolder(config.paths)
    for path, reason in dataset.skipped:
        print(f"skipped {path}: {reason}")
    samples = [s for s in dataset if in_shard(s.image_id, config.shard)]
    plan = plan_run(config)  # checked before any image
    if config.coco_gt and config.format != "coco-results":
        raise LostRegError("--coco-gt is for --format coco-results")
    if config.format == "yolo-seg" and config.no_masks:
        raise LostRegError("--format yolo-seg writes masks: drop --no-masks, or use --format yolo for boxes")
    image_ids, category = (ground_truth_ids(config.coco_gt, [file_name(s) for s in samples]) if config.coco_gt
                           else (None, 1))
    outcome = run_engine(config, plan, samples)
    prefix = local_files_prefix(config.paths) if config.image_url_prefix is None else config.image_url_prefix
    options = ExportOptions(prefix, f"lost-reg {plan.source.name} {plan.method.describe()}", image_ids, category,
                            config.mask_format)
    export(outcome.records, config.out, config.format, options)
    errors = config.out.with_name(config.out.name + ".errors.json")
    if outcome.errors:
        write_json(errors, {"images_failed": len(outcome.errors), "errors": [e.to_json() for e in outcome.errors]})
        print(f"{len(outcome.errors)} images could not be read; see {errors}")
    else:
        errors.unlink(missing_ok=True)
    boxes = sum(len(r.objects) for r in outcome.records)
    empty = sum(not r.objects for r in outcome.records)
    unmasked = sum(o.segmentation is None for r in outcome.records for o in r.objects)
    written = "" if not config.masks else f", {boxes - unmasked} masks ({config.refine})"
    print(f"{len(outcome.records)} images, {boxes} boxes{written} ({empty} images without a box) -> {config.out} "
          f"({config.format}); {outcome.summary}")
    if config.masks and unmasked:
        print(f"{unmasked} boxes have no mask: a resumed run with --no-masks or another format found them "
              f"(without --resume they get one)")
    control = "BrushLabels" if config.mask_format == "rle" else "PolygonLabels"
    hint = load_hint(config.format, config.out, config.paths, control if config.masks and boxes > unmasked else None)
    if hint:
        print(hint)
    return 0


def ground_truth_ids(path: Path, file_names: list[str]) -> tuple[dict[str, int], int]:
    """File name → image id in the COCO ground truth at ``path`` (every image must be in it), and its first category."""
    try:
        ground_truth = json.loads(path.read_text(encoding="utf-8"))
        ids = coco_image_ids(ground_truth, file_names)
        category = min(c["id"] for c in ground_truth["categories"])
    except (OSError, ValueError, KeyError, TypeError) as e:
        raise LostRegError(f"--coco-gt {path}: not a readable COCO annotation file ({e})") from None
    missing = [n for n in file_names if n not in ids]
    if missing:
        raise LostRegError(f"--coco-gt {path}: {len(missing)} of {len(file_names)} images are not in it "
                           f"(by file name or unique base name), e.g. {', '.join(missing[:3])}")
    return ids, category
