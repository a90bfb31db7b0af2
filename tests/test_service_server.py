"""The service as a real uvicorn process on 127.0.0.1: start-up, a concurrent burst, shut-down."""

from __future__ import annotations

import asyncio
import json
import os
import signal
import socket
import subprocess
import sys
import time
from urllib.parse import urlsplit

import httpx

from .conftest import ROOT, TINY, free_port, running, serving
from .rawhttp import END, closed_within, connect, file_part, head, read_answer, wait_for
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


def serve_command(port: int) -> list[str]:
    model_args = [arg for k, v in TINY.items() for arg in ("--model-arg", f"{k}={v}")]
    return [sys.executable, "-c", "import sys; from lost_reg.cli import main; sys.exit(main())", "serve",
            "--backbone", "vit_small_patch14_dinov2", "--weights", "random", *model_args, "--device", "cpu",
            "--port", str(port)]


def test_lost_reg_serve_closes_connections_that_are_slow_to_send_their_headers(tmp_path):
    port = free_port()
    env = {"HF_HUB_OFFLINE": "1", "LOST_REG_HEADER_TIMEOUT_S": "2"}
    with running(serve_command(port), port, tmp_path / "serve.log", env) as base:
        with connect(base) as silent, connect(base) as trickle:
            trickle.sendall(b"GET /healthz HTTP/1.1\r\n")
            for byte in b"Host: 127.0.0.1\r\nX-Slow: " + b"a" * 24:  # a byte every 0.25 s: 10 s of headers
                try:
                    trickle.sendall(bytes([byte]))
                except OSError:  # cut
                    break
                time.sleep(0.25)
            answer = read_answer(trickle, timeout=5)
            assert answer is not None and answer.status == 408 and answer.headers["connection"] == "close"
            assert closed_within(silent, timeout=2)  # a connection that never sent a byte is gone as well
        with connect(base) as prompt:  # a request head sent in time is served, and the connection kept
            for _ in range(2):
                prompt.sendall(b"GET /healthz HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n")
                answer = read_answer(prompt, timeout=5)
                assert answer is not None and answer.status == 200


def test_sigterm_drains_the_requests_in_flight_and_cuts_a_dripping_one(tmp_path):
    """After SIGTERM an upload in progress is still answered; a client dripping its body is cut (408) instead
    of holding the shutdown; the process then exits cleanly."""
    port = free_port()
    env = {k: v for k, v in os.environ.items() if not k.startswith("LOST_REG_")}
    env.update(HF_HUB_OFFLINE="1", LOST_REG_UPLOAD_GRACE_S="3")
    log = tmp_path / "serve.log"
    body = file_part("a.png", encode(photo(320, 240), "BMP")) + END  # 230 kB
    with log.open("w") as out:
        proc = subprocess.Popen(serve_command(port), cwd=ROOT, env=env, stdout=out, stderr=subprocess.STDOUT)
    base = f"http://127.0.0.1:{port}"
    try:
        assert wait_for(lambda: _ready(base), 60), log.read_text()[-3000:]
        with connect(base) as honest, connect(base) as drip:
            honest.sendall(head("/v1/boxes", len(body)) + body[:50_000])
            drip.sendall(head("/v1/boxes", len(body)) + body[:100])
            time.sleep(0.3)
            proc.send_signal(signal.SIGTERM)
            for i in range(50_000, len(body), 20_000):  # the rest at ~100 kB/s
                honest.sendall(body[i:i + 20_000])
                time.sleep(0.2)
            answer = read_answer(honest, timeout=30)
            assert answer is not None and answer.status == 200, answer
            assert answer.json()["results"][0]["width"] == 320
            for byte in body[100:130]:  # a byte every 0.5 s, for 15 s
                try:
                    drip.sendall(bytes([byte]))
                except OSError:
                    break
                time.sleep(0.5)
            cut = read_answer(drip, timeout=5)
            assert cut is not None and cut.status == 408, cut
            # the drip's socket is still open here: it no longer holds the exit (uvicorn re-raises the signal)
            assert proc.wait(timeout=30) in (0, -signal.SIGTERM)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    assert "Application shutdown complete" in log.read_text()


def _ready(base: str) -> bool:
    try:
        return httpx.get(f"{base}/readyz", timeout=2).status_code == 200
    except httpx.TransportError:
        return False
