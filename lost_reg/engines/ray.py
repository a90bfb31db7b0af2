"""A Ray cluster: decoding as CPU tasks, the model in GPU (or CPU) actors, results written by Ray.

The selected images are split into chunks of ``--chunk-size``. Each chunk is one Ray Data pipeline:
``from_items`` → ``map_batches(decode)`` (CPU tasks: :func:`~lost_reg.images.decode_image` and
:func:`~lost_reg.images.prepare`, as the local engine's workers) → ``map_batches(Actor)`` (``--actors``
actors, each loading the model once and running :class:`~lost_reg.pipeline.Localizer` on the batch
grouped by padded shape) → ``write_json`` (one JSON-lines file per block, written by Ray), then a
``_DONE`` marker. A rerun with ``--resume`` skips the chunks that have one, so a killed job loses at
most the chunk in flight; the chunking of the inputs is recorded and must match. Unreadable files
become rows with an ``error``. Ray is imported only here.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import shutil
import time
from collections.abc import Sequence
from pathlib import Path

import numpy as np

from ..datasets import Sample
from ..errors import LostRegError
from ..export import ImageRecord
from ..loop import FailedImage
from ..pipeline import RunPlan
from . import DiscoverConfig, Outcome, file_name, find


log = logging.getLogger(__name__)


def decode_batch(batch: dict, patch_size: int, max_side: int | None, prep: str, max_pixels: int) -> dict:
    """CPU task: image files → uint8 pixels on the patch grid, or the reason they could not be read."""
    from ..images import read_image

    columns = ("pixels", "valid_h", "valid_w", "width", "height", "error")
    out: dict[str, list] = {k: [] for k in columns}
    for image_id, path in zip(batch["image_id"], batch["path"]):
        try:  # never raises: one bad file must not fail the task (Ray would retry it, then the job)
            p = read_image(str(path), str(image_id), patch_size, max_side, prep, max_pixels)
            values = (p.pixels.numpy(), *p.valid, *p.size, "")
        except Exception as e:  # a decoder crash on one file must not end a 10k-image run
            reason = str(e) if isinstance(e, LostRegError) else f"{image_id}: {type(e).__name__}: {e}"
            values = (np.zeros((3, patch_size, patch_size), np.uint8), 0, 0, 0, 0, reason)
        for key, value in zip(columns, values):
            out[key].append(value)
    return {**{k: list(v) for k, v in batch.items()}, **out}


class DiscoverActor:
    """One model per actor, loaded once; each batch localised per padded shape, as the local engine does."""

    def __init__(self, config: DiscoverConfig) -> None:
        from ..pipeline import build_localizer, plan_run

        self.config = config
        self.localizer = build_localizer(plan_run(config))  # this actor's device: a GPU actor's auto is its own
        self.visualizer = None
        if config.save_vis is not None:
            from ..vis import Visualizer

            self.visualizer = Visualizer(self.localizer, config.save_vis)

    def __call__(self, batch: dict) -> dict:
        import torch

        from ..devices import pin
        from ..images import Prepared
        from ..pipeline import group_by_shape
        from . import image_record

        n = len(batch["image_id"])
        samples = [Sample(str(batch["image_id"][i]), Path(str(batch["path"][i])), None, None) for i in range(n)]
        objects = ["[]"] * n
        ok = [i for i in range(n) if not batch["error"][i]]
        prepared = []
        for i in ok:
            pixels = pin(torch.from_numpy(np.ascontiguousarray(batch["pixels"][i])), self.localizer.plan)
            prepared.append(Prepared(pixels, (int(batch["valid_h"][i]), int(batch["valid_w"][i])),
                                     (int(batch["width"][i]), int(batch["height"][i]))))
        for indices in group_by_shape(prepared).values():
            group = [prepared[j] for j in indices]
            for j, found in zip(indices, find(self.config, self.localizer, group)):
                i = ok[j]
                objects[i] = json.dumps(image_record(samples[i], prepared[j].size, found).to_json()["objects"])
                if self.visualizer is not None:
                    self.visualizer(samples[i], found)
        kept = ("index", "image_id", "path", "file_name", "width", "height")
        return {**{k: batch[k] for k in kept}, "objects": objects, "error": batch["error"]}


def run(config: DiscoverConfig, plan: RunPlan, samples: Sequence[Sample]) -> Outcome:
    # Ray Data reads its logging config when it first logs: keep its console to warnings (ours says the rest)
    os.environ.setdefault("RAY_DATA_LOGGING_CONFIG", str(Path(__file__).with_name("ray_data_logging.yaml")))
    try:
        import ray
    except ImportError:
        raise LostRegError('--engine ray needs Ray, which lost-reg does not install by default: '
                           'pip install "lost-reg[ray]"') from None
    state = config.out.with_name(config.out.name + ".ray")  # the chunks' outputs
    size = config.chunk_size
    chunks = [list(range(s, min(s + size, len(samples)))) for s in range(0, len(samples), size)]
    digest = hashlib.sha256(json.dumps([[samples[i].image_id for i in c] for c in chunks]).encode()).hexdigest()
    if config.resume and (state / "plan.json").exists():
        if json.loads((state / "plan.json").read_text())["sha256"] != digest:
            raise LostRegError(f"the inputs or --chunk-size changed since the run in {state}; "
                               "rerun without --resume (or with the same inputs)")
    elif state.exists():
        shutil.rmtree(state)
    state.mkdir(parents=True, exist_ok=True)
    (state / "plan.json").write_text(json.dumps({"sha256": digest, "chunks": len(chunks), "images": len(samples)}))

    patch = plan.source.patch_size
    _start_ray(ray, config)
    gpus = config.gpus_per_actor
    if gpus is None:
        gpus = 1 if config.device != "cpu" and ray.cluster_resources().get("GPU", 0) else 0
    todo = [c for c in range(len(chunks)) if not (state / f"chunk-{c:06d}" / "_DONE").exists()]
    if len(todo) < len(chunks):
        log.info(f"resuming: {len(chunks) - len(todo)} of {len(chunks)} chunks already done in {state}")
    start, processed = time.perf_counter(), 0
    from tqdm import tqdm

    bar = tqdm(total=sum(len(chunks[c]) for c in todo), unit="img", disable=config.quiet, dynamic_ncols=True)
    for c in todo:
        folder = state / f"chunk-{c:06d}"
        shutil.rmtree(folder, ignore_errors=True)  # what a killed run left half-written
        items = [{"index": i, "image_id": samples[i].image_id, "path": str(samples[i].path),
                  "file_name": file_name(samples[i])} for i in chunks[c]]
        ds = ray.data.from_items(items)
        ds = ds.map_batches(decode_batch, fn_kwargs={"patch_size": patch, "max_side": config.max_side,
                                                     "prep": plan.prep, "max_pixels": config.max_pixels},
                            batch_size=config.decode_batch, num_cpus=1, batch_format="numpy")
        ds = ds.map_batches(DiscoverActor, fn_constructor_kwargs={"config": config}, batch_size=config.batch_size,
                            num_gpus=gpus, compute=ray.data.ActorPoolStrategy(size=config.actors),
                            batch_format="numpy")
        ds.write_json(str(folder))
        (folder / "_DONE").write_text(json.dumps({"images": len(items)}))
        processed += len(items)
        bar.update(len(items))
    bar.close()
    wall = time.perf_counter() - start
    rows = sorted((json.loads(line) for f in sorted(state.glob("chunk-*/*.json")) for line in f.open()
                   if line.strip()), key=lambda r: r["index"])
    seen = {r["index"] for r in rows}
    if len(seen) != len(rows) or seen != set(range(len(samples))):
        raise LostRegError(f"{state} holds {len(rows)} rows for {len(samples)} images: rerun without --resume")
    records = [ImageRecord.from_json({**r, "objects": json.loads(r["objects"])}) for r in rows if not r["error"]]
    errors = [FailedImage(r["image_id"], r["path"], r["error"]) for r in rows if r["error"]]
    speed = f"{processed / wall / max(config.actors, 1):.2f} images/s per actor" if processed else "nothing to do"
    ray.shutdown()
    return Outcome(records, errors, f"ray engine, {config.actors} actor(s) with {gpus} GPU(s) each: {speed}")


def _start_ray(ray, config: DiscoverConfig) -> None:
    """Connect to ``--ray-address`` (``auto``: a running cluster), or start a local Ray; quietly (this
    command's own progress bar and summary say what happens; Ray's logs stay in its session folder)."""
    address = None if config.ray_address in (None, "local") else config.ray_address
    ray.init(address=address, ignore_reinit_error=True, include_dashboard=False, logging_level=logging.WARNING,
             log_to_driver=False)
    logging.getLogger("ray").setLevel(logging.WARNING)
    ctx = ray.data.DataContext.get_current()
    ctx.enable_progress_bars = False
    ctx.print_on_execution_start = False
