"""Throughput and latency of ``lost-reg serve``: batched (max_batch 16) vs unbatched (max_batch 1).

Starts the real server (``lost-reg serve`` on 127.0.0.1, one process per batching mode), sends
``--requests`` single-image POSTs at each concurrency level, prints req/s and p50/p95 latency and
appends one JSON record (date, device, versions, figures) to ``bench/results.jsonl``.

    python bench/bench_service.py                                   # tiny random ViT (as the tests)
    python bench/bench_service.py --backbone dinov2_vits14_imgfocus --requests 16
    python bench/bench_service.py --backbone vit_small_patch14_reg4_dinov2.lvd142m --device cuda
    python bench/bench_service.py --root /tmp/before                # another checkout's service, same client
"""

from __future__ import annotations

import argparse
import asyncio
import io
import json
import os
import platform
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Sequence
from contextlib import contextmanager
from datetime import datetime, timezone
from importlib import metadata
from pathlib import Path

import httpx
import numpy as np
from PIL import Image

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))  # run from a checkout: the tests' server launcher
from tests.launch import NotReady, free_port, launched  # noqa: E402
RESULTS = Path(__file__).with_name("results.jsonl")
TINY = ["--backbone", "vit_small_patch14_dinov2", "--weights", "random", "--model-arg", "depth=2",
        "--model-arg", "embed_dim=48", "--model-arg", "num_heads=3", "--model-arg", "reg_tokens=4"]


def parse_args() -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--root", type=Path, default=ROOT, help="checkout whose service runs (default: this one)")
    p.add_argument("--backbone", default="tiny", help="'tiny' (random 2-block ViT) or any lost-reg backbone")
    p.add_argument("--weights", default=None, help="as lost-reg serve --weights")
    p.add_argument("--model-arg", action="append", default=[], metavar="KEY=VALUE", help="as lost-reg serve")
    p.add_argument("--device", default="auto")
    p.add_argument("--dtype", default="float32", help="as lost-reg serve --dtype")
    p.add_argument("--size", default="320x240", help="image size WxH (JPEG; one shape, so batches fill)")
    p.add_argument("--requests", type=int, default=64, help="requests per concurrency level")
    p.add_argument("--concurrency", default="1,4,16", help="comma-separated client counts")
    p.add_argument("--max-batch", default="16,1", help="comma-separated server --max-batch values")
    p.add_argument("--max-wait-ms", type=float, default=5.0)
    p.add_argument("--no-record", action="store_true", help=f"do not append to {RESULTS.name}")
    return p.parse_args()


def server_args(args: argparse.Namespace) -> list[str]:
    if args.backbone == "tiny":
        return TINY + ["--device", args.device, "--dtype", args.dtype]
    out = ["--backbone", args.backbone, "--device", args.device, "--dtype", args.dtype]
    if args.weights:
        out += ["--weights", args.weights]
    return out + [a for kv in args.model_arg for a in ("--model-arg", kv)]


def images(size: str, n: int = 8) -> list[bytes]:
    """``n`` distinct JPEGs of one size: a bright blob on a noisy gradient, moved around."""
    w, h = map(int, size.lower().split("x"))
    rng = np.random.default_rng(0)
    y, x = np.mgrid[:h, :w]
    out = []
    for _ in range(n):
        base = np.stack([x * 150 // w, y * 150 // h, np.full_like(x, 70)], -1).astype(np.int32)
        cx, cy = w * (0.3 + 0.4 * rng.random()), h * (0.3 + 0.4 * rng.random())
        base[((x - cx) / (w * 0.15)) ** 2 + ((y - cy) / (h * 0.2)) ** 2 < 1] = (230, 190, 50)
        pixels = np.clip(base + rng.integers(0, 30, base.shape), 0, 255).astype(np.uint8)
        buffer = io.BytesIO()
        Image.fromarray(pixels).save(buffer, "JPEG", quality=90)
        out.append(buffer.getvalue())
    return out


@contextmanager
def server(args: argparse.Namespace, max_batch: int, extra: Sequence[str] = ()):
    """``lost-reg serve`` with this batching (and ``extra`` flags); yields (base URL, /v1/model, process id)."""
    port = free_port()
    command = [sys.executable, "-c", "import sys; from lost_reg.cli import main; sys.exit(main())", "serve",
               *server_args(args), "--port", str(port), "--max-batch", str(max_batch),
               "--max-wait-ms", str(args.max_wait_ms), "--log-level", "warning", *extra]
    base = f"http://127.0.0.1:{port}"
    with tempfile.TemporaryFile("w+") as log:
        try:  # a first run may download weights: 15 minutes
            with launched(command, [f"{base}/readyz"], log, {"PYTHONPATH": str(args.root.resolve())}, args.root,
                          timeout_s=900, stop_s=60) as proc:
                yield base, httpx.get(f"{base}/v1/model").json(), proc.pid
        except NotReady as e:
            log.seek(0)
            sys.exit(f"{e}:\n{log.read()}")


async def measure(base: str, payloads: list[bytes], requests: int, concurrency: int,
                  start_at: float | None = None) -> dict:
    """req/s and latency percentiles of ``requests`` single-image POSTs, ``concurrency`` at a time; with
    ``start_at`` (a ``time.monotonic()`` instant, for several client processes), they start then."""
    latencies: list[float] = []
    queue: asyncio.Queue[int] = asyncio.Queue()
    for i in range(requests):
        queue.put_nowait(i)

    async def client_loop(client: httpx.AsyncClient) -> None:
        while not queue.empty():
            i = queue.get_nowait()
            start = time.perf_counter()
            upload = ("images", (f"{i}.jpg", payloads[i % len(payloads)], "image/jpeg"))
            r = await client.post("/v1/boxes", files=[upload])
            r.raise_for_status()
            latencies.append(time.perf_counter() - start)

    limits = httpx.Limits(max_connections=concurrency)
    async with httpx.AsyncClient(base_url=base, timeout=600, limits=limits) as client:
        await client.post("/v1/boxes", files=[("images", ("warm.jpg", payloads[0], "image/jpeg"))])
        if start_at is not None:
            await asyncio.sleep(max(0.0, start_at - time.monotonic()))
        start = time.monotonic()
        await asyncio.gather(*(client_loop(client) for _ in range(concurrency)))
        end = time.monotonic()
    return {**summarize(latencies, end - start), "latencies": latencies, "start": start, "end": end}


def summarize(latencies: list[float], wall: float) -> dict[str, float]:
    """req/s, p50 and p95 (ms) of request latencies (s) over a wall time (s)."""
    ms = sorted(t * 1000 for t in latencies)
    return {"req_s": round(len(ms) / wall, 2), "p50_ms": round(statistics.median(ms), 1),
            "p95_ms": round(ms[min(len(ms) - 1, int(0.95 * len(ms)))], 1)}


def versions() -> dict[str, str]:
    out = {"python": platform.python_version()}
    for name in ("lost-reg", "torch", "timm", "fastapi", "uvicorn"):
        try:
            out[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            pass
    return out


def commit(root: Path) -> str:
    try:
        return subprocess.run(["git", "-C", str(root), "rev-parse", "--short", "HEAD"], capture_output=True,
                              text=True, check=True).stdout.strip()
    except (OSError, subprocess.CalledProcessError):
        return "unknown"


def gpu_name(device: str) -> str | None:
    if not device.startswith("cuda"):
        return None
    import torch

    return torch.cuda.get_device_name(torch.device(device))


def main() -> None:
    args = parse_args()
    payloads = images(args.size)
    levels = [int(c) for c in args.concurrency.split(",")]
    rows: list[dict] = []
    load_before = os.getloadavg()
    for max_batch in (int(b) for b in args.max_batch.split(",")):
        with server(args, max_batch) as (base, model, _):
            for c in levels:
                figures = {k: v for k, v in asyncio.run(measure(base, payloads, args.requests, c)).items()
                           if k in ("req_s", "p50_ms", "p95_ms")}
                rows.append({"max_batch": max_batch, "concurrency": c, **figures})
                print(f"max_batch {max_batch:>2}  clients {c:>2}: {figures['req_s']:8.2f} req/s  "
                      f"p50 {figures['p50_ms']:8.1f} ms  p95 {figures['p95_ms']:8.1f} ms", flush=True)
    print(f"\n{model['backbone']} ({args.backbone}), {args.size} JPEG, {args.requests} requests per level, "
          f"device {model['device']} {model['dtype']}")
    print("| max_batch | clients | req/s | p50 ms | p95 ms |\n|---:|---:|---:|---:|---:|")
    for r in rows:
        print(f"| {r['max_batch']} | {r['concurrency']} | {r['req_s']} | {r['p50_ms']} | {r['p95_ms']} |")
    if not args.no_record:
        record = {
            "date": datetime.now(timezone.utc).isoformat(timespec="seconds"),
            "device": {"torch": model["device"], "dtype": model["dtype"], "gpu": gpu_name(model["device"]),
                       "machine": platform.machine(),
                       "processor": platform.processor(), "cpus": os.cpu_count(),
                       "load_avg_before": [round(v, 2) for v in load_before],
                       "load_avg_after": [round(v, 2) for v in os.getloadavg()]},
            "versions": versions(),
            "backbone": model["backbone"], "server_args": server_args(args), "image_size": args.size,
            "root": str(args.root.resolve()), "commit": commit(args.root),
            "requests_per_level": args.requests, "max_wait_ms": args.max_wait_ms, "rows": rows,
        }
        with RESULTS.open("a") as f:
            f.write(json.dumps(record) + "\n")
        print(f"appended to {RESULTS}")


if __name__ == "__main__":
    main()
