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

And the scenarios of issue 25 (files and requests that cost the server far more than their size; the CPU time
and peak memory are those of the server and its child processes, the decoders):

- ``scan_bombs``: two 6000×6000 progressive JPEGs whose last scan is repeated 20,000 times (1.8 MB each) in
  one request, and a normal 320×240 JPEG 2 s later: both answers, and the CPU the server still burns in
  the 5 s after the bombs' answer (a decode that runs on).
- ``tile_bombs``: two TIFFs whose header says 64×64 holding one 24000² deflate tile (1.7 MB each) in one
  request, a normal JPEG 0.5 s later: answers and peak memory.
- ``padding``: a 19 MB JPEG of 0xFF fill bytes, a normal JPEG 1 s later.
- ``ls_tasks``: ``/labelstudio/predict`` with 500,000 empty tasks (1.5 MB): the longest ``/healthz`` wait
  meanwhile (polled every 0.1 s), memory, the answer and the server log's size.
- ``gzip``: a Label Studio task image sent as ``Content-Encoding: gzip, gzip`` (2 GB of zeros, a few KB on
  the wire) beside a normal task: memory, the longest ``/healthz`` wait, the predictions and the logged reason.
- ``early_answer``: ``GET /healthz`` declaring a 100-byte body, one byte sent, the answer read, one more byte
  sent: how long until the server closes the connection (60 s at most); then, with the server's descriptor
  limit lowered to 8 above what it holds, 40 such connections, each sending a body byte a second: the log's
  size after 20 s, and how long a new client then waits for its answer (90 s at most).

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
import resource
import socket
import statistics
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
sys.path.insert(0, str(HERE))
from tests.bombs import nested_gzip, padded_jpeg, scan_bomb, tile_bomb  # noqa: E402 (the tests' hostile files)
from tests.launch import NotReady, free_port, launched  # noqa: E402

RESULTS = Path(__file__).with_name("results.jsonl")
TINY = ["--backbone", "vit_small_patch14_dinov2", "--weights", "random", "--model-arg", "depth=2",
        "--model-arg", "embed_dim=48", "--model-arg", "num_heads=3", "--model-arg", "reg_tokens=4", "--device", "cpu"]
LABEL_CONFIG = ('<View><Image name="image" value="$image"/><RectangleLabels name="label" toName="image">'
                '<Label value="object"/></RectangleLabels></View>')
SCENARIOS = ("burst", "labelstudio", "fairness", "scan_bombs", "tile_bombs", "padding", "ls_tasks", "gzip",
             "early_answer")


def parse_args() -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--root", type=Path, default=HERE, help="checkout whose service runs (default: this one)")
    p.add_argument("--scenario", default=",".join(SCENARIOS), help=f"comma-separated, of {', '.join(SCENARIOS)}")
    p.add_argument("--no-record", action="store_true", help=f"do not append to {RESULTS.name}")
    return p.parse_args()


def peak_rss_mb(pid: int) -> float:
    """The process's peak resident memory so far (``VmHWM``), MB."""
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) / 1024
    raise RuntimeError("no VmHWM")


class Server:
    """A running ``lost-reg serve`` of ``root``: its URL, process id and log file."""

    def __init__(self, base: str, pid: int, log: io.TextIOBase) -> None:
        self.base, self.pid, self.log = base, pid, log

    def log_text(self) -> str:
        self.log.flush()
        return Path(f"/proc/self/fd/{self.log.fileno()}").read_text(errors="replace")


def tree(pid: int) -> list[int]:
    """``pid`` and its descendants now."""
    children: dict[int, list[int]] = {}
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                fields = (entry / "stat").read_text().rsplit(")", 1)[1].split()
            except OSError:
                continue
            children.setdefault(int(fields[1]), []).append(int(entry.name))
    out, todo = [], [pid]
    while todo:
        p = todo.pop()
        out.append(p)
        todo += children.get(p, [])
    return out


def tree_cpu_s(pid: int) -> float:
    """CPU seconds used so far by ``pid`` and its living descendants."""
    total = 0
    for p in tree(pid):
        try:
            fields = Path(f"/proc/{p}/stat").read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        total += int(fields[11]) + int(fields[12])
    return total / os.sysconf("SC_CLK_TCK")


def tree_peak_mb(pid: int) -> dict[str, float]:
    """Peak resident memory (``VmHWM``) of the server and, summed, of its living descendants, MB."""
    children = 0.0
    for p in tree(pid)[1:]:
        try:
            children += peak_rss_mb(p)
        except (OSError, RuntimeError):
            pass
    return {"server": round(peak_rss_mb(pid), 1), "children": round(children, 1)}


class HealthProbe:
    """Polls ``/healthz`` every 0.1 s on a thread of its own; ``worst_s``: the longest wait for an answer."""

    def __init__(self, base: str) -> None:
        self.base, self.worst_s, self.failures, self._stop = base, 0.0, 0, threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def __enter__(self) -> HealthProbe:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join()

    def _run(self) -> None:
        with httpx.Client(timeout=60) as client:
            while not self._stop.is_set():
                start = time.perf_counter()
                try:
                    client.get(f"{self.base}/healthz")
                except httpx.HTTPError:
                    self.failures += 1
                self.worst_s = max(self.worst_s, time.perf_counter() - start)
                time.sleep(0.1)


@contextmanager
def serve(root: Path, env: dict[str, str]) -> Iterator[Server]:
    """``lost-reg serve`` from ``root`` (its code, not this checkout's) with the tiny ViT and ``env``."""
    port = free_port()
    command = [sys.executable, "-c", "import sys; from lost_reg.cli import main; sys.exit(main())", "serve", *TINY,
               "--port", str(port), "--log-level", "warning"]
    base = f"http://127.0.0.1:{port}"
    with tempfile.TemporaryFile("w+") as log:
        try:
            with launched(command, [f"{base}/healthz", f"{base}/v1/model"], log,
                          {"PYTHONPATH": str(root), "HF_HUB_OFFLINE": "1", **env}, root, timeout_s=120,
                          stop_s=60) as proc:
                yield Server(base, proc.pid, log)
        except NotReady as e:
            log.seek(0)
            sys.exit(f"{e}:\n{log.read()[-3000:]}")


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
def file_server(files: dict[str, bytes], drip: dict[str, int],
                encoded: dict[str, tuple[bytes, str]] | None = None) -> Iterator[str]:
    """A local stand-in for Label Studio's file server: ``files`` by path; paths in ``drip`` declare that many
    bytes and send 10 every 2 s; paths in ``encoded`` send their bytes with that ``Content-Encoding``."""
    encoded = encoded or {}

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
            data, coding = encoded.get(path, (files.get(path), None))
            if data is None:
                self.send_error(404)
                return
            self.send_response(200)
            self.send_header("Content-Length", str(len(data)))
            if coding:
                self.send_header("Content-Encoding", coding)
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


# ---- issue 25: hostile files and requests --------------------------------------------------------------------


async def post_files(client: httpx.AsyncClient, files: list[tuple[str, bytes, str]], delay: float = 0.0) -> dict:
    await asyncio.sleep(delay)
    start = time.perf_counter()
    try:
        r = await client.post("/v1/boxes", files=[("images", f) for f in files])
        status: int | str = r.status_code
        code = r.json().get("error", {}).get("code") if r.status_code != 200 else None
    except httpx.HTTPError as e:
        status, code = type(e).__name__, None
    return {"status": status, "code": code, "s": round(time.perf_counter() - start, 2)}


def beside(root: Path, hostile: list[tuple[str, bytes, str]], delay: float, what: str, after_s: float = 5.0) -> dict:
    """``hostile`` files in one request and a normal 320×240 JPEG ``delay`` s later: both answers, the CPU the
    server's processes use in the ``after_s`` s after the hostile answer, and peak memory."""
    normal = [("normal.jpg", encode(photo(320, 240, 7), "JPEG", quality=90), "image/jpeg")]

    async def run(server: Server) -> dict:
        async with httpx.AsyncClient(base_url=server.base, timeout=600) as client:
            await client.post("/v1/boxes", files=[("images", normal[0])])  # warm
            bad = asyncio.create_task(post_files(client, hostile))
            good = await post_files(client, normal, delay)
            bad_answer = await bad
        cpu = tree_cpu_s(server.pid)
        await asyncio.sleep(after_s)
        return {"hostile": bad_answer, "normal": good,
                f"cpu_s_in_{after_s:g}s_after_the_hostile_answer": round(tree_cpu_s(server.pid) - cpu, 2)}

    with serve(root, {}) as server:
        at_ready = tree_peak_mb(server.pid)
        out = asyncio.run(run(server))
        return {"hostile": what, "normal": f"320x240 JPEG sent {delay:g} s later", **out,
                "peak_rss_mb_at_ready": at_ready, "peak_rss_mb": tree_peak_mb(server.pid)}


def scan_bombs(root: Path) -> dict:
    bomb = scan_bomb(6000, 20_000)
    return beside(root, [("a.jpg", bomb, "image/jpeg"), ("b.jpg", bomb, "image/jpeg")], 2.0,
                  f"two 6000x6000 progressive JPEGs, last scan x20000 ({len(bomb) / 2**20:.1f} MB each)")


def tile_bombs(root: Path) -> dict:
    bomb = tile_bomb(24_000)
    return beside(root, [("a.tif", bomb, "image/tiff"), ("b.tif", bomb, "image/tiff")], 0.5,
                  f"two TIFFs, header 64x64, one 24000x24000 deflate tile ({len(bomb) / 2**20:.1f} MB each)")


def padding(root: Path) -> dict:
    bomb = padded_jpeg(photo(640, 480, 3), 19 * 2**20)
    return beside(root, [("padded.jpg", bomb, "image/jpeg")], 1.0,
                  f"a 640x480 JPEG behind 19 MB of 0xFF fill bytes ({len(bomb) / 2**20:.1f} MB)")


def ls_tasks(root: Path) -> dict:
    n = 500_000
    body = b'{"label_config": ' + json.dumps(LABEL_CONFIG).encode() + b', "tasks": [' + b",".join([b"{}"] * n) + b"]}"
    with serve(root, {}) as server:
        at_ready = tree_peak_mb(server.pid)
        with HealthProbe(server.base) as probe:
            time.sleep(0.5)
            start = time.perf_counter()
            r = httpx.post(f"{server.base}/labelstudio/predict", content=body, timeout=300,
                           headers={"Content-Type": "application/json"})
            took = time.perf_counter() - start
            time.sleep(0.5)
        log = server.log_text()
        return {"tasks": n, "body_mb": round(len(body) / 2**20, 2), "status": r.status_code, "s": round(took, 2),
                "answer_mb": round(len(r.content) / 2**20, 2),
                "code": r.json().get("error", {}).get("code") if r.status_code != 200 else None,
                "healthz_worst_wait_s": round(probe.worst_s, 2), "healthz_failures": probe.failures,
                "server_log_mb": round(len(log.encode()) / 2**20, 2), "server_log_lines": log.count("\n"),
                "peak_rss_mb_at_ready": at_ready, "peak_rss_mb": tree_peak_mb(server.pid)}


def gzip_bomb(root: Path) -> dict:
    inner_mb = 2048
    bomb = nested_gzip(inner_mb)
    small = encode(photo(320, 240, 1), "PNG")
    with file_server({"/data/upload/small.png": small}, {}, {"/data/upload/bomb.png": (bomb, "gzip, gzip")}) as ls:
        with serve(root, {"LOST_REG_LABEL_STUDIO_URL": ls}) as server:
            at_ready = tree_peak_mb(server.pid)
            tasks = [{"id": 1, "data": {"image": "/data/upload/bomb.png"}},
                     {"id": 2, "data": {"image": "/data/upload/small.png"}}]
            body = json.dumps({"tasks": tasks, "label_config": LABEL_CONFIG}).encode()
            with HealthProbe(server.base) as probe:
                answer = predict(server.base, body)
            reasons = [line.strip()[:200] for line in server.log_text().splitlines() if "task 1" in line]
            return {"wire_kb": round(len(bomb) / 1024, 1), "decoded_mb": inner_mb, "encoding": "gzip, gzip", **answer,
                    "logged": reasons, "healthz_worst_wait_s": round(probe.worst_s, 2),
                    "peak_rss_mb_at_ready": at_ready, "peak_rss_mb": tree_peak_mb(server.pid)}


def _early(base: str, timeout: float) -> socket.socket:
    sock = socket.create_connection(("127.0.0.1", int(base.rsplit(":", 1)[1])), timeout=timeout)
    sock.sendall(b"GET /healthz HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Length: 100\r\n\r\nx")
    return sock


def _closed_after(sock: socket.socket, limit: float) -> float | None:
    """Seconds until the server closes ``sock`` (what it sends is read and dropped); None past ``limit``."""
    start = time.perf_counter()
    sock.settimeout(0.2)
    while time.perf_counter() - start < limit:
        try:
            if not sock.recv(65536):
                return round(time.perf_counter() - start, 2)
        except TimeoutError:
            continue
        except ConnectionResetError:
            return round(time.perf_counter() - start, 2)
    return None


def early_answer(root: Path) -> dict:
    out: dict = {}
    with serve(root, {}) as server:
        sock = _early(server.base, 10)
        sock.settimeout(10)
        answer = sock.recv(65536)
        sock.sendall(b"y")
        out["healthz_with_a_body"] = {"status": answer.split(b" ", 2)[1].decode(),
                                      "closed_after_s": _closed_after(sock, 60), "waited_at_most_s": 60}
        sock.close()
        _, hard = resource.prlimit(server.pid, resource.RLIMIT_NOFILE)
        held = len(os.listdir(f"/proc/{server.pid}/fd"))
        resource.prlimit(server.pid, resource.RLIMIT_NOFILE, (held + 8, hard))
        before = len(server.log_text().encode())
        socks = [_early(server.base, 30) for _ in range(40)]
        stop = threading.Event()

        def drip() -> None:  # a body byte a second on each: what cancels uvicorn's keep-alive timer
            while not stop.wait(1):
                for s in socks:
                    try:
                        s.send(b"y")
                    except OSError:
                        pass

        dripping = threading.Thread(target=drip, daemon=True)
        dripping.start()
        time.sleep(20)
        logged = len(server.log_text().encode()) - before
        start = time.perf_counter()
        try:  # one new client, while the 40 go on dripping
            status: int | str = httpx.get(f"{server.base}/healthz", timeout=90).status_code
        except httpx.HTTPError as e:
            status = type(e).__name__
        waited = time.perf_counter() - start
        stop.set()
        dripping.join()
        for s in socks:
            s.close()
        out["fd_exhaustion"] = {"descriptor_limit": f"{held} held + 8", "connections": 40,
                                "server_log_kb_in_20s": round(logged / 1024, 1), "new_client_at_20s": status,
                                "new_client_waited_s": round(waited, 1), "waited_at_most_s": 90}
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
        figures[name] = {"burst": burst, "labelstudio": labelstudio, "fairness": fairness, "scan_bombs": scan_bombs,
                         "tile_bombs": tile_bombs, "padding": padding, "ls_tasks": ls_tasks, "gzip": gzip_bomb,
                         "early_answer": early_answer}[name](root)
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
