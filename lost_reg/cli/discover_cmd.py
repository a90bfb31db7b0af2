"""``lost-reg discover``: boxes for an unlabeled image set, written for annotation tools.

Every image gets up to ``--max-objects`` boxes of the category ``object`` with a score (see
:mod:`lost_reg.scores`); ``--min-score`` drops boxes, and so images, where nothing stands out.
Formats and how to import each into CVAT or Label Studio: :mod:`lost_reg.export`.

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

import argparse
import hashlib
import json
from pathlib import Path

from ..engines import ENGINES, file_name
from ..errors import LostRegError
from ..export import FORMATS, LABEL_STUDIO_PREFIX, ExportOptions, coco_image_ids, export, load_hint, local_files_prefix
from ..scores import DEFAULT_SCORE, SCORES
from .common import (
    add_backbone_arguments,
    add_method_arguments,
    add_run_arguments,
    method_from_args,
    source_from_args,
    write_json,
)


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("paths", nargs="+", metavar="PATH",
                   help="images: files, folders (searched recursively), glob patterns or .txt lists of paths")
    o = p.add_argument_group("output")
    o.add_argument("--out", type=Path, required=True,
                   help="output file (coco, jsonl, labelstudio) or folder (yolo, voc)")
    o.add_argument("--format", choices=list(FORMATS), default="coco", help="output format (see README: discover)")
    o.add_argument("--max-objects", type=int, default=1,
                   help="boxes per image: after each box its patches leave the graph and the method looks again")
    o.add_argument("--min-score", type=float, default=None,
                   help="drop boxes scoring below this (and stop looking); images where nothing stands out get none")
    o.add_argument("--score", choices=list(SCORES), default=DEFAULT_SCORE,
                   help="how a box is scored (see README: scores)")
    o.add_argument("--save-vis", type=Path, default=None, metavar="DIR",
                   help="write a PNG per image: boxes, seed, mask, the method's heat map, CLS and register attention")
    o.add_argument("--image-url-prefix", default=None,
                   help="labelstudio: prefix of each task's image URL, before the image's path relative to its folder "
                        f"(default: Label Studio's local files, {LABEL_STUDIO_PREFIX}FOLDER/ for one folder)")
    o.add_argument("--coco-gt", type=Path, default=None, metavar="JSON",
                   help="coco-results: take image ids from this COCO ground truth, matching file names")
    add_backbone_arguments(p)
    add_method_arguments(p)
    r = add_run_arguments(p)
    r.add_argument("--resume", action="store_true",
                   help="keep what an interrupted run finished (local: OUT.partial.jsonl; ray: OUT.ray/ chunks)")
    r.add_argument("--shard", type=parse_shard, default=(1, 1), metavar="I/N",
                   help="process only shard I of N (1-based; stable hash of each image's path)")
    e = p.add_argument_group("engine")
    e.add_argument("--engine", choices=list(ENGINES), default="local",
                   help="; ".join(f"{k}: {v}" for k, v in ENGINES.items()))
    e.add_argument("--ray-address", default="local",
                   help="ray: the cluster to join (auto: the one this machine belongs to, ray://HOST:PORT) or local")
    e.add_argument("--actors", type=int, default=1, help="ray: model actors (e.g. one per GPU)")
    e.add_argument("--gpus-per-actor", type=float, default=None,
                   help="ray: GPUs each actor reserves (default: 1 when the cluster has GPUs and --device is not cpu)")
    e.add_argument("--chunk-size", type=int, default=10000,
                   help="ray: images per chunk; a finished chunk is kept, so a killed job loses at most one")
    e.add_argument("--decode-batch", type=int, default=32, help="ray: images per decoding task call")


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


def errors_file(out: Path) -> Path:
    return out.with_name(out.name + ".errors.json")


def main(args: argparse.Namespace) -> int:
    from ..datasets import ImageFolder
    from ..engines import run

    dataset = ImageFolder(args.paths)
    for path, reason in dataset.skipped:
        print(f"skipped {path}: {reason}")
    if args.max_objects < 1:
        raise LostRegError("--max-objects must be at least 1")
    samples = [s for s in dataset if in_shard(s.image_id, args.shard)]
    source = source_from_args(args)
    method = method_from_args(args, source.family)  # checked before any image is read, on any engine
    if args.coco_gt and args.format != "coco-results":
        raise LostRegError("--coco-gt is for --format coco-results")
    image_ids, category = ground_truth_ids(args.coco_gt, [file_name(s) for s in samples]) if args.coco_gt else (None, 1)
    outcome = run(args.engine, args, samples)
    prefix = local_files_prefix(args.paths) if args.image_url_prefix is None else args.image_url_prefix
    options = ExportOptions(prefix, f"lost-reg {source.name} {method.describe()}", image_ids, category)
    export(outcome.records, args.out, args.format, options)
    errors = errors_file(args.out)
    if outcome.errors:
        write_json(errors, {"images_failed": len(outcome.errors), "errors": outcome.errors})
        print(f"{len(outcome.errors)} images could not be read; see {errors}")
    else:
        errors.unlink(missing_ok=True)
    boxes = sum(len(r.objects) for r in outcome.records)
    empty = sum(not r.objects for r in outcome.records)
    print(f"{len(outcome.records)} images, {boxes} boxes ({empty} images without a box) -> {args.out} ({args.format}); "
          f"{outcome.summary}")
    hint = load_hint(args.format, args.out, args.paths)
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
