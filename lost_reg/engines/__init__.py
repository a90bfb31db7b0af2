"""Where ``lost-reg discover`` runs, picked by name from one table: one process, or a Ray cluster.

Every engine takes the typed configuration (:class:`DiscoverConfig`) and the selected images and
returns an :class:`Outcome`: the same records (one :class:`~lost_reg.export.ImageRecord` per image that
has a result, from this run and from the resumed ones) and the same error report, which ``discover``
then exports. The boxes come from :func:`find` and :func:`image_record` in both, so an
image gets the same boxes whatever the engine.
"""

from __future__ import annotations

import hashlib
import importlib
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path, PurePosixPath
from typing import Annotated, ClassVar, Literal

from pydantic import Field

from ..config import PATHS_HELP, LocalizerOptions, MaskOptions, RunOptions
from ..datasets import Sample
from ..errors import OptionError
from ..export import FORMATS, LABEL_STUDIO_PREFIX, MASK_FORMATS, MASK_FORMATS_WRITTEN, ImageRecord
from ..images import Prepared
from ..loop import FailedImage
from ..options import Cli, Options
from ..pipeline import Detection, Localizer, RunPlan
from ..multiobject import DEFAULT_MULTI, MULTI_MODES
from ..scores import DEFAULT_SCORE, SCORES

ENGINES = {"local": "one process: decoding workers, shape buckets, the model on one device",
           "ray": 'a Ray cluster (pip install "lost-reg[ray]"): decoding as CPU tasks, the model in GPU or CPU actors'}


def parse_shard(text: str) -> tuple[int, int]:
    """``"2/4"`` → (2, 4), checked: 1 ≤ i ≤ n."""
    i, sep, n = text.partition("/")
    try:
        shard = (int(i), int(n))
    except ValueError:
        shard = (0, 0)
    if not sep or not 1 <= shard[0] <= shard[1]:
        raise OptionError(f"--shard wants I/N with 1 <= I <= N, got {text!r}")
    return shard


def in_shard(key: str, shard: tuple[int, int]) -> bool:
    """Whether ``key`` (an image path) belongs to ``shard``: a hash, so stable across machines and runs."""
    i, n = shard
    return int.from_bytes(hashlib.sha1(key.encode()).digest()[:8], "big") % n == i - 1


class DiscoverOutput(Options):
    """What ``discover`` writes: boxes per image, scored, in an annotation tool's format."""

    group: ClassVar[str | None] = "output"
    out: Path = Field(description="output file (coco, coco-results, jsonl, labelstudio) or folder (yolo, yolo-seg, "
                                  "voc)")
    format: Literal[tuple(FORMATS)] = Field(  # type: ignore[valid-type]
        "coco", description="output format (see README: discover)")
    max_objects: int = Field(1, ge=1, description="at most this many boxes per image (see --multi); 1: the method's "
                                                   "own object")
    multi: Literal[tuple(MULTI_MODES)] = Field(  # type: ignore[valid-type]
        DEFAULT_MULTI, description="how objects after the first are found: prompts (regions grown from prompt "
                                   "patches, ranked by their cut and votes, deduplicated in two tiers) or iterative "
                                   "(the method again on the patches earlier boxes left); README, Every object")
    min_score: float | None = Field(None, description="drop boxes scoring below this (and stop looking); images "
                                                      "where nothing stands out get none")
    score: Literal[tuple(SCORES)] = Field(  # type: ignore[valid-type]
        DEFAULT_SCORE, description="how a box is scored (see README: scores)")
    save_vis: Annotated[Path | None, Cli(metavar="DIR")] = Field(
        None, description="write a PNG per image: boxes, seed, mask, the method's heat map, CLS and register attention")
    image_url_prefix: str | None = Field(
        None, description="labelstudio: prefix of each task's image URL, before the image's path relative to its "
                          f"folder (default: Label Studio's local files, {LABEL_STUDIO_PREFIX}FOLDER/ for one folder)")
    coco_gt: Annotated[Path | None, Cli(metavar="JSON")] = Field(
        None, description="coco-results: take image ids from this COCO ground truth, matching file names")
    no_masks: bool = Field(False, description="leave the objects' pixel masks out (they are written by default "
                                              f"where the format holds them: {', '.join(MASK_FORMATS)})")
    mask_format: Literal[MASK_FORMATS_WRITTEN] = Field(  # type: ignore[valid-type]
        "rle", description="coco: segmentation as COCO RLE or polygons; labelstudio: brush (RLE) or polygon results")

    @property
    def masks(self) -> bool:
        """Whether this run makes masks: unless ``--no-masks``, for the formats that hold them."""
        return not self.no_masks and self.format in MASK_FORMATS


class DiscoverRun(RunOptions):
    """A batch run that can resume, on a shard of the images."""

    resume: bool = Field(False, description="keep what an interrupted run finished (local: OUT.partial.jsonl; "
                                            "ray: OUT.ray/ chunks)")
    shard: Annotated[tuple[int, int], Cli(metavar="I/N", parse=parse_shard)] = Field(
        (1, 1), description="process only shard I of N (1-based; stable hash of each image's path)")


class EngineOptions(Options):
    """Which engine, and the Ray cluster's options."""

    group: ClassVar[str | None] = "engine"
    engine: Literal[tuple(ENGINES)] = Field(  # type: ignore[valid-type]
        "local", description="; ".join(f"{k}: {v}" for k, v in ENGINES.items()))
    ray_address: str = Field("local", description="ray: the cluster to join (auto: the one this machine belongs to, "
                                                  "ray://HOST:PORT) or local")
    actors: int = Field(1, ge=1, description="ray: model actors (e.g. one per GPU)")
    gpus_per_actor: float | None = Field(None, ge=0, description="ray: GPUs each actor reserves (default: 1 when the "
                                                                 "cluster has GPUs and --device is not cpu)")
    chunk_size: int = Field(10000, ge=1, description="ray: images per chunk; a finished chunk is kept, so a killed "
                                                     "job loses at most one")
    decode_batch: int = Field(32, ge=1, description="ray: images per decoding task call")


class DiscoverConfig(DiscoverOutput, LocalizerOptions, MaskOptions, DiscoverRun, EngineOptions):  # type: ignore[misc]
    """``lost-reg discover``: boxes for unlabeled images, for annotation tools."""

    group: ClassVar[str | None] = None
    paths: Annotated[list[str], Cli(metavar="PATH", positional=True)] = Field(description=PATHS_HELP)


@dataclass
class Outcome:
    """What an engine did."""

    records: list[ImageRecord]
    """One per image with a result (this run's and earlier ones'), in input order."""
    errors: list[FailedImage] = field(default_factory=list)
    """Images that could not be read."""
    summary: str = ""
    """A line about the run (speed, workers)."""


def run(config: DiscoverConfig, plan: RunPlan, samples: Sequence[Sample]) -> Outcome:
    """Run ``plan`` on the configured engine (a key of :data:`ENGINES`); its module is imported only then."""
    return importlib.import_module(f".{config.engine}", __name__).run(config, plan, samples)


def find(config: DiscoverConfig, localizer: Localizer, batch: Sequence[Prepared]) -> list[list[Detection]]:
    """Up to ``max_objects`` scored detections per prepared image of one padded shape (``min_score``, ``score``),
    with their masks (``refine``) when the run makes masks: what every engine calls."""
    return localizer.localize_prepared_multi(batch, config.max_objects, config.min_score, config.score,
                                             config.refine if config.masks else None, config.multi)


def file_name(sample: Sample) -> str:
    """The path exports name the image by: its id (the path relative to the folder it was found
    in, or as given for files, globs and lists), or just the file name when that path is
    absolute or climbs out of the working folder with ``..``."""
    path = PurePosixPath(sample.image_id)
    return path.name if path.is_absolute() or ".." in path.parts else sample.image_id


def image_record(sample: Sample, size: tuple[int, int], objects: Sequence[Detection]) -> ImageRecord:
    """One image's record: its id, the name exports use, its size, and its scored boxes."""
    return ImageRecord(sample.image_id, file_name(sample), size[0], size[1], list(objects))
