"""Runs every setting of a sweep on one forward pass per image (or on cached features) through the loop."""

from __future__ import annotations

import time
from collections import defaultdict
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import torch

from ..backbone import Backbone, Features, Tap
from ..cache import Cached, FeatureCache, known_unreadable, remember_unreadable
from ..datasets import Sample
from ..evaluation import PredictionWriter, detection_record, load_predictions, summarize
from ..images import MAX_PIXELS, Prepared
from ..loop import (
    Batch,
    DatasetEvaluator,
    FailedImage,
    Failures,
    ProgressBar,
    build_loader,
    inference_on_dataset,
    shape_order,
)
from ..pipeline import Detection, Discoverer, Localizer
from ..registers import RegisterNeurons
from .grid import SweepSetting
from .rows import Row, is_whole, robustness

if TYPE_CHECKING:
    from ..models import Source


def feature_cache(root: Path, source: Source, *, model_args: dict[str, Any], max_side: int | None, dtype: str,
                  test_time_registers: str | None = None, cache_dtype: str = "float32",
                  identity: str | None = None) -> FeatureCache:
    """The feature cache of ``source`` under ``root``, fingerprinted by everything its features depend on besides the
    tap and the preparation (``sweep`` and ``table`` share it); ``identity``: the weights'
    :attr:`~lost_reg.models.Source.identity` when already computed (a file is hashed by content)."""
    n = None if test_time_registers is None else RegisterNeurons.load(test_time_registers)
    return FeatureCache(root, {"backbone": source.name, "weights": identity or source.identity,
                               "pos_resample": source.pos_resample, "model_args": model_args, "max_side": max_side,
                               "dtype": dtype, "test_time_registers": n and {"layers": n.layers, "weights": n.weights}},
                        cache_dtype)


@dataclass
class _FromCache(Prepared):
    """A cached image: no pixels, its features of each tap instead."""

    entries: dict[Tap, Cached] = field(default_factory=dict)


@dataclass
class _Done:
    """One image after every setting of a preparation ran on it."""

    found: dict[SweepSetting, Detection]
    """Each setting's detection."""
    features: dict[Tap, Cached]
    """Its features per tap, to be cached (empty when there is nothing to cache)."""


class _CacheWriter(DatasetEvaluator):
    """Stores each computed image's features of every tap."""

    def __init__(self, cache: FeatureCache, prep: str) -> None:
        self.cache, self.prep = cache, prep

    def process(self, batch: Batch, outputs: Sequence[_Done]) -> None:
        for sample, done in zip(batch.samples, outputs):
            for tap, entry in done.features.items():
                self.cache.save(self.prep, tap, sample.image_id, entry)


@dataclass
class SweepStats:
    """What a sweep run did; an image counts once per preparation."""

    processed: int = 0
    from_cache: int = 0
    errors: dict[str, FailedImage] = field(default_factory=dict)
    """Unreadable images by id (each reported once, whatever the number of preparations)."""
    forward_s: float = 0.0
    wall_s: float = 0.0


class Sweep:
    """Runs ``settings`` on ``dataset[indices]`` and writes ``OUT/settings/<slug>/predictions.jsonl``.

    Each preparation is one :func:`~lost_reg.loop.inference_on_dataset` pass: cached images first, then the
    others decoded for a :class:`~lost_reg.pipeline.Localizer` of ``backbone()`` on ``device``, whose
    :class:`~lost_reg.pipeline.Discoverer` runs every setting. ``backbone()`` is called only when some image
    misses the cache, so a fully cached sweep never loads the backbone. Files that cannot be decoded are remembered
    in ``unreadable`` (until they change) and reported without decoding.
    """

    def __init__(self, settings: Sequence[SweepSetting], dataset: Sequence[Sample], indices: Sequence[int],
                 out: Path, backbone: Callable[[], Backbone], *, device: str = "auto", dtype: str = "auto",
                 max_side: int | None = None, cache: FeatureCache | None = None, unreadable: Path | None = None,
                 resume: bool = False, batch_size: int = 16, workers: int | None = None, progress: bool = True,
                 max_pixels: int | None = MAX_PIXELS) -> None:
        self.settings, self.dataset, self.indices, self.out = list(settings), dataset, list(indices), Path(out)
        self.backbone, self.device, self.dtype, self.max_side = backbone, device, dtype, max_side
        self.cache, self.unreadable, self.resume = cache, unreadable, resume
        self.batch_size, self.workers, self.progress, self.max_pixels = batch_size, workers, progress, max_pixels
        self.seconds: dict[SweepSetting, float] = defaultdict(float)
        self.images: dict[SweepSetting, int] = defaultdict(int)
        self.stats = SweepStats()

    def predictions(self, setting: SweepSetting) -> Path:
        return self.out / "settings" / setting.slug / "predictions.jsonl"

    def run(self) -> list[Row]:
        """Every setting on every image (those already done skipped with ``resume``); the rows, best first."""
        start = time.perf_counter()
        for prep in dict.fromkeys(s.prep for s in self.settings):
            self._run_prep(prep, [s for s in self.settings if s.prep == prep])
        self.stats.wall_s = time.perf_counter() - start
        return self.rows()

    def _run_prep(self, prep: str, group: list[SweepSetting]) -> None:
        writers = [PredictionWriter(self.predictions(s), self.resume, record=lambda sample, p, done, s=s:  # as eval's
                                    detection_record(sample, p, done.found[s])) for s in group]
        todo = sorted(set().union(*(w.todo(self.dataset, self.indices) for w in writers)), key=self.indices.index)
        taps = list(dict.fromkeys(s.tap for s in group))
        for i in todo if self.unreadable else ():  # files known to be unreadable (unchanged since): not decoded
            sample = self.dataset[i]
            if (error := known_unreadable(self.unreadable, sample.image_id, sample.path)) is not None:
                self.stats.errors[sample.image_id] = FailedImage(sample.image_id, str(sample.path), error)
        todo = [i for i in todo if self.dataset[i].image_id not in self.stats.errors]
        in_cache = {i for i in todo if self.cache is not None
                    and all(self.cache.path(prep, t, self.dataset[i].image_id).exists() for t in taps)}
        cached, missing = [i for i in todo if i in in_cache], [i for i in todo if i not in in_cache]
        runner = Discoverer(group[0].method, self.device)

        def loader() -> Iterator[Batch | FailedImage]:
            nonlocal runner
            yield from self._cached(prep, cached, taps, missing)
            if missing:  # decoded for the backbone: the localizer runs every setting from here on
                runner = Localizer(self.backbone(), group[0].method, prep=prep, max_side=self.max_side,
                                   device=self.device, dtype=self.dtype, plan=runner.plan)
                yield from build_loader(runner, self.dataset, shape_order(self.dataset, missing, runner),
                                        batch_size=self.batch_size, workers=self.workers, max_pixels=self.max_pixels)

        def localize(batch: Sequence[Prepared]) -> list[_Done]:
            if isinstance(first := batch[0], _FromCache):
                grid, ps, keep = first.entries[taps[0]].grid, first.entries[taps[0]].patch_size, False
                features = {t: _stack([p.entries[t].patches for p in batch], grid, runner.device) for t in taps}
            else:
                assert isinstance(runner, Localizer)
                features = runner.forward_taps(batch, taps)
                grid, ps, keep = features[taps[0]].grid, runner.patch_size, self.cache is not None
            found: list[dict[SweepSetting, Detection]] = [{} for _ in batch]
            for s in group:
                t = time.perf_counter()
                for out, det in zip(found, runner.localize_features(batch, features[s.tap], ps, s.method)):
                    out[s] = det
                self.seconds[s] += time.perf_counter() - t
                self.images[s] += len(batch)
            return [_Done(f, {t: Cached(features[t].patches[i], grid, p.valid, p.size, ps) for t in taps if keep})
                    for i, (f, p) in enumerate(zip(found, batch))]

        failures = Failures()
        hooks = [*writers, *([_CacheWriter(self.cache, prep)] if self.cache else []), failures,
                 ProgressBar(len(todo), enabled=self.progress and bool(todo))]
        stats = inference_on_dataset(localize, loader(), hooks)
        self.stats.processed += stats.processed
        for f in failures.images:
            self.stats.errors[f.image_id] = f
            if self.unreadable:
                remember_unreadable(self.unreadable, f.image_id, Path(f.path), f.error)
        self.stats.forward_s += runner.timings.forward

    def _cached(self, prep: str, indices: list[int], taps: list[Tap], unreadable: list[int]) -> Iterator[Batch]:
        """Cached images as batches of one grid; those whose cache cannot be read are added to ``unreadable``."""
        by_grid: dict[tuple[int, int], Batch] = defaultdict(lambda: Batch([], []))
        for i in indices:
            sample = self.dataset[i]
            entries = {t: self.cache.load(prep, t, sample.image_id) for t in taps}
            if any(e is None for e in entries.values()) or len({(e.grid, e.valid) for e in entries.values()}) > 1:
                unreadable.append(i)
                continue
            e = entries[taps[0]]
            self.stats.from_cache += 1
            by_grid[e.grid].samples.append(sample)
            by_grid[e.grid].prepared.append(_FromCache(torch.empty(0, dtype=torch.uint8), e.valid, e.size, entries))
            if len(by_grid[e.grid].samples) >= self.batch_size:
                yield by_grid.pop(e.grid)
        yield from by_grid.values()

    def rows(self) -> list[Row]:
        """Each setting's CorLoc over its whole prediction file (this run's and earlier ones'), best first."""
        wanted = {self.dataset[i].image_id for i in self.indices}
        rows = []
        for s in self.settings:
            path = self.predictions(s)
            records = [r for r in load_predictions(path) if r["image_id"] in wanted] if path.exists() else []
            ious = [r["iou"] for r in records if r.get("iou") is not None]
            ms = 1000 * self.seconds[s] / self.images[s] if self.images[s] else None
            rows.append(Row(s, summarize(records), float(np.mean(ious)) if ious else 0.0,
                            sum(is_whole(r) for r in records), ms))
        robustness(rows)
        return sorted(rows, key=lambda r: (-r.corloc.corloc, r.whole, -r.mean_iou))


def _stack(patches: list[torch.Tensor], grid: tuple[int, int], device: torch.device) -> Features:
    """Cached features of one grid as a batch on the device, in float32 as the backbone's."""
    x = torch.stack(patches).to(device).float()
    return Features(x, x[:, :0], grid)
