"""A real Label Studio (1.23.2, its own venv) on 127.0.0.1: the service as its ML backend, and the file import.

Label Studio is started once for the module with a temporary data dir, a user and an API token from
its environment variables; the service is a real uvicorn process with a tiny random ViT. Boxes are
compared with what ``lost-reg discover`` writes for the same photos with the same model.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path

import cv2
import httpx
import pytest

from lost_reg.cli import main

from .conftest import ROOT, external_tool, free_port, running, serving
from .test_service_server import TINY_ENV

LABEL_STUDIO = ROOT / ".venv-labelstudio" / "bin" / "label-studio"
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
           "DJANGO_DB": "sqlite", "COLLECT_ANALYTICS": "false", "SENTRY_DSN": "", "FRONTEND_SENTRY_DSN": ""}
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


def discovered(photos: Path, tmp_path: Path) -> dict[str, dict]:
    """``lost-reg discover``'s JSON lines for ``photos``, by file name."""
    out = tmp_path / "discovered.jsonl"
    assert main(["discover", str(photos), "--out", str(out), "--format", "jsonl", *DISCOVER]) == 0
    return {r["file_name"]: r for r in map(json.loads, out.read_text().splitlines())}


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
    assert main(["discover", str(photos), "--out", str(exported), "--format", "labelstudio", *DISCOVER]) == 0
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
