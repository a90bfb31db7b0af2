"""Runs every setting of a sweep on one forward pass per image (or on cached features) through the loop."""

from __future__ import annotations

import time
from collections import defaultdict
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import torch
from tqdm import tqdm

from ..backbone import Tap
from ..cache import FeatureCache
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
from ..pipeline import Detection, Localizer, detection
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
class _Done:
    """One image after every setting of a preparation ran on it."""

    found: dict[SweepSetting, Detection]
    """Each setting's detection."""
    features: dict[Tap, torch.Tensor]
    """[N, D] per tap, to be cached (empty when there is nothing to cache)."""
    grid: tuple[int, int]
    patch_size: int


def _writer(path: Path, setting: SweepSetting, resume: bool) -> PredictionWriter:
    """``setting``'s prediction file, written as ``eval`` writes it."""
    return PredictionWriter(path, resume, record=lambda sample, prepared, done: detection_record(
        sample, prepared, done.found[setting]))


class _CacheWriter(DatasetEvaluator):
    """Stores each image's features of every tap, and remembers the files that could not be read."""

    def __init__(self, cache: FeatureCache, prep: str) -> None:
        self.cache, self.prep = cache, prep

    def process(self, batch: Batch, outputs: Sequence[_Done]) -> None:
        for sample, prepared, done in zip(batch.samples, batch.prepared, outputs):
            for tap, patches in done.features.items():
                self.cache.save(self.prep, tap, sample.image_id, patches, done.grid, prepared, done.patch_size)

    def skip(self, failed: FailedImage) -> None:
        self.cache.save_unreadable(failed.image_id, Path(failed.path), failed.error)


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

    ``localizer_for(prep)`` gives a Localizer for a preparation; it is called only when some image
    misses the cache, so a fully cached sweep never loads the backbone.
    """

    def __init__(self, settings: Sequence[SweepSetting], dataset: Sequence[Sample], indices: Sequence[int],
                 out: Path, localizer_for: Callable[[str], Localizer], cache: FeatureCache | None = None,
                 resume: bool = False, batch_size: int = 16, workers: int | None = None,
                 progress: bool = True, max_pixels: int | None = MAX_PIXELS) -> None:
        self.settings, self.dataset, self.indices, self.out = list(settings), dataset, list(indices), Path(out)
        self.localizer_for, self.cache, self.resume = localizer_for, cache, resume
        self.batch_size, self.workers, self.progress, self.max_pixels = batch_size, workers, progress, max_pixels
        self.seconds: dict[SweepSetting, float] = defaultdict(float)
        self.images: dict[SweepSetting, int] = defaultdict(int)
        self.stats = SweepStats()

    def predictions(self, setting: SweepSetting) -> Path:
        return self.out / "settings" / setting.slug / "predictions.jsonl"

    def run(self) -> list[Row]:
        """Every setting on every image (those already done skipped with ``resume``); the rows, best first."""
        start = time.perf_counter()
        by_prep: dict[str, list[SweepSetting]] = defaultdict(list)
        for s in self.settings:
            by_prep[s.prep].append(s)
        for prep, group in by_prep.items():
            writers = [_writer(self.predictions(s), s, self.resume) for s in group]
            todo = sorted(set().union(*(w.todo(self.dataset, self.indices) for w in writers)),
                          key=self.indices.index)
            hooks: list[DatasetEvaluator] = [*writers, *([_CacheWriter(self.cache, prep)] if self.cache else [])]
            for hook in hooks:
                hook.reset()
            try:
                self._run_prep(prep, group, todo, hooks)
            finally:
                for hook in hooks:
                    hook.evaluate()
        self.stats.wall_s = time.perf_counter() - start
        return self.rows()

    def _run_prep(self, prep: str, group: list[SweepSetting], todo: list[int], hooks: list[DatasetEvaluator]) -> None:
        taps = list(dict.fromkeys(s.tap for s in group))
        if self.cache is not None:  # files known to be unreadable (and unchanged since) are not decoded again
            for i in todo:
                sample = self.dataset[i]
                error = self.cache.unreadable(sample.image_id, sample.path)
                if error is not None:
                    self.stats.errors[sample.image_id] = FailedImage(sample.image_id, str(sample.path), error)
            todo = [i for i in todo if self.dataset[i].image_id not in self.stats.errors]
        in_cache = {i for i in todo if self.cache is not None
                    and all(self.cache.path(prep, t, self.dataset[i].image_id).exists() for t in taps)}
        missing = [i for i in todo if i not in in_cache]
        missing += self._run_cached(prep, [i for i in todo if i in in_cache], group, taps, hooks)
        if not missing:
            return
        localizer = self.localizer_for(prep)

        def localize(batch: Sequence[Prepared]) -> list[_Done]:
            feats = localizer.forward_taps(batch, taps)
            grid, ps = feats[taps[0]].grid, localizer.patch_size
            found = self._run_settings(group, {t: f.patches for t, f in feats.items()}, grid, batch, ps)
            return [_Done(f, {t: feats[t].patches[i] for t in taps} if self.cache is not None else {}, grid, ps)
                    for i, f in enumerate(found)]

        failures = Failures()
        forward = localizer.timings.forward
        loader = build_loader(localizer, self.dataset, shape_order(self.dataset, missing, localizer),
                              batch_size=self.batch_size, workers=self.workers, max_pixels=self.max_pixels)
        stats = inference_on_dataset(localize, loader, [*hooks, failures,
                                                        ProgressBar(len(missing), enabled=self.progress)])
        self.stats.processed += stats.processed
        self.stats.errors.update((f.image_id, f) for f in failures.images)
        self.stats.forward_s += localizer.timings.forward - forward

    def _run_cached(self, prep: str, indices: list[int], group: list[SweepSetting], taps: list[Tap],
                    hooks: list[DatasetEvaluator]) -> list[int]:
        """Runs the settings on cached features, batched by grid; returns the images whose cache was unreadable."""
        unreadable, by_grid = [], defaultdict(list)
        for i in tqdm(indices, unit="img", desc="cached", disable=not self.progress or not indices,
                      dynamic_ncols=True):
            entries = {t: self.cache.load(prep, t, self.dataset[i].image_id) for t in taps}
            if any(e is None for e in entries.values()) or len({(e.grid, e.valid) for e in entries.values()}) > 1:
                unreadable.append(i)
                continue
            first = entries[taps[0]]
            by_grid[first.grid].append((i, first, entries))
            if len(by_grid[first.grid]) >= self.batch_size:
                self._flush_cached(by_grid.pop(first.grid), group, taps, hooks)
        for batch in by_grid.values():
            self._flush_cached(batch, group, taps, hooks)
        return unreadable

    def _flush_cached(self, cached: list, group: list[SweepSetting], taps: list[Tap],
                      hooks: list[DatasetEvaluator]) -> None:
        batch = Batch([self.dataset[i] for i, _, _ in cached], [first.prepared() for _, first, _ in cached])
        features = {t: torch.stack([entries[t].patches for _, _, entries in cached]).float() for t in taps}
        grid, ps = cached[0][1].grid, cached[0][1].patch_size
        found = self._run_settings(group, features, grid, batch.prepared, ps)
        outputs = [_Done(f, {}, grid, ps) for f in found]
        for hook in hooks:
            hook.process(batch, outputs)
        self.stats.processed += len(cached)
        self.stats.from_cache += len(cached)

    def _run_settings(self, group: list[SweepSetting], features: dict[Tap, torch.Tensor], grid: tuple[int, int],
                      batch: Sequence[Prepared], patch_size: int) -> list[dict[SweepSetting, Detection]]:
        """Every setting of ``group`` on one batch: per image, the detection of each setting."""
        found: list[dict[SweepSetting, Detection]] = [{} for _ in batch]
        for s in group:
            t = time.perf_counter()
            results = s.method(features[s.tap], grid)
            self.seconds[s] += time.perf_counter() - t
            self.images[s] += len(batch)
            for out, p, r in zip(found, batch, results):
                out[s] = detection(p, r, patch_size)
        return found

    def rows(self) -> list[Row]:
        """Each setting's CorLoc over its whole prediction file (this run's and earlier ones'), best first."""
        wanted = {self.dataset[i].image_id for i in self.indices}
        rows = []
        for s in self.settings:
            path = self.predictions(s)
            records = [r for r in load_predictions(path) if r["image_id"] in wanted] if path.exists() else []
            judged = [r for r in records if r.get("iou") is not None]
            whole = sum(is_whole(r) for r in records)
            ms = 1000 * self.seconds[s] / self.images[s] if self.images[s] else None
            rows.append(Row(s, summarize(records), float(np.mean([r["iou"] for r in judged])) if judged else 0.0,
                            whole, ms))
        robustness(rows)
        return sorted(rows, key=lambda r: (-r.corloc.corloc, r.whole, -r.mean_iou))


