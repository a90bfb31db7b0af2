"""Every export format round-trips: COCO through pycocotools, YOLO and VOC re-parsed, Label Studio's shape.
(Loaded by Datumaro, supervision and Label Studio themselves: test_export_tools.py, test_labelstudio.py.)"""

import json
import xml.etree.ElementTree as ET

import cv2
import numpy as np
import pytest

from lost_reg import masks
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


def masked_records() -> tuple[list[ImageRecord], dict[tuple[str, int], np.ndarray]]:
    """Records whose objects carry masks (an ellipse, a mask in two parts, a rectangle at the border), boxes
    their masks' boxes; and each object's mask by (file name, index)."""
    ellipse = np.zeros((480, 640), np.uint8)
    cv2.ellipse(ellipse, (200, 180), (120, 60), 30, 0, 360, 1, -1)
    parts = np.zeros((480, 640), np.uint8)
    parts[300:420, 400:600] = 1
    parts[20:60, 560:630] = 1
    border = np.zeros((500, 333), np.uint8)
    border[250:, :200] = 1
    made = {("b.jpg", 0): ellipse, ("b.jpg", 1): parts, ("sub/a.png", 0): border}
    records = []
    for name, width, height in (("b.jpg", 640, 480), ("sub/a.png", 333, 500), ("c.jpeg", 100, 50)):
        objects = []
        for k in range(2):
            if (name, k) in made:
                rle = masks.encode(made[name, k].astype(bool))
                objects.append(Detection(masks.box(rle), (k, k), width, height, 0.5 - k / 4, rle))
        records.append(ImageRecord(name, name, width, height, objects))
    return records, {key: m.astype(bool) for key, m in made.items()}


def test_coco_segmentation_rle_and_polygons_load_in_pycocotools(tmp_path):
    from pycocotools.coco import COCO

    records, made = masked_records()
    for mask_format in ("rle", "polygon"):
        out = tmp_path / f"{mask_format}.json"
        export(records, out, "coco", ExportOptions(mask_format=mask_format))
        coco = COCO(str(out))
        for img in coco.dataset["images"]:
            for k, a in enumerate(coco.loadAnns(coco.getAnnIds(imgIds=img["id"]))):
                want = made[img["file_name"], k]
                got = coco.annToMask(a).astype(bool)
                assert got.shape == want.shape
                if mask_format == "rle":
                    assert isinstance(a["segmentation"], dict)
                    np.testing.assert_array_equal(got, want)
                else:  # polygons on pixel corners: exact for masks without holes or specks
                    assert isinstance(a["segmentation"], list) and len(a["segmentation"]) == 1 + (k == 1)
                    np.testing.assert_array_equal(got, want)
                assert a["area"] == want.sum()
                x, y, w, h = a["bbox"]
                assert masks.box(masks.encode(got)) == (x, y, x + w, y + h)


def test_coco_results_with_masks_score_in_cocoeval_segm(tmp_path):
    """The masks as their own ground truth (COCO polygons, as COCO's own annotations are): segm AP 1."""
    from pycocotools.coco import COCO
    from pycocotools.cocoeval import COCOeval

    records, made = masked_records()
    export(records, tmp_path / "gt.json", "coco", ExportOptions(mask_format="polygon"))
    gt = json.loads((tmp_path / "gt.json").read_text())
    gt["categories"] = [{"id": 3, "name": "thing"}]
    for a in gt["annotations"]:
        a["category_id"] = 3
    (tmp_path / "gt.json").write_text(json.dumps(gt))
    ids = coco_image_ids(gt, [r.file_name for r in records])
    export(records, tmp_path / "results.json", "coco-results", ExportOptions(image_ids=ids, category_id=3))
    results = json.loads((tmp_path / "results.json").read_text())
    assert all(isinstance(r["segmentation"]["counts"], str) for r in results)
    truth = COCO(str(tmp_path / "gt.json"))
    for kind in ("segm", "bbox"):
        evaluation = COCOeval(truth, truth.loadRes(str(tmp_path / "results.json")), kind)
        evaluation.params.useCats = 0
        evaluation.evaluate(), evaluation.accumulate(), evaluation.summarize()
        assert evaluation.stats[0] == pytest.approx(1.0), kind
    shifted = [{**r, "segmentation": masks.encode(np.roll(masks.decode(r["segmentation"]), 60, axis=1))}
               for r in results]  # the same boxes, masks moved: segm AP drops, box AP does not
    evaluation = COCOeval(truth, truth.loadRes(shifted), "segm")
    evaluation.params.useCats = 0
    evaluation.evaluate(), evaluation.accumulate(), evaluation.summarize()
    assert evaluation.stats[0] < 0.5


def test_jsonl_carries_the_masks_and_checks_them(tmp_path):
    records, _ = masked_records()
    out = tmp_path / "labels.jsonl"
    export(records, out, "jsonl")
    rows = [json.loads(line) for line in out.read_text().splitlines()]
    assert "segmentation" in rows[0]["objects"][0] and rows[1]["objects"] == []
    back = [ImageRecord.from_json(r) for r in load_predictions(out)]
    assert sorted(back, key=lambda r: r.file_name) == sorted(records, key=lambda r: r.file_name)
    wrong = {**rows[0], "objects": [{**rows[0]["objects"][0], "segmentation": masks.encode(np.ones((10, 10), bool))}]}
    with pytest.raises(ValueError, match=r"not the image's \[height, width\] \[480, 640\]"):
        ImageRecord.from_json(wrong)


def test_yolo_seg_lines_fill_back_to_the_masks(tmp_path):
    records, made = masked_records()
    out = tmp_path / "seg"
    export(records, out, "yolo-seg")
    assert "train: images/train" in (out / "data.yaml").read_text() and "names: [object]" in (out / "data.yaml").read_text()
    assert sorted((out / "train.txt").read_text().split()) == [f"images/train/{r.file_name}" for r in
                                                               sorted(records, key=lambda r: r.file_name)]
    assert (out / "labels" / "train" / "c.txt").read_text() == ""
    for r in records:
        lines = (out / "labels" / "train" / (r.file_name.rsplit(".", 1)[0] + ".txt")).read_text().splitlines()
        assert len(lines) == len(r.objects)
        for k, line in enumerate(lines):
            cls, *values = line.split()
            points = np.array(values, float).reshape(-1, 2) * (r.width, r.height)
            assert cls == "0" and len(points) >= 3 and (points >= 0).all()
            back = np.zeros((r.height, r.width), np.uint8)
            cv2.fillPoly(back, [np.round(points).astype(np.int32)], 1)  # as supervision and Ultralytics fill them
            want = made[r.file_name, k]
            assert (back.astype(bool) & want).sum() == want.sum()
            assert (back.astype(bool) & ~want).sum() < 0.01 * want.sum()  # at most the path joining the parts


def test_labelstudio_masks_are_brush_or_polygon_results(tmp_path):
    records, made = masked_records()
    out = tmp_path / "tasks.json"
    export(records, out, "labelstudio")
    [b, _, a] = json.loads(out.read_text())
    kinds = [(r["type"], r["from_name"]) for r in b["predictions"][0]["result"]]
    assert kinds == [("rectanglelabels", "label"), ("brushlabels", "mask")] * 2
    brush = b["predictions"][0]["result"][1]
    assert brush["value"]["format"] == "rle" and brush["value"]["brushlabels"] == ["object"]
    assert brush["value"]["rle"] == masks.brush_rle(made["b.jpg", 0]) and brush["score"] == 0.5
    export(records, out, "labelstudio", ExportOptions(mask_format="polygon"))
    [b, _, a] = json.loads(out.read_text())
    polygons = [r for r in b["predictions"][0]["result"] if r["type"] == "polygonlabels"]
    assert [r["id"] for r in polygons] == ["m0p0", "m1p0", "m1p1"]
    for mask_id, key in (("m0", ("b.jpg", 0)), ("m1", ("b.jpg", 1))):
        points = [np.array(r["value"]["points"]) * (6.4, 4.8) for r in polygons if r["id"].startswith(mask_id)]
        rle = masks.from_polygons([p.ravel().tolist() for p in points], 480, 640)
        np.testing.assert_array_equal(masks.decode(rle), made[key])
    assert all(r["value"]["closed"] and r["value"]["polygonlabels"] == ["object"] for r in polygons)
    with pytest.raises(ValueError, match="mask_format"):
        export(records, out, "coco", ExportOptions(mask_format="png"))
