"""`lost-reg eval` end to end on a generated VOC-style dataset of real photos, with a tiny ViT."""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import cv2
import pytest

from lost_reg.cli import main

from .conftest import ROOT

TINY_ARGS = ["--backbone", "vit_small_patch14_reg4_dinov2", "--weights", "random", "--model-arg", "depth=2",
             "--model-arg", "embed_dim=48", "--model-arg", "num_heads=3", "--device", "cpu"]

XML = """<annotation><filename>{name}.jpg</filename><size><width>{w}</width><height>{h}</height><depth>3</depth></size>
<object><name>thing</name><truncated>0</truncated><difficult>0</difficult>
<bndbox><xmin>{x0}</xmin><ymin>{y0}</ymin><xmax>{x1}</xmax><ymax>{y1}</ymax></bndbox></object></annotation>"""


def make_voc(root: Path, n: int, corrupt: int = 0, broken_xml: int = 0) -> Path:
    """VOC2007 layout with ``n`` real photos (crops of scikit-image's), plus bad files on request."""
    from skimage import data

    photos = [data.chelsea(), data.coffee(), data.astronaut(), data.rocket()]
    voc = root / "VOC2007"
    for d in ("Annotations", "JPEGImages", "ImageSets/Main"):
        (voc / d).mkdir(parents=True, exist_ok=True)
    ids = []
    for i in range(n + corrupt + broken_xml):
        name = f"{i:06d}"
        ids.append(name)
        photo = photos[i % len(photos)]
        h, w = photo.shape[:2]
        crop = photo[(i * 7) % 40 : h - (i * 5) % 30, (i * 3) % 50 :]
        crop = cv2.resize(crop, (crop.shape[1] // 4, crop.shape[0] // 4))
        ch, cw = crop.shape[:2]
        cv2.imwrite(str(voc / "JPEGImages" / f"{name}.jpg"), cv2.cvtColor(crop, cv2.COLOR_RGB2BGR))
        xml = XML.format(name=name, w=cw, h=ch, x0=cw // 4, y0=ch // 4, x1=3 * cw // 4, y1=3 * ch // 4)
        if i >= n + corrupt:
            xml = xml[: len(xml) // 2]  # broken XML
        elif i >= n:
            (voc / "JPEGImages" / f"{name}.jpg").write_bytes(b"\xff\xd8\xff\xe0 not really a jpeg")
        (voc / "Annotations" / f"{name}.xml").write_text(xml)
    (voc / "ImageSets/Main/trainval.txt").write_text("\n".join(ids) + "\n")
    return root


def read_jsonl(path: Path) -> list[dict]:
    return [json.loads(line) for line in path.read_text().splitlines()]


def test_eval_writes_predictions_summary_and_reports_bad_files(tmp_path, capsys):
    root = make_voc(tmp_path / "voc", n=6, corrupt=1, broken_xml=1)
    out = tmp_path / "run"
    assert main(["eval", "--dataset", "voc07", "--root", str(root), "--out", str(out), "--batch-size", "4",
                 "--workers", "1", "--quiet", "--save-vis", str(out / "vis"), *TINY_ARGS]) == 0
    printed = capsys.readouterr().out.strip().splitlines()
    assert printed[-1].startswith("CorLoc: ") and printed[-1].endswith("/6)")
    preds = read_jsonl(out / "predictions.jsonl")
    assert sorted(p["image_id"] for p in preds) == [f"{i:06d}" for i in range(6)]
    for p in preds:
        x0, y0, x1, y1 = p["box"]
        assert 0 <= x0 < x1 <= p["width"] and 0 <= y0 < y1 <= p["height"]
        assert set(p) >= {"image_id", "width", "height", "box", "seed", "iou", "found"}
    assert sorted(p.name for p in (out / "vis").glob("*.png")) == [f"{i:06d}.png" for i in range(6)]
    summary = json.loads((out / "summary.json").read_text())
    assert summary["total"] == 6 and summary["images_failed"] == 1
    assert summary["errors"][0]["image_id"] == "000006"
    assert [s["image_id"] for s in summary["annotations_skipped"]] == ["000007"]
    assert summary["backbone"]["registers"] == 4 and summary["backbone"]["prefix_tokens"] == 5
    assert summary["corloc"] == pytest.approx(sum(p["found"] for p in preds) / 6)
    plan, bb = summary["plan"], summary["backbone"]  # the one resolved plan, every ``auto`` decided, as it ran
    assert plan["method"] == summary["method"] and plan["backbone"] == bb["source"]
    assert [plan[k] for k in ("features", "prep", "device", "dtype")] == [bb["features"], bb["prep"], bb["device"],
                                                                         bb["dtype"]] and plan["layer"] == -1
    assert "auto" not in json.dumps(plan)


def test_resume_after_a_killed_run_gives_identical_predictions(tmp_path):
    root = make_voc(tmp_path / "voc", n=40)
    args = ["eval", "--dataset", "voc07", "--root", str(root), "--batch-size", "1", "--workers", "0", "--quiet",
            *TINY_ARGS]
    full = tmp_path / "full"
    assert main([*args, "--out", str(full)]) == 0

    part = tmp_path / "part"
    cmd = [sys.executable, "-c", "import sys; from lost_reg.cli import main; sys.exit(main(sys.argv[1:]))",
           *args, "--out", str(part)]
    proc = subprocess.Popen(cmd, cwd=ROOT, env={**os.environ, "PYTHONUNBUFFERED": "1"})
    preds = part / "predictions.jsonl"
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline and proc.poll() is None:
        if preds.exists() and preds.read_text().count("\n") >= 3:
            proc.send_signal(signal.SIGKILL)
            break
        time.sleep(0.002)
    proc.wait()
    assert proc.returncode == -signal.SIGKILL, "the run ended before it could be killed"
    done_before = len(read_jsonl(preds)) if preds.read_text().endswith("\n") else None
    assert main([*args, "--out", str(part), "--resume"]) == 0

    by_id = {p["image_id"]: p for p in read_jsonl(full / "predictions.jsonl")}
    resumed = read_jsonl(preds)
    assert len(resumed) == 40 and {p["image_id"]: p for p in resumed} == by_id
    assert done_before is None or done_before < 40
    assert json.loads((part / "summary.json").read_text())["corloc"] == json.loads(
        (full / "summary.json").read_text())["corloc"]


def test_resume_drops_a_half_written_line(tmp_path):
    root = make_voc(tmp_path / "voc", n=5)
    out = tmp_path / "run"
    args = ["eval", "--dataset", "voc07", "--root", str(root), "--out", str(out), "--workers", "0", "--quiet",
            *TINY_ARGS]
    assert main(args) == 0
    lines = (out / "predictions.jsonl").read_text().splitlines()
    (out / "predictions.jsonl").write_text("\n".join(lines[:2]) + "\n" + lines[2][:17])
    assert main([*args, "--resume"]) == 0
    assert sorted(read_jsonl(out / "predictions.jsonl"), key=lambda p: p["image_id"]) == sorted(
        (json.loads(x) for x in lines), key=lambda p: p["image_id"])
    summary = json.loads((out / "summary.json").read_text())
    assert (summary["images_processed"], summary["images_resumed"], summary["images_in_predictions"]) == (3, 2, 5)


def test_resume_shows_the_running_corloc_over_every_image_and_this_runs(tmp_path, capsys):
    root = make_voc(tmp_path / "voc", n=4)
    out = tmp_path / "run"
    args = ["eval", "--dataset", "voc07", "--root", str(root), "--out", str(out), "--workers", "0", *TINY_ARGS]
    assert main([*args, "--limit", "2", "--quiet"]) == 0
    capsys.readouterr()
    assert main([*args, "--resume"]) == 0
    captured = capsys.readouterr()
    assert "resuming: 2 images already in" in captured.out and "CorLoc: " in captured.out
    assert "this run=" in captured.err and "CorLoc=" in captured.err  # tqdm's postfix, on stderr


def test_bad_options_are_one_line_errors(tmp_path, capsys):
    assert main(["eval", "--dataset", "voc07", "--root", str(tmp_path), "--out", str(tmp_path / "o"),
                 *TINY_ARGS]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("error: ") and "\n" not in err
    root = make_voc(tmp_path / "voc", n=1)
    assert main(["eval", "--dataset", "voc07", "--root", str(root), "--out", str(tmp_path / "o"),
                 "--affinity", "cosine", *TINY_ARGS]) == 2
    assert "affinity" in capsys.readouterr().err


def test_eval_with_tokencut_records_the_method_and_rejects_foreign_options(tmp_path, capsys):
    root = make_voc(tmp_path / "voc", n=3)
    out = tmp_path / "tc"
    assert main(["eval", "--dataset", "voc07", "--root", str(root), "--out", str(out), "--quiet",
                 "--method", "tokencut", "--tau", "0.3", *TINY_ARGS]) == 0
    summary = json.loads((out / "summary.json").read_text())
    assert summary["method"] == {"name": "tokencut", "tau": 0.3, "eps": 1e-5, "solver": "lanczos",
                                 "components": "scipy"}
    assert summary["total"] == 3 and "discovery_s" in summary["timings"]
    capsys.readouterr()
    assert main(["eval", "--dataset", "voc07", "--root", str(root), "--out", str(tmp_path / "bad"), "--quiet",
                 "--method", "lost", "--tau", "0.3", *TINY_ARGS]) == 2
    assert "tau does not apply to method lost" in capsys.readouterr().err


def make_coco(root: Path, year: str, ids: list[int]) -> Path:
    """A COCO ``year`` download of real photos (scikit-image's): annotations/instances_train<year>.json and
    train<year>/, the files named as that year names them; image 9 has two boxes, one crowd."""
    from skimage import data

    photos = [data.chelsea(), data.coffee(), data.astronaut(), data.rocket()]
    (root / f"train{year}").mkdir(parents=True)
    images, anns = [], []
    for n, i in enumerate(ids):
        photo = cv2.resize(photos[n % len(photos)], None, fx=0.3, fy=0.3)
        name = f"COCO_train2014_{i:012d}.jpg" if year == "2014" else f"{i:012d}.jpg"
        cv2.imwrite(str(root / f"train{year}" / name), cv2.cvtColor(photo, cv2.COLOR_RGB2BGR))
        h, w = photo.shape[:2]
        images.append({"id": i, "file_name": name, "width": w, "height": h})
        anns.append({"id": 10 * i, "image_id": i, "bbox": [w / 5, h / 6, w / 2, h / 2], "iscrowd": 0,
                     "category_id": 1, "area": 1.0})
    anns.append({"id": 1, "image_id": ids[0], "bbox": [0, 0, 5, 5], "iscrowd": 1, "category_id": 1, "area": 1.0})
    (root / "annotations").mkdir()
    (root / "annotations" / f"instances_train{year}.json").write_text(json.dumps(
        {"images": images, "annotations": anns, "categories": [{"id": 1, "name": "thing"}]}))
    return root


def test_coco20k_gives_the_same_run_from_a_2014_or_a_2017_download(tmp_path, capsys):
    ids = [9, 25, 30, 36]
    listing = tmp_path / "coco_20k_filenames.txt"
    listing.write_text("".join(f"train2014/COCO_train2014_{i:012d}.jpg\n" for i in [*ids, 77, 78, 79, 80]))
    runs = {}
    for year in ("2014", "2017"):
        root = make_coco(tmp_path / f"coco{year}", year, ids)
        out = tmp_path / f"run{year}"
        capsys.readouterr()
        assert main(["eval", "--dataset", "coco20k", "--root", str(root), "--coco20k-list", str(listing),
                     "--out", str(out), "--quiet", *TINY_ARGS]) == 0
        printed = capsys.readouterr().out.splitlines()
        skipped = [line for line in printed if line.startswith("skipped")]
        assert skipped == [f"skipped 4 images, not in the annotation file instances_train{year}.json: "
                           "COCO_train2014_000000000077, COCO_train2014_000000000078, COCO_train2014_000000000079… "
                           "(all in summary.json)"]
        runs[year] = (read_jsonl(out / "predictions.jsonl"), json.loads((out / "summary.json").read_text()))
    (preds14, sum14), (preds17, sum17) = runs["2014"], runs["2017"]
    assert preds14 == preds17 and sorted(p["image_id"] for p in preds14) == [f"COCO_train2014_{i:012d}" for i in ids]
    assert (sum14["corloc"], sum14["found"], sum14["total"]) == (sum17["corloc"], sum17["found"], sum17["total"])
    assert len(sum17["annotations_skipped"]) == 4


def test_a_run_repeats_from_its_summary_with_the_flags_given_overriding(tmp_path):
    root = make_voc(tmp_path / "voc", n=3)
    first = tmp_path / "first"
    assert main(["eval", "--dataset", "voc07", "--root", str(root), "--out", str(first), "--quiet",
                 "--method", "tokencut", "--tau", "0.3", *TINY_ARGS]) == 0
    config = json.loads((first / "summary.json").read_text())["config"]
    assert (config["method"], config["tau"], config["model_args"]) == ("tokencut", 0.3, {"depth": 2, "embed_dim": 48,
                                                                                         "num_heads": 3})
    again = tmp_path / "again"
    assert main(["eval", "--config", str(first / "summary.json"), "--out", str(again)]) == 0
    assert read_jsonl(again / "predictions.jsonl") == read_jsonl(first / "predictions.jsonl")
    summary = json.loads((again / "summary.json").read_text())
    assert summary["config"] == {**config, "out": str(again)} and summary["method"]["tau"] == 0.3
    other = tmp_path / "other"
    assert main(["eval", "--config", str(first / "summary.json"), "--out", str(other), "--tau", "0.5"]) == 0
    assert json.loads((other / "summary.json").read_text())["method"]["tau"] == 0.5


def test_the_default_dtype_is_float32_exactly_where_the_cpu_lacks_native_bfloat16(tmp_path, monkeypatch, bf16_recipe):
    root = make_voc(tmp_path / "voc", n=4)
    runs = {}
    for name, forced, flags in (("fp32", "1", ["--dtype", "float32"]), ("no_bf16", "0", []), ("bf16", "1", [])):
        monkeypatch.setenv("LOST_REG_NATIVE_BF16", forced)  # forces the CPU probe: without / with AVX512-BF16
        assert main(["eval", "--dataset", "voc07", "--root", str(root), "--out", str(tmp_path / name), "--quiet",
                     *TINY_ARGS, *flags]) == 0
        summary = json.loads((tmp_path / name / "summary.json").read_text())
        runs[name] = (summary["config"]["dtype"], summary["backbone"]["dtype"], summary["backbone"]["native_bf16"])
    assert runs == {"fp32": ("float32", "float32", "forced (LOST_REG_NATIVE_BF16)"),
                    "no_bf16": ("auto", "float32", None), "bf16": ("auto", "bfloat16", "forced (LOST_REG_NATIVE_BF16)")}
    # without native bfloat16 the default run is today's float32 run, line for line
    assert read_jsonl(tmp_path / "no_bf16" / "predictions.jsonl") == read_jsonl(tmp_path / "fp32" / "predictions.jsonl")


def test_compile_gives_the_same_predictions(tmp_path):
    if shutil.which(os.environ.get("CXX", "g++")) is None:  # inductor compiles C++ on the CPU
        pytest.skip("torch.compile needs a C++ compiler on the CPU (g++)")
    from torch._dynamo.utils import counters

    root = make_voc(tmp_path / "voc", n=3)
    counters.clear()
    for name, flags in (("plain", []), ("compiled", ["--compile"])):
        assert main(["eval", "--dataset", "voc07", "--root", str(root), "--out", str(tmp_path / name), "--quiet",
                     "--dtype", "float32", *TINY_ARGS, *flags]) == 0
        assert bool(counters["stats"]["unique_graphs"]) == bool(flags)  # the backbone ran compiled, or not
    assert json.loads((tmp_path / "compiled" / "summary.json").read_text())["config"]["compile"] is True
    assert read_jsonl(tmp_path / "compiled" / "predictions.jsonl") == read_jsonl(tmp_path / "plain" / "predictions.jsonl")
