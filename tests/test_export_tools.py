"""Every export format loaded by the real tools as written: Datumaro 1.13.12 and supervision 0.31.2
(their own venv, .venv-formats: their pins clash with the project's), pycocotools here. Boxes and masks are
compared with the JSON lines of the same run. (Label Studio: test_labelstudio.py.)"""

from __future__ import annotations

import json
import shutil
import subprocess

import numpy as np
import pytest

from lost_reg import masks
from lost_reg.cli import main

from .conftest import ROOT, external_tool
from .test_masks import filled
from .test_discover import TINY_ARGS, photos  # noqa: F401  (the fixture)

FORMATS_PYTHON = ROOT / ".venv-formats" / "bin" / "python"
MASK_LOADERS = {"datumaro coco", "datumaro coco polygons", "supervision coco", "supervision coco polygons",
                "supervision yolo-seg"}


def grown(mask: np.ndarray) -> np.ndarray:
    """The mask and its pixels' right, lower and lower-right neighbours: what cv2.fillPoly fills from a polygon on
    the mask's pixel corners."""
    out = mask.copy()
    out[:, 1:] |= mask[:, :-1]
    out[1:, :] |= mask[:-1, :]
    out[1:, 1:] |= mask[:-1, :-1]
    return out


def coco_dataset(tmp_path, photos, name: str, labels) -> str:  # noqa: F811
    """The COCO dataset folder Datumaro wants, made as the README says."""
    dataset = tmp_path / name
    (dataset / "annotations").mkdir(parents=True)
    shutil.copy(labels, dataset / "annotations" / "instances_default.json")
    (dataset / "images").symlink_to(photos)
    return str(dataset)


def test_datumaro_and_supervision_load_every_export_with_its_boxes_and_masks(photos, tmp_path):  # noqa: F811
    python = external_tool("LOST_REG_FORMATS_PYTHON", FORMATS_PYTHON, "Datumaro and supervision (.venv-formats)")
    (photos / "broken.jpg").unlink()  # supervision reads every image in its folder
    # masks of whole patches (the none refiner): a yolo-seg outline's box is then the object's box
    args = [str(photos), *TINY_ARGS, "--max-objects", "2", "--prep", "resize", "--max-side", "98", "--refine", "none"]
    runs = [("jsonl", "labels.jsonl", []), ("voc", "voc", []), ("yolo", "yolo", []), ("coco", "labels.json", []),
            ("coco", "polygons.json", ["--mask-format", "polygon"]), ("yolo-seg", "seg", [])]
    for fmt, out, extra in runs:
        assert main(["discover", *args, "--out", str(tmp_path / out), "--format", fmt, *extra]) == 0
    loaded = subprocess.run([str(python), str(ROOT / "tests" / "load_exports.py"), str(photos), str(tmp_path / "voc"),
                             str(tmp_path / "yolo"), coco_dataset(tmp_path, photos, "coco", tmp_path / "labels.json"),
                             str(tmp_path / "labels.json"),
                             coco_dataset(tmp_path, photos, "polygons", tmp_path / "polygons.json"),
                             str(tmp_path / "polygons.json"), str(tmp_path / "seg")],
                            capture_output=True, text=True, timeout=300)
    assert loaded.returncode == 0, loaded.stderr[-5000:]
    got = json.loads(loaded.stdout)
    assert got.pop("warnings") == []  # e.g. no "Missing annotation field 'segmentation'"

    rows = [json.loads(line) for line in (tmp_path / "labels.jsonl").read_text().splitlines()]
    assert len(rows) == 4 and sum(len(r["objects"]) for r in rows) >= 5
    assert all("segmentation" in o for r in rows for o in r["objects"])
    masked = 0
    for loader, images in got.items():
        assert len(images) == 4, loader
        for r in rows:
            key = r["file_name"] if loader.startswith("supervision") else r["file_name"].rsplit(".", 1)[0]
            image = images[key]
            if "size" in image:
                assert image["size"] == [r["height"], r["width"]], loader
            want = sorted((o["box"], o["segmentation"]) for o in r["objects"])
            boxes = sorted(image["boxes"], key=lambda b: [round(v, 2) for v in b[:4]])  # YOLO's float noise: 57.00006
            assert {b[4] for b in boxes} <= {"object"}, loader
            # YOLO stores normalised floats: exact to float precision after the image-size round trip; a YOLO
            # segment's box is its outline's, through pixel centres: the last pixel's, not past it
            last = 1 if loader == "supervision yolo-seg" else 0
            assert [b[:4] for b in boxes] == [pytest.approx([x0, y0, x1 - last, y1 - last], abs=1e-3)
                                              for (x0, y0, x1, y1), _ in want], (loader, key)
            if loader not in MASK_LOADERS:
                continue
            for (_, rle), b in zip(want, boxes):
                ours, theirs = masks.decode(rle), masks.decode(b[5])
                assert theirs.shape == ours.shape, (loader, key)
                if loader != "datumaro coco" and loader != "supervision coco":
                    ours = filled(ours)  # polygons fill holes (README: Masks); RLE keeps them
                # a YOLO line joins a mask's parts by a thin path (as Ultralytics does)
                if loader == "supervision yolo-seg" and len(masks.polygons(ours)) > 1:
                    assert (theirs & ours).sum() == ours.sum() and (theirs & ~ours).sum() < 0.05 * ours.sum()
                elif loader == "supervision coco polygons":  # it fills COCO's corner vertices as pixel centres
                    np.testing.assert_array_equal(theirs, grown(ours), err_msg=f"{loader} {key}")
                else:
                    np.testing.assert_array_equal(theirs, ours, err_msg=f"{loader} {key}")
                masked += 1
    assert masked == 5 * sum(len(r["objects"]) for r in rows)
