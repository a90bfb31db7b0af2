"""``lost-reg eval``: CorLoc of a discovery method on VOC07 / VOC12 trainval or COCO20k.

Predictions go to ``OUT/predictions.jsonl`` as they are made, so an interrupted run loses
nothing; ``--resume`` skips what is there and recomputes the summary over the whole file.
"""

from __future__ import annotations

from ..config import EvalConfig
from ..evaluation import CorLocEvaluator, PredictionWriter, corloc, load_predictions, summarize
from ..loop import Failures, ProgressBar, build_loader, inference_on_dataset, shape_order
from ..pipeline import build_localizer, plan_run
from ..vis import Visualizer
from .common import dataset_of, run_info, write_json

CONFIG = EvalConfig


def run(config: EvalConfig) -> int:
    """Evaluate ``config``'s setting on its dataset, writing ``predictions.jsonl`` and ``summary.json``."""
    dataset = dataset_of(config)
    plan = plan_run(config)
    localizer = build_localizer(plan)
    config.out.mkdir(parents=True, exist_ok=True)
    predictions = config.out / "predictions.jsonl"
    writer = PredictionWriter(predictions, resume=config.resume)
    done = writer.done_ids()
    selected = range(len(dataset)) if config.limit is None else range(min(config.limit, len(dataset)))
    todo = writer.todo(dataset, selected)
    wanted = {dataset[i].image_id for i in selected}
    before = summarize(r for r in load_predictions(predictions) if r["image_id"] in wanted) if done else corloc(0, 0)
    if done:
        print(f"resuming: {len(done)} images already in {predictions} ({before}), {len(todo)} to go")

    evaluator, failures = CorLocEvaluator(), Failures()

    def postfix() -> dict:
        """The running CorLoc over every image so far; after --resume also this run's alone."""
        r = evaluator.evaluate()
        total = corloc(before.found + r.found, before.total + r.total)
        return {"CorLoc": f"{100 * total.corloc:.1f}%", **({"this run": f"{100 * r.corloc:.1f}%"} if done else {})}

    hooks = [writer, evaluator, failures, *([Visualizer(localizer, config.save_vis)] if config.save_vis else []),
             ProgressBar(len(todo), enabled=not config.quiet, postfix=postfix)]
    loader = build_loader(localizer, dataset, shape_order(dataset, todo, localizer), batch_size=config.batch_size,
                          workers=config.workers, max_pixels=config.max_pixels)
    stats = inference_on_dataset(localizer.localize_prepared, loader, hooks)

    records = [r for r in load_predictions(predictions) if r["image_id"] in wanted]
    result = summarize(records)
    timings = localizer.timings
    summary = {
        "dataset": config.dataset, "corloc": result.corloc, "found": result.found, "total": result.total,
        "images_processed": stats.processed, "images_resumed": len(done & wanted),
        "images_in_predictions": len(records),
        "images_failed": stats.failed, "errors": [f.to_json() for f in failures.images],
        "annotations_skipped": [{"image_id": i, "reason": r} for i, r in dataset.skipped],
        "timings": {"wall_s": stats.wall, "images_per_s": stats.processed / stats.wall if stats.wall else 0.0,
                    "decode_wait_s": stats.wait, "forward_s": timings.forward, "discovery_s": timings.discovery,
                    "write_s": stats.process},
        **run_info(config, localizer, plan),
    }
    write_json(config.out / "summary.json", summary)
    if stats.failed:
        print(f"{stats.failed} images could not be read; see {config.out / 'summary.json'} (errors)")
    print(result)
    return 0
