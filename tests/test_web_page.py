"""The web page at ``/`` in a real browser: Playwright driving Debian's chromium against a real uvicorn server.

Real photos go in through the file picker; the boxes, seeds, pixel masks and heat maps drawn must be the
API's answer for the same file, placed on the picture; refused files show the service's error next to them;
the options form re-runs everything with another method and several objects per image; downloads are the
export formats, masks included. A screenshot is saved (``LOST_REG_SCREENSHOTS=DIR`` keeps it).
"""

from __future__ import annotations

import json
import os
from pathlib import Path

import cv2
import httpx
import numpy as np
import pytest
from pycocotools import mask as mask_utils

from .conftest import external_tool, serving
from .test_service_server import TINY_ENV

pytest.importorskip("playwright")

KEY = "page-secret"
PHOTOS = ("cat.jpg", "coffee.png", "astronaut.jpg")
# chromium must not reach anything but the service: a dead proxy for everything else (loopback bypasses it)
OFFLINE = ["--no-sandbox", "--proxy-server=http://127.0.0.1:9", "--disable-background-networking",
           "--disable-component-update", "--disable-sync", "--disable-default-apps", "--no-first-run",
           "--disable-domain-reliability", "--disable-client-side-phishing-detection"]
STILL_WORKING = "document.querySelectorAll('.card[data-state=queued], .card[data-state=working]').length === 0"
# Page conditions are arrow functions: Playwright evaluates a bare expression with eval(), which the page's
# Content-Security-Policy (no 'unsafe-eval') refuses.


@pytest.fixture(scope="module")
def files(tmp_path_factory) -> dict[str, Path]:
    """Three real photos, and four files the service (or the page) must refuse."""
    from skimage import data

    folder = tmp_path_factory.mktemp("page-files")
    for name, image in zip(PHOTOS, (data.chelsea(), data.coffee(), data.astronaut())):
        scale = 320 / max(image.shape[:2])
        small = cv2.resize(image, None, fx=scale, fy=scale, interpolation=cv2.INTER_AREA)
        cv2.imwrite(str(folder / name), cv2.cvtColor(small, cv2.COLOR_RGB2BGR))
    (folder / "notes.jpg").write_text("not a picture at all\n")  # 415
    (folder / "broken.jpg").write_bytes((folder / "cat.jpg").read_bytes()[:400])  # 422
    cv2.imwrite(str(folder / "huge.png"), np.zeros((2500, 2500, 3), np.uint8))  # 6.25 MP: 413 from the header
    noise = np.random.default_rng(0).integers(0, 256, (700, 700, 3), dtype=np.uint8)
    cv2.imwrite(str(folder / "big.png"), noise)  # over 1 MB: refused by the page before sending
    return {p.name: p for p in folder.iterdir()}


@pytest.fixture(scope="module")
def service(tmp_path_factory):
    env = {**TINY_ENV, "LOST_REG_API_KEY": KEY, "LOST_REG_MAX_FILE_MB": "1", "LOST_REG_MAX_PIXELS": "4000000"}
    with serving(tmp_path_factory.mktemp("page-service") / "service.log", env) as base:
        yield base


@pytest.fixture(scope="module")
def browser():
    chromium = external_tool("LOST_REG_CHROMIUM", "/usr/bin/chromium", "chromium (apt-get install chromium)")
    from playwright.sync_api import sync_playwright

    with sync_playwright() as p:
        browser = p.chromium.launch(executable_path=str(chromium), headless=True, args=OFFLINE)
        yield browser
        browser.close()


def api_answer(service: str, path: Path, **options: str) -> dict:
    response = httpx.post(f"{service}/v1/boxes", headers={"Authorization": f"Bearer {KEY}"},
                          files={"images": (path.name, path.read_bytes())},
                          data={**options, "masks": "rle", "return_heat": "true"}, timeout=60)
    assert response.status_code == 200, response.text
    return response.json()["results"][0]


def drawn(page, name: str) -> dict:
    """What the card of ``name`` shows, per object (best first): the SVG's attributes, and the box measured on
    screen in image pixels."""
    return page.evaluate("""name => {
        const card = document.querySelector(`.card[data-file="${name}"]`);
        const img = card.querySelector('img'), heat = card.querySelector('image.heat');
        const i = img.getBoundingClientRect();
        const sx = img.naturalWidth / i.width, sy = img.naturalHeight / i.height;
        const of = (selector) => [...card.querySelectorAll(selector)]
            .sort((a, b) => a.dataset.object - b.dataset.object);
        const seeds = of('circle.seed'), masks = of('image.mask');
        const objects = of('rect.box').map((rect, k) => {
            const r = rect.getBoundingClientRect(), a = n => parseFloat(rect.getAttribute(n));
            return {box: [a('x'), a('y'), a('x') + a('width'), a('y') + a('height')],
                    screen: [(r.left - i.left) * sx, (r.top - i.top) * sy, (r.right - i.left) * sx, (r.bottom - i.top) * sy],
                    seed: [parseFloat(seeds[k].getAttribute('cx')), parseFloat(seeds[k].getAttribute('cy'))],
                    mask: masks[k].getAttribute('href'), mask_size: [masks[k].getAttribute('width'),
                                                                     masks[k].getAttribute('height')]};
        });
        return {objects, heat: heat.getAttribute('href'), facts: card.querySelector('.facts').textContent};
    }""", name)


def mask_pixels(page, data_url: str) -> list[list[int]]:
    """The mask picture the page drew, read back through a canvas: 1 where it is coloured."""
    return page.evaluate("""async url => {
        const img = new Image(); img.src = url; await img.decode();
        const c = document.createElement('canvas'); c.width = img.width; c.height = img.height;
        const g = c.getContext('2d'); g.drawImage(img, 0, 0);
        const d = g.getImageData(0, 0, c.width, c.height).data, rows = [];
        for (let y = 0; y < c.height; y++) {
            const row = []; for (let x = 0; x < c.width; x++) row.push(d[4 * (y * c.width + x) + 3] > 0 ? 1 : 0);
            rows.push(row);
        }
        return rows;
    }""", data_url)


def check_drawn(page, service: str, files: dict[str, Path], **options: str) -> dict[str, dict]:
    answers = {}
    for name in PHOTOS:
        want = answers[name] = api_answer(service, files[name], **options)
        got = drawn(page, name)
        objects = want.get("objects", [want])
        assert len(got["objects"]) == len(objects), name
        (cw, ch) = want["cell_px"]
        for shown, o in zip(got["objects"], objects):
            assert shown["box"] == o["box"], name
            assert shown["screen"] == [pytest.approx(v, abs=1.5) for v in o["box"]], name  # on the picture
            row, col = o["seed"]
            assert shown["seed"] == [pytest.approx((col + 0.5) * cw), pytest.approx((row + 0.5) * ch)]
            assert shown["mask_size"] == [str(want["width"]), str(want["height"])]  # over the whole picture
            rle = {"size": o["segmentation"]["size"], "counts": o["segmentation"]["counts"].encode()}
            assert o["segmentation"]["size"] == [want["height"], want["width"]]
            assert mask_pixels(page, shown["mask"]) == mask_utils.decode(rle).tolist()  # the page's RLE decoder
        assert got["heat"] == f"data:image/png;base64,{want['heat']}"
        assert f"box {', '.join(map(str, want['box']))} · score {want['score']:.2f}" in got["facts"]
    return answers


def test_the_page_draws_the_apis_boxes_shows_errors_reruns_and_downloads(browser, service, files, tmp_path):
    page = browser.new_page(viewport={"width": 1360, "height": 1000}, accept_downloads=True)
    requests, problems = [], []
    page.on("request", lambda r: requests.append(r.url))
    expected = "Failed to load resource: the server responded with a status of 4"  # the browser logs refused files
    page.on("console", lambda m: problems.append(m.text) if m.type == "error" and expected not in m.text else None)
    page.on("pageerror", lambda e: problems.append(str(e)))

    page.goto(service)
    page.wait_for_function("() => document.querySelector('#model').textContent.includes('API key')")
    page.fill("#token", KEY)
    page.dispatch_event("#token", "change")
    page.wait_for_function("() => document.querySelector('#model').textContent.includes('vit_small_patch14_dinov2')")

    names = [*PHOTOS, "notes.jpg", "broken.jpg", "huge.png", "big.png"]
    page.set_input_files("#files", [str(files[n]) for n in names])
    page.wait_for_function(f"() => document.querySelectorAll('.card').length === {len(names)} && {STILL_WORKING}")
    answers = check_drawn(page, service, files)

    errors = {n: page.text_content(f'.card[data-file="{n}"] .error') for n in names[3:]}
    assert errors["notes.jpg"].startswith("415 not_an_image:")
    assert errors["broken.jpg"].startswith("422 corrupt_image:")
    assert errors["huge.png"].startswith("413 too_many_pixels:")
    assert errors["big.png"].startswith("413 file_too_large:") and "not sent" in errors["big.png"]
    assert page.text_content("#status") == "7 images · 3 with a box · 4 refused"

    page.check('#layers input[value="heat"]')
    shots = Path(os.environ.get("LOST_REG_SCREENSHOTS") or tmp_path)
    shots.mkdir(parents=True, exist_ok=True)
    page.screenshot(path=str(shots / "web-page.png"), full_page=True)

    for fmt in ("coco", "labelstudio"):
        with page.expect_download() as download:
            page.click(f'#downloads button[data-format="{fmt}"]')
        content = json.loads(Path(download.value.path()).read_text())
        if fmt == "coco":
            by_id = {img["id"]: img["file_name"] for img in content["images"]}
            boxes = {by_id[a["image_id"]]: [a["bbox"][0], a["bbox"][1], a["bbox"][0] + a["bbox"][2],
                                            a["bbox"][1] + a["bbox"][3]] for a in content["annotations"]}
            segmentations = {by_id[a["image_id"]]: a["segmentation"] for a in content["annotations"]}
            assert segmentations == {n: answers[n]["segmentation"] for n in PHOTOS}  # the masks, as sent
            assert download.value.suggested_filename == "boxes-coco.json"
        else:
            boxes = {}
            for task in content:
                [result, brush] = task["predictions"][0]["result"]
                v, w, h = result["value"], result["original_width"], result["original_height"]
                boxes[task["data"]["image"].rsplit("=", 1)[1]] = [
                    round(v["x"] * w / 100), round(v["y"] * h / 100),
                    round((v["x"] + v["width"]) * w / 100), round((v["y"] + v["height"]) * h / 100)]
                assert brush["type"] == "brushlabels" and brush["value"]["format"] == "rle"
            assert content[0]["predictions"][0]["model_version"].startswith("lost-reg vit_small_patch14_dinov2 tokencut(")
        assert boxes == {n: answers[n]["box"] for n in PHOTOS}, fmt

    page.select_option('select[name="method"]', "lost")
    page.fill('input[name="k_patches"]', "50")
    page.fill('input[name="max_objects"]', "2")
    page.click("#rerun")
    page.wait_for_function(f"() => [...document.querySelectorAll('.card[data-state=done] .facts')].every("
                           f"f => f.textContent.includes('lost(k_patches=50')) && {STILL_WORKING}")
    several = check_drawn(page, service, files, method="lost", k_patches="50", max_objects="2")
    assert all(len(a["objects"]) == 2 for a in several.values())  # each drawn, box, seed and mask
    assert "2 objects · best box" in drawn(page, PHOTOS[0])["facts"]
    page.screenshot(path=str(shots / "web-page-lost.png"), full_page=True)

    assert not problems, problems
    assert all(url.startswith((service, "data:", "blob:")) for url in requests), requests
    assert any(url.endswith("/static/app.js") for url in requests)
    page.close()


def test_the_page_and_its_files_are_served_without_a_key(service):
    page = httpx.get(service)
    assert page.status_code == 200 and 'src="static/app.js"' in page.text
    for name, kind in [("app.js", "javascript"), ("style.css", "text/css")]:
        response = httpx.get(f"{service}/static/{name}")
        assert response.status_code == 200 and kind in response.headers["content-type"]
    assert "http" not in page.text.replace('xmlns="http://www.w3.org/2000/svg"', "")  # nothing from a CDN
    assert httpx.get(f"{service}/v1/model").status_code == 401  # the API still wants the key


def test_export_endpoint_checks_its_input(service):
    auth = {"Authorization": f"Bearer {KEY}"}
    image = {"file_name": "a.jpg", "width": 100, "height": 50, "objects": [{"box": [0, 0, 100, 50], "score": 0.5}]}
    ok = httpx.post(f"{service}/v1/export", headers=auth, json={"format": "jsonl", "images": [image]})
    assert ok.status_code == 200 and json.loads(ok.text)["objects"][0]["box"] == [0, 0, 100, 50]
    bad = {**image, "objects": [{"box": [0, 0, 101, 50], "score": 0.5}]}
    response = httpx.post(f"{service}/v1/export", headers=auth, json={"format": "coco", "images": [bad]})
    assert response.status_code == 422 and "not inside the 100×50 image" in response.json()["error"]["message"]
    response = httpx.post(f"{service}/v1/export", headers=auth, json={"format": "yolo", "images": [image]})
    assert response.status_code == 422 and response.json()["error"]["code"] == "invalid_request"
    assert httpx.post(f"{service}/v1/export", json={"format": "coco", "images": [image]}).status_code == 401
    too_big = b'{"format": "coco", "images": [' + b" " * (33 * 2**20) + b"]}"
    json_type = {**auth, "Content-Type": "application/json"}
    assert httpx.post(f"{service}/v1/export", headers=json_type, content=too_big).status_code == 413


def test_the_api_docs_render_off_the_network_under_their_policy(browser, service):
    """Swagger UI comes from the service (the fastapi-offline package's assets), not a CDN, and runs under its
    Content-Security-Policy: nothing refused, nothing fetched from another host."""
    page = browser.new_page()
    requests, problems = [], []
    page.on("request", lambda r: requests.append(r.url))
    page.on("console", lambda m: problems.append(m.text) if m.type == "error" else None)
    page.on("pageerror", lambda e: problems.append(str(e)))
    response = page.goto(f"{service}/docs")
    assert "script-src 'self' 'sha256-" in response.headers["content-security-policy"]
    page.wait_for_function("() => document.querySelector('.swagger-ui .info .title')?.textContent.includes('lost-reg')"
                           " && document.querySelectorAll('.opblock').length > 3", timeout=30_000)
    assert not problems, problems
    assert all(url.startswith((service, "data:", "blob:")) for url in requests), requests
    page.close()
