"""Limits and headers on a real uvicorn server: slow bodies are cut, disconnects and malformed bodies never
give a 500, metrics labels stay few, every answer carries the security headers, unknown Hosts are refused."""

from __future__ import annotations

import time

import httpx
import pytest

from .conftest import serving
from .rawhttp import END, connect, file_part, head, metrics, read_answer
from .test_service import encode, photo
from .test_service_server import TINY_ENV

KEY = "limits-key"
AUTH = {"Authorization": f"Bearer {KEY}"}


@pytest.fixture(scope="module")
def service(tmp_path_factory):
    """A key, a 2 s upload grace at 8 KB/s, and a Host allow-list."""
    env = {**TINY_ENV, "LOST_REG_API_KEY": KEY, "LOST_REG_UPLOAD_GRACE_S": "2", "LOST_REG_MIN_UPLOAD_KB_S": "8",
           "LOST_REG_ALLOWED_HOSTS": "127.0.0.1,localhost"}
    log = tmp_path_factory.mktemp("limits") / "server.log"
    with serving(log, env, "--no-access-log") as base:
        yield base, log


def test_a_dripping_body_is_cut_with_408_and_a_slow_honest_one_passes(service):
    base, _ = service
    body = file_part("a.png", encode(photo(64, 64))) + END
    with connect(base) as drip:
        drip.sendall(head("/v1/boxes", len(body), extra=f"Authorization: Bearer {KEY}\r\n"))
        start = time.monotonic()
        for byte in body[:40]:  # a byte every 0.25 s: 4 B/s against 8 KB/s, for 10 s
            try:
                drip.sendall(bytes([byte]))
            except OSError:  # cut: the answer is waiting
                break
            time.sleep(0.25)
        answer = read_answer(drip, timeout=5)
        assert answer is not None, "the drip was not cut"
        assert answer.status == 408 and answer.json()["error"]["code"] == "slow_upload"
        assert answer.headers["connection"] == "close" and time.monotonic() - start < 8
    honest = file_part("a.png", encode(photo(200, 150, 3), "BMP")) + END  # 90 kB at ~45 kB/s: 2 s
    with connect(base) as slow:
        slow.sendall(head("/v1/boxes", len(honest), extra=f"Authorization: Bearer {KEY}\r\n"))
        for i in range(0, len(honest), 4500):
            slow.sendall(honest[i:i + 4500])
            time.sleep(0.1)
        answer = read_answer(slow, timeout=30)
    assert answer is not None and answer.status == 200 and answer.json()["results"][0]["width"] == 200
    assert metrics(base, **AUTH)['lost_reg_rejections_total{reason="slow_upload"}'] == 1


def test_a_client_leaving_mid_upload_is_one_log_line_and_a_499(service):
    base, log = service
    body = file_part("a.png", encode(photo(300, 300))) + END
    with connect(base) as gone:
        gone.sendall(head("/v1/boxes", len(body), extra=f"Authorization: Bearer {KEY}\r\n") + body[: len(body) // 2])
        time.sleep(0.5)
    time.sleep(0.5)
    m = metrics(base, **AUTH)
    assert m['lost_reg_http_requests_total{method="POST",path="/v1/boxes",status="499"}'] == 1
    assert not any('status="500"' in k for k in m)
    text = log.read_text()
    assert text.count("the client left before its answer") == 1
    assert "Traceback" not in text and "Exception in ASGI application" not in text


def test_made_up_methods_share_one_metrics_label(service):
    base, _ = service
    with httpx.Client(base_url=base, headers=AUTH) as client:
        for i in range(30):
            assert client.request(f"BREW{i}", "/v1/boxes").status_code == 405
            assert client.request(f"WHEN{i}", "/nowhere").status_code == 404
    m = metrics(base, **AUTH)
    assert not any("BREW" in k or "WHEN" in k for k in m)
    assert m['lost_reg_http_requests_total{method="other",path="/v1/boxes",status="405"}'] == 30
    assert m['lost_reg_http_requests_total{method="other",path="unmatched",status="404"}'] == 30


def test_json_routes_refuse_other_types_and_malformed_json(service):
    base, _ = service
    image = {"file_name": "a.jpg", "width": 10, "height": 10, "objects": []}
    body = httpx.Request("POST", "/", json={"format": "jsonl", "images": [image]}).content
    for content_type in ("text/plain", "application/x-www-form-urlencoded", "multipart/form-data; boundary=x", ""):
        response = httpx.post(f"{base}/v1/export", content=body, headers={**AUTH, "Content-Type": content_type})
        assert response.status_code == 415 and response.json()["error"]["code"] == "unsupported_media_type"
    json_type = {**AUTH, "Content-Type": "application/json"}
    assert httpx.post(f"{base}/v1/export", content=body, headers=json_type).status_code == 200
    for bad in (b"[" * 100_000, b'{"format": "coco", "images": ' + b"[" * 50_000, b"\xff\xfe", b"", b"null"):
        response = httpx.post(f"{base}/v1/export", content=bad, headers=json_type)
        assert response.status_code == 422 and response.json()["error"]["code"] == "invalid_request", bad[:20]


def test_every_answer_carries_the_security_headers(service):
    base, _ = service
    with httpx.Client(base_url=base) as client:
        answers = [client.get("/"), client.get("/static/app.js"), client.get("/healthz"), client.get("/v1/model"),
                   client.get("/nowhere"), client.post("/v1/boxes", headers=AUTH)]
    for r in answers:
        csp = r.headers["content-security-policy"]
        assert "script-src 'self';" in csp and "frame-ancestors 'none'" in csp and "unsafe" not in csp, r.url
        assert r.headers["x-content-type-options"] == "nosniff" and r.headers["x-frame-options"] == "DENY"
        assert r.headers["referrer-policy"] == "no-referrer"


def test_docs_are_served_locally_without_the_key(service):
    base, _ = service
    page = httpx.get(f"{base}/docs")  # open, like /openapi.json: the schema holds no secret (README)
    assert page.status_code == 200 and "http" not in page.text
    assert "script-src 'self' 'sha256-" in page.headers["content-security-policy"]
    assert httpx.get(f"{base}/openapi.json").status_code == 200
    assert httpx.get(f"{base}/docs-assets/swagger-ui-bundle.js").status_code == 200


def test_only_allowed_hosts_are_answered(service):
    base, _ = service
    assert httpx.get(f"{base}/healthz").status_code == 200  # Host: 127.0.0.1
    assert httpx.get(f"{base}/healthz", headers={"Host": "localhost:8000"}).status_code == 200
    for host in ("attacker.example", "127.0.0.1.attacker.example", "localhost.attacker.example:80"):
        response = httpx.get(f"{base}/v1/model", headers={**AUTH, "Host": host})
        assert response.status_code == 400, host  # a DNS-rebinding page cannot drive the service
        assert response.headers["x-content-type-options"] == "nosniff"
