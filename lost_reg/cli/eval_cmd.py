"""``lost-reg eval``: CorLoc of a discovery method on VOC07 / VOC12 trainval or COCO20k.

Predictions go to ``OUT/predictions.jsonl`` as they are made, so an interrupted run loses
nothing; ``--resume`` skips what is there and recomputes the summary over the whole file.
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path

from ..evaluation import (
    CorLocEvaluator,
    PredictionWriter,
    corloc,
    load_predictions,
    summarize,
)
from ..pipeline import Detection
from ..vis import Visualizer
from .common import (
    add_backbone_arguments,
    add_dataset_arguments,
    add_method_arguments,
    add_run_arguments,
    build_localizer,
    dataset_from_args,
    run_info,
    write_json,
)


def add_arguments(p: argparse.ArgumentParser) -> None:
    add_dataset_arguments(p)
    add_backbone_arguments(p)
    add_method_arguments(p)
    r = add_run_arguments(p)
    r.add_argument("--out", type=Path, required=True, help="output folder: predictions.jsonl, summary.json")
    r.add_argument("--resume", action="store_true", help="keep OUT/predictions.jsonl and skip the images in it")
    r.add_argument("--save-vis", type=Path, default=None, metavar="DIR",
                   help="write a PNG per image: box, GT, seed, mask, the method's heat map, CLS and register attention")


def main(args: argparse.Namespace) -> int:
    from ..engine import inference_on_dataset, shape_order

    dataset = dataset_from_args(args)
    localizer = build_localizer(args)
    args.out.mkdir(parents=True, exist_ok=True)
    predictions = args.out / "predictions.jsonl"
    writer = PredictionWriter(predictions, resume=args.resume)
    done = writer.done_ids()
    selected = range(len(dataset)) if args.limit is None else range(min(args.limit, len(dataset)))
    todo = [i for i in selected if dataset[i].image_id not in done]
    wanted = {dataset[i].image_id for i in selected}
    before = summarize(r for r in load_predictions(predictions) if r["image_id"] in wanted) if done else corloc(0, 0)
    if done:
        print(f"resuming: {len(done)} images already in {predictions} ({before}), {len(todo)} to go")

    evaluator = CorLocEvaluator()
    vis = Visualizer(localizer, args.save_vis) if args.save_vis else None

    def process(sample, det: Detection) -> None:
        writer.write(evaluator.process(sample, det.box, width=det.width, height=det.height, seed=det.seed))
        if vis:
            vis(sample, [det])

    def postfix() -> dict:
        """The running CorLoc over every image so far; after --resume also this run's alone."""
        r = evaluator.evaluate()
        total = corloc(before.found + r.found, before.total + r.total)
        return {"CorLoc": f"{100 * total.corloc:.1f}%", **({"this run": f"{100 * r.corloc:.1f}%"} if done else {})}

    order = shape_order(dataset, todo, localizer)
    start = time.perf_counter()
    with writer:
        stats = inference_on_dataset(localizer, dataset, order, process, batch_size=args.batch_size,
                                     workers=args.workers, progress=not args.quiet, postfix=postfix,
                                     max_pixels=args.max_pixels)
    wall = time.perf_counter() - start

    records = [r for r in load_predictions(predictions) if r["image_id"] in wanted]
    result = summarize(records)
    summary = {
        "dataset": args.dataset, "corloc": result.corloc, "found": result.found, "total": result.total,
        "images_processed": stats.processed, "images_resumed": len(done & wanted), "images_in_predictions": len(records),
        "images_failed": stats.failed, "errors": stats.errors,
        "annotations_skipped": [{"image_id": i, "reason": r} for i, r in dataset.skipped],
        "timings": {"wall_s": wall, "images_per_s": stats.processed / wall if wall else 0.0,
                    "decode_wait_s": stats.wait, "forward_s": stats.forward, "discovery_s": stats.discovery,
                    "write_s": stats.write},
        **run_info(args, localizer),
    }
    write_json(args.out / "summary.json", summary)
    if stats.failed:
        print(f"{stats.failed} images could not be read; see {args.out / 'summary.json'} (errors)")
    print(result)
    return 0
