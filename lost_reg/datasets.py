"""Datasets LOST is evaluated on (VOC07, VOC12, COCO20k) and plain image folders, chosen from a table.

Every dataset is a list of :class:`Sample` built when it is constructed. Annotations that cannot
be read are not fatal: each is recorded in ``dataset.skipped`` as ``(image_id, reason)`` and left
out, so one broken file never ends a run. Ground-truth boxes follow the LOST reference exactly
(github.com/valeoai/LOST, ``datasets.py``), so CorLoc numbers are comparable with the paper's.
"""

from __future__ import annotations

import contextlib
import functools
import glob
import io
import os
import re
from collections import Counter
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path, PurePath
from typing import Annotated, Any, ClassVar
from xml.etree.ElementTree import Element, ParseError

import numpy as np
from defusedxml import DefusedXmlException
from defusedxml.ElementTree import parse as parse_xml
from pydantic import Field, field_validator

from .errors import DataError
from .options import Cli, Options

IMAGE_EXTENSIONS = frozenset({".jpg", ".jpeg", ".png", ".bmp", ".webp", ".tif", ".tiff"})
VOC_YEARS = ("2007", "2012")
COCO20K_LIST_SOURCE = "https://github.com/valeoai/LOST (datasets/coco_20k_filenames.txt)"


@dataclass(frozen=True)
class Sample:
    """One image: where it is, and its ground-truth boxes when the dataset has them."""

    image_id: str
    """VOC: file stem; COCO: file-name stem; folder: path relative to its root (or the path as given)."""
    path: Path
    gt_boxes: np.ndarray | None
    """float32 [N, 4] x0, y0, x1, y1 in original pixels; None when the dataset has no ground truth."""
    size: tuple[int, int] | None
    """(width, height) when the annotation gives it, else None."""


@dataclass(eq=False)
class Dataset:
    """An indexable list of samples, the dataset's name, and the annotations it had to skip."""

    name: str
    samples: list[Sample]
    skipped: list[tuple[str, str]]

    def __len__(self) -> int:
        return len(self.samples)

    def __getitem__(self, index: int) -> Sample:
        return self.samples[index]

    def __repr__(self) -> str:
        return f"{type(self).__name__}({self.name!r}, {len(self)} images, {len(self.skipped)} skipped)"


# ----------------------------------------------------------------------------------------- VOC


class VOCDataset(Dataset):
    """Pascal VOC ``year`` (2007 or 2012), one split, boxes as in LOST.

    ``root`` holds ``VOC<year>/`` (or ``VOCdevkit/VOC<year>/``, or is that folder). With
    ``no_hard`` truncated and difficult objects are dropped, and so are images left without a
    box, as LOST's ``--no_hard`` does.
    """

    def __init__(self, root: str | Path, year: str, split: str = "trainval", no_hard: bool = False) -> None:
        year = str(year)
        if year not in VOC_YEARS:
            raise DataError(f"VOC year must be one of {', '.join(VOC_YEARS)}, got {year!r}")
        voc = _find_voc_folder(Path(root), year)
        ids = _read_lines(voc / "ImageSets" / "Main" / f"{split}.txt",
                          what=f"VOC{year} split {split!r} (expected ImageSets/Main/{split}.txt under {voc})")
        samples, skipped = [], []
        for image_id in _unique(ids, skipped):
            try:
                size, boxes = parse_voc_xml(voc / "Annotations" / f"{image_id}.xml", no_hard)
            except DataError as e:
                skipped.append((image_id, str(e)))
                continue
            if no_hard and len(boxes) == 0:
                continue
            samples.append(Sample(image_id, voc / "JPEGImages" / f"{image_id}.jpg", boxes, size))
        super().__init__(f"voc{year[2:]}", samples, skipped)


def _find_voc_folder(root: Path, year: str) -> Path:
    """The ``VOC<year>`` folder under ``root``; DataError describing the layout when there is none."""
    for candidate in (root / f"VOC{year}", root / "VOCdevkit" / f"VOC{year}", root):
        if candidate.name == f"VOC{year}" and (candidate / "Annotations").is_dir():
            return candidate
    raise DataError(
        f"no VOC{year} dataset at {root / f'VOC{year}'}: expected {root}/VOC{year}/ holding Annotations/*.xml, "
        f"JPEGImages/*.jpg and ImageSets/Main/<split>.txt (the VOCdevkit layout)")


def parse_voc_xml(path: Path, no_hard: bool = False) -> tuple[tuple[int, int] | None, np.ndarray]:
    """(size, boxes) of one VOC annotation; boxes are LOST's ``[xmin - 1, ymin - 1, xmax, ymax]``.

    Raises DataError (missing file, broken XML, a box without numbers) so the caller can skip it.
    """
    try:
        tree = parse_xml(path)
    except FileNotFoundError:
        raise DataError(f"missing annotation {path}") from None
    except (ParseError, DefusedXmlException, OSError) as e:
        raise DataError(f"unreadable annotation {path.name}: {e}") from None
    annotation = tree.getroot()
    boxes = []
    for obj in annotation.iter("object"):
        if no_hard and (_flag(obj, "truncated") or _flag(obj, "difficult")):
            continue
        bndbox = obj.find("bndbox")
        if bndbox is None:
            raise DataError(f"{path.name}: an object has no <bndbox>")
        xmin, ymin, xmax, ymax = (_voc_int(bndbox, tag, path) for tag in ("xmin", "ymin", "xmax", "ymax"))
        boxes.append((xmin - 1, ymin - 1, xmax, ymax))
    return _voc_size(annotation), np.asarray(boxes, np.float32).reshape(-1, 4)


def _voc_int(parent: Element, tag: str, path: Path) -> int:
    """``int(float(text))`` of a child: VOC12 writes some coordinates as ``273.0``."""
    text = parent.findtext(tag)
    try:
        return int(float(text))
    except (TypeError, ValueError):
        raise DataError(f"{path.name}: <{tag}> is {text!r}, not a number") from None


def _flag(obj: Element, tag: str) -> bool:
    """A VOC 0/1 flag; missing or unreadable counts as 0."""
    try:
        return int(float(obj.findtext(tag) or 0)) != 0
    except ValueError:
        return False


def _voc_size(annotation: Element) -> tuple[int, int] | None:
    """(width, height) from ``<size>`` when it holds two positive numbers."""
    try:
        width, height = int(float(annotation.findtext("size/width"))), int(float(annotation.findtext("size/height")))
    except (TypeError, ValueError):
        return None
    return (width, height) if width > 0 and height > 0 else None


# ------------------------------------------------------------------------------------- COCO20k


class COCO20kDataset(Dataset):
    """LOST's COCO20k: the 19,817 COCO 2014 train images listed in ``list_file``, in list order.

    ``root`` holds a COCO 2014 or 2017 download: ``annotations/instances_train2014.json`` and
    ``train2014/``, or ``annotations/instances_train2017.json`` and ``train2017/`` (found in that
    order; or give ``annotations`` and ``images``). COCO 2017's train split holds the same photos
    under the same ids with the same annotations as 2014's train, renamed (``000000000036.jpg`` for
    ``COCO_train2014_000000000036.jpg``), so list names are matched by id and every image keeps
    its list name as ``image_id``: both layouts give the same samples, boxes and CorLoc, and runs
    resume and compare across them. Ground truth is every non-crowd box, rounded as in LOST.
    """

    def __init__(self, root: str | Path, list_file: str | Path, annotations: str | Path | None = None,
                 images: str | Path | None = None) -> None:
        root = Path(root)
        names = [PurePath(line.replace("\\", "/")).name
                 for line in _read_lines(Path(list_file), what=f"COCO20k list (get it from {COCO20K_LIST_SOURCE})")]
        annotations = Path(annotations) if annotations else _find_coco_annotations(root)
        coco = _load_coco(annotations)
        images = Path(images) if images else _find_coco_images(root, annotations)
        samples, skipped = [], []
        for name in _unique(names, skipped, image_id=lambda name: PurePath(name).stem):
            image_id = PurePath(name).stem
            img = coco.imgs.get(_coco_id(name))
            if img is None:
                skipped.append((image_id, f"not in the annotation file {annotations.name}"))
                continue
            boxes = coco_boxes(coco.imgToAnns.get(img["id"], []))
            size = (int(img["width"]), int(img["height"])) if img.get("width") and img.get("height") else None
            samples.append(Sample(image_id, images / img["file_name"], boxes, size))
        super().__init__("coco20k", samples, skipped)


COCO_YEARS = ("2014", "2017")
"""COCO downloads whose train split holds the COCO20k photos, in the order they are looked for."""


def _find_coco_annotations(root: Path) -> Path:
    for year in COCO_YEARS:
        if (path := root / "annotations" / f"instances_train{year}.json").is_file():
            return path
    raise DataError(f"no COCO annotation file under {root / 'annotations'}: expected instances_train2014.json "
                    f"or instances_train2017.json (a COCO 2014 or 2017 download), or pass --coco-annotations")


def _find_coco_images(root: Path, annotations: Path) -> Path:
    """``train<year>/`` of the annotation file's year, else whichever of ``train2014/``, ``train2017/`` exists."""
    year = re.search(r"(\d{4})", annotations.name)
    candidates = [root / f"train{y}" for y in ([year.group(1)] if year else []) + list(COCO_YEARS)]
    found = next((c for c in candidates if c.is_dir()), None)
    if found is None:
        raise DataError(f"no COCO train images under {root}: expected {candidates[0].name}/ next to annotations/, "
                        f"or pass --coco-images")
    return found


def _coco_id(name: str) -> int | None:
    """The COCO image id in a 2014 or 2017 file name (``COCO_train2014_000000000036.jpg`` → 36)."""
    digits = re.search(r"(\d+)$", PurePath(name).stem)
    return int(digits.group(1)) if digits else None


def _load_coco(path: Path):
    """pycocotools' COCO index of ``path``, without its progress prints; DataError if unreadable."""
    from pycocotools.coco import COCO

    if not path.is_file():
        raise DataError(f"no COCO annotation file at {path}: expected instances_train2014.json or "
                        f"instances_train2017.json (ROOT/annotations/ or --coco-annotations)")
    try:
        with contextlib.redirect_stdout(io.StringIO()):
            return COCO(str(path))
    except (ValueError, KeyError, TypeError, AssertionError, OSError) as e:
        raise DataError(f"unreadable COCO annotation file {path}: {type(e).__name__}: {e}") from None


def coco_boxes(annotations: Iterable[dict]) -> np.ndarray:
    """Non-crowd boxes of one image, ``[round(x), round(y), round(x + w), round(y + h)]`` as in LOST."""
    boxes = [(round(x), round(y), round(x + w), round(y + h))
             for ann in annotations if not ann.get("iscrowd", 0)
             for x, y, w, h in [ann["bbox"]]]
    return np.asarray(boxes, np.float32).reshape(-1, 4)


# -------------------------------------------------------------------------------------- folders


class ImageFolder(Dataset):
    """Images without annotations, from files, folders (recursive), glob patterns or ``.txt`` lists.

    Folders and globs keep only image files (by extension); files named directly or in a list
    are kept as they are. Paths that match nothing are recorded in ``skipped``. Image ids are
    ``/``-separated paths relative to the folder they were found in, or as given otherwise.
    """

    def __init__(self, paths: Sequence[str | Path] | str | Path) -> None:
        if isinstance(paths, (str, Path)):
            paths = [paths]
        if not paths:
            raise DataError("no image path given: pass files, folders, glob patterns or .txt lists of paths")
        skipped: list[tuple[str, str]] = []
        found = [entry for path in paths for entry in _expand(str(path), skipped)]  # (id, id spelled as given, file)
        samples = [Sample(image_id, file, None, None) for image_id, file in _unique_files(found)]
        if not samples:
            reasons = "; ".join(f"{p}: {r}" for p, r in skipped) or "no image files"
            raise DataError(f"no images found in {', '.join(map(str, paths))} ({reasons})")
        super().__init__("folder", sorted(samples, key=lambda s: s.image_id), skipped)


def _expand(arg: str, skipped: list[tuple[str, str]]) -> list[tuple[str, str, Path]]:
    """The image files one argument stands for, as (id, id as given, path)."""
    path = Path(arg)
    if path.is_dir():
        files = _images_under(path)
        if not files:
            skipped.append((arg, "no image files in this folder"))
        return [(_posix(f.relative_to(path)), _posix(f), f) for f in files]
    if path.is_file() and path.suffix.lower() == ".txt":
        return _read_list_file(path, skipped)
    if path.is_file():
        return [(_posix(arg), _posix(arg), path)]
    if glob.has_magic(arg):
        matches = [Path(m) for m in sorted(glob.glob(arg, recursive=True))]
        files = [m for m in matches if m.is_file() and _is_image(m)]
        files += [f for m in matches if m.is_dir() for f in _images_under(m)]
        if files:
            return [(_posix(f), _posix(f), f) for f in files]
        skipped.append((arg, "the pattern matches no image"))
        return []
    skipped.append((arg, "no such file or folder"))
    return []


def _read_list_file(list_file: Path, skipped: list[tuple[str, str]]) -> list[tuple[str, str, Path]]:
    """Files named in a ``.txt`` list, one per line; relative paths are read from the list's folder."""
    out = []
    for line in _read_lines(list_file, what="image list"):
        file = Path(os.path.normpath(list_file.parent / line))  # an absolute line stays as it is
        if file.is_file():
            out.append((_posix(line), _posix(file), file))
        else:
            skipped.append((line, f"listed in {list_file} but not a file"))
    return out


def _unique_files(found: list[tuple[str, str, Path]]) -> list[tuple[str, Path]]:
    """One entry per file (by resolved path); ids that two files share fall back to the path as given."""
    by_file: dict[str, tuple[str, str, Path]] = {}
    for entry in found:
        by_file.setdefault(os.path.realpath(entry[2]), entry)
    counts = Counter(image_id for image_id, _, _ in by_file.values())
    return [(image_id if counts[image_id] == 1 else given, file) for image_id, given, file in by_file.values()]


def _images_under(folder: Path) -> list[Path]:
    return sorted(f for f in folder.rglob("*") if _is_image(f) and f.is_file())


def _is_image(path: Path) -> bool:
    return path.suffix.lower() in IMAGE_EXTENSIONS


def _posix(path: str | PurePath) -> str:
    return PurePath(path).as_posix()


# ---------------------------------------------------------------------------------------- shared


def _read_lines(path: Path, what: str) -> list[str]:
    """Stripped, non-blank lines of a text file; DataError naming the file if it cannot be read."""
    try:
        text = path.read_text(encoding="utf-8-sig")
    except FileNotFoundError:
        raise DataError(f"{what}: no file at {path}") from None
    except (OSError, UnicodeDecodeError) as e:
        raise DataError(f"{what}: cannot read {path} ({e})") from None
    return [line.strip() for line in text.splitlines() if line.strip()]


def _unique(names: list[str], skipped: list[tuple[str, str]],
            image_id: Callable[[str], str] = str) -> list[str]:
    """``names`` without repeats (first kept), since a repeated image would be evaluated twice."""
    seen: set[str] = set()
    out = []
    for name in names:
        if name in seen:
            skipped.append((image_id(name), "listed more than once; kept the first"))
        else:
            seen.add(name)
            out.append(name)
    return out


# ----------------------------------------------------------------------------------------- table


def _build_voc(year: str, root: str | Path, options: DatasetOptions) -> Dataset:
    return VOCDataset(root, year, split=options.split, no_hard=options.no_hard)


def _build_coco20k(root: str | Path, options: DatasetOptions) -> Dataset:
    if options.coco20k_list is None:
        raise DataError("coco20k needs its image list (--coco20k-list): "
                        f"coco_20k_filenames.txt from {COCO20K_LIST_SOURCE}")
    return COCO20kDataset(root, options.coco20k_list, annotations=options.coco_annotations,
                          images=options.coco_images)


DATASETS: dict[str, Callable[..., Dataset]] = {
    "voc07": functools.partial(_build_voc, "2007"),
    "voc12": functools.partial(_build_voc, "2012"),
    "coco20k": _build_coco20k,
    "folder": lambda paths, options: ImageFolder(paths),
}
"""Dataset builders by name; each is called as ``builder(root, options)`` (:class:`DatasetOptions`)."""
BENCHMARKS = tuple(d for d in DATASETS if d != "folder")
"""The datasets with ground truth, which ``eval`` and ``sweep`` take."""


class _Benchmark(Options):
    """Which benchmark, and where it is."""

    group: ClassVar[str | None] = "data"
    dataset: Annotated[str, Cli(choices=BENCHMARKS)] = Field(
        description="which benchmark (a split of VOC: --split)")
    root: Path = Field(description="VOC: folder holding VOC2007/ or VOC2012/; COCO20k: a COCO 2014 or 2017 download "
                                   "(folder holding annotations/ and train2014/ or train2017/)")

    @field_validator("dataset")
    @classmethod
    def _known(cls, name: str) -> str:
        if name not in DATASETS:
            raise ValueError(f"unknown dataset {name!r}: choose one of {', '.join(DATASETS)}")
        return name


class DataOptions(Options):
    """What a benchmark needs besides its root, and which of its images count (``lost-reg table``: every
    benchmark of the table shares them)."""

    group: ClassVar[str | None] = "data"
    coco20k_list: Path | None = Field(None, description="COCO20k file list (coco_20k_filenames.txt from the LOST repo)")
    coco_annotations: Path | None = Field(
        None, description="instances_train2014.json or instances_train2017.json (default: the first of them in "
                          "ROOT/annotations/)")
    coco_images: Path | None = Field(
        None, description="folder of the COCO train images (default: ROOT/train2014/ or ROOT/train2017/, as the "
                          "annotation file)")
    no_hard: bool = Field(False, description="VOC: drop truncated/difficult boxes and images left without a box")
    split: str = Field("trainval", description="VOC: the image set (ImageSets/Main/SPLIT.txt)")
    limit: int | None = Field(None, ge=1, description="evaluate the first N images only")


class DatasetOptions(_Benchmark, DataOptions):
    """The benchmark and where it is (eval, sweep)."""


def build_dataset(name: str, root: str | Path, **options: Any) -> Dataset:
    """The dataset called ``name`` in :data:`DATASETS`, with :class:`DatasetOptions` ``options``; DataError for
    unknown names or missing options."""
    if name not in DATASETS:
        raise DataError(f"unknown dataset {name!r}: choose one of {', '.join(DATASETS)}")
    return dataset_from(DatasetOptions(dataset=name, root=root, **options))


def dataset_from(options: DatasetOptions) -> Dataset:
    """The dataset ``options`` describe (builders read the options that apply to them)."""
    return DATASETS[options.dataset](options.root, options)
