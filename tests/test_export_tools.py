"""Every export format loaded by the real tools as written: Datumaro 1.13.12 and supervision 0.31.2
(their own venv, .venv-formats: their pins clash with the project's), pycocotools here. Boxes are
compared with the JSON lines of the same run. (Label Studio: test_labelstudio.py.)"""

from __future__ import annotations

import json
import subprocess

import pytest

from lost_reg.cli import main

from .conftest import ROOT, external_tool
from .test_discover import TINY_ARGS, photos  # noqa: F401  (the fixture)

FORMATS_PYTHON = ROOT / ".venv-formats" / "bin" / "python"


def test_datumaro_and_supervision_load_every_export_with_its_boxes(photos, tmp_path):  # noqa: F811
    python = external_tool("LOST_REG_FORMATS_PYTHON", FORMATS_PYTHON, "Datumaro and supervision (.venv-formats)")
    (photos / "broken.jpg").unlink()  # supervision reads every image in its folder
    args = [str(photos), *TINY_ARGS, "--max-objects", "2"]
    for fmt, out in [("jsonl", "labels.jsonl"), ("voc", "voc"), ("yolo", "yolo"), ("coco", "labels.json")]:
        assert main(["discover", *args, "--out", str(tmp_path / out), "--format", fmt]) == 0
    # the COCO dataset folder Datumaro wants, made as the README says
    dataset = tmp_path / "dataset"
    (dataset / "annotations").mkdir(parents=True)
    (dataset / "annotations" / "instances_default.json").write_bytes((tmp_path / "labels.json").read_bytes())
    (dataset / "images").symlink_to(photos)

    loaded = subprocess.run([str(python), str(ROOT / "tests" / "load_exports.py"), str(photos), str(tmp_path / "voc"),
                             str(tmp_path / "yolo"), str(dataset), str(tmp_path / "labels.json")],
                            capture_output=True, text=True, timeout=300)
    assert loaded.returncode == 0, loaded.stderr[-5000:]
    got = json.loads(loaded.stdout)
    assert got.pop("warnings") == []  # e.g. no "Missing annotation field 'segmentation'"

    rows = [json.loads(line) for line in (tmp_path / "labels.jsonl").read_text().splitlines()]
    assert len(rows) == 4 and sum(len(r["objects"]) for r in rows) >= 5
    for loader, images in got.items():
        assert len(images) == 4, loader
        for r in rows:
            key = r["file_name"] if loader.startswith("supervision") else r["file_name"].rsplit(".", 1)[0]
            image = images[key]
            if "size" in image:
                assert image["size"] == [r["height"], r["width"]], loader
            want = sorted(o["box"] for o in r["objects"])
            boxes = sorted(image["boxes"], key=lambda b: [round(v, 2) for v in b[:4]])  # YOLO's float noise: 57.00006
            assert {b[4] for b in boxes} <= {"object"}, loader
            # YOLO stores normalised floats: exact to float precision after the image-size round trip
            assert [b[:4] for b in boxes] == [pytest.approx(b, abs=1e-3) for b in want], (loader, key)
