"""The one inference loop: decode in workers, bucket by padded shape, localise, hand results on.

Images are decoded and padded in DataLoader worker processes (pinned memory on CUDA: the
localizer's :class:`~lost_reg.devices.DevicePlan` says how many workers and whether to pin), then
grouped by padded shape so each backbone call is one batch of one shape. A file that cannot
be read is reported through ``on_error`` and skipped; the run goes on.
"""

from __future__ import annotations

import logging
import math
import time
from collections import defaultdict
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from torch.utils.data import DataLoader, Dataset
from tqdm import tqdm

from .datasets import Sample
from .devices import can_pin
from .errors import LostRegError
from .images import MAX_PIXELS, Prepared, decode_image, grid_size, prepare
from .pipeline import Localizer

log = logging.getLogger(__name__)


@dataclass
class Item:
    """A decoded image, or the reason it could not be decoded."""

    index: int
    sample: Sample
    prepared: Prepared | None = None
    error: str | None = None

    def pin_memory(self) -> Item:
        if self.prepared is not None:
            self.prepared.pixels = self.prepared.pixels.pin_memory()
        return self


class _Decoded(Dataset):
    """Decodes and pads the dataset's images (runs inside the workers)."""

    def __init__(self, dataset: Sequence[Sample], indices: Sequence[int], patch_size: int, max_side: int | None,
                 prep: str, max_pixels: int | None) -> None:
        self.dataset, self.indices = dataset, indices
        self.patch_size, self.max_side, self.prep, self.max_pixels = patch_size, max_side, prep, max_pixels

    def __len__(self) -> int:
        return len(self.indices)

    def __getitem__(self, i: int) -> Item:
        index = self.indices[i]
        sample = self.dataset[index]
        got = read_prepared(sample.path, sample.image_id, self.patch_size, self.max_side, self.prep, self.max_pixels)
        return Item(index, sample, error=got) if isinstance(got, str) else Item(index, sample, prepared=got)


def read_prepared(path: str | Path, image_id: str, patch_size: int, max_side: int | None, prep: str,
                  max_pixels: int | None) -> Prepared | str:
    """An image file decoded and put on the patch grid, or why it could not be (every engine's decoding)."""
    try:
        return prepare(decode_image(path, name=image_id, max_pixels=max_pixels), patch_size, max_side, prep,
                       name=image_id)
    except LostRegError as e:
        return str(e)
    except Exception as e:  # a decoder crash on one file must not end a 10k-image run
        return f"{image_id}: {type(e).__name__}: {e}"


def _single(item: Item) -> Item:
    return item


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
class RunStats:
    """What one pass over a dataset did and how long each stage took (seconds)."""

    processed: int = 0
    failed: int = 0
    errors: list[dict] = field(default_factory=list)
    wall: float = 0.0
    wait: float = 0.0
    forward: float = 0.0
    discovery: float = 0.0
    write: float = 0.0


def inference_on_dataset(
    localizer: Localizer,
    dataset: Sequence[Sample],
    indices: Sequence[int],
    process: Callable[[Sample, Any], None],
    *,
    localize: Callable[[Sequence[Prepared]], Sequence[Any]] | None = None,
    batch_size: int = 16,
    workers: int | None = None,
    progress: bool = True,
    postfix: Callable[[], dict] | None = None,
    max_pixels: int | None = MAX_PIXELS,
) -> RunStats:
    """Localise ``dataset[indices]`` and call ``process`` for every image, in completion order.

    Images over ``max_pixels`` (read from the header, before decoding) or smaller than one patch
    are reported and skipped like unreadable ones.

    ``localize`` maps a batch of prepared images (one padded shape) to one result each, handed to
    ``process``; the default is ``localizer.localize_prepared`` (one :class:`~lost_reg.pipeline.Detection` each).
    """
    localize = localize or localizer.localize_prepared
    plan = localizer.plan
    workers = plan.workers if workers is None else workers
    if plan.pin_memory and not can_pin():
        log.info("pinned memory asked for, but there is no CUDA driver here: decoded images stay pageable")
    stats = RunStats()
    if not indices:
        return stats
    decoded = _Decoded(dataset, indices, localizer.patch_size, localizer.max_side, localizer.prep, max_pixels)
    loader = DataLoader(
        decoded,
        batch_size=None,
        num_workers=workers,
        collate_fn=_single,
        pin_memory=plan.pin_memory and can_pin(),
        prefetch_factor=max(2, batch_size // max(workers, 1)) if workers else None,
        persistent_workers=False,
    )
    bucketer = ShapeBucketer(batch_size, max_pending=4 * batch_size)
    bar = tqdm(total=len(indices), unit="img", disable=not progress, dynamic_ncols=True)
    t0 = time.perf_counter()

    def run(batch: list[Item]) -> None:
        f0, l0 = localizer.timings.forward, localizer.timings.discovery
        detections = localize([it.prepared for it in batch])
        stats.forward += localizer.timings.forward - f0
        stats.discovery += localizer.timings.discovery - l0
        w0 = time.perf_counter()
        for it, det in zip(batch, detections):
            process(it.sample, det)
        stats.write += time.perf_counter() - w0
        stats.processed += len(batch)
        bar.update(len(batch))
        if postfix:
            bar.set_postfix(postfix(), refresh=False)

    try:
        w = time.perf_counter()
        for item in loader:
            stats.wait += time.perf_counter() - w
            if item.error is not None:
                stats.failed += 1
                stats.errors.append({"image_id": item.sample.image_id, "path": str(item.sample.path), "error": item.error})
                bar.write(f"skipped {item.error}")
                bar.update(1)
            else:
                for batch in bucketer.add(item):
                    run(batch)
            w = time.perf_counter()
        for batch in bucketer.flush():
            run(batch)
    finally:
        bar.close()
        stats.wall = time.perf_counter() - t0
    return stats
