"""Load lost-reg's exports with the real tools (run by test_export_tools.py in .venv-formats, not by pytest).

``python load_exports.py PHOTOS VOC YOLO COCO_DATASET COCO_FILE POLYGON_DATASET POLYGON_FILE YOLO_SEG`` prints
JSON: for each loader, image → boxes as (x0, y0, x1, y1, label) floats in pixels and, for the loaders of
masks, each box's mask as the tool decoded it (COCO RLE, re-encoded here with pycocotools; None without a
mask); and every warning logged while loading.
"""

import json
import logging
import sys
from pathlib import Path

import datumaro as dm
import numpy as np
import supervision as sv
from pycocotools import mask as mask_utils


class Recorder(logging.Handler):
    def __init__(self) -> None:
        super().__init__(logging.WARNING)
        self.messages: list[str] = []

    def emit(self, record: logging.LogRecord) -> None:
        self.messages.append(record.getMessage())


def rle(mask) -> dict:
    encoded = mask_utils.encode(np.asfortranarray(np.asarray(mask, dtype=np.uint8)))
    return {"size": [int(v) for v in encoded["size"]], "counts": encoded["counts"].decode("ascii")}


def datumaro_boxes(path: str, fmt: str, one_based: bool = False, **options) -> dict:
    """Item id → boxes and the masks that share their annotation id; Pascal VOC's 1-based corners are kept by
    Datumaro, so undo them here."""
    dataset = dm.Dataset.import_from(path, fmt, **options)
    labels = dataset.categories()[dm.AnnotationType.label]
    out = {}
    for item in dataset:
        masks = {a.id: rle(a.image) for a in item.annotations if a.type == dm.AnnotationType.mask}
        boxes = []
        for a in item.annotations:
            if a.type != dm.AnnotationType.bbox:
                continue
            x, y, w, h = a.get_bbox()
            boxes.append([x - one_based, y - one_based, x + w, y + h, labels[a.label].name, masks.get(a.id)])
        out[item.id] = {"size": list(item.media.size), "boxes": boxes}
    return out


def supervision_boxes(dataset: sv.DetectionDataset, root: Path) -> dict:
    out = {}
    for path, _, det in dataset:
        masks = [None] * len(det) if det.mask is None else [rle(m) for m in det.mask]
        out[Path(path).relative_to(root).as_posix()] = {"boxes": [
            [*map(float, box), dataset.classes[c], m] for box, c, m in zip(det.xyxy, det.class_id, masks)]}
    return out


def supervision_yolo(root: Path, labels: Path, data_yaml: Path, **options) -> dict:
    """supervision reads one flat folder of images against one of labels: each subfolder in turn."""
    merged = {}
    for folder in sorted({p.parent for p in labels.rglob("*.txt")}):
        images = root / folder.relative_to(labels)
        merged.update(supervision_boxes(sv.DetectionDataset.from_yolo(str(images), str(folder), str(data_yaml),
                                                                      **options), root))
    return merged


def main(photos: str, voc: str, yolo: str, coco_dataset: str, coco_file: str, polygon_dataset: str,
         polygon_file: str, yolo_seg: str) -> None:
    recorder = Recorder()
    logging.getLogger().addHandler(recorder)
    root = Path(photos).resolve()
    result = {
        "datumaro voc": datumaro_boxes(voc, "voc", one_based=True),
        "datumaro yolo": datumaro_boxes(yolo, "yolo"),
        "datumaro coco": datumaro_boxes(coco_dataset, "coco_instances"),
        "datumaro coco polygons": datumaro_boxes(polygon_dataset, "coco_instances", merge_instance_polygons=True),
        "supervision coco": supervision_boxes(sv.DetectionDataset.from_coco(str(root), coco_file, force_masks=True),
                                              root),
        "supervision coco polygons": supervision_boxes(
            sv.DetectionDataset.from_coco(str(root), polygon_file, force_masks=True), root),
        "supervision yolo": supervision_yolo(root, Path(yolo) / "obj_train_data", Path(yolo) / "data.yaml"),
        "supervision yolo-seg": supervision_yolo(root, Path(yolo_seg) / "labels" / "train",
                                                 Path(yolo_seg) / "data.yaml", force_masks=True),
    }
    result["warnings"] = recorder.messages
    print(json.dumps(result))


if __name__ == "__main__":
    main(*sys.argv[1:])
