"""One process: :func:`lost_reg.loop.inference_on_dataset` (decoding workers, shape buckets, one device).

Records are appended to ``OUT.partial.jsonl`` as they are made, so a killed run loses nothing:
``--resume`` skips the images in it.
"""

from __future__ import annotations

import logging

from collections.abc import Sequence

from ..datasets import Sample
from ..evaluation import PredictionWriter, load_predictions
from ..export import ImageRecord
from ..loop import Failures, ProgressBar, build_loader, inference_on_dataset, shape_order
from ..pipeline import RunPlan, build_localizer
from ..vis import Visualizer
from . import DiscoverConfig, Outcome, find, image_record


log = logging.getLogger(__name__)


def run(config: DiscoverConfig, plan: RunPlan, samples: Sequence[Sample]) -> Outcome:
    localizer = build_localizer(plan)
    partial = config.out.with_name(config.out.name + ".partial.jsonl")
    writer = PredictionWriter(partial, resume=config.resume,
                              record=lambda sample, prepared, objects: image_record(sample, prepared.size,
                                                                                    objects).to_json())
    done = writer.done_ids()
    todo = writer.todo(samples, range(len(samples)))
    if done:
        log.info(f"resuming: {len(done)} images already in {partial}, {len(todo)} to go")
    failures = Failures()
    hooks = [writer, failures, *([Visualizer(localizer, config.save_vis)] if config.save_vis is not None else []),
             ProgressBar(len(todo), enabled=not config.quiet)]
    loader = build_loader(localizer, samples, shape_order(samples, todo, localizer), batch_size=config.batch_size,
                          workers=config.workers, max_pixels=config.max_pixels)
    stats = inference_on_dataset(lambda batch: find(config, localizer, batch), loader, hooks)
    order = {s.image_id: i for i, s in enumerate(samples)}
    records = sorted((ImageRecord.from_json(r) for r in load_predictions(partial) if r["image_id"] in order),
                     key=lambda r: order[r.image_id])
    speed = f"{stats.processed / stats.wall:.2f} images/s" if stats.wall and stats.processed else "nothing to do"
    return Outcome(records, failures.images, f"local engine on {localizer.device} ({localizer.dtype}): {speed}")
