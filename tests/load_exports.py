"""Load lost-reg's exports with the real tools (run by test_export_tools.py in .venv-formats, not by pytest).

``python load_exports.py PHOTOS VOC YOLO COCO_DATASET COCO_FILE`` prints JSON: for each loader, image
→ boxes as (x0, y0, x1, y1) floats in pixels, and every warning logged while loading.
"""

import json
import logging
import sys
from pathlib import Path

import datumaro as dm
import supervision as sv


class Recorder(logging.Handler):
    def __init__(self) -> None:
        super().__init__(logging.WARNING)
        self.messages: list[str] = []

    def emit(self, record: logging.LogRecord) -> None:
        self.messages.append(record.getMessage())


def datumaro_boxes(path: str, fmt: str, one_based: bool = False) -> dict:
    """Item id → boxes; Pascal VOC's 1-based corners are kept by Datumaro, so undo them here."""
    dataset = dm.Dataset.import_from(path, fmt)
    labels = dataset.categories()[dm.AnnotationType.label]
    out = {}
    for item in dataset:
        boxes = []
        for a in item.annotations:
            x, y, w, h = a.get_bbox()
            boxes.append([x - one_based, y - one_based, x + w, y + h, labels[a.label].name])
        out[item.id] = {"size": list(item.media.size), "boxes": boxes}
    return out


def supervision_boxes(dataset: sv.DetectionDataset, root: Path) -> dict:
    return {Path(path).relative_to(root).as_posix(): {"boxes": [[*map(float, box), dataset.classes[c]]
                                                              for box, c in zip(det.xyxy, det.class_id)]}
            for path, _, det in dataset}


def main(photos: str, voc: str, yolo: str, coco_dataset: str, coco_file: str) -> None:
    recorder = Recorder()
    logging.getLogger().addHandler(recorder)
    root = Path(photos).resolve()
    result = {
        "datumaro voc": datumaro_boxes(voc, "voc", one_based=True),
        "datumaro yolo": datumaro_boxes(yolo, "yolo"),
        "datumaro coco": datumaro_boxes(coco_dataset, "coco_instances"),
        "supervision coco": supervision_boxes(sv.DetectionDataset.from_coco(str(root), coco_file), root),
    }
    yolo_labels = Path(yolo) / "obj_train_data"
    merged = {}
    for folder in sorted({p.parent for p in yolo_labels.rglob("*.txt")}):  # supervision reads one flat folder
        images = root / folder.relative_to(yolo_labels)
        loaded = sv.DetectionDataset.from_yolo(str(images), str(folder), str(Path(yolo) / "data.yaml"))
        merged.update(supervision_boxes(loaded, root))
    result["supervision yolo"] = merged
    result["warnings"] = recorder.messages
    print(json.dumps(result))


if __name__ == "__main__":
    main(*sys.argv[1:])
