"""Every export format round-trips: COCO through pycocotools, YOLO and VOC re-parsed, Label Studio's shape.
(Loaded by Datumaro, supervision and Label Studio themselves: test_export_tools.py, test_labelstudio.py.)"""

import json
import xml.etree.ElementTree as ET

import pytest

from lost_reg.evaluation import load_predictions
from lost_reg.export import ExportOptions, ImageRecord, coco_image_ids, export
from lost_reg.pipeline import Detection

RECORDS = [
    ImageRecord("b.jpg", "b.jpg", 640, 480, [Detection((10, 20, 110, 220), (1, 0), 640, 480, 0.25),
                                             Detection((300, 0, 640, 480), (2, 30), 640, 480, 0.125)]),
    ImageRecord("sub/a.png", "sub/a.png", 333, 500, [Detection((0, 0, 333, 250), (3, 3), 333, 500, 0.5)]),
    ImageRecord("c.jpeg", "c.jpeg", 100, 50, []),  # nothing stood out
]


def boxes_by_file(records):
    return {r.file_name: [o.box for o in r.objects] for r in records}


def test_coco_loads_in_pycocotools(tmp_path):
    from pycocotools.coco import COCO

    out = tmp_path / "labels.json"
    export(RECORDS, out, "coco")
    coco = COCO(str(out))
    assert coco.getCatIds() == [1] and coco.loadCats(1)[0]["name"] == "object"
    got = {}
    for img in coco.loadImgs(coco.getImgIds()):
        anns = coco.loadAnns(coco.getAnnIds(imgIds=img["id"]))
        got[img["file_name"]] = [(a["bbox"][0], a["bbox"][1], a["bbox"][0] + a["bbox"][2], a["bbox"][1] + a["bbox"][3])
                                 for a in anns]
        rec = next(r for r in RECORDS if r.file_name == img["file_name"])
        assert (img["width"], img["height"]) == (rec.width, rec.height)
        assert [a["score"] for a in anns] == [o.score for o in rec.objects]
    assert got == boxes_by_file(RECORDS)
    assert len({a["id"] for a in coco.dataset["annotations"]}) == 3
    # detections in the same file also load as results against themselves
    assert len(coco.loadRes(coco.dataset["annotations"]).getAnnIds()) == 3
    assert all(a["segmentation"] == [] for a in coco.dataset["annotations"])


def test_coco_results_take_the_ground_truths_image_ids(tmp_path):
    from pycocotools.coco import COCO
    from pycocotools.cocoeval import COCOeval

    # a ground truth with other ids, base names only, and exactly the exported boxes as objects
    gt = {"images": [{"id": 10 * (i + 1), "file_name": r.file_name.split("/")[-1], "width": r.width, "height": r.height}
                     for i, r in enumerate(RECORDS)],
          "annotations": [{"id": 100 * (i + 1) + k, "image_id": 10 * (i + 1), "category_id": 7, "iscrowd": 0,
                           "bbox": [o.box[0], o.box[1], o.box[2] - o.box[0], o.box[3] - o.box[1]],
                           "area": (o.box[2] - o.box[0]) * (o.box[3] - o.box[1])}
                          for i, r in enumerate(RECORDS) for k, o in enumerate(r.objects)],
          "categories": [{"id": 7, "name": "thing"}]}
    (tmp_path / "gt.json").write_text(json.dumps(gt))
    ids = coco_image_ids(gt, [r.file_name for r in RECORDS])
    assert ids == {"b.jpg": 10, "sub/a.png": 20, "c.jpeg": 30}
    out = tmp_path / "results.json"
    export(RECORDS, out, "coco-results", ExportOptions(image_ids=ids, category_id=7))
    truth = COCO(str(tmp_path / "gt.json"))
    results = truth.loadRes(str(out))
    assert sorted((a["image_id"], tuple(a["bbox"]), a["score"]) for a in results.dataset["annotations"]) == sorted(
        (ids[r.file_name], (o.box[0], o.box[1], o.box[2] - o.box[0], o.box[3] - o.box[1]), o.score)
        for r in RECORDS for o in r.objects)
    evaluation = COCOeval(truth, results, "bbox")
    evaluation.params.useCats = 0  # class-agnostic: the boxes are "object"
    evaluation.evaluate(), evaluation.accumulate(), evaluation.summarize()
    assert evaluation.stats[0] == pytest.approx(1.0)  # AP: every box is its own ground truth
    with pytest.raises(KeyError, match="not in the ground truth"):
        export(RECORDS, out, "coco-results", ExportOptions(image_ids={"b.jpg": 10}))


def test_coco_results_default_to_the_coco_exports_ids(tmp_path):
    export(RECORDS, tmp_path / "coco.json", "coco")
    export(RECORDS, tmp_path / "results.json", "coco-results")
    coco = json.loads((tmp_path / "coco.json").read_text())
    results = json.loads((tmp_path / "results.json").read_text())
    assert [{k: a[k] for k in ("image_id", "category_id", "bbox", "score")} for a in coco["annotations"]] == results


def test_jsonl_round_trips(tmp_path):
    out = tmp_path / "labels.jsonl"
    export(RECORDS, out, "jsonl")
    lines = out.read_text().splitlines()
    assert len(lines) == 3 and json.loads(lines[0])["file_name"] == "b.jpg"
    back = [ImageRecord.from_json(r) for r in load_predictions(out)]
    assert sorted(back, key=lambda r: r.file_name) == sorted(RECORDS, key=lambda r: r.file_name)


def test_yolo_files_parse_back_to_the_boxes(tmp_path):
    out = tmp_path / "yolo"
    export(RECORDS, out, "yolo")
    assert (out / "obj.names").read_text() == "object\n" == (out / "classes.txt").read_text()
    assert "names = obj.names" in (out / "obj.data").read_text()
    assert "names: [object]" in (out / "data.yaml").read_text() and "train: obj_train_data" in (out / "data.yaml").read_text()
    assert sorted((out / "images.meta").read_text().splitlines()) == ["b 480 640", "c 50 100", "sub/a 500 333"]
    assert sorted((out / "train.txt").read_text().split()) == sorted(f"obj_train_data/{r.file_name}" for r in RECORDS)
    for r in RECORDS:
        txt = out / "obj_train_data" / (r.file_name.rsplit(".", 1)[0] + ".txt")
        boxes = []
        for line in txt.read_text().splitlines():
            cls, cx, cy, w, h = line.split()
            assert cls == "0"
            cx, cy, w, h = float(cx) * r.width, float(cy) * r.height, float(w) * r.width, float(h) * r.height
            boxes.append(tuple(round(v) for v in (cx - w / 2, cy - h / 2, cx + w / 2, cy + h / 2)))
        assert boxes == [o.box for o in r.objects]


def test_voc_xml_parses_back_to_the_boxes(tmp_path):
    out = tmp_path / "voc"
    export(RECORDS, out, "voc")
    assert sorted((out / "ImageSets/Main/default.txt").read_text().split()) == ["b", "c", "sub/a"]
    assert (out / "labelmap.txt").read_text().splitlines()[1] == "object:128,0,0::"
    for r in RECORDS:
        root = ET.parse(out / "Annotations" / (r.file_name.rsplit(".", 1)[0] + ".xml")).getroot()
        assert root.findtext("filename") == r.file_name.split("/")[-1]
        assert (int(root.findtext("size/width")), int(root.findtext("size/height"))) == (r.width, r.height)
        boxes = [(int(o.findtext("bndbox/xmin")) - 1, int(o.findtext("bndbox/ymin")) - 1,
                  int(o.findtext("bndbox/xmax")), int(o.findtext("bndbox/ymax"))) for o in root.iter("object")]
        assert boxes == [o.box for o in r.objects]
        assert all(o.findtext("name") == "object" for o in root.iter("object"))


def test_labelstudio_tasks_have_percent_rectangles(tmp_path):
    out = tmp_path / "tasks.json"
    export(RECORDS, out, "labelstudio", ExportOptions(url_prefix="s3://bucket/photos/", model_version="lost-reg test"))
    tasks = json.loads(out.read_text())
    assert [t["data"]["image"] for t in tasks] == ["s3://bucket/photos/b.jpg", "s3://bucket/photos/c.jpeg",
                                                  "s3://bucket/photos/sub/a.png"]
    b = tasks[0]["predictions"][0]
    assert b["model_version"] == "lost-reg test" and b["score"] == 0.25
    first = b["result"][0]
    assert first["type"] == "rectanglelabels" and first["from_name"] == "label" and first["to_name"] == "image"
    assert (first["original_width"], first["original_height"]) == (640, 480) and first["score"] == 0.25
    v = first["value"]
    assert v["rectanglelabels"] == ["object"] and v["rotation"] == 0
    assert (v["x"], v["y"], v["width"], v["height"]) == pytest.approx((10 / 6.4, 20 / 4.8, 100 / 6.4, 200 / 4.8))
    assert len({r["id"] for r in b["result"]}) == 2
    assert tasks[1]["predictions"][0]["result"] == []


def test_unknown_format_is_refused(tmp_path):
    with pytest.raises(ValueError, match="unknown format"):
        export(RECORDS, tmp_path / "x", "pascal")
