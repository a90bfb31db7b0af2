"""Where ``lost-reg discover`` runs, picked by name from one table: one process, or a Ray cluster.

Every engine takes the command's options and the selected images and returns an :class:`Outcome`:
the same records (one :class:`~lost_reg.export.ImageRecord` per image that has a result, from this run
and from the resumed ones) and the same error report, which ``discover`` then exports. The boxes come
from :func:`find_objects` and :func:`image_record` in both, so an image gets the same boxes whatever
the engine.
"""

from __future__ import annotations

import argparse
import importlib
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import PurePosixPath

from ..datasets import Sample
from ..export import DiscoveredObject, ImageRecord
from ..images import Prepared
from ..pipeline import Localizer

ENGINES = {"local": "one process: decoding workers, shape buckets, the model on one device",
           "ray": 'a Ray cluster (pip install "lost-reg[ray]"): decoding as CPU tasks, the model in GPU or CPU actors'}


@dataclass
class Outcome:
    """What an engine did."""

    records: list[ImageRecord]
    """One per image with a result (this run's and earlier ones'), in input order."""
    errors: list[dict] = field(default_factory=list)
    """Unreadable images: ``{"image_id", "path", "error"}``."""
    summary: str = ""
    """A line about the run (speed, workers)."""


def run(name: str, args: argparse.Namespace, samples: Sequence[Sample]) -> Outcome:
    """Run engine ``name`` (a key of :data:`ENGINES`); its module is imported only then."""
    if name not in ENGINES:
        raise ValueError(f"unknown engine {name!r}: use one of {', '.join(ENGINES)}")
    return importlib.import_module(f".{name}", __name__).run(args, samples)


def file_name(sample: Sample) -> str:
    """The path exports name the image by: its id (the path relative to the folder it was found
    in, or as given for files, globs and lists), or just the file name when that path is
    absolute or climbs out of the working folder with ``..``."""
    path = PurePosixPath(sample.image_id)
    return path.name if path.is_absolute() or ".." in path.parts else sample.image_id


def find_objects(localizer: Localizer, batch: Sequence[Prepared], args: argparse.Namespace) -> list[list]:
    """Up to ``--max-objects`` scored detections per prepared image of one padded shape (``--min-score``, ``--score``)."""
    return localizer.localize_prepared_multi(batch, args.max_objects, args.min_score, args.score)


def image_record(sample: Sample, size: tuple[int, int], objects: Sequence) -> ImageRecord:
    """One image's record: its id, the name exports use, its size, and its scored boxes."""
    boxes = [DiscoveredObject(box=d.detection.box, score=d.score, seed=d.detection.seed) for d in objects]
    return ImageRecord(sample.image_id, file_name(sample), size[0], size[1], boxes)
