"""The inference loop, as detectron2's: ``inference_on_dataset(model, loader, evaluators)``.

:func:`build_loader` decodes and pads images in decoding processes (:class:`~lost_reg.decoders.DecodePool`,
the service's too: a file that would decode for minutes or take gigabytes is stopped; pinned memory on
CUDA: the localizer's :class:`~lost_reg.devices.DevicePlan` says how many workers and whether to pin) and
groups them by padded shape, so each model call is one :class:`Batch` of one shape; a file that
cannot be read, or is stopped, comes out as a :class:`FailedImage`. :func:`inference_on_dataset` knows no files: it
calls the model on each batch and hands inputs and outputs to the evaluators and hooks
(:class:`DatasetEvaluator`: CorLoc, the prediction writer, pictures, the progress bar), and each
failed image to their :meth:`~DatasetEvaluator.skip`. The run goes on.
"""

from __future__ import annotations

import logging
import math
import time
from collections import defaultdict, deque
from collections.abc import Callable, Iterable, Iterator, Sequence
from concurrent.futures import Future
from dataclasses import asdict, dataclass
from typing import Any

from tqdm import tqdm

from .datasets import Sample
from .decoders import DECODE_TIMEOUT_S, DecodePool
from .devices import can_pin
from .errors import LostRegError
from .images import MAX_PIXELS, Prepared, grid_size
from .pipeline import Localizer

log = logging.getLogger(__name__)


@dataclass
class Item:
    """A decoded image and its sample."""

    sample: Sample
    prepared: Prepared


DECODE_WALL_S = 6 * DECODE_TIMEOUT_S
"""A run's images are held to ``DECODE_TIMEOUT_S`` of CPU time each; the wall-clock deadline only catches a
decode that waits on something (the machine is shared with the model's threads)."""


class ShapeBucketer:
    """Collects items per padded shape; yields a batch when one shape has ``batch_size`` items.

    At most ``max_pending`` items wait in total: past that the fullest bucket goes out early,
    which bounds memory when a dataset has many shapes.
    """

    def __init__(self, batch_size: int, max_pending: int) -> None:
        self.batch_size, self.max_pending = batch_size, max(max_pending, batch_size)
        self.buckets: dict[tuple[int, ...], list[Item]] = defaultdict(list)
        self.pending = 0

    def add(self, item: Item) -> Iterator[list[Item]]:
        bucket = self.buckets[tuple(item.prepared.pixels.shape)]
        bucket.append(item)
        self.pending += 1
        if len(bucket) >= self.batch_size:
            yield self._take(tuple(item.prepared.pixels.shape))
        elif self.pending > self.max_pending:
            yield self._take(max(self.buckets, key=lambda k: len(self.buckets[k])))

    def flush(self) -> Iterator[list[Item]]:
        while self.buckets:
            yield self._take(next(iter(self.buckets)))

    def _take(self, key: tuple[int, ...]) -> list[Item]:
        batch = self.buckets.pop(key)
        self.pending -= len(batch)
        return batch


def shape_order(dataset: Sequence[Sample], indices: Sequence[int], localizer: Localizer) -> list[int]:
    """Indices sorted by the padded shape their annotated size gives ``localizer``, so buckets fill up.

    Images whose size is unknown keep their place at the end; order only affects speed.
    """

    def key(i: int) -> tuple[int, int, int]:
        size = dataset[i].size
        if size is None:
            return (1, 0, 0)
        ps = localizer.patch_size
        w, h = grid_size(*size, ps, localizer.max_side, localizer.prep)
        return (0, math.ceil(h / ps), math.ceil(w / ps))

    return sorted(indices, key=key)


@dataclass
class FailedImage:
    """An image that could not be read or used, and why: reported and skipped, the run goes on."""

    image_id: str
    path: str
    error: str

    def to_json(self) -> dict[str, str]:
        return asdict(self)


@dataclass
class Batch:
    """Prepared images of one padded shape, with their samples."""

    samples: list[Sample]
    prepared: list[Prepared]


class DatasetEvaluator:
    """detectron2's evaluator, also for hooks: ``reset`` before a run, ``process`` each batch (its samples and
    prepared images) with the model's outputs (one per image), ``skip`` each failed image, ``evaluate`` at the
    end."""

    def reset(self) -> None:
        pass

    def process(self, batch: Batch, outputs: Sequence[Any]) -> None:
        pass

    def skip(self, failed: FailedImage) -> None:
        pass

    def evaluate(self) -> Any:
        return None


class Failures(DatasetEvaluator):
    """Collects the images that could not be read."""

    def reset(self) -> None:
        self.images: list[FailedImage] = []

    def skip(self, failed: FailedImage) -> None:
        self.images.append(failed)

    def evaluate(self) -> list[FailedImage]:
        return self.images


class ProgressBar(DatasetEvaluator):
    """A tqdm bar over ``total`` images, with ``postfix()`` (e.g. the running CorLoc); failed images are
    written above it."""

    def __init__(self, total: int, enabled: bool = True, postfix: Callable[[], dict] | None = None,
                 desc: str | None = None) -> None:
        self.total, self.enabled, self.postfix, self.desc = total, enabled, postfix, desc

    def reset(self) -> None:
        self.bar = tqdm(total=self.total, unit="img", disable=not self.enabled, dynamic_ncols=True, desc=self.desc)

    def process(self, batch: Batch, outputs: Sequence[Any]) -> None:
        self.bar.update(len(batch.samples))
        if self.postfix:
            self.bar.set_postfix(self.postfix(), refresh=False)

    def skip(self, failed: FailedImage) -> None:
        self.bar.write(f"skipped {failed.error}")
        self.bar.update(1)

    def evaluate(self) -> None:
        self.bar.close()


@dataclass
class LoopStats:
    """What one pass did and how long each stage took (seconds)."""

    processed: int = 0
    failed: int = 0
    wall: float = 0.0
    wait: float = 0.0
    """Waiting for the loader (decoding)."""
    model: float = 0.0
    process: float = 0.0
    """In the evaluators and hooks (writing predictions, pictures)."""


def build_loader(localizer: Localizer, dataset: Sequence[Sample], indices: Sequence[int], *, batch_size: int = 16,
                 workers: int | None = None, max_pixels: int | None = MAX_PIXELS) -> Iterator[Batch | FailedImage]:
    """``dataset[indices]`` decoded and prepared for ``localizer`` in decoding processes (at least one: a
    hostile file is stopped, never the run), as batches of one padded shape and failed images, in order.
    Images over ``max_pixels`` (header and TIFF tiles, before decoding), smaller than one patch, or not
    decoded within ``DECODE_TIMEOUT_S`` of CPU time fail like unreadable ones."""
    plan = localizer.plan
    workers = max(1, plan.workers if workers is None else workers)
    pin = plan.pin_memory and can_pin()
    if plan.pin_memory and not pin:
        log.info("pinned memory asked for, but there is no CUDA driver here: decoded images stay pageable")
    if not indices:
        return
    pool = DecodePool(workers, timeout_s=DECODE_WALL_S, max_pixels=max_pixels, cpu_s=DECODE_TIMEOUT_S)
    depth = workers * max(2, batch_size // workers)  # decodes in flight ahead of the model
    todo = iter(indices)
    pending: deque[tuple[Sample, Future]] = deque()

    def top_up() -> None:
        while len(pending) < depth and (index := next(todo, None)) is not None:
            sample = dataset[index]
            pending.append((sample, pool.decode(sample.path, sample.image_id, localizer.patch_size,
                                                localizer.max_side, localizer.prep)))

    bucketer = ShapeBucketer(batch_size, max_pending=4 * batch_size)
    try:
        top_up()
        while pending:
            sample, future = pending.popleft()
            try:
                prepared = pool.result(future, sample.image_id)
            except LostRegError as e:
                yield FailedImage(sample.image_id, str(sample.path), str(e))
                continue
            finally:
                top_up()
            if pin:
                prepared.pixels = prepared.pixels.pin_memory()
            for batch in bucketer.add(Item(sample, prepared)):
                yield _batch(batch)
        for batch in bucketer.flush():
            yield _batch(batch)
    finally:
        pool.close()


def _batch(items: list[Item]) -> Batch:
    return Batch([it.sample for it in items], [it.prepared for it in items])


def inference_on_dataset(model: Callable[[Sequence[Prepared]], Sequence[Any]],
                         loader: Iterable[Batch | FailedImage], evaluators: Sequence[DatasetEvaluator]) -> LoopStats:
    """Run ``model`` on every batch of ``loader``, handing inputs and outputs to ``evaluators`` (reset first,
    evaluated last, also when the run stops early)."""
    for evaluator in evaluators:
        evaluator.reset()
    stats = LoopStats()
    start = waited = time.perf_counter()
    try:
        for item in loader:
            now = time.perf_counter()
            stats.wait += now - waited
            if isinstance(item, FailedImage):
                stats.failed += 1
                for evaluator in evaluators:
                    evaluator.skip(item)
            else:
                outputs = model(item.prepared)
                done = time.perf_counter()
                stats.model += done - now
                for evaluator in evaluators:
                    evaluator.process(item, outputs)
                stats.process += time.perf_counter() - done
                stats.processed += len(item.samples)
            waited = time.perf_counter()
    finally:
        for evaluator in evaluators:
            evaluator.evaluate()
        stats.wall = time.perf_counter() - start
    return stats
