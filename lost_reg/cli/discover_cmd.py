"""``lost-reg discover``: boxes for an unlabeled image set, written for annotation tools.

Every image gets up to ``--max-objects`` boxes of the category ``object`` with a score (see
:mod:`lost_reg.scores`); ``--min-score`` drops boxes, and so images, where nothing stands out.
Formats and how to import each into CVAT or Label Studio: :mod:`lost_reg.export`.

Results are appended to ``OUT.partial.jsonl`` as they are made, so a killed run loses nothing:
``--resume`` skips the images in it. The output in ``--format`` is written from that file at the
end, atomically; unreadable images are listed in ``OUT.errors.json`` and skipped. ``--shard i/n``
(1 ≤ i ≤ n) keeps the images whose id hashes to shard i, so n machines given the same inputs
split them without overlap. To merge shards, concatenate their ``OUT.partial.jsonl`` files into
``ALL.partial.jsonl`` and run the same command without ``--shard`` with ``--out ALL --resume``:
every image is done, so only the export is written.
"""

from __future__ import annotations

import argparse
import hashlib
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path, PurePosixPath

from ..datasets import Sample
from ..errors import LostRegError
from ..evaluation import PredictionWriter, load_predictions
from ..export import FORMATS, LABEL_STUDIO_PREFIX, DiscoveredObject, ImageRecord, export
from ..images import Prepared
from ..pipeline import ScoredDetection
from ..scores import DEFAULT_SCORE, SCORES
from .common import (
    add_backbone_arguments,
    add_method_arguments,
    add_run_arguments,
    build_localizer,
    write_json,
)


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("paths", nargs="+", metavar="PATH",
                   help="images: files, folders (searched recursively), glob patterns or .txt lists of paths")
    o = p.add_argument_group("output")
    o.add_argument("--out", type=Path, required=True,
                   help="output file (coco, jsonl, labelstudio) or folder (yolo, voc)")
    o.add_argument("--format", choices=FORMATS, default="coco", help="output format (see README: discover)")
    o.add_argument("--max-objects", type=int, default=1,
                   help="boxes per image: after each box its patches leave the graph and the method looks again")
    o.add_argument("--min-score", type=float, default=None,
                   help="drop boxes scoring below this (and stop looking); images where nothing stands out get none")
    o.add_argument("--score", choices=list(SCORES), default=DEFAULT_SCORE,
                   help="how a box is scored (see README: scores)")
    o.add_argument("--save-vis", type=Path, default=None, metavar="DIR",
                   help="write a PNG per image: boxes, seed, mask, the method's heat map, CLS and register attention")
    o.add_argument("--image-url-prefix", default=LABEL_STUDIO_PREFIX,
                   help="labelstudio: prefix of each task's image URL (the image path relative to its folder follows)")
    add_backbone_arguments(p)
    add_method_arguments(p)
    r = add_run_arguments(p)
    r.add_argument("--resume", action="store_true", help="keep OUT.partial.jsonl and skip the images in it")
    r.add_argument("--shard", type=parse_shard, default=(1, 1), metavar="I/N",
                   help="process only shard I of N (1-based; stable hash of each image's path)")


def parse_shard(text: str) -> tuple[int, int]:
    """``"2/4"`` → (2, 4), checked: 1 ≤ i ≤ n."""
    i, sep, n = text.partition("/")
    try:
        shard = (int(i), int(n))
    except ValueError:
        shard = (0, 0)
    if not sep or not 1 <= shard[0] <= shard[1]:
        raise argparse.ArgumentTypeError(f"--shard wants I/N with 1 <= I <= N, got {text!r}")
    return shard


def in_shard(key: str, shard: tuple[int, int]) -> bool:
    """Whether ``key`` (an image path) belongs to ``shard``: a hash, so stable across machines and runs."""
    i, n = shard
    return int.from_bytes(hashlib.sha1(key.encode()).digest()[:8], "big") % n == i - 1


def work_file(out: Path) -> Path:
    return out.with_name(out.name + ".partial.jsonl")


def errors_file(out: Path) -> Path:
    return out.with_name(out.name + ".errors.json")


@dataclass
class Found:
    """One image's scored boxes and its size (known even when no box is left)."""

    size: tuple[int, int]
    """(width, height) of the original image."""
    objects: list[ScoredDetection]


def main(args: argparse.Namespace) -> int:
    from ..datasets import ImageFolder
    from ..engine import inference_on_dataset, shape_order

    dataset = ImageFolder(args.paths)
    for path, reason in dataset.skipped:
        print(f"skipped {path}: {reason}")
    selected = [i for i in range(len(dataset)) if in_shard(dataset[i].image_id, args.shard)]
    if args.max_objects < 1:
        raise LostRegError("--max-objects must be at least 1")
    localizer = build_localizer(args)
    partial = work_file(args.out)
    writer = PredictionWriter(partial, resume=args.resume)
    done = writer.done_ids()
    todo = [i for i in selected if dataset[i].image_id not in done]
    if done:
        print(f"resuming: {len(done)} images already in {partial}, {len(todo)} to go")
    visualizer = None
    if args.save_vis is not None:
        from ..vis import Visualizer

        visualizer = Visualizer(localizer, args.save_vis)

    def process(sample, found: Found) -> None:
        width, height = found.size
        objects = [DiscoveredObject(box=d.detection.box, score=d.score, seed=d.detection.seed) for d in found.objects]
        writer.write(ImageRecord(sample.image_id, file_name(sample), width, height, objects).to_json())
        if visualizer is not None:
            visualizer(sample, found.objects)

    def localize(batch: Sequence[Prepared]) -> list[Found]:
        found = localizer.localize_prepared_multi(batch, args.max_objects, args.min_score, args.score)
        return [Found(p.size, objects) for p, objects in zip(batch, found)]

    order = shape_order(dataset, todo, localizer)
    with writer:
        stats = inference_on_dataset(localizer, dataset, order, process, localize=localize,
                                     batch_size=args.batch_size, workers=args.workers, progress=not args.quiet,
                                     max_pixels=args.max_pixels)

    wanted = {dataset[i].image_id for i in selected}
    records = [ImageRecord.from_json(r) for r in load_predictions(partial) if r["image_id"] in wanted]
    export(records, args.out, args.format, url_prefix=args.image_url_prefix,
           model_version=f"lost-reg {args.backbone} {localizer.method.describe()}")
    errors = errors_file(args.out)
    if stats.errors:
        write_json(errors, {"images_failed": stats.failed, "errors": stats.errors})
        print(f"{stats.failed} images could not be read; see {errors}")
    else:
        errors.unlink(missing_ok=True)
    boxes = sum(len(r.objects) for r in records)
    empty = sum(not r.objects for r in records)
    print(f"{len(records)} images, {boxes} boxes ({empty} images without a box) -> {args.out} ({args.format})")
    return 0


def file_name(sample: Sample) -> str:
    """The path exports name the image by: its id (the path relative to the folder it was found
    in, or as given for files, globs and lists), or just the file name when that path is
    absolute or climbs out of the working folder with ``..``."""
    path = PurePosixPath(sample.image_id)
    return path.name if path.is_absolute() or ".." in path.parts else sample.image_id
