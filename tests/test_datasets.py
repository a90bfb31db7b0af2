"""Dataset readers on real files: VOC XML, a COCO20k subset, image folders, and the shipped sample set."""

from __future__ import annotations

import json
from pathlib import Path

import cv2
import numpy as np
import pytest

from lost_reg import DataError
from lost_reg.datasets import (
    DATASETS,
    COCO20kDataset,
    ImageFolder,
    VOCDataset,
    build_dataset,
)

from .conftest import ROOT


def voc_object(box: tuple, truncated: int = 0, difficult: int = 0, name: str = "dog") -> str:
    xmin, ymin, xmax, ymax = box
    return (f"<object><name>{name}</name><truncated>{truncated}</truncated><difficult>{difficult}</difficult>"
            f"<bndbox><xmin>{xmin}</xmin><ymin>{ymin}</ymin><xmax>{xmax}</xmax><ymax>{ymax}</ymax></bndbox></object>")


def make_voc(root: Path, annotations: dict[str, str | None], year: str = "2007", split: str = "trainval") -> Path:
    """A VOC layout whose split lists ``annotations``' ids; None leaves the XML out."""
    voc = root / f"VOC{year}"
    for d in ("Annotations", "JPEGImages", "ImageSets/Main"):
        (voc / d).mkdir(parents=True, exist_ok=True)
    for image_id, body in annotations.items():
        if body is not None:
            (voc / "Annotations" / f"{image_id}.xml").write_text(body)
    (voc / "ImageSets" / "Main" / f"{split}.txt").write_text("\n".join(annotations) + "\n\n")
    return root


def xml(*objects: str, size: tuple[int, int] | None = (500, 375)) -> str:
    size_xml = f"<size><width>{size[0]}</width><height>{size[1]}</height><depth>3</depth></size>" if size else ""
    return f"<annotation><filename>x.jpg</filename>{size_xml}{''.join(objects)}</annotation>"


@pytest.fixture
def voc_root(tmp_path) -> Path:
    return make_voc(tmp_path, {
        "000001": xml(voc_object((48, 240, 195, 371)), voc_object((8, 12, 352, 498), truncated=1)),
        "000002": xml(voc_object((1, 1, 500, 375), difficult=1), size=None),
        "000003": xml(voc_object(("273.0", "10.5", "300.9", "40.0"))),
        "000004": "<annotation><object><bndbox><xmin>1</xmin",  # cut short
        "000005": None,
        "000006": xml(voc_object(("a", 1, 2, 3))),
    })


def test_voc_boxes_follow_lost(voc_root):
    ds = VOCDataset(voc_root, "2007")
    assert ds.name == "voc07" and [s.image_id for s in ds] == ["000001", "000002", "000003"]
    np.testing.assert_array_equal(ds[0].gt_boxes, [[47, 239, 195, 371], [7, 11, 352, 498]])
    assert ds[0].gt_boxes.dtype == np.float32
    np.testing.assert_array_equal(ds[1].gt_boxes, [[0, 0, 500, 375]])
    np.testing.assert_array_equal(ds[2].gt_boxes, [[272, 9, 300, 40]])  # int(float(s)) for "273.0" etc.
    assert ds[0].size == (500, 375) and ds[1].size is None
    assert ds[0].path == voc_root / "VOC2007" / "JPEGImages" / "000001.jpg"


def test_voc_bad_annotations_are_skipped_and_reported(voc_root):
    skipped = dict(VOCDataset(voc_root, "2007").skipped)
    assert set(skipped) == {"000004", "000005", "000006"}
    assert "unreadable" in skipped["000004"] and "missing" in skipped["000005"] and "xmin" in skipped["000006"]


def test_voc_no_hard_drops_hard_boxes_and_emptied_images(voc_root):
    ds = VOCDataset(voc_root, "2007", no_hard=True)
    assert [s.image_id for s in ds] == ["000001", "000003"]  # 000002's only box is difficult
    np.testing.assert_array_equal(ds[0].gt_boxes, [[47, 239, 195, 371]])


def test_voc_image_without_objects_has_empty_boxes(tmp_path):
    ds = VOCDataset(make_voc(tmp_path, {"a": xml()}, year="2012", split="val"), "2012", split="val")
    assert ds.name == "voc12" and ds[0].gt_boxes.shape == (0, 4)


def test_voc_missing_layout_is_a_data_error(tmp_path):
    with pytest.raises(DataError, match=r"VOC2007.*Annotations.*ImageSets/Main"):
        VOCDataset(tmp_path, "2007")
    make_voc(tmp_path, {"a": xml()})
    with pytest.raises(DataError, match=r"ImageSets/Main/test\.txt"):
        VOCDataset(tmp_path, "2007", split="test")


def coco_json(path: Path) -> Path:
    """A tiny instances_train2014.json: crowd boxes, a crowd-only image, fractional coordinates."""
    images = [{"id": i, "file_name": f"COCO_train2014_{i:012d}.jpg", "width": 640, "height": 480}
              for i in (9, 25, 30)]
    anns = [
        {"id": 1, "image_id": 9, "bbox": [1.4, 2.5, 10.2, 20.0], "iscrowd": 0, "category_id": 1, "area": 1.0},
        {"id": 2, "image_id": 9, "bbox": [0, 0, 600, 400], "iscrowd": 1, "category_id": 1, "area": 1.0},
        {"id": 3, "image_id": 9, "bbox": [100.6, 50.0, 30.0, 40.4], "iscrowd": 0, "category_id": 2, "area": 1.0},
        {"id": 4, "image_id": 25, "bbox": [5, 5, 50, 50], "iscrowd": 1, "category_id": 1, "area": 1.0},
    ]
    cats = [{"id": 1, "name": "person"}, {"id": 2, "name": "dog"}]
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps({"images": images, "annotations": anns, "categories": cats}))
    return path


def test_coco20k_keeps_list_order_drops_crowd_and_reports_missing(tmp_path):
    coco_json(tmp_path / "annotations" / "instances_train2014.json")
    (tmp_path / "train2014").mkdir()
    listing = tmp_path / "list.txt"
    listing.write_text("train2014/COCO_train2014_000000000025.jpg\n\nCOCO_train2014_000000000009.jpg\n"
                       "COCO_train2014_000000000077.jpg\nCOCO_train2014_000000000009.jpg\n")
    ds = COCO20kDataset(tmp_path, listing)
    assert ds.name == "coco20k"
    assert [s.image_id for s in ds] == ["COCO_train2014_000000000025", "COCO_train2014_000000000009"]
    assert ds[0].gt_boxes.shape == (0, 4)  # only a crowd box
    np.testing.assert_array_equal(ds[1].gt_boxes, [[1, 2, 12, 22], [101, 50, 131, 90]])
    assert ds[1].size == (640, 480)
    assert ds[1].path == tmp_path / "train2014" / "COCO_train2014_000000000009.jpg"
    assert [i for i, _ in ds.skipped] == ["COCO_train2014_000000000009", "COCO_train2014_000000000077"]


def test_coco20k_needs_its_list_and_annotations(tmp_path):
    listing = tmp_path / "list.txt"
    listing.write_text("COCO_train2014_000000000009.jpg\n")
    with pytest.raises(DataError, match="coco20k-list"):
        build_dataset("coco20k", tmp_path)
    with pytest.raises(DataError, match="instances_train2014.json or instances_train2017.json"):
        build_dataset("coco20k", tmp_path, coco20k_list=listing)
    other = coco_json(tmp_path / "elsewhere.json")
    with pytest.raises(DataError, match="no COCO train images under .*train2014/.*--coco-images"):
        build_dataset("coco20k", tmp_path, coco20k_list=listing, coco_annotations=other)
    (tmp_path / "train2014").mkdir()
    ds = build_dataset("coco20k", tmp_path, coco20k_list=listing, coco_annotations=other)
    assert len(ds) == 1
    (tmp_path / "broken.json").write_text("{not json")
    with pytest.raises(DataError, match="unreadable"):
        build_dataset("coco20k", tmp_path, coco20k_list=listing, coco_annotations=tmp_path / "broken.json")


def coco2017_json(path: Path) -> Path:
    """The same images under COCO 2017's names (``000000000009.jpg``), with one 2017-only image."""
    data = json.loads(coco_json(path).read_text())
    for image in data["images"]:
        image["file_name"] = f"{image['id']:012d}.jpg"
    data["images"].append({"id": 139, "file_name": "000000000139.jpg", "width": 640, "height": 426})
    path.write_text(json.dumps(data))
    return path


def test_coco20k_from_a_coco_2017_download_is_the_same_dataset(tmp_path):
    listing = tmp_path / "list.txt"
    listing.write_text("COCO_train2014_000000000025.jpg\nCOCO_train2014_000000000009.jpg\nCOCO_train2014_000000000077.jpg\n")
    old, new = tmp_path / "coco2014", tmp_path / "coco2017"
    coco_json(old / "annotations" / "instances_train2014.json")
    coco2017_json(new / "annotations" / "instances_train2017.json")
    (old / "train2014").mkdir()
    (new / "train2017").mkdir()
    a, b = COCO20kDataset(old, listing), COCO20kDataset(new, listing)
    assert [s.image_id for s in a] == [s.image_id for s in b] == ["COCO_train2014_000000000025",
                                                                  "COCO_train2014_000000000009"]
    for x, y in zip(a, b):
        np.testing.assert_array_equal(x.gt_boxes, y.gt_boxes)
        assert x.size == y.size
    assert b[1].path == new / "train2017" / "000000000009.jpg"
    assert a.skipped == [("COCO_train2014_000000000077", "not in the annotation file instances_train2014.json")]
    assert b.skipped == [("COCO_train2014_000000000077", "not in the annotation file instances_train2017.json")]


def touch_images(root: Path, *names: str) -> None:
    for name in names:
        (root / name).parent.mkdir(parents=True, exist_ok=True)
        (root / name).write_bytes(b"")


def test_image_folder_from_folders_globs_and_lists(tmp_path):
    touch_images(tmp_path / "a", "x.jpg", "sub/y.PNG", "notes.md", "z.tiff")
    touch_images(tmp_path / "b", "x.jpg", "w.webp")
    listing = tmp_path / "lists" / "todo.txt"
    listing.parent.mkdir()
    listing.write_text(f"../b/w.webp\n\n{tmp_path / 'a' / 'notes.md'}\nmissing.jpg\n")

    ds = ImageFolder([tmp_path / "a"])
    assert ds.name == "folder" and [s.image_id for s in ds] == ["sub/y.PNG", "x.jpg", "z.tiff"]
    assert all(s.gt_boxes is None and s.size is None for s in ds)

    ds = ImageFolder([str(tmp_path / "b" / "*.jpg"), listing, tmp_path / "a" / "x.jpg"])
    assert {s.path for s in ds} == {tmp_path / "b" / "x.jpg", tmp_path / "b" / "w.webp",
                                    tmp_path / "a" / "notes.md", tmp_path / "a" / "x.jpg"}
    assert ds.skipped == [("missing.jpg", f"listed in {listing} but not a file")]


def test_image_folder_deduplicates_and_keeps_ids_unique(tmp_path):
    touch_images(tmp_path / "a", "x.jpg")
    touch_images(tmp_path / "b", "x.jpg")
    ds = ImageFolder([tmp_path / "a", tmp_path / "a" / "x.jpg", tmp_path / "b"])
    assert len(ds) == 2 and len({s.image_id for s in ds}) == 2
    assert [s.image_id for s in ds] == sorted(s.image_id for s in ds)


def test_image_folder_with_nothing_to_read_is_a_data_error(tmp_path):
    with pytest.raises(DataError, match="no image path"):
        ImageFolder([])
    touch_images(tmp_path, "readme.md")
    with pytest.raises(DataError, match="no images found"):
        ImageFolder([tmp_path, tmp_path / "nope", str(tmp_path / "*.png")])


def test_table_and_unknown_names(tmp_path):
    assert set(DATASETS) == {"voc07", "voc12", "coco20k", "folder"}
    with pytest.raises(DataError, match="unknown dataset"):
        build_dataset("imagenet", tmp_path)
    touch_images(tmp_path, "a.jpg")
    assert [s.image_id for s in build_dataset("folder", tmp_path)] == ["a.jpg"]
    make_voc(tmp_path, {"a": xml(voc_object((1, 1, 5, 5), truncated=1)), "b": xml(voc_object((1, 1, 5, 5)))})
    assert len(build_dataset("voc07", tmp_path)) == 2 and len(build_dataset("voc07", tmp_path, no_hard=True)) == 1


def test_shipped_sample_voc_parses():
    ds = build_dataset("voc07", ROOT / "data" / "sample_voc")
    assert len(ds) == 5 and ds.skipped == []
    for sample in ds:
        image = cv2.imread(str(sample.path), cv2.IMREAD_UNCHANGED)
        assert image is not None, sample.path
        assert sample.size == (image.shape[1], image.shape[0])
        x0, y0, x1, y1 = sample.gt_boxes.T
        assert len(sample.gt_boxes) and (x0 >= 0).all() and (y0 >= 0).all()
        assert (x1 <= sample.size[0]).all() and (y1 <= sample.size[1]).all() and (x0 < x1).all() and (y0 < y1).all()


def test_the_real_coco20k_list_against_a_partial_annotation_file_prints_one_line(tmp_path):
    from lost_reg.cli.common import skipped_lines

    listing = ROOT.parent / "shared" / "data" / "coco_20k_filenames.txt"
    if not listing.is_file():
        pytest.skip(f"the COCO20k list is not at {listing}")
    names = listing.read_text().split()
    ids = [int(Path(n).stem.rsplit("_", 1)[1]) for n in names[:13]]
    (tmp_path / "annotations").mkdir()
    (tmp_path / "train2017").mkdir()
    (tmp_path / "annotations" / "instances_train2017.json").write_text(json.dumps({
        "images": [{"id": i, "file_name": f"{i:012d}.jpg", "width": 640, "height": 480} for i in ids],
        "annotations": [], "categories": []}))
    ds = build_dataset("coco20k", tmp_path, coco20k_list=listing)
    assert len(ds) == 13 and len(ds.skipped) == len(names) - 13 == 19_804
    (line,) = skipped_lines(ds.skipped)
    assert line.startswith(f"skipped {len(ds.skipped):,} images, not in the annotation file instances_train2017.json: ")
