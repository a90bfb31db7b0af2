"""CorLoc, LOST's metric, and the per-image prediction file that makes runs resumable, as evaluators of
the inference loop (:class:`~lost_reg.loop.DatasetEvaluator`).

CorLoc is the share of images whose predicted box has IoU ≥ 0.5 with at least one ground-truth
box. Predictions are written as JSON lines, one per image, flushed as they come: a killed run
keeps everything it finished, and ``--resume`` picks up from the file.
"""

from __future__ import annotations

import json
import os
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, TextIO

import numpy as np
import torch
from torchvision.ops import box_iou

from .datasets import Sample
from .files import atomic_write
from .images import Prepared
from .loop import Batch, DatasetEvaluator

if TYPE_CHECKING:
    from .pipeline import Detection

IOU_THRESHOLD = 0.5


@dataclass(frozen=True)
class CorLoc:
    """Correct localisation: ``found`` of ``total`` images (those with ground truth) were hit."""

    corloc: float
    found: int
    total: int

    def __str__(self) -> str:
        return f"CorLoc: {100 * self.corloc:.2f}% ({self.found}/{self.total})"


def corloc(found: int, total: int) -> CorLoc:
    """CorLoc from counts; 0 when no image had ground truth."""
    return CorLoc(found / total if total else 0.0, found, total)


def best_iou(box: Sequence[float], gt_boxes: np.ndarray | None) -> float | None:
    """Highest IoU of ``box`` (x0, y0, x1, y1) with any ground-truth box; None without ground truth."""
    if gt_boxes is None or len(gt_boxes) == 0:
        return None
    pred = torch.as_tensor([[float(v) for v in box]], dtype=torch.float64)
    gt = torch.as_tensor(np.asarray(gt_boxes), dtype=torch.float64).reshape(-1, 4)
    return float(box_iou(pred, gt).max())


def prediction_record(sample: Sample, box: Sequence[float], *, width: int | None = None,
                      height: int | None = None, seed: Sequence[int] | None = None,
                      iou_threshold: float = IOU_THRESHOLD) -> dict:
    """One prediction's record (see :class:`PredictionWriter`); ``width`` and ``height`` default to the
    sample's annotated size. Images without ground truth get ``iou`` and ``found`` null."""
    iou = best_iou(box, sample.gt_boxes)
    size = sample.size or (None, None)
    return {
        "image_id": sample.image_id,
        "width": _plain(width if width is not None else size[0]),
        "height": _plain(height if height is not None else size[1]),
        "box": [_plain(v) for v in box],
        "seed": None if seed is None else [_plain(v) for v in seed],
        "iou": iou,
        "found": None if iou is None else iou >= iou_threshold,
    }


def detection_record(sample: Sample, prepared: Prepared, det: Detection) -> dict:
    """:func:`prediction_record` of a :class:`~lost_reg.pipeline.Detection`: what ``eval`` and the sweep write."""
    return prediction_record(sample, det.box, width=det.width, height=det.height, seed=det.seed)


class CorLocEvaluator(DatasetEvaluator):
    """Accumulates CorLoc image by image over the loop's detections (or prediction records, :meth:`add`).

    Images without ground-truth boxes (folder data, or a COCO image whose boxes are all crowd)
    cannot be judged: their record has ``found`` null and they are left out of ``total``, so CorLoc
    is over the images that have ground truth.
    """

    def __init__(self, iou_threshold: float = IOU_THRESHOLD) -> None:
        self.iou_threshold = iou_threshold
        self.reset()

    def reset(self) -> None:
        self._found = self._total = 0

    def process(self, batch: Batch, outputs: Sequence[Detection]) -> None:
        for sample, det in zip(batch.samples, outputs):
            iou = best_iou(det.box, sample.gt_boxes)
            if iou is not None:
                self.add({"found": iou >= self.iou_threshold})

    def add(self, record: dict) -> None:
        """Count one prediction record (its ``found``)."""
        if record["found"] is not None:
            self._total += 1
            self._found += bool(record["found"])

    def evaluate(self) -> CorLoc:
        return corloc(self._found, self._total)


def summarize(records: Iterable[dict]) -> CorLoc:
    """CorLoc over prediction records (e.g. a whole resumed file); records with ``found`` null don't count."""
    judged = [r["found"] for r in records if r.get("found") is not None]
    return corloc(sum(bool(f) for f in judged), len(judged))


def _plain(value: object) -> int | float | None:
    """A JSON-ready number: integers (also numpy/torch ones) stay ints, everything else is a float."""
    if value is None:
        return None
    value = value.item() if hasattr(value, "item") else value
    return int(value) if isinstance(value, int) else float(value)


# ------------------------------------------------------------------------------- prediction file


class PredictionWriter(DatasetEvaluator):
    """Appends prediction records to a JSON-lines file, one flushed line per image.

    A record is ``{"image_id", "width", "height", "box": [x0, y0, x1, y1], "seed": [row, col],
    "iou", "found"}`` (``iou``/``found`` null without ground truth), or what ``record(sample,
    prepared, output)`` makes of each image of the loop's batches and its output. With
    ``resume=False`` an existing file is started afresh; with ``resume=True`` its records are kept,
    a half-written or garbled line (from a killed run) is dropped, new records are appended, and
    images already in it are not written again.
    """

    def __init__(self, path: str | Path, resume: bool,
                 record: Callable[[Sample, Prepared, Any], dict] = detection_record) -> None:
        self.path = Path(path)
        self.resume = resume
        self.record = record
        self.dropped_lines = 0
        self._done: set[str] | None = None
        self._file: TextIO | None = None

    def done_ids(self) -> set[str]:
        """Image ids already in the file (empty unless resuming); repairs a damaged file first."""
        if self._done is None:
            self._done = self._recover() if self.resume else self._start_fresh()
        return set(self._done)

    def todo(self, samples: Sequence[Sample], indices: Iterable[int]) -> list[int]:
        """The ``indices`` of ``samples`` not in the file yet."""
        done = self.done_ids()
        return [i for i in indices if samples[i].image_id not in done]

    def reset(self) -> None:
        self.open()

    def process(self, batch: Batch, outputs: Sequence[Any]) -> None:
        for sample, prepared, output in zip(batch.samples, batch.prepared, outputs):
            if sample.image_id not in self._done:
                self.write(self.record(sample, prepared, output))

    def evaluate(self) -> None:
        self.close()

    def open(self) -> PredictionWriter:
        if self._file is None:
            self.done_ids()
            self._file = open(self.path, "a", encoding="utf-8")
        return self

    def write(self, record: dict) -> None:
        self.open()
        self._file.write(json.dumps(record) + "\n")
        self._file.flush()

    def close(self) -> None:
        if self._file is not None:
            self._file.close()
            self._file = None

    def __enter__(self) -> PredictionWriter:
        return self.open()

    def __exit__(self, *exc: object) -> None:
        self.close()

    def _start_fresh(self) -> set[str]:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self.path.write_text("")
        return set()

    def _recover(self) -> set[str]:
        """Ids of the file's valid records; rewrites it atomically if any line had to go."""
        if not self.path.exists():
            return self._start_fresh()
        text = self.path.read_text(encoding="utf-8", errors="replace")
        lines = text.splitlines()
        records = [r for r in map(_parse_record, lines) if r is not None]
        self.dropped_lines = sum(1 for line in lines if line.strip()) - len(records)
        if self.dropped_lines or (text and not text.endswith("\n")):
            _atomic_write(self.path, "".join(json.dumps(r) + "\n" for r in records))
        return {r["image_id"] for r in records}


def _parse_record(line: str) -> dict | None:
    """The record on one line, or None for a blank, truncated or garbled line."""
    try:
        record = json.loads(line)
    except ValueError:
        return None
    return record if isinstance(record, dict) and isinstance(record.get("image_id"), str) else None


def _atomic_write(path: Path, text: str) -> None:
    """Replace ``path`` by ``text`` in one step, flushed to disk first: the resumable predictions file."""

    def write(tmp: Path) -> None:
        with tmp.open("w", encoding="utf-8") as f:
            f.write(text)
            f.flush()
            os.fsync(f.fileno())

    atomic_write(path, write)


def load_predictions(path: str | Path) -> list[dict]:
    """Records of a prediction file, one per image (the last wins if an image appears twice).

    Blank, truncated or garbled lines are skipped, so a file from a killed run reads fine.
    """
    with open(path, encoding="utf-8", errors="replace") as f:
        by_id = {r["image_id"]: r for r in map(_parse_record, f) if r is not None}
    return list(by_id.values())
