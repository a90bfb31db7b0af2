"""A real Label Studio (1.23.2, its own venv) on 127.0.0.1: the service as its ML backend, and the file import.

Label Studio is started once for the module with a temporary data dir, a user and an API token from
its environment variables, and with its own validation of predictions against the project's labeling
config turned on (a feature flag, off by default in 1.23.2), so every prediction must pass it. The
service is a real uvicorn process with a tiny random ViT. Boxes and masks read back through Label
Studio's API are compared with what ``lost-reg discover`` writes for the same photos with the same model;
brush masks are decoded by Label Studio's own decoder (label-studio-sdk, in its venv).
"""

from __future__ import annotations

import json
import subprocess
from collections.abc import Iterator
from pathlib import Path

import cv2
import httpx
import numpy as np
import pytest

from lost_reg import masks
from lost_reg.cli import main
from lost_reg.export import LABEL_STUDIO_CONFIG
from service.labelstudio import target_of

from .conftest import ROOT, external_tool, free_port, running, serving
from .test_masks import filled
from .test_service_server import TINY_ENV

LABEL_STUDIO = ROOT / ".venv-labelstudio" / "bin" / "label-studio"
LABEL_STUDIO_PYTHON = LABEL_STUDIO.with_name("python")
TOKEN = "0123456789abcdef0123456789abcdef01234567"
SERVICE_KEY = "lost-reg-secret"
DISCOVER = ["--backbone", "vit_small_patch14_dinov2", "--weights", "random", "--model-arg", "depth=2",
            "--model-arg", "embed_dim=48", "--model-arg", "num_heads=3", "--model-arg", "reg_tokens=4",
            "--device", "cpu", "--workers", "0", "--quiet"]
PHOTOS = ("cat.jpg", "coffee.png", "rocket.jpg")
CUSTOM_CONFIG = """<View>
  <Image name="photo" value="$picture"/>
  <RectangleLabels name="bbox" toName="photo"><Label value="thing"/><Label value="other"/></RectangleLabels>
</View>"""
TEMPLATE_CONFIG = """<View>
  <Image name="image" value="$image"/>
  <RectangleLabels name="label" toName="image"><Label value="object"/></RectangleLabels>
</View>"""
BRUSH_CONFIG = """<View>
  <Image name="photo" value="$picture"/>
  <RectangleLabels name="bbox" toName="photo"><Label value="thing"/></RectangleLabels>
  <BrushLabels name="paint" toName="photo"><Label value="blob"/><Label value="other"/></BrushLabels>
</View>"""
POLYGON_CONFIG = LABEL_STUDIO_CONFIG.replace("BrushLabels", "PolygonLabels")
STRICT = "fflag_feat_utc_210_prediction_validation_15082025"
"""Label Studio's feature flag that refuses predictions its labeling config does not validate."""


class LabelStudio:
    """A running Label Studio: its URL, an API client, and its document root for local files."""

    def __init__(self, url: str, docroot: Path) -> None:
        self.url, self.docroot = url, docroot
        self.api = httpx.Client(base_url=url, headers={"Authorization": f"Token {TOKEN}"}, timeout=120)

    def project(self, title: str, config: str) -> int:
        response = self.api.post("/api/projects", json={"title": title, "label_config": config})
        assert response.status_code == 201, response.text
        return response.json()["id"]

    def tasks(self, project: int) -> list[dict]:
        response = self.api.get("/api/tasks", params={"project": project, "fields": "all", "page_size": 100})
        assert response.status_code == 200, response.text
        return response.json()["tasks"]


@pytest.fixture(scope="module")
def label_studio(tmp_path_factory) -> Iterator[LabelStudio]:
    binary = external_tool("LOST_REG_LABEL_STUDIO", LABEL_STUDIO, "Label Studio (label-studio==1.23.2)")
    tmp = tmp_path_factory.mktemp("label-studio")
    docroot = tmp / "files"
    write_photos(docroot / "photos")
    env = {"LABEL_STUDIO_USERNAME": "test@example.com", "LABEL_STUDIO_PASSWORD": "lost-reg-test-1",
           "LABEL_STUDIO_USER_TOKEN": TOKEN, "LABEL_STUDIO_ENABLE_LEGACY_API_TOKEN": "true",
           "LABEL_STUDIO_LOCAL_FILES_SERVING_ENABLED": "true", "LABEL_STUDIO_LOCAL_FILES_DOCUMENT_ROOT": str(docroot),
           "ML_BLOCK_LOCAL_IP": "false", "SSRF_PROTECTION_ENABLED": "false",  # the ML backend is on 127.0.0.1
           "DJANGO_DB": "sqlite", "COLLECT_ANALYTICS": "false", "SENTRY_DSN": "", "FRONTEND_SENTRY_DSN": "",
           STRICT: "true"}
    port = free_port()
    command = [str(binary), "start", "--no-browser", "--host", "127.0.0.1", "--port", str(port),
               "--data-dir", str(tmp / "data")]
    with running(command, port, tmp / "label-studio.log", env, ready="/health", timeout_s=300) as url:  # migrations
        yield LabelStudio(url, docroot)


def write_photos(folder: Path) -> None:
    """Three real photos (scikit-image), at half size."""
    from skimage import data

    folder.mkdir(parents=True)
    for name, image in zip(PHOTOS, (data.chelsea(), data.coffee(), data.rocket())):
        half = cv2.resize(image, (image.shape[1] // 2, image.shape[0] // 2), interpolation=cv2.INTER_AREA)
        cv2.imwrite(str(folder / name), cv2.cvtColor(half, cv2.COLOR_RGB2BGR))


def discovered(photos: Path, tmp_path: Path, *extra: str) -> dict[str, dict]:
    """``lost-reg discover``'s JSON lines for ``photos``, by file name."""
    out = tmp_path / "discovered.jsonl"
    assert main(["discover", str(photos), "--out", str(out), "--format", "jsonl", *DISCOVER, *extra]) == 0
    return {r["file_name"]: r for r in map(json.loads, out.read_text().splitlines())}


def brush_masks(results: list[dict], tmp_path: Path) -> list[np.ndarray]:
    """The masks of ``brushlabels`` results, decoded by label-studio-sdk's converter (Label Studio's venv)."""
    python = external_tool("LOST_REG_LABEL_STUDIO_PYTHON", LABEL_STUDIO_PYTHON, "Label Studio's python")
    (tmp_path / "brushes.json").write_text(json.dumps(results))
    script = ("import json, sys; from label_studio_sdk.converter.brush import decode_rle; "
              "print(json.dumps([(decode_rle(r['value']['rle']).reshape(r['original_height'], r['original_width'], 4)"
              "[..., 3] > 0).astype(int).tolist() for r in json.load(open(sys.argv[1]))]))")
    done = subprocess.run([str(python), "-c", script, str(tmp_path / "brushes.json")], capture_output=True, text=True,
                          timeout=300)
    assert done.returncode == 0, done.stderr[-3000:]
    return [np.array(m, bool) for m in json.loads(done.stdout)]


def polygon_mask(results: list[dict]) -> np.ndarray:
    """The mask of an object's ``polygonlabels`` results (percent points), rasterised by pycocotools."""
    width, height = results[0]["original_width"], results[0]["original_height"]
    polygons = [(np.array(r["value"]["points"]) * (width / 100, height / 100)).ravel().tolist() for r in results]
    return masks.decode(masks.from_polygons(polygons, height, width))


def pixels(result: dict) -> list[int]:
    """A rectanglelabels result back in pixels (x0, y0, x1, y1)."""
    v, w, h = result["value"], result["original_width"], result["original_height"]
    return [round(v["x"] * w / 100), round(v["y"] * h / 100),
            round((v["x"] + v["width"]) * w / 100), round((v["y"] + v["height"]) * h / 100)]


def test_ml_backend_gives_every_task_the_discover_box(label_studio, tmp_path):
    ls, photos = label_studio, label_studio.docroot / "photos"
    want = discovered(photos, tmp_path)
    project = ls.project("lost-reg ML backend", CUSTOM_CONFIG)  # names that are not the template's
    uploads = [(f"file{i}", (name, (photos / name).read_bytes())) for i, name in enumerate(PHOTOS)]
    assert ls.api.post(f"/api/projects/{project}/import", files=uploads).status_code == 201
    unfetchable = [{"picture": "http://198.51.100.7/elsewhere.jpg"},  # another host: never fetched
                   {"picture": "/data/local-files/?d=photos/missing.jpg"},  # on Label Studio, but not there
                   {"picture": "/data/local-files/?d=photos/\x00cat.jpg"}]  # no URL at all: once a 500 for the whole batch
    assert ls.api.post(f"/api/projects/{project}/import", json=unfetchable).status_code == 201

    env = {**TINY_ENV, "LOST_REG_API_KEY": SERVICE_KEY, "LOST_REG_LABEL_STUDIO_URL": ls.url,
           "LOST_REG_LABEL_STUDIO_API_KEY": TOKEN}
    service_log = tmp_path / "service.log"
    with serving(service_log, env) as service:
        assert httpx.post(f"{service}/labelstudio/setup", json={}).status_code == 401  # the service's key applies
        connect = {"url": f"{service}/labelstudio", "project": project, "title": "lost-reg",
                   "auth_method": "BASIC_AUTH", "basic_auth_user": "label-studio", "basic_auth_pass": SERVICE_KEY}
        response = ls.api.post("/api/ml", json=connect)
        assert response.status_code == 201, response.text
        response = ls.api.post("/api/dm/actions", params={"id": "retrieve_tasks_predictions", "project": project},
                               json={"selectedItems": {"all": True, "excluded": []}})
        assert response.status_code == 200, response.text
        tasks = ls.tasks(project)
    log = service_log.read_text()

    assert len(tasks) == 6
    by_name = {}
    for task in tasks:
        url = task["data"]["picture"]
        if url.startswith("/data/upload/"):
            by_name[next(n for n in PHOTOS if url.endswith("-" + n))] = task
        else:  # an empty prediction (or none), a logged reason, and the batch went on
            assert not any(p["result"] for p in task["predictions"]), task
            assert f"Label Studio task {task['id']}: no prediction" in log
    assert "is not on the Label Studio" in log and "missing.jpg: Label Studio answered 404" in log
    assert "holds control characters" in log
    assert sorted(by_name) == sorted(PHOTOS)
    for name, task in by_name.items():
        [prediction] = task["predictions"]
        [result] = prediction["result"]
        row = want[name]
        assert result["type"] == "rectanglelabels" and result["from_name"] == "bbox" and result["to_name"] == "photo"
        assert result["value"]["rectanglelabels"] == ["thing"]
        assert (result["original_width"], result["original_height"]) == (row["width"], row["height"])
        assert pixels(result) == row["objects"][0]["box"]
        assert prediction["score"] == pytest.approx(row["objects"][0]["score"], abs=1e-6)
        assert prediction["model_version"].startswith("lost-reg vit_small_patch14_dinov2 tokencut(")


def test_file_import_serves_the_images_and_keeps_the_boxes(label_studio, tmp_path):
    ls, photos = label_studio, label_studio.docroot / "photos"
    want = discovered(photos, tmp_path)
    exported = tmp_path / "tasks.json"
    assert main(["discover", str(photos), "--out", str(exported), "--format", "labelstudio", "--no-masks",
                 *DISCOVER]) == 0  # the template's project has no control for masks
    project = ls.project("lost-reg file import", TEMPLATE_CONFIG)
    storage = ls.api.post("/api/storages/localfiles", json={"project": project, "path": str(photos),
                                                            "use_blob_urls": True, "title": "photos"})
    assert storage.status_code == 201, storage.text
    response = ls.api.post(f"/api/projects/{project}/import", json=json.loads(exported.read_text()))
    assert response.status_code == 201, response.text

    tasks = ls.tasks(project)
    assert len(tasks) == len(PHOTOS)
    for task in tasks:
        url = task["data"]["image"]
        name = url.removeprefix("/data/local-files/?d=photos/")
        image = ls.api.get(url)  # the 404 of the old set-up
        assert image.status_code == 200 and image.content == (photos / name).read_bytes()
        [prediction] = task["predictions"]
        [result] = prediction["result"]
        assert pixels(result) == want[name]["objects"][0]["box"]
        assert result["from_name"] == "label" and result["value"]["rectanglelabels"] == ["object"]


def test_the_label_config_says_where_boxes_and_masks_go():
    brush = target_of(BRUSH_CONFIG)
    assert (brush.data_key, brush.controls.to_name, brush.controls.boxes, brush.controls.box_label) == (
        "picture", "photo", "bbox", "thing")
    assert (brush.controls.masks, brush.controls.mask_type, brush.controls.mask_label) == (
        "paint", "brushlabels", "blob")
    polygons = target_of(POLYGON_CONFIG).controls
    assert (polygons.boxes, polygons.masks, polygons.mask_type) == ("label", "mask", "polygonlabels")
    only_masks = target_of('<View><Image name="i" value="$img"/><PolygonLabels name="p" toName="i">'
                           '<Label value="x"/></PolygonLabels></View>')
    assert (only_masks.data_key, only_masks.controls.boxes, only_masks.controls.masks) == ("img", None, "p")
    assert not target_of(TEMPLATE_CONFIG).masks
    with pytest.raises(ValueError, match="no <RectangleLabels>, <BrushLabels> or <PolygonLabels>"):
        target_of('<View><Image name="i" value="$img"/><Choices name="c" toName="i"/></View>')
    with pytest.raises(ValueError, match="<BrushLabels name='b'> has no <Label>"):
        target_of('<View><Image name="i" value="$img"/><BrushLabels name="b" toName="i"/></View>')


@pytest.mark.parametrize("mask_format", ["rle", "polygon"])
def test_file_import_of_masks_reads_back_equal(label_studio, tmp_path, mask_format):
    """Masks imported as brush or polygon predictions (validated by Label Studio against the config) read back
    through its API equal to discover's."""
    ls, photos = label_studio, label_studio.docroot / "photos"
    want = discovered(photos, tmp_path, "--max-objects", "2")
    exported = tmp_path / "tasks.json"
    assert main(["discover", str(photos), "--out", str(exported), "--format", "labelstudio", "--max-objects", "2",
                 "--mask-format", mask_format, *DISCOVER]) == 0
    config = LABEL_STUDIO_CONFIG if mask_format == "rle" else POLYGON_CONFIG
    project = ls.project(f"lost-reg masks {mask_format}", config)
    response = ls.api.post(f"/api/projects/{project}/import", json=json.loads(exported.read_text()))
    assert response.status_code == 201, response.text
    refused = ls.api.post(f"/api/projects/{ls.project('boxes only', TEMPLATE_CONFIG)}/import",
                          json=json.loads(exported.read_text()))
    assert refused.status_code == 400 and "'from_name' 'mask' not found" in refused.text  # the validation is on

    tasks = ls.tasks(project)
    assert len(tasks) == len(PHOTOS)
    compared = 0
    for task in tasks:
        row = want[task["data"]["image"].removeprefix("/data/local-files/?d=photos/")]
        [prediction] = task["predictions"]
        rects = [r for r in prediction["result"] if r["type"] == "rectanglelabels"]
        assert [pixels(r) for r in rects] == [o["box"] for o in row["objects"]]
        shapes = [r for r in prediction["result"] if r["type"] != "rectanglelabels"]
        assert all(r["from_name"] == "mask" and r["to_name"] == "image" for r in shapes)
        if mask_format == "rle":
            assert [r["type"] for r in shapes] == ["brushlabels"] * len(row["objects"])
            got = brush_masks(shapes, tmp_path)
        else:
            assert {r["type"] for r in shapes} == {"polygonlabels"}
            got = [polygon_mask([r for r in shapes if r["id"].startswith(f"m{k}p")])
                   for k in range(len(row["objects"]))]
        for mask, o in zip(got, row["objects"], strict=True):
            ours = masks.decode(o["segmentation"])  # polygons fill holes (README: Masks); brush masks keep them
            np.testing.assert_array_equal(mask, ours if mask_format == "rle" else filled(ours))
            compared += 1
    assert compared >= len(PHOTOS)


def test_ml_backend_gives_brush_masks_and_several_objects(label_studio, tmp_path):
    ls, photos = label_studio, label_studio.docroot / "photos"
    want = discovered(photos, tmp_path, "--max-objects", "2")
    project = ls.project("lost-reg ML backend masks", BRUSH_CONFIG)
    uploads = [(f"file{i}", (name, (photos / name).read_bytes())) for i, name in enumerate(PHOTOS)]
    assert ls.api.post(f"/api/projects/{project}/import", files=uploads).status_code == 201
    env = {**TINY_ENV, "LOST_REG_LABEL_STUDIO_URL": ls.url, "LOST_REG_LABEL_STUDIO_API_KEY": TOKEN,
           "LOST_REG_MAX_OBJECTS": "2"}
    with serving(tmp_path / "service.log", env) as service:
        response = ls.api.post("/api/ml", json={"url": f"{service}/labelstudio", "project": project, "title": "masks"})
        assert response.status_code == 201, response.text
        response = ls.api.post("/api/dm/actions", params={"id": "retrieve_tasks_predictions", "project": project},
                               json={"selectedItems": {"all": True, "excluded": []}})
        assert response.status_code == 200, response.text
        tasks = ls.tasks(project)
    assert len(tasks) == len(PHOTOS)
    for task in tasks:
        row = want[next(n for n in PHOTOS if task["data"]["picture"].endswith("-" + n))]
        [prediction] = task["predictions"]
        rects = [r for r in prediction["result"] if r["type"] == "rectanglelabels"]
        brushes = [r for r in prediction["result"] if r["type"] == "brushlabels"]
        assert len(row["objects"]) == 2 and [pixels(r) for r in rects] == [o["box"] for o in row["objects"]]
        assert all(r["from_name"] == "paint" and r["value"]["brushlabels"] == ["blob"] for r in brushes)
        for mask, o in zip(brush_masks(brushes, tmp_path), row["objects"], strict=True):
            np.testing.assert_array_equal(mask, masks.decode(o["segmentation"]))
