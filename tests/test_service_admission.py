"""Admission on a real uvicorn server: images count from their first byte, refusals come at once, requests
take turns, abandoned work is dropped, the pixel budget holds, and /readyz and /metrics say so."""

from __future__ import annotations

import asyncio
import time

import httpx
import numpy as np
import pytest

from .conftest import serving
from .rawhttp import END, connect, field_part, file_part, head, metrics, read_answer, wait_for
from .test_service import encode, photo
from .test_service_server import TINY_ENV

BIG_SIDE = 5000  # 25 MP: under the 40 MP per-image limit, a quarter of a second or more to decode here


@pytest.fixture(scope="module")
def big_png() -> bytes:
    """A smooth 5000 × 5000 PNG: small to send, long to decode."""
    y, x = np.mgrid[:BIG_SIDE, :BIG_SIDE]
    image = np.stack([x * 200 // BIG_SIDE, y * 200 // BIG_SIDE, np.full_like(x, 90)], -1).astype(np.uint8)
    return encode(image)


@pytest.fixture(scope="module")
def small_queue(tmp_path_factory):
    """max_queue 2, a pixel budget of 100,000 per request, a long upload grace (stalled clients stay)."""
    env = {**TINY_ENV, "LOST_REG_MAX_QUEUE": "2", "LOST_REG_MAX_REQUEST_PIXELS": "100000",
           "LOST_REG_UPLOAD_GRACE_S": "60"}
    log = tmp_path_factory.mktemp("small-queue") / "server.log"
    with serving(log, env, "--no-access-log") as base:
        yield base, log


def test_a_request_finding_no_place_gets_503_before_its_body_is_read(small_queue):
    base, _ = small_queue
    first, second = encode(photo(96, 80, 1)), encode(photo(80, 96, 2))
    holder_body = file_part("a.png", first) + file_part("b.png", second) + END
    split = len(file_part("a.png", first)) + 200  # the second part has started: two places held
    with connect(base) as holder, connect(base) as late:
        holder.sendall(head("/v1/boxes", len(holder_body)) + holder_body[:split])
        wait_for(lambda: metrics(base).get("lost_reg_images_in_flight") == 2, 10)  # checked below
        declared = 10 * 2**20  # it says 10 MB are coming, and sends its first part's head only
        late.sendall(head("/v1/boxes", declared) + file_part("c.png", b"\x89PNG" + b"\0" * 1000)[:400])
        answer = read_answer(late, timeout=10)
        assert answer is not None, "no answer before the body was sent"
        assert answer.status == 503 and answer.json()["error"]["code"] == "busy"
        assert answer.headers["retry-after"] == "1" and "holds 2 images" in answer.json()["error"]["message"]
        ready = httpx.get(f"{base}/readyz")
        assert ready.status_code == 503 and ready.json()["error"]["code"] == "busy"
        assert metrics(base)["lost_reg_images_in_flight"] == 2

        holder.sendall(holder_body[split:])
        done = read_answer(holder, timeout=30)
    assert done is not None and done.status == 200, done
    assert [(r["filename"], r["width"]) for r in done.json()["results"]] == [("a.png", 96), ("b.png", 80)]
    assert wait_for(lambda: metrics(base).get("lost_reg_images_in_flight") == 0, 10)
    ready = httpx.get(f"{base}/readyz").json()
    assert ready == {"status": "ready", "images_in_flight": 0, "max_queue": 2}
    assert metrics(base)['lost_reg_rejections_total{reason="busy"}'] == 1  # the late request (not /readyz)


def test_a_request_over_its_pixel_budget_is_413_naming_it(small_queue):
    base, _ = small_queue
    images = [("images", (f"{i}.png", encode(photo(300, 200, i)), "image/png")) for i in range(2)]
    response = httpx.post(f"{base}/v1/boxes", files=images, timeout=30)  # 2 × 60,000 pixels
    assert response.status_code == 413, response.text
    error = response.json()["error"]
    assert error["code"] == "request_pixels"
    assert "100,000 pixels" in error["message"] and "LOST_REG_MAX_REQUEST_PIXELS" in error["message"]
    assert httpx.post(f"{base}/v1/boxes", files=images[:1], timeout=30).status_code == 200
    assert metrics(base)['lost_reg_rejections_total{reason="request_pixels"}'] == 1


def test_a_burst_gets_answers_or_prompt_refusals_never_timeouts(tmp_path):
    """The issue's burst (queue 4, timeout 5 s, 16 requests of 4 JPEGs of 12 MP): every request is answered or
    refused with Retry-After, none runs into its timeout, and at no time are more than 4 images held."""
    env = {**TINY_ENV, "LOST_REG_MAX_QUEUE": "4", "LOST_REG_TIMEOUT_S": "5"}
    images = [encode(photo(4000, 3000, seed), "JPEG") for seed in range(4)]
    held: list[float] = []

    async def burst(base: str) -> list[httpx.Response]:
        limits = httpx.Limits(max_connections=20)
        async with httpx.AsyncClient(base_url=base, timeout=60, limits=limits) as client:
            async def one(i: int) -> httpx.Response:
                files = [("images", (f"{i}-{j}.jpg", data, "image/jpeg")) for j, data in enumerate(images)]
                return await client.post("/v1/boxes", files=files, data={"max_side": "224"})

            async def watch(task: asyncio.Future) -> None:
                while not task.done():
                    text = (await client.get("/metrics")).text
                    held.extend(float(line.split()[1]) for line in text.splitlines()
                                if line.startswith("lost_reg_images_in_flight "))
                    await asyncio.sleep(0.05)

            requests = asyncio.gather(*(one(i) for i in range(16)))
            await asyncio.gather(requests, watch(requests))
            return requests.result()

    with serving(tmp_path / "server.log", env, "--no-access-log") as base:
        answers = asyncio.run(burst(base))
    statuses = [r.status_code for r in answers]
    assert set(statuses) <= {200, 503} and 200 in statuses, statuses
    for r in answers:
        if r.status_code == 503:
            assert r.headers["retry-after"] == "1" and r.json()["error"]["code"] == "busy"
        else:
            assert [x["width"] for x in r.json()["results"]] == [4000] * 4
    assert held and max(held) <= 4


@pytest.fixture(scope="module")
def two_decoders(tmp_path_factory):
    """Two decoding threads and a pixel budget that lets 12 × 25 MP in."""
    env = {**TINY_ENV, "LOST_REG_DECODE_WORKERS": "2", "LOST_REG_MAX_REQUEST_PIXELS": str(12 * BIG_SIDE ** 2)}
    log = tmp_path_factory.mktemp("two-decoders") / "server.log"
    with serving(log, env, "--no-access-log") as base:
        yield base, log


def big_request(big_png: bytes, count: int = 12) -> bytes:
    body = field_part("max_side", "224") + b"".join(file_part(f"big-{i}.png", big_png) for i in range(count)) + END
    return head("/v1/boxes", len(body)) + body


def test_a_small_image_takes_its_turn_beside_a_large_request(two_decoders, big_png):
    """Requests take turns at the decoders and the model: a one-image request sent while a 12-image one is being
    decoded is answered after a few of those 12, not after all of them."""
    base, _ = two_decoders
    done = lambda: metrics(base).get("lost_reg_images_total", 0)  # noqa: E731
    before = done()
    with connect(base, timeout=60) as large:
        large.sendall(big_request(big_png))
        assert wait_for(lambda: done() >= before + 1, 30)  # the large request is being decoded
        small = httpx.post(f"{base}/v1/boxes", files=[("images", ("small.png", encode(photo(64, 48)), "image/png"))],
                           timeout=60)
        large_done_then = done() - before - 1
        answer = read_answer(large, timeout=60)
    assert small.status_code == 200 and small.json()["results"][0]["width"] == 64
    assert answer is not None and answer.status == 200 and len(answer.json()["results"]) == 12
    assert large_done_then <= 8, f"the small image waited for {large_done_then} of the large request's 12"


def test_work_of_a_client_that_left_is_dropped(two_decoders, big_png):
    base, log = two_decoders
    done = lambda: metrics(base).get("lost_reg_images_total", 0)  # noqa: E731
    before = done()
    with connect(base, timeout=60) as large:
        large.sendall(big_request(big_png))
        assert wait_for(lambda: done() >= before + 1, 30)
    # the client is gone: its queued decodes and images are dropped, the running decodes end
    wait_for(lambda: metrics(base).get("lost_reg_images_in_flight") == 0, 20)
    time.sleep(1.0)
    assert done() - before <= 6, f"{done() - before} of the 12 images were computed for nobody"
    m = metrics(base)
    assert m['lost_reg_http_requests_total{method="POST",path="/v1/boxes",status="499"}'] == 1
    assert m['lost_reg_rejections_total{reason="client_gone"}'] == 1
    text = log.read_text()
    assert text.count("the client left before its answer") == 1 and "Traceback" not in text


def test_a_timed_out_request_is_504_and_its_work_dropped(tmp_path, big_png):
    env = {**TINY_ENV, "LOST_REG_DECODE_WORKERS": "2", "LOST_REG_MAX_REQUEST_PIXELS": str(12 * BIG_SIDE ** 2),
           "LOST_REG_TIMEOUT_S": "0.5"}
    with serving(tmp_path / "server.log", env, "--no-access-log") as base:
        with connect(base, timeout=60) as large:
            large.sendall(big_request(big_png))
            answer = read_answer(large, timeout=30)
        assert answer is not None and answer.status == 504 and answer.json()["error"]["code"] == "timeout"
        m = metrics(base)
        assert m["lost_reg_images_in_flight"] == 0 and m["lost_reg_queue_depth"] == 0
        time.sleep(1.5)  # the decodes that were running end; nothing queued after them runs
        m = metrics(base)
        assert m.get("lost_reg_images_total", 0) <= 4 and m['lost_reg_rejections_total{reason="timeout"}'] == 1
