"""Load and abuse of a real ``lost-reg serve`` process on 127.0.0.1: admission, Label Studio bounds, fairness.

The scenarios of issue 20, each against a fresh server (the tiny random ViT of the tests), with figures a
client sees and the server's peak resident memory (``VmHWM``):

- ``burst``: ``LOST_REG_MAX_QUEUE=4 LOST_REG_TIMEOUT_S=5``, 16 concurrent requests of 4 JPEGs of 12 MP:
  how many got 200, 503, 504, and how soon the refusals came.
- ``labelstudio``: ``/labelstudio/predict`` with 40 tasks of 19 MB images served by a local stand-in for
  Label Studio's file server (peak memory); a 40 MB and a 150 MB JSON body; a task image dripping 10 bytes
  every 2 s with ``LOST_REG_TIMEOUT_S=5`` (how long the request is held).
- ``fairness``: one request of 16 PNGs of 6324×6324 (each under the 40 MP limit) and, while it runs, a
  64×48 image every 0.5 s: their p50/p95 latency, with the server's default settings and with
  ``LOST_REG_MAX_REQUEST_PIXELS`` raised so that the large request is admitted.

``--root`` runs the service of another checkout (e.g. ``git worktree add --detach /tmp/before main``) with
this script, so before and after are measured the same way. One JSON record per run goes to
``bench/results.jsonl`` (date, device, commit, figures).

    python bench/bench_service_load.py                         # every scenario, this checkout
    python bench/bench_service_load.py --root /tmp/before --scenario burst
"""

from __future__ import annotations

import argparse
import asyncio
import io
import json
import os
import platform
import socket
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from collections import Counter
from collections.abc import Iterator
from contextlib import contextmanager
from datetime import datetime, timezone
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import httpx
import numpy as np
from PIL import Image

from bench_service import commit  # this folder is on sys.path when a script of it runs

HERE = Path(__file__).resolve().parents[1]
RESULTS = Path(__file__).with_name("results.jsonl")
TINY = ["--backbone", "vit_small_patch14_dinov2", "--weights", "random", "--model-arg", "depth=2",
        "--model-arg", "embed_dim=48", "--model-arg", "num_heads=3", "--model-arg", "reg_tokens=4", "--device", "cpu"]
LABEL_CONFIG = ('<View><Image name="image" value="$image"/><RectangleLabels name="label" toName="image">'
                '<Label value="object"/></RectangleLabels></View>')
SCENARIOS = ("burst", "labelstudio", "fairness")


def parse_args() -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--root", type=Path, default=HERE, help="checkout whose service runs (default: this one)")
    p.add_argument("--scenario", default=",".join(SCENARIOS), help=f"comma-separated, of {', '.join(SCENARIOS)}")
    p.add_argument("--no-record", action="store_true", help=f"do not append to {RESULTS.name}")
    return p.parse_args()


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def peak_rss_mb(pid: int) -> float:
    """The process's peak resident memory so far (``VmHWM``), MB."""
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) / 1024
    raise RuntimeError("no VmHWM")


class Server:
    """A running ``lost-reg serve`` of ``root``: its URL and process id."""

    def __init__(self, base: str, pid: int) -> None:
        self.base, self.pid = base, pid


@contextmanager
def serve(root: Path, env: dict[str, str]) -> Iterator[Server]:
    """``lost-reg serve`` from ``root`` (its code, not this checkout's) with the tiny ViT and ``env``."""
    port = free_port()
    command = [sys.executable, "-c", "import sys; from lost_reg.cli import main; sys.exit(main())", "serve", *TINY,
               "--port", str(port), "--log-level", "warning"]
    clean = {k: v for k, v in os.environ.items() if not k.startswith("LOST_REG_")}
    full_env = {**clean, "PYTHONPATH": str(root), "HF_HUB_OFFLINE": "1", **env}
    with tempfile.TemporaryFile("w+") as log:
        proc = subprocess.Popen(command, cwd=root, env=full_env, stdout=log, stderr=subprocess.STDOUT)
        base = f"http://127.0.0.1:{port}"
        try:
            deadline = time.monotonic() + 120
            while True:
                if proc.poll() is not None:
                    log.seek(0)
                    sys.exit(f"server exited with {proc.returncode}:\n{log.read()[-3000:]}")
                try:
                    if httpx.get(f"{base}/healthz", timeout=2).status_code == 200 and \
                            httpx.get(f"{base}/v1/model", timeout=2).status_code == 200:
                        break
                except httpx.TransportError:
                    pass
                if time.monotonic() > deadline:
                    sys.exit("server not ready in 2 minutes")
                time.sleep(0.3)
            yield Server(base, proc.pid)
        finally:
            proc.terminate()
            try:
                proc.wait(timeout=60)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()


def encode(pixels: np.ndarray, fmt: str, **options: int) -> bytes:
    buffer = io.BytesIO()
    Image.fromarray(pixels).save(buffer, fmt, **options)
    return buffer.getvalue()


def photo(width: int, height: int, seed: int, noise: int = 25) -> np.ndarray:
    """RGB: a gradient with a bright ellipse and some noise, photo-like for JPEG and PNG sizes."""
    rng = np.random.default_rng(seed)
    y, x = np.ogrid[:height, :width]
    image = np.empty((height, width, 3), np.uint8)
    image[..., 0] = x * 150 // width
    image[..., 1] = y * 150 // height
    image[..., 2] = 70
    inside = ((x - width * 0.6) / (width * 0.2)) ** 2 + ((y - height * 0.4) / (height * 0.25)) ** 2 < 1
    image[inside] = (230, 190, 50)
    if noise:
        image += rng.integers(0, noise, image.shape, dtype=np.uint8)
    return image


# ---- burst -----------------------------------------------------------------------------------------------


async def burst_requests(base: str, images: list[bytes], requests: int) -> list[dict]:
    async with httpx.AsyncClient(base_url=base, timeout=120, limits=httpx.Limits(max_connections=requests)) as c:
        async def one(i: int) -> dict:
            files = [("images", (f"{i}-{j}.jpg", data, "image/jpeg")) for j, data in enumerate(images)]
            start = time.perf_counter()
            try:
                r = await c.post("/v1/boxes", files=files)
                status = r.status_code
            except httpx.HTTPError as e:
                status = type(e).__name__
            return {"status": status, "s": time.perf_counter() - start}

        return await asyncio.gather(*(one(i) for i in range(requests)))


def burst(root: Path) -> dict:
    images = [encode(photo(4000, 3000, seed), "JPEG", quality=90) for seed in range(4)]
    env = {"LOST_REG_MAX_QUEUE": "4", "LOST_REG_TIMEOUT_S": "5"}
    with serve(root, env) as server:
        rss_before = peak_rss_mb(server.pid)
        start = time.perf_counter()
        answers = asyncio.run(burst_requests(server.base, images, 16))
        wall = time.perf_counter() - start
        rss = peak_rss_mb(server.pid)
    counts = Counter(str(a["status"]) for a in answers)
    by_status = {s: round(statistics.median(a["s"] for a in answers if str(a["status"]) == s), 2) for s in counts}
    return {"env": env, "requests": 16, "images_per_request": 4, "image": "4000x3000 JPEG q90",
            "image_mb": round(statistics.mean(len(i) for i in images) / 2**20, 2), "statuses": dict(counts),
            "median_s_by_status": by_status, "wall_s": round(wall, 2),
            "peak_rss_mb": round(rss, 1), "peak_rss_mb_at_ready": round(rss_before, 1)}


# ---- Label Studio ------------------------------------------------------------------------------------------


@contextmanager
def file_server(files: dict[str, bytes], drip: dict[str, int]) -> Iterator[str]:
    """A local stand-in for Label Studio's file server: ``files`` by path; paths in ``drip`` declare that many
    bytes and send 10 every 2 s."""

    class Handler(BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"

        def do_GET(self) -> None:  # noqa: N802 (http.server's name)
            path = self.path.split("?")[0]
            if path in drip:
                self.send_response(200)
                self.send_header("Content-Length", str(drip[path]))
                self.end_headers()
                try:
                    for _ in range(drip[path] // 10):
                        self.wfile.write(b"\0" * 10)
                        self.wfile.flush()
                        time.sleep(2)
                except OSError:
                    pass
                return
            data = files.get(path)
            if data is None:
                self.send_error(404)
                return
            self.send_response(200)
            self.send_header("Content-Length", str(len(data)))
            self.end_headers()
            try:
                self.wfile.write(data)
            except OSError:
                pass

        def log_message(self, *args: object) -> None:
            pass

    httpd = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    httpd.daemon_threads = True
    thread = threading.Thread(target=httpd.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{httpd.server_address[1]}"
    finally:
        httpd.shutdown()
        httpd.server_close()


def predict(base: str, body: bytes, timeout: float = 300) -> dict:
    start = time.perf_counter()
    try:
        r = httpx.post(f"{base}/labelstudio/predict", content=body, timeout=timeout,
                       headers={"Content-Type": "application/json"})
        status: int | str = r.status_code
        results = r.json().get("results") if r.headers.get("content-type", "").startswith("application/json") else None
    except httpx.HTTPError as e:
        status, results = type(e).__name__, None
    boxes = sum(bool(p.get("result")) for p in results) if isinstance(results, list) else None
    return {"status": status, "s": round(time.perf_counter() - start, 2), "predictions_with_a_box": boxes}


def padded_tasks_body(megabytes: int) -> bytes:
    """A prediction request of about ``megabytes`` MB: 10 tasks, each with a large text field and an image that
    is not on Label Studio (what is measured is the body, not the tasks)."""
    tasks = [{"id": i, "data": {"image": "elsewhere.jpg", "text": "x" * (megabytes * 2**20 // 10)}} for i in range(10)]
    return json.dumps({"tasks": tasks, "label_config": LABEL_CONFIG}).encode()


def labelstudio(root: Path) -> dict:
    noise = np.random.default_rng(0).integers(0, 256, (2500, 2560, 3), dtype=np.uint8)
    big = encode(noise, "PNG", compress_level=1)  # noise does not compress: ~19 MB
    files = {f"/data/upload/{i}.png": big for i in range(40)} | {"/data/upload/small.png": encode(photo(320, 240, 1),
                                                                                                   "PNG")}
    out: dict = {"image_mb": round(len(big) / 2**20, 1)}
    with file_server(files, drip={"/data/upload/slow.png": 300}) as ls:
        with serve(root, {"LOST_REG_LABEL_STUDIO_URL": ls}) as server:
            at_ready = peak_rss_mb(server.pid)
            tasks = [{"id": i, "data": {"image": f"/data/upload/{i}.png"}} for i in range(40)]
            body = json.dumps({"tasks": tasks, "label_config": LABEL_CONFIG}).encode()
            out["tasks_40x19mb"] = {**predict(server.base, body), "body_kb": round(len(body) / 1024, 1),
                                    "peak_rss_mb_at_ready": round(at_ready, 1),
                                    "peak_rss_mb": round(peak_rss_mb(server.pid), 1)}
        for mb in (40, 150):
            body = padded_tasks_body(mb)
            with serve(root, {"LOST_REG_LABEL_STUDIO_URL": ls}) as server:
                at_ready = peak_rss_mb(server.pid)
                out[f"json_{mb}mb"] = {**predict(server.base, body), "body": "10 tasks, each with a large text field",
                                       "peak_rss_mb_at_ready": round(at_ready, 1),
                                       "peak_rss_mb": round(peak_rss_mb(server.pid), 1)}
        with serve(root, {"LOST_REG_LABEL_STUDIO_URL": ls, "LOST_REG_TIMEOUT_S": "5"}) as server:
            tasks = [{"id": 1, "data": {"image": "/data/upload/slow.png"}},
                     {"id": 2, "data": {"image": "/data/upload/small.png"}}]
            body = json.dumps({"tasks": tasks, "label_config": LABEL_CONFIG}).encode()
            out["dripping_image_timeout_5s"] = {**predict(server.base, body, timeout=120),
                                                "drip": "300 bytes declared, 10 every 2 s"}
    return out


# ---- fairness ----------------------------------------------------------------------------------------------


async def small_while_large(base: str, large: list[bytes], small: bytes, every_s: float = 0.5,
                            at_most: int = 120) -> dict:
    """The large request, and one small request every ``every_s`` s from 1 s after it until it is answered (at
    least 5, at most ``at_most``): open-loop arrivals, so a slow answer does not thin out the samples."""
    async with httpx.AsyncClient(base_url=base, timeout=180, limits=httpx.Limits(max_connections=200)) as client:
        async def big() -> dict:
            files = [("images", (f"large-{i}.png", data, "image/png")) for i, data in enumerate(large)]
            start = time.perf_counter()
            r = await client.post("/v1/boxes", files=files)
            return {"status": r.status_code, "s": round(time.perf_counter() - start, 2)}

        async def one() -> tuple[int, float]:
            start = time.perf_counter()
            r = await client.post("/v1/boxes", files=[("images", ("small.png", small, "image/png"))])
            return r.status_code, time.perf_counter() - start

        task = asyncio.create_task(big())
        await asyncio.sleep(1.0)  # the large request is being read and decoded
        smalls = []
        while len(smalls) < at_most and (not task.done() or len(smalls) < 5):
            smalls.append(asyncio.create_task(one()))
            await asyncio.sleep(every_s)
        large_answer = await task
        answers = await asyncio.gather(*smalls)
    ms = sorted(s * 1000 for _, s in answers)
    return {"large": large_answer, "small_count": len(ms), "small_every_s": every_s,
            "small_statuses": dict(Counter(status for status, _ in answers)),
            "small_p50_ms": round(statistics.median(ms), 1), "small_p95_ms": round(ms[int(0.95 * (len(ms) - 1))], 1),
            "small_max_ms": round(ms[-1], 1)}


def fairness(root: Path) -> dict:
    side = 6324
    large = [encode(photo(side, side, 0, noise=0), "PNG")] * 16  # smooth: a small file, a long decode
    small = encode(photo(64, 48, 99), "PNG")
    out: dict = {"large": f"16 PNGs of {side}x{side} ({side * side / 1e6:.1f} MP each, "
                          f"{sum(map(len, large)) / 2**20:.1f} MB in all)", "small": "64x48 PNG, one every 0.5 s"}
    for label, env in (("defaults", {}), ("budget_raised", {"LOST_REG_MAX_REQUEST_PIXELS": str(16 * side * side)})):
        with serve(root, env) as server:
            out[label] = {"env": env, **asyncio.run(small_while_large(server.base, large, small)),
                          "peak_rss_mb": round(peak_rss_mb(server.pid), 1)}
    return out


def main() -> None:
    args = parse_args()
    root = args.root.resolve()
    load_before = os.getloadavg()
    figures = {}
    for name in args.scenario.split(","):
        if name not in SCENARIOS:
            sys.exit(f"unknown scenario {name!r}: {', '.join(SCENARIOS)}")
        print(f"--- {name}", flush=True)
        figures[name] = {"burst": burst, "labelstudio": labelstudio, "fairness": fairness}[name](root)
        print(json.dumps(figures[name], indent=1), flush=True)
    record = {"bench": "service_load", "date": datetime.now(timezone.utc).isoformat(timespec="seconds"),
              "root": str(root), "commit": commit(root),
              "device": {"torch": "cpu", "machine": platform.machine(), "processor": platform.processor(),
                         "cpus": os.cpu_count(), "load_avg_before": [round(v, 2) for v in load_before],
                         "load_avg_after": [round(v, 2) for v in os.getloadavg()]},
              "model": "tiny random ViT (vit_small_patch14_dinov2, 2 blocks, 48-d, 4 registers)", **figures}
    if not args.no_record:
        with RESULTS.open("a") as f:
            f.write(json.dumps(record) + "\n")
        print(f"appended to {RESULTS}")


if __name__ == "__main__":
    main()
