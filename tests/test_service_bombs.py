"""Files that cost a decoder far more than their size (issue 25), against a real uvicorn server and a real
``lost-reg discover`` run: they are stopped and refused, and the other requests and images go on."""

from __future__ import annotations

import json
import threading

import httpx
import pytest

from lost_reg.cli import main

from .bombs import scan_bomb, tile_bomb
from .conftest import serving
from .rawhttp import metrics
from .test_discover import TINY_ARGS, photos  # noqa: F401 (a fixture)
from .test_service import encode, photo
from .test_service_server import TINY_ENV

SCAN_BOMB = scan_bomb(2000, 20_000)
"""1.8 MB, about a minute of decoding on this machine's cores, far past any deadline below."""


@pytest.fixture(scope="module")
def service(tmp_path_factory):
    """Decoding processes with a 2 s deadline, and a 4 MP limit per image."""
    env = {**TINY_ENV, "LOST_REG_DECODE_TIMEOUT_S": "2", "LOST_REG_DECODE_WORKERS": "3",
           "LOST_REG_MAX_PIXELS": "4000000"}
    log = tmp_path_factory.mktemp("bombs") / "server.log"
    with serving(log, env, "--no-access-log") as base:
        yield base, log


def upload(*files: tuple[str, bytes, str]) -> list:
    return [("images", file) for file in files]


def test_two_scan_bombs_are_stopped_and_a_normal_request_is_answered_meanwhile(service):
    base, log = service
    answers: dict[str, httpx.Response] = {}

    def bombs() -> None:
        files = upload(("a.jpg", SCAN_BOMB, "image/jpeg"), ("b.jpg", SCAN_BOMB, "image/jpeg"))
        answers["bombs"] = httpx.post(f"{base}/v1/boxes", files=files, timeout=120)

    sender = threading.Thread(target=bombs)
    sender.start()
    try:
        assert not sender.join(0.5)  # both bombs are being decoded
        normal = httpx.post(f"{base}/v1/boxes", files=upload(("n.png", encode(photo(120, 90)), "image/png")),
                            timeout=120)
        bombs_done_first = "bombs" in answers
    finally:
        sender.join()
    assert normal.status_code == 200 and normal.json()["results"][0]["width"] == 120
    assert not bombs_done_first, "the normal request waited for the bombs"
    refused = answers["bombs"]
    assert refused.status_code == 422, refused.text
    error = refused.json()["error"]
    assert error["code"] == "decode_timeout" and "LOST_REG_DECODE_TIMEOUT_S" in error["message"]
    assert "a.jpg" in error["message"] and "b.jpg" in error["message"]
    # the killed decoders were replaced: the service decodes on
    again = httpx.post(f"{base}/v1/boxes", files=upload(("m.png", encode(photo(100, 80)), "image/png")), timeout=60)
    assert again.status_code == 200
    assert "its process was stopped" in log.read_text()


def test_a_tiff_whose_tile_is_larger_than_its_header_says_is_413(service):
    base, _ = service
    bomb = tile_bomb(3000)  # the header says 64×64; its one tile holds 9 MP, over the 4 MP limit
    files = upload(("tile.tif", bomb, "image/tiff"), ("n.png", encode(photo(120, 90)), "image/png"))
    response = httpx.post(f"{base}/v1/boxes", files=files, timeout=60)
    assert response.status_code == 200, response.text
    bad, good = response.json()["results"]
    assert bad["error"]["code"] == "too_many_pixels" and "3000x3000 tile" in bad["error"]["message"]
    assert good["width"] == 120
    alone = httpx.post(f"{base}/v1/boxes", files=upload(("tile.tif", bomb, "image/tiff")), timeout=60)
    assert alone.status_code == 413 and alone.json()["error"]["code"] == "too_many_pixels"
    assert not any('status="500"' in k for k in metrics(base))


def test_discover_reports_and_skips_bombs_in_a_folder(photos, tmp_path):  # noqa: F811 (the fixture)
    """The same decoding path in a run: each bomb is a reported, skipped image, the others get their boxes."""
    (photos / "scan-bomb.jpg").write_bytes(SCAN_BOMB)
    (photos / "tile-bomb.tif").write_bytes(tile_bomb(3000))
    out = tmp_path / "labels.jsonl"
    assert main(["discover", str(photos), "--out", str(out), "--format", "jsonl", "--max-pixels", "4000000",
                 *TINY_ARGS]) == 0
    found = sorted(json.loads(line)["file_name"] for line in out.read_text().splitlines())
    assert found == ["cat.jpg", "coffee.png", "more/astronaut.jpg", "more/rocket.jpg"]
    report = json.loads((tmp_path / "labels.jsonl.errors.json").read_text())
    errors = {e["image_id"]: e["error"] for e in report["errors"]}
    assert sorted(errors) == ["broken.jpg", "scan-bomb.jpg", "tile-bomb.tif"]
    assert "not decoded within" in errors["scan-bomb.jpg"] and "3000x3000 tile" in errors["tile-bomb.tif"]


def test_artifacts_reports_and_skips_a_scan_bomb_in_a_folder(photos, tmp_path):  # noqa: F811 (the fixture)
    """The token analyses decode as runs do: the bomb is stopped and reported, the other photos are measured."""
    (photos / "scan-bomb.jpg").write_bytes(SCAN_BOMB)
    out = tmp_path / "artifacts"
    assert main(["artifacts", str(photos), "--out", str(out), "--max-side", "140", "--quiet",
                 *[a for a in TINY_ARGS if a not in ("--workers", "0", "--quiet")]]) == 0
    report = json.loads((out / "report.json").read_text())
    errors = {e["image_id"]: e["error"] for e in report["errors"]}
    assert report["images"] == 4 and sorted(errors) == ["broken.jpg", "scan-bomb.jpg"]
    assert "not decoded within" in errors["scan-bomb.jpg"]
