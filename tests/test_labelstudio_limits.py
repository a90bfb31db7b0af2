"""The Label Studio routes (outside the OpenAPI schema) against malformed and hostile input, on a real uvicorn
server. Task images come from a local file server standing in for Label Studio's, which can be slow on
purpose and counts how many downloads run at once (the real Label Studio: test_labelstudio.py)."""

from __future__ import annotations

import json
import threading
import time
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import httpx
import pytest

from .bombs import nested_gzip
from .conftest import serving
from .rawhttp import metrics
from .test_service import encode, photo
from .test_service_server import TINY_ENV

CONFIG = ('<View><Image name="image" value="$image"/><RectangleLabels name="label" toName="image">'
          '<Label value="object"/></RectangleLabels></View>')
JSON = {"Content-Type": "application/json"}


class FileServer:
    """Images by path; ``/drip/…`` declares 300 bytes and sends 10 every 2 s; ``/gzip2/…`` sends 50 MB of zeros
    as ``Content-Encoding: gzip, gzip`` (a few hundred bytes); counts downloads at once."""

    def __init__(self) -> None:
        self.files = {f"/data/upload/{i}.png": encode(photo(120 + i, 90, i)) for i in range(12)}
        self.gzip2 = nested_gzip(50)
        self.lock = threading.Lock()
        self.running = self.most = 0
        server = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def do_GET(self) -> None:  # noqa: N802 (http.server's name)
                with server.lock:
                    server.running += 1
                    server.most = max(server.most, server.running)
                try:
                    self.answer()
                except OSError:
                    pass
                finally:
                    with server.lock:
                        server.running -= 1

            def answer(self) -> None:
                if self.path.startswith("/drip/"):
                    self.send_response(200)
                    self.send_header("Content-Length", "300")
                    self.end_headers()
                    for _ in range(30):
                        self.wfile.write(b"\0" * 10)
                        self.wfile.flush()
                        time.sleep(2)
                    return
                if self.path.startswith("/gzip2/"):
                    self.send_response(200)
                    self.send_header("Content-Encoding", "gzip, gzip")
                    self.send_header("Content-Length", str(len(server.gzip2)))
                    self.end_headers()
                    self.wfile.write(server.gzip2)
                    return
                data = server.files.get(self.path)
                if data is None:
                    self.send_error(404)
                    return
                time.sleep(0.2)  # downloads overlap: what is counted is how many the service runs at once
                self.send_response(200)
                self.send_header("Content-Length", str(len(data)))
                self.end_headers()
                self.wfile.write(data)

            def log_message(self, *args: object) -> None:
                pass

        self.httpd = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.httpd.daemon_threads = True
        self.url = f"http://127.0.0.1:{self.httpd.server_address[1]}"
        threading.Thread(target=self.httpd.serve_forever, daemon=True).start()


@pytest.fixture(scope="module")
def service(tmp_path_factory) -> Iterator[tuple[str, FileServer, object]]:
    files = FileServer()
    env = {**TINY_ENV, "LOST_REG_LABEL_STUDIO_URL": files.url, "LOST_REG_LABEL_STUDIO_MAX_BODY_MB": "1",
           "LOST_REG_LABEL_STUDIO_DOWNLOADS": "2", "LOST_REG_LABEL_STUDIO_FETCH_TIMEOUT_S": "3"}
    log = tmp_path_factory.mktemp("ls-limits") / "server.log"
    try:
        with serving(log, env, "--no-access-log") as base:
            yield base, files, log
    finally:
        files.httpd.shutdown()


def predict(base: str, body: bytes | dict, headers: dict[str, str] = JSON, timeout: float = 60) -> httpx.Response:
    content = json.dumps(body).encode() if isinstance(body, dict) else body
    return httpx.post(f"{base}/labelstudio/predict", content=content, headers=headers, timeout=timeout)


@pytest.mark.parametrize(("body", "where"), [
    ({"tasks": ["x"], "label_config": CONFIG}, "tasks.0"),
    ({"tasks": 5, "label_config": CONFIG}, "tasks"),
    ({"tasks": [], "label_config": "<View><Image name='image' value='$image'>"}, "not XML"),
    ({"tasks": [], "label_config": "no xml at all"}, "not XML"),
    (b"[" * 100_000, "body"),
    (b'{"tasks": [' + b'{"data": ' * 50_000, "body"),
    (b"\xff\xfe{}", "body"),
    (b"[]", "body"),
])
def test_a_malformed_prediction_request_is_422(service, body, where):
    base, _, _ = service
    response = predict(base, body)
    assert response.status_code == 422, response.text
    error = response.json()["error"]
    assert error["code"] == "invalid_request" and "not a Label Studio prediction request" in error["message"]
    assert where in error["message"]


def test_other_content_types_and_large_bodies_are_refused(service):
    base, _, _ = service
    body = {"tasks": [], "label_config": CONFIG}
    for route in ("predict", "setup", "webhook"):
        response = httpx.post(f"{base}/labelstudio/{route}", content=json.dumps(body), headers={"Content-Type": "text/plain"})
        assert response.status_code == 415, route
    large = {"tasks": [{"data": {"image": "x", "pad": "p" * 1000}}] * 1100, "label_config": CONFIG}  # 1.1 MB
    response = predict(base, large)
    assert response.status_code == 413 and response.json()["error"]["code"] == "request_too_large"
    assert "1 MB" in response.json()["error"]["message"]
    assert not any('status="500"' in k for k in metrics(base))


def test_bad_tasks_get_empty_predictions_and_the_others_their_box(service):
    base, _, log = service
    tasks = [{"id": 1, "data": {"image": "/data/upload/0.png"}},
             {"id": 2, "data": {"image": "/data/upload/\x00.png"}},  # a NUL: httpx refuses the URL
             {"id": 3, "data": {"image": "/data/up\nload/1.png"}},
             {"id": 4, "data": {"picture": "/data/upload/1.png"}},  # not the config's $image
             {"id": 5, "data": "not an object"},
             {"id": 6},
             {"id": 7, "data": {"image": ["/data/upload/1.png"]}},
             {"id": 8, "data": {"image": "/data/upload/1.png"}}]
    response = predict(base, {"tasks": tasks, "label_config": CONFIG})
    assert response.status_code == 200, response.text
    results = response.json()["results"]
    assert [bool(r["result"]) for r in results] == [True, False, False, False, False, False, False, True]
    assert results[0]["result"][0]["original_width"] == 120 and results[7]["result"][0]["original_width"] == 121
    text = log.read_text()
    for task in range(2, 8):
        assert f"Label Studio task {task}: no prediction" in text
    assert "holds control characters" in text and "Traceback" not in text


def test_downloads_are_bounded_and_a_dripping_image_meets_its_deadline(service):
    base, files, log = service
    files.most = 0
    tasks = [{"id": i, "data": {"image": f"/data/upload/{i}.png"}} for i in range(12)]
    tasks.insert(5, {"id": 99, "data": {"image": "/drip/slow.png"}})  # 300 bytes at 5 B/s: a minute
    start = time.monotonic()
    response = predict(base, {"tasks": tasks, "label_config": CONFIG}, timeout=30)
    assert response.status_code == 200, response.text
    assert time.monotonic() - start < 20  # the 3 s download deadline, not the minute the drip would take
    results = response.json()["results"]
    assert [bool(r["result"]) for r in results] == [True] * 5 + [False] + [True] * 7
    assert 1 <= files.most <= 2, f"{files.most} downloads at once"
    assert "/drip/slow.png: not downloaded within 3 s" in log.read_text()
    assert metrics(base)["lost_reg_images_in_flight"] == 0


def test_a_prediction_request_has_a_deadline_of_its_own(tmp_path):
    """Downloads that each keep within their own deadline still cannot hold the request past its deadline: 504,
    naming the setting, and the request's work is dropped."""
    files = FileServer()
    env = {**TINY_ENV, "LOST_REG_LABEL_STUDIO_URL": files.url, "LOST_REG_LABEL_STUDIO_FETCH_TIMEOUT_S": "30",
           "LOST_REG_LABEL_STUDIO_TIMEOUT_S": "3"}
    try:
        with serving(tmp_path / "server.log", env, "--no-access-log") as base:
            tasks = [{"id": i, "data": {"image": f"/drip/{i}.png"}} for i in range(3)]
            start = time.monotonic()
            response = predict(base, {"tasks": tasks, "label_config": CONFIG}, timeout=30)
            assert response.status_code == 504 and time.monotonic() - start < 20
            assert "LOST_REG_LABEL_STUDIO_TIMEOUT_S" in response.json()["error"]["message"]
            m = metrics(base)
            assert m["lost_reg_images_in_flight"] == 0 and m['lost_reg_rejections_total{reason="timeout"}'] == 1
    finally:
        files.httpd.shutdown()


def test_nested_content_encodings_are_refused_and_one_gzip_is_inflated_within_the_limit(service):
    base, _, log = service
    tasks = [{"id": 31, "data": {"image": "/gzip2/zeros.png"}}, {"id": 32, "data": {"image": "/data/upload/3.png"}}]
    response = predict(base, {"tasks": tasks, "label_config": CONFIG})
    assert response.status_code == 200, response.text
    assert [bool(r["result"]) for r in response.json()["results"]] == [False, True]
    assert "/gzip2/zeros.png: Content-Encoding gzip, gzip refused" in log.read_text()


def test_too_many_tasks_are_413_naming_the_setting(service):
    base, _, _ = service
    config = json.dumps(CONFIG).encode()
    body = b'{"label_config": ' + config + b', "tasks": [' + b",".join([b"{}"] * 300_000) + b"]}"  # 900 KB
    response = predict(base, body)
    assert response.status_code == 413, response.text[:300]
    error = response.json()["error"]
    assert error["code"] == "too_many_tasks" and "LOST_REG_LABEL_STUDIO_MAX_TASKS" in error["message"]
    assert "1,000 tasks" in error["message"]


def test_failed_tasks_are_logged_as_a_count_per_reason(service):
    base, _, log = service
    before = log.read_text().count("Label Studio task ")
    tasks = [{"id": 1000 + i, "data": {}} for i in range(30)] + [{"id": 2000, "data": {"image": "/nowhere.png"}}]
    response = predict(base, {"tasks": tasks, "label_config": CONFIG})
    assert response.status_code == 200 and not any(r["result"] for r in response.json()["results"])
    text = log.read_text()
    assert text.count("Label Studio task ") - before == 10  # the first ten, then counts
    assert "Label Studio: 31 of 31 tasks without a prediction (no_image_url: 30, http_404: 1)" in text
