"""The service as a real uvicorn process on 127.0.0.1: start-up, a concurrent burst, shut-down."""

from __future__ import annotations

import asyncio
import json
import socket
import sys

from urllib.parse import urlsplit

import httpx

from .conftest import TINY, free_port, running, serving
from .test_service import encode, photo

TINY_ENV = {
    "LOST_REG_BACKBONE": "vit_small_patch14_dinov2",
    "LOST_REG_WEIGHTS": "random",
    "LOST_REG_MODEL_ARGS": json.dumps({**TINY, "reg_tokens": 4}),
    "LOST_REG_DEVICE": "cpu",
    "HF_HUB_OFFLINE": "1",
}


async def burst(base: str, images: list[bytes], requests: int, concurrency: int) -> list[tuple[int, httpx.Response]]:
    """``requests`` POSTs of 1–3 images each, at most ``concurrency`` in flight."""
    gate = asyncio.Semaphore(concurrency)
    async with httpx.AsyncClient(base_url=base, timeout=60) as client:
        async def one(i: int) -> tuple[int, httpx.Response]:
            uploads = [("images", (f"{i}-{j}.png", images[(i + j) % len(images)], "image/png"))
                       for j in range(1 + i % 3)]
            async with gate:
                return i, await client.post("/v1/boxes", files=uploads)

        return await asyncio.gather(*(one(i) for i in range(requests)))


def test_uvicorn_serves_a_concurrent_burst(tmp_path):
    env = {**TINY_ENV, "LOST_REG_MAX_BATCH": "8", "LOST_REG_MAX_WAIT_MS": "5"}
    sizes = [(112, 84), (140, 140), (98, 126), (200, 150)]
    images = [encode(photo(w, h, i)) for i, (w, h) in enumerate(sizes)]
    log = tmp_path / "server.log"
    with serving(log, env, "--no-access-log") as base:
        answers = asyncio.run(burst(base, images, requests=200, concurrency=16))
        total = 0
        for i, response in answers:
            assert response.status_code == 200, response.text
            results = response.json()["results"]
            assert [r["filename"] for r in results] == [f"{i}-{j}.png" for j in range(1 + i % 3)]
            for j, r in enumerate(results):
                w, h = sizes[(i + j) % len(sizes)]
                assert (r["width"], r["height"]) == (w, h)  # every answer went to its own request
                x0, y0, x1, y1 = r["box"]
                assert 0 <= x0 < x1 <= w and 0 <= y0 < y1 <= h
            total += len(results)
        assert httpx.get(f"{base}/healthz").json() == {"status": "ok"}
        metrics = httpx.get(f"{base}/metrics").text
    assert 'lost_reg_http_requests_total{method="POST",path="/v1/boxes",status="200"} 200.0' in metrics
    values = {line.split(" ")[0]: float(line.split(" ")[1]) for line in metrics.splitlines() if line[:1] != "#"}
    assert values["lost_reg_images_total"] == total  # the warm-up image is not counted
    assert values["lost_reg_batch_size_count"] < values["lost_reg_batch_size_sum"]  # some calls were batched
    assert values["lost_reg_queue_depth"] == 0
    assert "Application shutdown complete" in log.read_text()


def test_lost_reg_serve_with_api_key(tmp_path):
    port = free_port()
    model_args = [arg for k, v in TINY.items() for arg in ("--model-arg", f"{k}={v}")]
    command = [sys.executable, "-c", "import sys; from lost_reg.cli import main; sys.exit(main())", "serve",
               "--backbone", "vit_small_patch14_dinov2", "--weights", "random", *model_args, "--device", "cpu",
               "--port", str(port), "--api-key-env", "TEST_KEY", "--log-level", "warning"]
    with running(command, port, tmp_path / "serve.log", {"HF_HUB_OFFLINE": "1", "TEST_KEY": "k3y"}) as base:
        upload = [("images", ("a.png", encode(photo(100, 80)), "image/png"))]
        assert httpx.post(f"{base}/v1/boxes", files=upload).status_code == 401
        response = httpx.post(f"{base}/v1/boxes", files=upload, headers={"Authorization": "Bearer k3y"})
        assert response.status_code == 200 and response.json()["results"][0]["width"] == 100
        info = httpx.get(f"{base}/v1/model", headers={"Authorization": "Bearer k3y"}).json()
        assert info["registers"] == 0 and info["patch_size"] == 14


def test_an_oversize_file_is_refused_while_it_streams_in(tmp_path):
    """A 6 MB file against a 1 MB limit: the 413 comes after 2 MB were sent, and the rest is never needed."""
    env = {**TINY_ENV, "LOST_REG_MAX_FILE_MB": "1"}
    boundary = "lostregboundary"
    head = (f"--{boundary}\r\nContent-Disposition: form-data; name=\"images\"; filename=\"big.png\"\r\n"
            "Content-Type: image/png\r\n\r\n").encode()
    tail = f"\r\n--{boundary}--\r\n".encode()
    size = 6 * 2**20
    with serving(tmp_path / "server.log", env) as base:
        with socket.create_connection(("127.0.0.1", urlsplit(base).port), timeout=10) as s:
            s.sendall((f"POST /v1/boxes HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Type: multipart/form-data; "
                       f"boundary={boundary}\r\nContent-Length: {len(head) + size + len(tail)}\r\n\r\n").encode())
            s.sendall(head)
            sent = 0
            chunk = b"\0" * 65536
            while sent < 2 * 2**20:
                s.sendall(chunk)
                sent += len(chunk)
            answer = b""
            while b"\r\n\r\n" not in answer or b"}}" not in answer:
                data = s.recv(65536)
                if not data:
                    break
                answer += data
    status, body = answer.split(b"\r\n", 1)[0], answer.split(b"\r\n\r\n", 1)[1]
    assert b" 413 " in status, answer[:300]
    error = json.loads(body[: body.rindex(b"}") + 1])["error"]
    assert error["code"] == "file_too_large" and "big.png: larger than the 1 MB limit per file" in error["message"]
