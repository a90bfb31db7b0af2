"""Discovered boxes out to the formats annotation tools read: COCO, JSON lines, YOLO, Pascal VOC, Label Studio.

Every writer takes the same :class:`ImageRecord` list (one per image, boxes in original pixels)
and writes atomically, file by file (a temporary file then ``os.replace``), so a crash never
leaves half a label file. All boxes carry the category ``object`` (LOST finds objects, not
classes). Paths inside the outputs are :attr:`ImageRecord.file_name`: the image's path relative
to the folder it was found in, with ``/`` separators — what the tools match images on. Each
format below was loaded by the named tools as written (``tests/test_export_tools.py``).

Objects may carry a pixel mask (:attr:`~lost_reg.pipeline.Detection.segmentation`, COCO RLE in original
pixels); the formats that hold masks (:data:`MASK_FORMATS`) write it, in :attr:`ExportOptions.mask_format`
where they take either (:mod:`lost_reg.masks` makes the polygons and Label Studio's brush RLE).

``coco`` (one JSON file)
    ``images`` (id, file_name, width, height), ``annotations`` (bbox [x, y, w, h] in pixels,
    ``score``, area, iscrowd 0, ``segmentation``, category_id 1) and ``categories`` [object].
    ``segmentation``: the mask as COCO RLE, or polygons (``[x0, y0, x1, y1, …]`` lists on pixel
    corners) with ``mask_format="polygon"``, ``[]`` without a mask; ``area``: the mask's pixels as
    written (the box's without a mask). pycocotools: ``COCO(path)``. CVAT: *Upload annotations →
    COCO 1.0* with this file. Datumaro wants a dataset folder:
    ``DATASET/annotations/instances_default.json`` (this file) beside ``DATASET/images/`` (the
    image folder, or a link to it).
``coco-results`` (one JSON file)
    COCO's result format, what ``COCO.loadRes`` and ``COCOeval`` read: a list of ``{"image_id",
    "category_id", "bbox", "score"}``, with ``segmentation`` (RLE) for objects with a mask, so
    ``COCOeval(gt, res, "segm")`` scores the masks. Image ids and category are the ``coco``
    export's (1), or the ground truth's (:func:`coco_image_ids` matches file names; its first
    category): the objects are class-agnostic, so run ``COCOeval`` with ``params.useCats = 0``.
``jsonl`` (one JSON file, one line per image)
    ``{"image_id", "file_name", "width", "height", "objects": [{"box": [x0, y0, x1, y1],
    "score", "seed": [row, col], "segmentation": RLE}]}``; boxes max-exclusive in pixels, seed
    on the patch grid, ``segmentation`` only for objects with a mask.
``yolo`` (a folder, CVAT's *YOLO 1.1* layout)
    ``obj_train_data/<file_name minus extension>.txt`` per image with ``0 cx cy w h`` lines
    normalised to [0, 1] (an empty file for an image without box), ``obj.names`` and
    ``classes.txt`` (``object``), ``obj.data`` and ``train.txt`` (CVAT, Datumaro), ``data.yaml``
    (Ultralytics, supervision: ``names: [object]``, ``train``/``val``: ``obj_train_data``) and
    ``images.meta`` (Datumaro: each image's height and width, so it needs no image). CVAT:
    ``zip -r labels.zip obj.data obj.names train.txt obj_train_data``, upload as *YOLO 1.1*.
    Ultralytics wants the images beside their labels in ``obj_train_data/``; supervision reads
    one flat image folder against ``obj_train_data/``. YOLO has no score column, nor masks
    (``yolo-seg``).
``yolo-seg`` (a folder, Ultralytics' segmentation layout)
    ``labels/train/<file_name minus extension>.txt`` per image with a ``0 x1 y1 x2 y2 …`` line per
    object: its mask's outline, normalised to [0, 1], through the centres of the outline's pixels
    (what ``cv2.fillPoly``, with which Ultralytics and supervision rasterise, fills back); a mask in
    several parts is one outline, the parts joined at their closest points as Ultralytics joins
    COCO polygons; an object without a mask gets its box's outline. ``data.yaml`` (``train``/``val``:
    ``images/train``, ``names: [object]``), ``train.txt`` (``images/train/<file_name>``, CVAT's
    *Ultralytics YOLO Segmentation*), ``classes.txt``. Link or copy the images to ``images/train/``.
``voc`` (a folder)
    ``Annotations/<file_name minus extension>.xml`` per image (Pascal VOC: 1-based inclusive
    pixel corners, so ``xmin = x0 + 1``, ``xmax = x1``), ``ImageSets/Main/default.txt`` and
    ``labelmap.txt`` (declares ``object``; Datumaro and CVAT refuse undeclared labels). CVAT:
    ``zip -r labels.zip Annotations ImageSets labelmap.txt``, upload as *Pascal VOC 1.1*. VOC has
    no score field.
``labelstudio`` (one JSON file)
    Label Studio's task import format: ``[{"data": {"image": URL}, "predictions": [{"model_version",
    "score", "result": [{"type": "rectanglelabels", "from_name": "label", "to_name": "image",
    "original_width", "original_height", "value": {"x", "y", "width", "height", "rotation": 0,
    "rectanglelabels": ["object"]}, "score"}]}]}]`` with x, y, width, height in percent of the
    image. ``from_name``/``to_name`` match the *Object Detection with Bounding Boxes* template
    (``<RectangleLabels name="label" toName="image">`` with a label ``object``). An object with a
    mask adds a ``brushlabels`` result (``value: {"format": "rle", "rle": [Label Studio's brush
    RLE], "brushlabels": ["object"]}``), or with ``mask_format="polygon"`` a ``polygonlabels``
    result per part (``value: {"points": [[x, y] in percent, …], "closed": true,
    "polygonlabels": ["object"]}``), from a control ``mask`` (:data:`LABEL_STUDIO_CONFIG`). URL is
    ``url_prefix + file_name`` (percent-encoded); :func:`local_files_prefix` gives the prefix for
    Label Studio's local files: start it with ``LABEL_STUDIO_LOCAL_FILES_SERVING_ENABLED=true`` and
    ``LABEL_STUDIO_LOCAL_FILES_DOCUMENT_ROOT`` = the folder *above* the image folder (a storage on
    the document root itself is refused), add a *Local files* storage on the image folder (do not
    *Sync* it: that adds a second, unlabelled copy of every task), then *Import* the JSON. Use
    another prefix (e.g. a bucket URL) for images served elsewhere.
"""

from __future__ import annotations

import json
import shlex
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Literal
from pathlib import Path, PurePosixPath
from urllib.parse import quote
from xml.sax.saxutils import escape

import numpy as np

from . import masks
from .files import write_text
from .pipeline import Detection

CATEGORY = "object"
LABEL_STUDIO_PREFIX = "/data/local-files/?d="
MASK_FORMATS_WRITTEN = ("rle", "polygon")
"""How ``coco`` and ``labelstudio`` write masks: COCO RLE / Label Studio brush, or polygons."""
LABEL_STUDIO_CONFIG = """<View>
  <Image name="image" value="$image"/>
  <RectangleLabels name="label" toName="image"><Label value="object"/></RectangleLabels>
  <BrushLabels name="mask" toName="image"><Label value="object"/></BrushLabels>
</View>"""
"""A Label Studio labeling config for the ``labelstudio`` file with masks (``PolygonLabels`` in place of
``BrushLabels`` for polygons); without masks, the *Object Detection with Bounding Boxes* template."""


@dataclass
class ImageRecord:
    """Everything found in one image: the unit of the JSON-lines work file and of every export."""

    image_id: str
    file_name: str
    """Path relative to the input folder, ``/``-separated (what annotation tools match on)."""
    width: int
    height: int
    objects: list[Detection] = field(default_factory=list)
    """Its boxes, each scored (:class:`~lost_reg.pipeline.Detection`)."""

    def to_json(self) -> dict:
        objects = [{"box": list(o.box), "score": o.score, "seed": None if o.seed is None else list(o.seed),
                    **({} if o.segmentation is None else {"segmentation": o.segmentation})} for o in self.objects]
        return {"image_id": self.image_id, "file_name": self.file_name, "width": self.width, "height": self.height,
                "objects": objects}

    @classmethod
    def from_json(cls, d: dict) -> ImageRecord:
        """The record :meth:`to_json` wrote; a mask that is not a valid RLE of the image's size is a ValueError."""
        width, height = int(d["width"]), int(d["height"])
        objects = [
            Detection(box=tuple(o["box"]), seed=tuple(o["seed"]) if o.get("seed") is not None else None,
                      width=width, height=height, score=float(o["score"]),
                      segmentation=None if o.get("segmentation") is None
                      else masks.check(o["segmentation"], (height, width)))
            for o in d.get("objects", [])
        ]
        return cls(image_id=d["image_id"], file_name=d["file_name"], width=width, height=height, objects=objects)


@dataclass(frozen=True)
class ExportOptions:
    """What some formats need beyond the boxes."""

    url_prefix: str = LABEL_STUDIO_PREFIX
    """labelstudio: put before each image's file name to make its URL."""
    model_version: str = "lost-reg"
    """labelstudio: the predictions' model version."""
    image_ids: Mapping[str, int] | None = None
    """coco-results: file name → the ground truth's image id (default: the ``coco`` export's ids)."""
    category_id: int = 1
    """coco-results: the boxes' category; one of the ground truth's, so that ``COCOeval`` with
    ``useCats = 0`` (which still only reads categories in ``params.catIds``) sees them."""
    mask_format: str = "rle"
    """coco, labelstudio: masks as COCO RLE (Label Studio: brush), or ``polygon``."""


def export(records: Sequence[ImageRecord], out: Path, fmt: str, options: ExportOptions = ExportOptions()) -> None:
    """Write ``records`` to ``out`` (a file, or a folder for ``yolo``, ``yolo-seg`` and ``voc``) in format ``fmt``."""
    if options.mask_format not in MASK_FORMATS_WRITTEN:
        raise ValueError(f"mask_format must be one of {', '.join(MASK_FORMATS_WRITTEN)}")
    if fmt in FOLDER_WRITERS:
        FOLDER_WRITERS[fmt](sorted(records, key=lambda r: r.file_name), out)
    else:
        write_text(out, render(records, fmt, options))


def render(records: Sequence[ImageRecord], fmt: str, options: ExportOptions = ExportOptions()) -> str:
    """The text of a one-file format (coco, coco-results, jsonl, labelstudio), images sorted by file name."""
    if options.mask_format not in MASK_FORMATS_WRITTEN:
        raise ValueError(f"mask_format must be one of {', '.join(MASK_FORMATS_WRITTEN)}")
    if fmt not in RENDERERS:
        raise ValueError(f"unknown format {fmt!r}: use one of {', '.join(FORMATS)}")
    return RENDERERS[fmt](sorted(records, key=lambda r: r.file_name), options)


def coco_segmentation(o: Detection, mask_format: str = "rle") -> tuple[dict | list, int]:
    """An object's COCO ``segmentation`` (RLE, polygons, or ``[]`` without a mask) and its ``area``: the pixels
    of the segmentation as written (polygons rasterised by pycocotools), else the box's."""
    x0, y0, x1, y1 = o.box
    if o.segmentation is None:
        return [], (x1 - x0) * (y1 - y0)
    if mask_format == "rle":
        return o.segmentation, masks.area(o.segmentation)
    polygons = masks.coco_polygons(masks.decode(o.segmentation))
    return polygons, masks.area(masks.from_polygons(polygons, o.height, o.width)) if polygons else 0


def to_coco(records: Sequence[ImageRecord], mask_format: str = "rle") -> dict:
    """A COCO detection (and instance segmentation) dict; image ids count from 1 in ``records`` order."""
    images, annotations = [], []
    for image_id, r in enumerate(records, start=1):
        images.append({"id": image_id, "file_name": r.file_name, "width": r.width, "height": r.height})
        for o in r.objects:
            x0, y0, x1, y1 = o.box
            segmentation, area = coco_segmentation(o, mask_format)
            annotations.append({"id": len(annotations) + 1, "image_id": image_id, "category_id": 1,
                                "bbox": [x0, y0, x1 - x0, y1 - y0], "area": area,
                                "iscrowd": 0, "segmentation": segmentation, "score": round(o.score, 6)})
    return {"info": {"description": "boxes discovered by lost-reg (unsupervised, class-agnostic)"},
            "images": images, "annotations": annotations,
            "categories": [{"id": 1, "name": CATEGORY, "supercategory": CATEGORY}]}


def to_coco_results(records: Sequence[ImageRecord], image_ids: Mapping[str, int] | None = None,
                    category_id: int = 1) -> list[dict]:
    """COCO detection results, with ``segmentation`` (RLE) where an object has a mask; images missing from
    ``image_ids`` are a KeyError naming them."""
    if image_ids is not None:
        missing = [r.file_name for r in records if r.file_name not in image_ids]
        if missing:
            raise KeyError(f"{len(missing)} images are not in the ground truth, e.g. {', '.join(missing[:3])}")
    ids = image_ids or {r.file_name: i for i, r in enumerate(records, start=1)}
    return [{"image_id": ids[r.file_name], "category_id": category_id, "bbox": [x0, y0, x1 - x0, y1 - y0],
             "score": round(o.score, 6), **({} if o.segmentation is None else {"segmentation": o.segmentation})}
            for r in records for o in r.objects for x0, y0, x1, y1 in [o.box]]


def coco_image_ids(ground_truth: dict, file_names: Sequence[str]) -> dict[str, int]:
    """Each file name's image id in a COCO ground truth: by ``file_name``, else by base name when unique."""
    exact = {img["file_name"]: img["id"] for img in ground_truth["images"]}
    by_base: dict[str, list[int]] = {}
    for img in ground_truth["images"]:
        by_base.setdefault(PurePosixPath(img["file_name"]).name, []).append(img["id"])
    unique = {base: ids[0] for base, ids in by_base.items() if len(ids) == 1}
    found = {name: exact.get(name, unique.get(PurePosixPath(name).name)) for name in file_names}
    return {name: image_id for name, image_id in found.items() if image_id is not None}


@dataclass(frozen=True)
class LabelStudioControls:
    """Where predictions go in a Label Studio project: the ``<Image>``, the control for boxes
    (``<RectangleLabels>``) and the one for masks (``<BrushLabels>``: brush RLE, ``<PolygonLabels>``:
    polygons), each with the label given; a control that is None gets no result."""

    to_name: str = "image"
    boxes: str | None = "label"
    box_label: str = CATEGORY
    masks: str | None = "mask"
    mask_type: Literal["brushlabels", "polygonlabels"] = "brushlabels"
    mask_label: str = CATEGORY


def labelstudio_prediction(record: ImageRecord, model_version: str,
                           controls: LabelStudioControls = LabelStudioControls()) -> dict:
    """One Label Studio prediction: a ``rectanglelabels`` result per box, in percent of the image, and for
    each object with a mask a ``brushlabels`` result (Label Studio's brush RLE) or a ``polygonlabels``
    result per part (percent of the image), each with its object's score; the best score is the
    prediction's."""
    r, c = record, controls
    result = []
    for k, o in enumerate(r.objects):
        x0, y0, x1, y1 = o.box
        common = {"to_name": c.to_name, "original_width": r.width, "original_height": r.height,
                  "image_rotation": 0, "score": round(o.score, 6)}
        if c.boxes is not None:
            result.append({"id": f"r{k}", "type": "rectanglelabels", "from_name": c.boxes, **common, "value": {
                "x": 100 * x0 / r.width, "y": 100 * y0 / r.height, "width": 100 * (x1 - x0) / r.width,
                "height": 100 * (y1 - y0) / r.height, "rotation": 0, "rectanglelabels": [c.box_label]}})
        if c.masks is None or o.segmentation is None:
            continue
        mask = masks.decode(o.segmentation)
        if c.mask_type == "brushlabels":
            result.append({"id": f"m{k}", "type": "brushlabels", "from_name": c.masks, **common, "value": {
                "format": "rle", "rle": masks.brush_rle(mask), "brushlabels": [c.mask_label]}})
            continue
        scale = np.array([100 / r.width, 100 / r.height])
        for part, outline in enumerate(masks.polygons(mask, "corners")):
            result.append({"id": f"m{k}p{part}", "type": "polygonlabels", "from_name": c.masks, **common, "value": {
                "points": (outline * scale).round(4).tolist(), "closed": True, "polygonlabels": [c.mask_label]}})
    return {"model_version": model_version, "result": result,
            **({"score": round(max(o.score for o in r.objects), 6)} if r.objects else {})}


def local_files_prefix(paths: Sequence[str | Path]) -> str:
    """The image URL prefix for Label Studio's local files: ``/data/local-files/?d=FOLDER/`` for one
    folder (served with its parent as the document root), the bare prefix for anything else."""
    if len(paths) == 1 and Path(paths[0]).is_dir():
        return f"{LABEL_STUDIO_PREFIX}{quote(Path(paths[0]).resolve().name)}/"
    return LABEL_STUDIO_PREFIX


def load_hint(fmt: str, out: Path, paths: Sequence[str | Path], mask_control: str | None = None) -> str:
    """One line on how to open what :func:`export` wrote (printed by ``lost-reg discover``); for ``labelstudio``
    with masks, ``mask_control`` names the control the project's labeling config needs (``BrushLabels``…)."""
    folder = Path(paths[0]).resolve() if len(paths) == 1 and Path(paths[0]).is_dir() else None
    config = (f"; the project's labeling config needs <{mask_control} name=\"mask\" toName=\"image\"> with a label "
              f"{CATEGORY} beside the rectangles (README: discover)" if mask_control else "")
    if fmt == "labelstudio" and folder:
        return (f"Label Studio: start it with LABEL_STUDIO_LOCAL_FILES_SERVING_ENABLED=true "
                f"LABEL_STUDIO_LOCAL_FILES_DOCUMENT_ROOT={shlex.quote(str(folder.parent))}, add a Local files storage "
                f"on {folder} (do not Sync it), then import {out}{config}")
    hints = {"coco": f"pycocotools: COCO({str(out)!r}); Datumaro: name it DATASET/annotations/instances_default.json "
                     "beside DATASET/images/",
             "coco-results": f"pycocotools: COCO(ground_truth).loadRes({str(out)!r}); COCOeval with params.useCats = 0",
             "yolo": f"CVAT: cd {shlex.quote(str(out))} && zip -r ../labels.zip obj.data obj.names train.txt "
                     "obj_train_data (YOLO 1.1); Ultralytics: "
                     f"{out / 'data.yaml'} with the images copied into obj_train_data/",
             "yolo-seg": f"Ultralytics: ln -s {shlex.quote(str(folder or 'IMAGES'))} {shlex.quote(str(out / 'images' / 'train'))}"
                         f", then data={out / 'data.yaml'}; supervision: DetectionDataset.from_yolo(IMAGES, "
                         f"{str(out / 'labels' / 'train')!r}, {str(out / 'data.yaml')!r}, force_masks=True)",
             "voc": f"CVAT: cd {shlex.quote(str(out))} && zip -r ../labels.zip Annotations ImageSets labelmap.txt "
                    "(Pascal VOC 1.1); "
                    f"Datumaro: Dataset.import_from({str(out)!r}, 'voc')",
             "labelstudio": f"Label Studio: serve the images where the tasks' URLs point, then import the file{config}"}
    return hints.get(fmt, "")


def to_labelstudio(records: Sequence[ImageRecord], url_prefix: str = LABEL_STUDIO_PREFIX,
                   model_version: str = "lost-reg", mask_format: str = "rle") -> list[dict]:
    """Label Studio tasks with one prediction each (percent coordinates; masks from the control ``mask``)."""
    controls = LabelStudioControls(mask_type="brushlabels" if mask_format == "rle" else "polygonlabels")
    return [{"data": {"image": url_prefix + quote(r.file_name)},
             "predictions": [labelstudio_prediction(r, model_version, controls)]} for r in records]


def yolo_lines(record: ImageRecord) -> list[str]:
    """``0 cx cy w h`` per box, normalised to the image size."""
    w, h = record.width, record.height
    return [f"0 {(x0 + x1) / 2 / w:.6f} {(y0 + y1) / 2 / h:.6f} {(x1 - x0) / w:.6f} {(y1 - y0) / h:.6f}"
            for x0, y0, x1, y1 in (o.box for o in record.objects)]


def write_yolo(records: Sequence[ImageRecord], out: Path) -> None:
    """CVAT's YOLO 1.1 layout in ``out``, with Ultralytics' ``data.yaml`` and Datumaro's ``images.meta``."""
    for r in records:
        labels = "".join(f"{line}\n" for line in yolo_lines(r))
        write_text(out / "obj_train_data" / _with_suffix(r.file_name, ".txt"), labels)
    write_text(out / "obj.names", f"{CATEGORY}\n")
    write_text(out / "classes.txt", f"{CATEGORY}\n")
    write_text(out / "obj.data", "classes = 1\nnames = obj.names\ntrain = train.txt\n")
    write_text(out / "train.txt", "".join(f"obj_train_data/{r.file_name}\n" for r in records))
    write_text(out / "data.yaml", "# lost-reg boxes, one class-agnostic category. Ultralytics: put the images beside "
                                   "their labels in obj_train_data/.\n"
                                   f"train: obj_train_data\nval: obj_train_data\nnc: 1\nnames: [{CATEGORY}]\n")
    write_text(out / "images.meta", "".join(f"{shlex.quote(_with_suffix(r.file_name, ''))} {r.height} {r.width}\n"
                                             for r in records))


def yolo_segment_lines(record: ImageRecord) -> list[str]:
    """``0 x1 y1 x2 y2 …`` per object, normalised: the mask's outline through its pixels' centres (its parts
    joined into one), or the box's outline for an object without a mask."""
    lines = []
    size = np.array([record.width, record.height], dtype=np.float64)
    for o in record.objects:
        parts = [] if o.segmentation is None else masks.polygons(masks.decode(o.segmentation), "centres")
        outline = masks.one_outline(parts)
        if not len(outline):
            x0, y0, x1, y1 = o.box
            outline = np.array([[x0, y0], [x1 - 1, y0], [x1 - 1, y1 - 1], [x0, y1 - 1]], dtype=np.float64)
        lines.append("0 " + " ".join(f"{v:.6f}" for v in (outline / size).ravel()))
    return lines


def write_yolo_seg(records: Sequence[ImageRecord], out: Path) -> None:
    """Ultralytics' segmentation layout in ``out``: ``labels/train/*.txt``, ``data.yaml``, ``train.txt``."""
    for r in records:
        labels = "".join(f"{line}\n" for line in yolo_segment_lines(r))
        write_text(out / "labels" / "train" / _with_suffix(r.file_name, ".txt"), labels)
    write_text(out / "classes.txt", f"{CATEGORY}\n")
    write_text(out / "train.txt", "".join(f"images/train/{r.file_name}\n" for r in records))
    write_text(out / "data.yaml", "# lost-reg masks, one class-agnostic category. Ultralytics: link or copy the "
                                   "images to images/train/.\n"
                                   f"train: images/train\nval: images/train\nnc: 1\nnames: [{CATEGORY}]\n")


def voc_xml(record: ImageRecord) -> str:
    """One Pascal VOC annotation (1-based inclusive corners)."""
    path = PurePosixPath(record.file_name)
    objects = "".join(
        f"  <object>\n    <name>{CATEGORY}</name>\n    <pose>Unspecified</pose>\n    <truncated>0</truncated>\n"
        f"    <difficult>0</difficult>\n    <bndbox>\n"
        f"      <xmin>{o.box[0] + 1}</xmin>\n      <ymin>{o.box[1] + 1}</ymin>\n"
        f"      <xmax>{o.box[2]}</xmax>\n      <ymax>{o.box[3]}</ymax>\n    </bndbox>\n  </object>\n"
        for o in record.objects
    )
    return (
        f"<annotation>\n  <folder>{escape(str(path.parent) if str(path.parent) != '.' else '')}</folder>\n"
        f"  <filename>{escape(path.name)}</filename>\n  <source>\n    <database>lost-reg</database>\n  </source>\n"
        f"  <size>\n    <width>{record.width}</width>\n    <height>{record.height}</height>\n    <depth>3</depth>\n"
        f"  </size>\n  <segmented>0</segmented>\n{objects}</annotation>\n"
    )


def write_voc(records: Sequence[ImageRecord], out: Path) -> None:
    """``Annotations/*.xml``, ``ImageSets/Main/default.txt`` and ``labelmap.txt`` in ``out``."""
    for r in records:
        write_text(out / "Annotations" / _with_suffix(r.file_name, ".xml"), voc_xml(r))
    names = "".join(f"{_with_suffix(r.file_name, '')}\n" for r in records)
    write_text(out / "ImageSets" / "Main" / "default.txt", names)
    write_text(out / "labelmap.txt", f"# label:color_rgb:parts:actions\n{CATEGORY}:128,0,0::\n")


def _with_suffix(file_name: str, suffix: str) -> str:
    return str(PurePosixPath(file_name).with_suffix(suffix))


RENDERERS: dict[str, Callable[[Sequence[ImageRecord], ExportOptions], str]] = {
    "coco": lambda records, o: json.dumps(to_coco(records, o.mask_format)),
    "coco-results": lambda records, o: json.dumps(to_coco_results(records, o.image_ids, o.category_id)),
    "jsonl": lambda records, o: "".join(json.dumps(r.to_json()) + "\n" for r in records),
    "labelstudio": lambda records, o: json.dumps(to_labelstudio(records, o.url_prefix, o.model_version,
                                                                o.mask_format), indent=1),
}
"""The one-file formats: their text."""
FOLDER_WRITERS: dict[str, Callable[[Sequence[ImageRecord], Path], None]] = {
    "yolo": write_yolo,
    "yolo-seg": write_yolo_seg,
    "voc": write_voc,
}
"""The folder formats: their writers."""
FORMATS = (*RENDERERS, *FOLDER_WRITERS)
MASK_FORMATS = ("coco", "coco-results", "jsonl", "labelstudio", "yolo-seg")
"""The formats that write masks (``yolo-seg`` only masks: it needs them)."""
