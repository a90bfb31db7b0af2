"""Many settings on one forward pass per image: the CorLoc of each, and the best one.

A setting is a preparation, a features kind, a layer and a method with its options. The sweep
reads each image once per preparation, takes every requested (features, layer) tap in that one
forward pass (:meth:`~lost_reg.pipeline.Localizer.forward_taps`), runs every setting on those
features batched, and writes each setting's predictions exactly as ``lost-reg eval`` would
(same records, same batching), so any row can be reproduced with its ``eval`` command. With a
:class:`~lost_reg.cache.FeatureCache` the features are stored per image; images found there are
not decoded and, when all are found, the backbone is never loaded.

Values are lists with ranges, see :func:`expand`: ``0,0.1,0.2`` or ``0:0.2:0.1``; a prefix is
kept, so ``cos:0:0.5:0.1`` is ``cos:0,cos:0.1,…,cos:0.5``.
"""

from __future__ import annotations

import csv
import itertools
import math
import re
import time
from collections import defaultdict
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from tqdm import tqdm

from .backbone import Tap
from .cache import FeatureCache
from .datasets import Sample
from .evaluation import (
    CorLoc,
    CorLocEvaluator,
    PredictionWriter,
    load_predictions,
    summarize,
)
from .files import atomic_write
from .images import MAX_PIXELS, Prepared
from .methods import METHODS, Method, all_option_specs, option_specs
from .pipeline import Localizer, detection
from .recipes import AUTO, recipe_for, resolve_method, resolve_prep

WHOLE_IMAGE = 0.9
"""A box covering at least this share of the image counts as a whole-image box (a non-answer)."""
_RANGE = re.compile(r"^(?P<prefix>[A-Za-z][\w-]*:)?(?P<a>-?[\d.]+(?:e-?\d+)?):(?P<b>-?[\d.]+(?:e-?\d+)?)"
                    r":(?P<step>[\d.]+(?:e-?\d+)?)$")


def expand(text: str, cast: Callable[[str], Any] = str) -> list[Any]:
    """A comma list of values and ranges ``[PREFIX:]A:B:STEP`` (B included) → distinct values, in order."""
    out: list[Any] = []
    for item in (t.strip() for t in text.split(",")):
        if not item:
            raise ValueError(f"empty value in {text!r}")
        m = _RANGE.match(item)
        if not m:
            values = [item]
        else:
            a, b, step = float(m["a"]), float(m["b"]), float(m["step"])
            if step <= 0 or b < a:
                raise ValueError(f"range {item!r} needs A <= B and STEP > 0")
            n = math.floor((b - a) / step + 1e-9) + 1
            values = [f"{m['prefix'] or ''}{round(a + i * step, 10):g}" for i in range(n)]
        for v in values:
            try:
                value = cast(v)
            except ValueError as e:
                raise ValueError(f"{v!r} in {text!r}: {e}") from None
            if value not in out:
                out.append(value)
    return out


@dataclass(frozen=True)
class SweepSetting:
    """One setting of a sweep: how the image is prepared, which features, which method."""

    prep: str
    features: str
    layer: int
    method: Method

    @property
    def tap(self) -> Tap:
        return self.features, self.layer

    @property
    def name(self) -> str:
        """Readable and unique: ``resize/v-1/tokencut(tau=0.3,eps=1e-05,…)``."""
        options = ",".join(f"{k}={v}" for k, v in self.method.options().items())
        return f"{self.prep}/{self.features}{self.layer}/{self.method.name}({options})"

    @property
    def slug(self) -> str:
        """The name as a folder name."""
        return re.sub(r"[^A-Za-z0-9._=,+-]+", "_", self.name).strip("_")

    def eval_args(self) -> list[str]:
        """The ``lost-reg eval`` flags that select exactly this setting."""
        args = ["--method", self.method.name, "--features", self.features, "--layer", str(self.layer),
                "--prep", self.prep]
        for k, v in self.method.options().items():
            args += [f"--{k.replace('_', '-')}", str(v)]
        return args


def expand_settings(family: str, methods: Sequence[str], options: dict[str, list[Any]], features: Sequence[str],
                    layers: Sequence[int], preps: Sequence[str]) -> list[SweepSetting]:
    """Every combination: each method with the product of its own option lists (unset options as
    ``eval`` would set them: the recipe's for the recipe's method), × preparations × features × layers.
    ``auto`` values resolve as in ``eval``."""
    names = list(dict.fromkeys(recipe_for(family).method if m == AUTO else m for m in methods))
    for name in names:
        if name not in METHODS:
            raise ValueError(f"unknown method {name!r}: use auto or one of {', '.join(METHODS)}")
    for option, (_, owners) in all_option_specs().items():
        if option in options and not set(names) & set(owners):
            raise ValueError(f"--{option.replace('_', '-')} applies to {', '.join(owners)}, "
                             "which --method does not list")
    out: list[SweepSetting] = []
    for name in names:
        own = [s.name for s in option_specs(METHODS[name]) if s.name in options]
        for combo in itertools.product(*(options[o] for o in own)):
            method = resolve_method(family, name, dict(zip(own, combo)))
            for prep, kind, layer in itertools.product(preps, features, layers):
                setting = SweepSetting(resolve_prep(family, method, prep), kind, layer, method)
                if setting not in out:
                    out.append(setting)
    return out


@dataclass
class Row:
    """One setting's result over the whole prediction file."""

    setting: SweepSetting
    corloc: CorLoc
    mean_iou: float
    whole: int
    ms: float | None
    """The method's time per image in this run (None when this run computed nothing for it)."""
    robust: float = 0.0
    """Mean CorLoc of the setting and its neighbours (one method option one step away): near-best over a range."""


@dataclass
class _Done:
    """One image after every setting of a preparation ran on it."""

    prepared: Prepared
    found: dict[SweepSetting, Any]
    """Each setting's :class:`~lost_reg.pipeline.Detection`."""
    features: dict[Tap, torch.Tensor]
    """[N, D] per tap, to be cached (empty when there is nothing to cache)."""
    grid: tuple[int, int]
    patch_size: int


@dataclass
class SweepStats:
    """What a sweep run did; an image counts once per preparation."""

    processed: int = 0
    from_cache: int = 0
    errors: dict[str, dict] = field(default_factory=dict)
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
        self._evaluator = CorLocEvaluator()

    def predictions(self, setting: SweepSetting) -> Path:
        return self.out / "settings" / setting.slug / "predictions.jsonl"

    def run(self) -> list[Row]:
        """Every setting on every image (those already done skipped with ``resume``); the rows, best first."""
        start = time.perf_counter()
        by_prep: dict[str, list[SweepSetting]] = defaultdict(list)
        for s in self.settings:
            by_prep[s.prep].append(s)
        for prep, group in by_prep.items():
            writers = {s: PredictionWriter(self.predictions(s), resume=self.resume) for s in group}
            done = {s: w.done_ids() for s, w in writers.items()}
            todo = [i for i in self.indices if any(self.dataset[i].image_id not in done[s] for s in group)]
            try:
                self._run_prep(prep, group, todo, writers, done)
            finally:
                for w in writers.values():
                    w.close()
        self.stats.wall_s = time.perf_counter() - start
        return self.rows()

    def _run_prep(self, prep: str, group: list[SweepSetting], todo: list[int], writers: dict, done: dict) -> None:
        taps = list(dict.fromkeys(s.tap for s in group))

        def process(sample: Sample, item: _Done) -> None:
            for s, det in item.found.items():
                if sample.image_id not in done[s]:
                    writers[s].write(self._evaluator.process(sample, det.box, width=det.width, height=det.height,
                                                             seed=det.seed))
            for tap, patches in item.features.items():
                self.cache.save(prep, tap, sample.image_id, patches, item.grid, item.prepared, item.patch_size)

        if self.cache is not None:  # files known to be unreadable (and unchanged since) are not decoded again
            for i in todo:
                sample = self.dataset[i]
                error = self.cache.unreadable(sample.image_id, sample.path)
                if error is not None:
                    self.stats.errors[sample.image_id] = {"image_id": sample.image_id, "path": str(sample.path),
                                                          "error": error}
            todo = [i for i in todo if self.dataset[i].image_id not in self.stats.errors]
        in_cache = {i for i in todo if self.cache is not None
                    and all(self.cache.path(prep, t, self.dataset[i].image_id).exists() for t in taps)}
        missing = [i for i in todo if i not in in_cache]
        missing += self._run_cached(prep, [i for i in todo if i in in_cache], group, taps, process)
        if not missing:
            return
        from .engine import inference_on_dataset, shape_order

        localizer = self.localizer_for(prep)

        def localize(batch: Sequence[Prepared]) -> list[_Done]:
            feats = localizer.forward_taps(batch, taps)
            grid, ps = feats[taps[0]].grid, localizer.patch_size
            found = self._run_settings(group, {t: f.patches for t, f in feats.items()}, grid, batch, ps)
            return [_Done(p, f, {t: feats[t].patches[i] for t in taps} if self.cache is not None else {}, grid, ps)
                    for i, (p, f) in enumerate(zip(batch, found))]

        stats = inference_on_dataset(localizer, self.dataset, shape_order(self.dataset, missing, localizer), process,
                                     localize=localize, batch_size=self.batch_size, workers=self.workers,
                                     progress=self.progress, max_pixels=self.max_pixels)
        self.stats.processed += stats.processed
        self.stats.errors.update((e["image_id"], e) for e in stats.errors)
        self.stats.forward_s += stats.forward
        if self.cache is not None:
            for e in stats.errors:
                self.cache.save_unreadable(e["image_id"], Path(e["path"]), e["error"])

    def _run_cached(self, prep: str, indices: list[int], group: list[SweepSetting], taps: list[Tap],
                    process: Callable[[Sample, _Done], None]) -> list[int]:
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
                self._flush_cached(by_grid.pop(first.grid), group, taps, process)
        for batch in by_grid.values():
            self._flush_cached(batch, group, taps, process)
        return unreadable

    def _flush_cached(self, batch: list, group: list[SweepSetting], taps: list[Tap],
                      process: Callable[[Sample, _Done], None]) -> None:
        prepared = [first.prepared() for _, first, _ in batch]
        features = {t: torch.stack([entries[t].patches for _, _, entries in batch]).float() for t in taps}
        grid, ps = batch[0][1].grid, batch[0][1].patch_size
        found = self._run_settings(group, features, grid, prepared, ps)
        for (i, _, _), p, f in zip(batch, prepared, found):
            process(self.dataset[i], _Done(p, f, {}, grid, ps))
        self.stats.processed += len(batch)
        self.stats.from_cache += len(batch)

    def _run_settings(self, group: list[SweepSetting], features: dict[Tap, torch.Tensor], grid: tuple[int, int],
                      batch: Sequence[Prepared], patch_size: int) -> list[dict[SweepSetting, Any]]:
        """Every setting of ``group`` on one batch: per image, the detection of each setting."""
        found: list[dict[SweepSetting, Any]] = [{} for _ in batch]
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
            whole = sum(_is_whole(r) for r in records)
            ms = 1000 * self.seconds[s] / self.images[s] if self.images[s] else None
            rows.append(Row(s, summarize(records), float(np.mean([r["iou"] for r in judged])) if judged else 0.0,
                            whole, ms))
        _robustness(rows)
        return sorted(rows, key=lambda r: (-r.corloc.corloc, r.whole, -r.mean_iou))


def _is_whole(record: dict) -> bool:
    x0, y0, x1, y1 = record["box"]
    return (x1 - x0) * (y1 - y0) >= WHOLE_IMAGE * record["width"] * record["height"]


def _number(value: Any) -> tuple[str, float] | None:
    """(prefix, number) of a numeric option value such as 0.3, 100 or ``cos:0.3``; None otherwise."""
    if isinstance(value, bool):
        return None
    if isinstance(value, (int, float)):
        return "", float(value)
    prefix, _, rest = str(value).rpartition(":")
    try:
        return prefix, float(rest)
    except ValueError:
        return None


def _axes(s: SweepSetting) -> dict[str, Any]:
    return s.method.options()


def _robustness(rows: list[Row]) -> None:
    """Sets each row's :attr:`Row.robust`: its CorLoc averaged with its neighbours' (same everything, but
    one numeric method option — k, τ, the T of cos:T… — at the next value swept below or above)."""
    values: dict[tuple, set] = defaultdict(set)
    for r in rows:
        for axis, v in _axes(r.setting).items():
            if _number(v) is not None:
                values[(r.setting.method.name, axis, _number(v)[0])].add(_number(v)[1])
    index = {(r.setting.prep, r.setting.features, r.setting.method.name, tuple(sorted(_axes(r.setting).items()))): r
             for r in rows}
    for r in rows:
        s, near = r.setting, [r.corloc.corloc]
        for axis, v in _axes(s).items():
            num = _number(v)
            if num is None:
                continue
            line = sorted(values[(s.method.name, axis, num[0])])
            at = line.index(num[1])
            for j in (at - 1, at + 1):
                if 0 <= j < len(line):
                    other = line[j] if not num[0] else f"{num[0]}:{line[j]:g}"
                    other = int(other) if isinstance(v, int) else other
                    key = {**_axes(s), axis: other}
                    n = index.get((s.prep, s.features, s.method.name, tuple(sorted(key.items()))))
                    if n is not None:
                        near.append(n.corloc.corloc)
        r.robust = float(np.mean(near))


# ------------------------------------------------------------------------------------------- reports


def write_reports(rows: list[Row], out: Path, command: Sequence[str], title: str) -> dict[str, Any]:
    """``results.csv``, ``results.md``, ``corloc.png`` and the best rows (returned, for ``best.json``).

    ``command`` is the ``lost-reg eval`` command line without the setting's flags.
    """
    out.mkdir(parents=True, exist_ok=True)
    option_names = list(dict.fromkeys(k for r in rows for k in r.setting.method.options()))
    with (out / "results.csv").open("w", newline="") as f:
        w = csv.writer(f)
        w.writerow(["rank", "setting", "prep", "features", "layer", "method", *option_names, "corloc", "found",
                    "total", "mean_iou", "whole_image", "robust", "method_ms_per_image", "predictions"])
        for rank, r in enumerate(rows, 1):
            s, opts = r.setting, r.setting.method.options()
            w.writerow([rank, s.name, s.prep, s.features, s.layer, s.method.name,
                        *(opts.get(k, "") for k in option_names), f"{r.corloc.corloc:.4f}", r.corloc.found,
                        r.corloc.total, f"{r.mean_iou:.4f}", r.whole, f"{r.robust:.4f}",
                        "" if r.ms is None else f"{r.ms:.2f}", f"settings/{s.slug}/predictions.jsonl"])
    best = rows[0]
    robust = max(rows, key=lambda r: (r.robust, r.corloc.corloc, -r.whole))
    summary = {"best": _row_json(best, command), "robust": _row_json(robust, command)}
    lines = [f"# {title}", "",
             f"Best: `{best.setting.name}`: {_pct(best.corloc)}, {best.whole} whole-image boxes.", "",
             f"Most robust (its CorLoc averaged with its swept neighbours', {100 * robust.robust:.1f} %): "
             f"`{robust.setting.name}`: {_pct(robust.corloc)}.", "",
             "Reproduce the best row:", "", "```bash", " ".join(summary["best"]["command"]), "```", "",
             "| # | setting | CorLoc | mean IoU | whole-image boxes | robust | method ms/img |",
             "|---|---|---|---|---|---|---|"]
    for rank, r in enumerate(rows, 1):
        lines.append(f"| {rank} | `{r.setting.name}` | {_pct(r.corloc)} | {r.mean_iou:.3f} | "
                     f"{r.whole}/{r.corloc.total} | {100 * r.robust:.1f} % | "
                     f"{'—' if r.ms is None else f'{r.ms:.1f}'} |")
    (out / "results.md").write_text("\n".join(lines) + "\n")
    chart(rows, out / "corloc.png", title)
    return summary


def _pct(c: CorLoc) -> str:
    return f"{100 * c.corloc:.1f} % ({c.found}/{c.total})"


def _row_json(r: Row, command: Sequence[str]) -> dict[str, Any]:
    s = r.setting
    return {"setting": s.name, "prep": s.prep, "features": s.features, "layer": s.layer, "method": s.method.name,
            "options": s.method.options(), "corloc": r.corloc.corloc, "found": r.corloc.found,
            "total": r.corloc.total, "mean_iou": r.mean_iou, "whole_image": r.whole, "robust": r.robust,
            "command": [*command, *s.eval_args()]}


def chart(rows: list[Row], path: Path, title: str, top: int = 40) -> None:
    """A horizontal bar chart of the ``top`` settings' CorLoc (whole-image boxes written beside each bar)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    shown = rows[:top][::-1]
    colours = dict(zip(METHODS, ("tab:blue", "tab:orange", "tab:green", "tab:red")))
    fig, ax = plt.subplots(figsize=(11, 0.8 + 0.28 * len(shown)))
    ax.barh(range(len(shown)), [100 * r.corloc.corloc for r in shown],
            color=[colours.get(r.setting.method.name, "tab:grey") for r in shown])
    ax.set_yticks(range(len(shown)), [r.setting.name for r in shown], fontsize=7)
    for y, r in enumerate(shown):
        ax.text(100 * r.corloc.corloc + 0.5, y, f"{r.corloc.found}/{r.corloc.total}, whole {r.whole}",
                va="center", fontsize=6)
    ax.set_xlabel("CorLoc (%)")
    ax.set_xlim(0, 100)
    ax.set_title(title if len(rows) <= top else f"{title} (top {top} of {len(rows)})", fontsize=9)
    fig.tight_layout()
    atomic_write(path, lambda tmp: fig.savefig(tmp, dpi=110, format="png"))
    plt.close(fig)
