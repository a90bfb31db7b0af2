"""One process: :func:`lost_reg.engine.inference_on_dataset` (decoding workers, shape buckets, one device).

Records are appended to ``OUT.partial.jsonl`` as they are made, so a killed run loses nothing:
``--resume`` skips the images in it.
"""

from __future__ import annotations

import argparse
import time
from collections.abc import Sequence
from pathlib import Path

from ..cli.common import build_localizer
from ..datasets import Sample
from ..engine import inference_on_dataset, shape_order
from ..evaluation import PredictionWriter, load_predictions
from ..export import ImageRecord
from ..images import Prepared
from . import Outcome, find_objects, image_record


def work_file(out: Path) -> Path:
    return out.with_name(out.name + ".partial.jsonl")


def run(args: argparse.Namespace, samples: Sequence[Sample]) -> Outcome:
    localizer = build_localizer(args)
    partial = work_file(args.out)
    writer = PredictionWriter(partial, resume=args.resume)
    done = writer.done_ids()
    todo = [i for i, s in enumerate(samples) if s.image_id not in done]
    if done:
        print(f"resuming: {len(done)} images already in {partial}, {len(todo)} to go")
    visualizer = None
    if args.save_vis is not None:
        from ..vis import Visualizer

        visualizer = Visualizer(localizer, args.save_vis)

    def localize(batch: Sequence[Prepared]) -> list[tuple[tuple[int, int], list]]:
        return [(p.size, objects) for p, objects in zip(batch, find_objects(localizer, batch, args))]

    def process(sample: Sample, found: tuple[tuple[int, int], list]) -> None:
        writer.write(image_record(sample, *found).to_json())
        if visualizer is not None:
            visualizer(sample, found[1])

    start = time.perf_counter()
    with writer:
        stats = inference_on_dataset(localizer, samples, shape_order(samples, todo, localizer), process,
                                     localize=localize, batch_size=args.batch_size, workers=args.workers,
                                     progress=not args.quiet, max_pixels=args.max_pixels)
    wall = time.perf_counter() - start
    order = {s.image_id: i for i, s in enumerate(samples)}
    records = sorted((ImageRecord.from_json(r) for r in load_predictions(partial) if r["image_id"] in order),
                     key=lambda r: order[r.image_id])
    speed = f"{stats.processed / wall:.2f} images/s" if wall and stats.processed else "nothing to do"
    return Outcome(records, stats.errors, f"local engine on {localizer.device}: {speed}")
