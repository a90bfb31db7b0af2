"""The one command to run on a lent GPU: box equality, throughput, TokenCut's solver, the service, memory.

    python bench/device_check.py --device cuda --out DIR          # one H100/H200: at most 5 minutes
    python bench/device_check.py --device cpu --quick --out DIR   # the same code, small sizes (CI smoke test)

Uses only what travels with the working tree: random weights (timm ViT-S/14, ViT-B/14, ViT-L/14 with 4
registers, seeded), the photos in ``data/`` and VOC-sized JPEGs made by ``bench/make_images.py``. Sections:

- ``environment``: device, versions, date, the 16-bit dtype (bfloat16, or float16 where the GPU lacks it), and
  what ``--dtype auto`` (the product's default) resolves to there: on the device (where a recipe allows
  bfloat16) and per recipe, with the hardware that decided it;
- ``equality``: boxes on the device vs the CPU (LOST and TokenCut, float32), and 16-bit vs float32;
- ``throughput``: bare forward / ``lost-reg eval``'s pipeline / a one-image loop in img/s per model, 16-bit,
  batch 64, with the method's share of the pipeline's time;
- ``tokencut``: TokenCut's graphs solved batched on the device vs the reference's scipy solver, per image;
- ``service``: ``lost-reg serve`` at 1 / 16 / 64 clients sending one image per request: req/s, p50, p95;
- ``memory``: the peak device memory of each of the above; ``targets``: the README's, met or not.

Each section runs on its own: one whose package is missing here says so and the others go on, one that
fails records why. On out-of-memory a batch halves and the run goes on (``lost_reg.devices.BatchLimit``,
as the product does). Every section records device, versions and date. Writes ``DIR/report.md`` (the
README's tables, also printed), ``DIR/report.json`` and ``DIR/results.jsonl`` (one ``bench/results.jsonl``
line per section). On the CPU the device runs take a GPU's plan (``DevicePlan.of("cuda")``: whole-batch
calls, decoding workers, batched graphs), so ``--quick`` exercises the GPU's code paths.
"""

from __future__ import annotations

import argparse
import asyncio
import datetime as dt
import json
import os
import platform
import subprocess
import sys
import tempfile
import time
import traceback
from collections.abc import Callable
from concurrent.futures import ProcessPoolExecutor
from dataclasses import asdict, dataclass, field
from multiprocessing import get_context
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent
sys.path[:0] = [str(ROOT), str(HERE)]  # run from a checkout without installing: lost_reg, tests, bench scripts

MODELS = {"ViT-S/14": "vit_small_patch14_reg4_dinov2", "ViT-B/14": "vit_base_patch14_reg4_dinov2",
          "ViT-L/14": "vit_large_patch14_reg4_dinov2"}
PHOTOS = ROOT / "data" / "sample_voc" / "VOC2007" / "JPEGImages"
TARGETS = {"pipeline_over_bare_min": 0.85, "method_share_max": 0.05, "vits_img_s_min": 1000.0,
           "tokencut_speedup_min": 100.0, "service_req_s_min": 600.0, "service_p95_ms_max": 100.0}
"""The README's GPU targets (ViT-S/14-reg4 16-bit eval on an H100; the service at 64 clients)."""


@dataclass(frozen=True)
class Sizes:
    """How much each section does: the full check on a GPU, or ``--quick`` on a small CPU."""

    model_args: tuple[str, ...]
    """timm keywords for every model (``--quick``: one block)."""
    max_side: int | None
    """Longer side of the network input (None: the images' own, VOC-sized)."""
    images: int
    """Distinct generated VOC-sized JPEGs."""
    batch: int
    bare_s: float
    """Seconds of bare forward passes (whole passes over the images; at least one)."""
    pipeline_s: float
    """Seconds the pipeline is sized to run, from the bare forward's speed."""
    pipeline_max: int
    loop_s: float
    loop_max: int
    tokencut_images: int
    reference_images: int
    """Of the TokenCut images, those also solved by the reference's scipy solver."""
    service_levels: tuple[tuple[int, int, int], ...]
    """(clients, fewest requests, most requests) per level; the count aims at ``service_s`` seconds."""
    service_s: float


FULL = Sizes(model_args=(), max_side=None, images=256, batch=64, bare_s=2.0, pipeline_s=6.0, pipeline_max=16384,
             loop_s=3.0, loop_max=1024, tokencut_images=64, reference_images=8,
             service_levels=((1, 100, 400), (16, 400, 8000), (64, 1000, 12000)), service_s=6.0)
QUICK = Sizes(model_args=("depth=1",), max_side=224, images=8, batch=4, bare_s=0.5, pipeline_s=1.0, pipeline_max=16,
              loop_s=0.5, loop_max=4, tokencut_images=8, reference_images=2,
              service_levels=((1, 8, 8), (16, 32, 32), (64, 64, 64)), service_s=1.0)


@dataclass
class Section:
    """One section's outcome: its table, its figures, and what it ran on."""

    name: str
    title: str
    status: str = "ok"
    """``ok``, ``skipped`` (a package missing, or out of time) or ``failed``."""
    reason: str = ""
    table: str = ""
    figures: dict[str, Any] = field(default_factory=dict)
    env: dict[str, Any] = field(default_factory=dict)
    seconds: float = 0.0


@dataclass
class Context:
    """What every section shares."""

    args: argparse.Namespace
    sizes: Sizes
    device: Any
    """torch.device of the check."""
    plan: Any
    """The DevicePlan the device runs take (a GPU's, also on the CPU)."""
    half: str
    """bfloat16, or float16 where the device has no bfloat16."""
    env: dict[str, Any]
    images: list[Path]
    deadline: float
    done: dict[str, Section] = field(default_factory=dict)

    def model_kwargs(self) -> dict[str, Any]:
        from lost_reg.cli.options import pairs

        return pairs(list(self.sizes.model_args))

    def peak_mb(self) -> float | None:
        """Peak device memory since the last :meth:`reset_peak` (None off CUDA)."""
        import torch

        return torch.cuda.max_memory_allocated(self.device) / 2**20 if self.device.type == "cuda" else None

    def reset_peak(self) -> None:
        import torch

        if self.device.type == "cuda":
            torch.cuda.synchronize(self.device)
            torch.cuda.empty_cache()
            torch.cuda.reset_peak_memory_stats(self.device)

    def sync(self) -> None:
        from lost_reg.devices import synchronize

        synchronize(self.device)


def fmt(v: Any, spec: str = ".1f") -> str:
    return "—" if v is None else format(v, spec)


def markdown(header: list[str], rows: list[list[Any]]) -> str:
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    lines += ["| " + " | ".join(str(c) for c in row) + " |" for row in rows]
    return "\n".join(lines)


# --------------------------------------------------------------------------------------------- sections


def environment(ctx: Context) -> Section:
    """Device, versions, date and the choices the check made."""
    rows = [[k, v] for k, v in ctx.env.items()]
    return Section("environment", "Environment", table=markdown(["", "value"], rows), figures=dict(ctx.env))


def equality(ctx: Context) -> Section:
    """Boxes of the data/ photos (and their mirror images) on the device vs the CPU, float32, and 16-bit vs
    float32 on the device, for LOST and TokenCut (each with its recipe's options) on two feature kinds."""
    from lost_reg import Localizer, create_backbone
    from lost_reg.backbone import Backbone
    from lost_reg.images import decode_image
    from lost_reg.recipes import resolve_method

    photos = [decode_image(p) for p in sorted(PHOTOS.glob("*.jpg"))]
    images = photos + [im[:, ::-1].copy() for im in photos]
    name = MODELS["ViT-S/14"]
    cpu_model = create_backbone(name, "random", features="v", **ctx.model_kwargs()).model
    dev_model = create_backbone(name, "random", features="v", **ctx.model_kwargs()).model
    rows, figures = [], {}
    for kind in ("v", "k"):
        cpu_bb, dev_bb = Backbone(cpu_model, features=kind, name=name), Backbone(dev_model, features=kind, name=name)
        for method_name in ("lost", "tokencut"):
            method = resolve_method(cpu_bb.family, method_name)

            def boxes(bb: Backbone, device: str, dtype: str, plan: Any = None) -> list:
                return Localizer(bb, method, prep="resize", max_side=ctx.sizes.max_side, device=device, dtype=dtype,
                                 plan=plan).localize(images)

            cpu = boxes(cpu_bb, "cpu", "float32")
            dev = boxes(dev_bb, str(ctx.device), "float32", ctx.plan)
            half = boxes(dev_bb, str(ctx.device), ctx.half, ctx.plan)
            gaps = [getattr(d.result, "eigenvalues", (0.0, 1.0)) for d in cpu]
            degenerate = [g[1] - g[0] < 1e-6 for g in gaps]
            same = sum(a.box == b.box for a, b, dg in zip(dev, cpu, degenerate) if not dg)
            same_half = sum(a.box == b.box for a, b in zip(half, dev))
            close_half = sum(_iou(a.box, b.box) >= 0.5 for a, b in zip(half, dev))
            judged = len(images) - sum(degenerate)
            differing = [(i, g[1] - g[0]) for i, (a, b, g) in enumerate(zip(dev, cpu, gaps)) if a.box != b.box]
            figures[f"{method_name}/{kind}"] = {"images": len(images), "judged": judged, "identical_fp32": same,
                                                "near_degenerate": sum(degenerate), "identical_half": same_half,
                                                "iou50_half": close_half, "differing_with_gap": differing}
            rows.append([method.describe(), kind, len(images), f"{same}/{judged}", sum(degenerate),
                         ", ".join(f"{g:.1e}" for _, g in differing if g >= 1e-6) or "—",
                         f"{same_half}/{len(images)}", f"{close_half}/{len(images)}"])
    table = markdown(["method", "features", "images", f"{ctx.device.type} = CPU (float32)",
                      "near-degenerate (λ₃ − λ₂ < 1e-6)", "λ₃ − λ₂ of the others that differ",
                      f"{ctx.half} = float32", f"{ctx.half} IoU ≥ 0.5"], rows)
    return Section("equality", "Box equality: device vs CPU, 16-bit vs float32", table=table, figures=figures)


def _iou(a: tuple, b: tuple) -> float:
    ix = max(0, min(a[2], b[2]) - max(a[0], b[0]))
    iy = max(0, min(a[3], b[3]) - max(a[1], b[1]))
    inter = ix * iy
    union = (a[2] - a[0]) * (a[3] - a[1]) + (b[2] - b[0]) * (b[3] - b[1]) - inter
    return inter / union if union else 0.0


def throughput(ctx: Context) -> Section:
    """Per model: bare forward, the pipeline of ``lost-reg eval``, a one-image loop (img/s), 16-bit."""
    rows, figures = [], {}
    for label, name in MODELS.items():
        if time.monotonic() > ctx.deadline:
            figures[label] = {"skipped": "out of time"}
            rows.append([label, *["out of time"] + ["—"] * 8])
            continue
        r = _throughput_of(ctx, name)
        figures[label] = r
        rows.append([label, f"{r['params_m']:.0f} M", fmt(r["bare"]["img_s"]), fmt(r["pipeline"]["img_s"]),
                     f"{100 * r['pipeline_over_bare']:.0f} %", fmt(r["loop"]["img_s"]),
                     fmt(r["pipeline"]["method_ms"], ".2f"), f"{100 * r['pipeline']['method_share']:.1f} %",
                     " / ".join(fmt(r[m]["peak_mb"], ".0f") for m in ("bare", "pipeline", "loop"))])
    table = markdown(["model (4 registers, random)", "params", "bare img/s", "pipeline img/s", "pipeline / bare",
                      "one-image loop img/s", "method ms/img", "method share of pipeline",
                      "peak MB bare / pipeline / loop"], rows)
    return Section("throughput", f"Throughput ({ctx.half}, batch {ctx.sizes.batch})", table=table, figures=figures)


def _throughput_of(ctx: Context, name: str) -> dict[str, Any]:
    import torch

    from lost_reg import Localizer, create_backbone
    from lost_reg.datasets import Sample
    from lost_reg.devices import BatchLimit
    from lost_reg.devices import DTYPES
    from lost_reg.images import decode_image, normalize
    from lost_reg.loop import build_loader, inference_on_dataset, shape_order
    from lost_reg.pipeline import group_by_shape

    s = ctx.sizes
    backbone = create_backbone(name, "random", **ctx.model_kwargs())
    localizer = Localizer(backbone, prep="resize", max_side=s.max_side, device=str(ctx.device), dtype=ctx.half,
                          plan=ctx.plan)
    bb = localizer.backbone
    prepared = [localizer.prepare(decode_image(p)) for p in ctx.images]
    out: dict[str, Any] = {"params_m": sum(p.numel() for p in bb.parameters()) / 1e6,
                           "method": localizer.method.describe(), "grid_shapes": len(group_by_shape(prepared))}

    # bare: normalised inputs already on the device, one padded shape per call
    batches = []
    for indices in group_by_shape(prepared).values():
        for i in range(0, len(indices), s.batch):
            part = [prepared[j] for j in indices[i:i + s.batch]]
            x = torch.stack([p.pixels for p in part]).to(ctx.device)
            batches.append(normalize(x, [p.valid for p in part], bb.mean, bb.std))
    limit = BatchLimit(None, "bare forward")

    def forward(x: Any) -> None:
        with torch.autocast(ctx.device.type, dtype=DTYPES[ctx.half]):
            limit.run(len(x), lambda part: bb(x[part]))

    for x in batches:  # warm-up: every batch shape
        forward(x)
    ctx.reset_peak()
    done, start = 0, time.perf_counter()
    while done == 0 or time.perf_counter() - start < s.bare_s:
        for x in batches:
            forward(x)
            done += len(x)
        ctx.sync()
    seconds = time.perf_counter() - start
    out["bare"] = {"images": done, "seconds": seconds, "img_s": done / seconds, "peak_mb": ctx.peak_mb(),
                   "halvings": limit.halvings}
    del batches

    # pipeline: what lost-reg eval runs (decoding workers, shape buckets, the method), on n image entries
    n = max(len(prepared), min(s.pipeline_max, int(out["bare"]["img_s"] * s.pipeline_s)))
    samples = [Sample(str(i), ctx.images[i % len(ctx.images)], None, prepared[i % len(prepared)].size)
               for i in range(n)]
    for indices in group_by_shape(prepared).values():  # warm-up: one full batch per shape
        localizer.localize_prepared([prepared[indices[j % len(indices)]] for j in range(s.batch)])
    ctx.reset_peak()
    forward, discovery = localizer.timings.forward, localizer.timings.discovery  # after the warm-up
    start = time.perf_counter()
    loader = build_loader(localizer, samples, shape_order(samples, range(n), localizer), batch_size=s.batch)
    stats = inference_on_dataset(localizer.localize_prepared, loader, [])
    ctx.sync()
    wall = time.perf_counter() - start
    forward, discovery = localizer.timings.forward - forward, localizer.timings.discovery - discovery
    out["pipeline"] = {"images": stats.processed, "failed": stats.failed, "seconds": wall,
                       "img_s": stats.processed / wall, "workers": ctx.plan.workers,
                       "method_ms": 1000 * discovery / stats.processed,
                       "method_share": discovery / wall, "forward_ms": 1000 * forward / stats.processed,
                       "decode_wait_ms": 1000 * stats.wait / stats.processed, "peak_mb": ctx.peak_mb(),
                       "halvings": localizer.forward_limit.halvings + localizer.method_limit.halvings}
    out["pipeline_over_bare"] = out["pipeline"]["img_s"] / out["bare"]["img_s"]

    # one image at a time: decode, localise, next
    ctx.reset_peak()
    done, start = 0, time.perf_counter()
    while done < s.loop_max and (done == 0 or time.perf_counter() - start < s.loop_s):
        localizer.localize([decode_image(ctx.images[done % len(ctx.images)])])
        done += 1
    ctx.sync()
    seconds = time.perf_counter() - start
    out["loop"] = {"images": done, "seconds": seconds, "img_s": done / seconds, "peak_mb": ctx.peak_mb()}
    return out


def tokencut_speed(ctx: Context) -> Section:
    """TokenCut's graphs solved batched on the device vs the reference's dense scipy solver, same features."""
    import torch

    from lost_reg import Localizer, create_backbone
    from lost_reg.images import decode_image
    from lost_reg.methods import tokencut
    from lost_reg.pipeline import group_by_shape
    from tests.tokencut_reference import DEGENERATE

    s = ctx.sizes
    localizer = Localizer(create_backbone(MODELS["ViT-S/14"], "random", **ctx.model_kwargs()), prep="resize",
                          max_side=s.max_side, device=str(ctx.device), dtype=ctx.half, plan=ctx.plan)
    tau = localizer.method.tau
    prepared = [localizer.prepare(decode_image(p)) for p in ctx.images[: max(s.tokencut_images, 2)]]
    group = max(group_by_shape(prepared).values(), key=len)
    feats = localizer.forward_taps([prepared[i] for i in group], [(localizer.backbone.features, -1)])
    features, grid = next(iter(feats.values())).patches.float(), next(iter(feats.values())).grid

    def timed(batched: bool) -> tuple[float, list]:
        tokencut(features, grid, tau=tau, batched=batched)  # warm-up
        ctx.sync()
        runs, start = 0, time.perf_counter()
        while runs == 0 or time.perf_counter() - start < 0.5:
            results = tokencut(features, grid, tau=tau, batched=batched)
            ctx.sync()
            runs += 1
        return 1000 * (time.perf_counter() - start) / runs / len(features), results

    ctx.reset_peak()
    batched_ms, batched = timed(True)
    peak = ctx.peak_mb()
    alone_ms, _ = timed(False)
    n_ref = min(s.reference_images, len(features))
    runs = {label: _reference(features[:n_ref].double().cpu().numpy(), grid, tau, threads)
            for label, threads in (("BLAS threads: all", None), ("BLAS threads: 1", 1))}
    best = min(runs, key=lambda label: runs[label]["ms"])
    ref, degenerate = runs[best]["ms"], sum(g < DEGENERATE for g in runs[best]["gaps"])
    equal = [b.box == tuple(r) for b, r in zip(batched, runs[best]["boxes"])]
    same = sum(e for e, g in zip(equal, runs[best]["gaps"]) if g >= DEGENERATE)
    judged = n_ref - degenerate
    figures = {"images": len(features), "grid": grid, "tau": tau, "batched_ms": batched_ms, "alone_ms": alone_ms,
               "reference_ms": ref, "reference_runs": {k: v["ms"] for k, v in runs.items()},
               "reference_images": n_ref, "speedup": ref / batched_ms, "identical": same, "judged": judged,
               "near_degenerate": degenerate, "gaps": runs[best]["gaps"], "equal": equal, "peak_mb": peak,
               "torch_threads": torch.get_num_threads()}
    rows = [[f"batched on {ctx.device.type} ({len(features)} images of {grid[0]}×{grid[1]} patches)",
             f"{batched_ms:.2f}", f"{ref / batched_ms:.0f}×", fmt(peak, ".0f")],
            [f"one image at a time on {ctx.device.type}", f"{alone_ms:.2f}", f"{ref / alone_ms:.0f}×", "—"]]
    rows += [[f"reference scipy solver, CPU, {label} ({n_ref} images){' ← the faster' if label == best else ''}",
              f"{run['ms']:.1f}", f"{ref / run['ms']:.2f}×", "—"] for label, run in runs.items()]
    table = markdown(["TokenCut τ " + f"{tau:g}" + ", ViT-S/14 features", "ms/img", "speed-up", "peak MB"], rows)
    table += (f"\n\nBoxes batched = reference on {same}/{judged} images with λ₃ − λ₂ ≥ {DEGENERATE:g} "
              f"({degenerate} below). The reference runs in a process of its own (numpy and scipy, no torch).")
    return Section("tokencut", "TokenCut: batched on the device vs the reference solver", table=table,
                   figures=figures)


REFERENCE = """
import json, sys, time
import numpy as np
sys.path.insert(0, sys.argv[1])
from tests.tokencut_reference import reference_tokencut
features = np.load(sys.argv[2])
grid, tau = (int(sys.argv[3]), int(sys.argv[4])), float(sys.argv[5])
reference_tokencut(features[0], grid, tau=tau)  # LAPACK's first call
out = {"boxes": [], "gaps": [], "ms": 0.0}
for f in features:
    start = time.perf_counter()
    box, (l2, l3) = reference_tokencut(f, grid, tau=tau)
    out["ms"] += 1000 * (time.perf_counter() - start) / len(features)
    out["boxes"].append(box)
    out["gaps"].append(l3 - l2)
print(json.dumps(out))
"""
"""The reference solver timed in a process of its own: with torch's OpenMP threads in the same process
(and any other load) its BLAS threads can wait on each other many times longer than they compute."""


def _reference(features: Any, grid: tuple[int, int], tau: float, threads: int | None) -> dict:
    """The reference's boxes, gaps and ms per image on ``features`` [B, N, D] (float64), with its BLAS at
    ``threads`` threads (None: the library's default)."""
    import numpy as np

    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "features.npy"
        np.save(path, features)
        env = dict(os.environ)
        if threads:
            env.update({k: str(threads) for k in ("OPENBLAS_NUM_THREADS", "OMP_NUM_THREADS", "MKL_NUM_THREADS")})
        done = subprocess.run([sys.executable, "-c", REFERENCE, str(ROOT), str(path), str(grid[0]), str(grid[1]),
                               str(tau)], env=env, capture_output=True, text=True, timeout=600, check=True)
    return json.loads(done.stdout)


def service_load(ctx: Context) -> Section:
    """``lost-reg serve`` (ViT-S/14-reg4, 16-bit) at 1 / 16 / 64 clients, one image per request."""
    import importlib

    from bench_service import server

    importlib.import_module("service.app")  # every package the server needs, or ModuleNotFoundError here

    s = ctx.sizes
    ns = argparse.Namespace(backbone=MODELS["ViT-S/14"], weights="random", model_arg=list(s.model_args),
                            device=str(ctx.device), dtype=ctx.half, max_wait_ms=5.0, root=ROOT)
    extra = ["--max-side", str(s.max_side)] if s.max_side else []
    payloads = [p.read_bytes() for p in ctx.images[:8]]
    rows, figures = [], {}
    with server(ns, s.batch, extra) as (base, model, pid):
        rate = None
        for clients, fewest, most in s.service_levels:
            if time.monotonic() > ctx.deadline:
                rows.append([clients, "out of time", "—", "—", "—"])
                continue
            requests = fewest if rate is None else max(fewest, min(most, int(rate * s.service_s)))
            r = _load(base, payloads, requests, clients)
            rate = r["req_s"]
            r["server_gpu_mb"] = _gpu_mb_of(pid)
            figures[f"{clients} clients"] = {"requests": requests, **r}
            rows.append([clients, requests, f"{r['req_s']:.1f}", f"{r['p50_ms']:.1f} / {r['p95_ms']:.1f}",
                         fmt(r["server_gpu_mb"], ".0f")])
        figures["server"] = {"backbone": model["backbone"], "device": model["device"], "dtype": model["dtype"],
                             "max_batch": s.batch, "max_wait_ms": ns.max_wait_ms}
    table = markdown(["clients", "requests", "req/s", "p50 / p95 ms", "server GPU MB (nvidia-smi)"], rows)
    return Section("service", f"Service: lost-reg serve, one image per request (max batch {s.batch})", table=table,
                   figures=figures)


def _client(job: tuple[str, list[bytes], int, int, float]) -> dict:
    """One client process: ``requests`` single-image POSTs, ``clients`` at a time, from ``start_at``."""
    from bench_service import measure

    base, payloads, requests, clients, start_at = job
    return asyncio.run(measure(base, payloads, requests, clients, start_at))


def _load(base: str, payloads: list[bytes], requests: int, clients: int) -> dict:
    """req/s and p50/p95 ms of ``clients`` concurrent clients, spread over a few processes so that the
    clients' own Python is not what limits the rate."""
    from bench_service import summarize

    procs = max(1, min(clients, 8, (os.cpu_count() or 2) // 2))
    shares = [(requests // procs + (i < requests % procs), clients // procs + (i < clients % procs))
              for i in range(procs)]
    start_at = time.monotonic() + 2.0  # every process imported and warmed up by then
    jobs = [(base, payloads, n, c, start_at) for n, c in shares if n]
    with ProcessPoolExecutor(len(jobs), mp_context=get_context("spawn")) as pool:
        parts = list(pool.map(_client, jobs))
    latencies = [t for p in parts for t in p["latencies"]]
    wall = max(p["end"] for p in parts) - min(p["start"] for p in parts)
    return {**summarize(latencies, wall), "client_processes": len(jobs)}


def _gpu_mb_of(pid: int) -> float | None:
    """The device memory ``nvidia-smi`` says process ``pid`` holds (None without it)."""
    try:
        out = subprocess.run(["nvidia-smi", "--query-compute-apps=pid,used_memory", "--format=csv,noheader,nounits"],
                             capture_output=True, text=True, timeout=10).stdout
    except (OSError, subprocess.SubprocessError):
        return None
    for line in out.splitlines():
        p, _, mb = line.partition(",")
        if p.strip() == str(pid):
            return float(mb)
    return None


def memory(ctx: Context) -> Section:
    """The peak device memory of every measurement above."""
    rows = []
    thr = ctx.done.get("throughput")
    if thr and thr.status == "ok":
        for label, r in thr.figures.items():
            for mode in ("bare", "pipeline", "loop"):
                if mode in r:
                    rows.append([f"{label} {mode}", fmt(r[mode]["peak_mb"], ".0f"), r[mode].get("halvings", 0)])
    tc = ctx.done.get("tokencut")
    if tc and tc.status == "ok":
        rows.append([f"TokenCut batched, {tc.figures['images']} graphs", fmt(tc.figures["peak_mb"], ".0f"), 0])
    sv = ctx.done.get("service")
    if sv and sv.status == "ok":
        for level, r in sv.figures.items():
            if "req_s" in r:
                rows.append([f"service, {level} (whole server process)", fmt(r["server_gpu_mb"], ".0f"), "—"])
    note = "" if ctx.device.type == "cuda" else f"\n\nNo GPU here ({ctx.device}): device memory is not measured."
    return Section("memory", "Peak device memory", table=markdown(["measurement", "peak MB", "batch halvings"], rows)
                   + note, figures={"rows": rows})


def targets(ctx: Context) -> Section:
    """The README's GPU targets against this run (judged on CUDA only)."""
    t, rows, met = TARGETS, [], {}
    judge = ctx.device.type == "cuda"

    def add(what: str, value: str, ok: bool | None) -> None:
        met[what] = ok if judge else None
        rows.append([what, value, "not judged (no GPU)" if not judge else "met" if ok else "NOT met"])

    thr = ctx.done.get("throughput")
    if thr and thr.status == "ok":
        for label, r in thr.figures.items():
            if "pipeline" not in r:
                continue
            add(f"{label}: pipeline ≥ {t['pipeline_over_bare_min']:.0%} of the bare forward",
                f"{r['pipeline_over_bare']:.0%}", r["pipeline_over_bare"] >= t["pipeline_over_bare_min"])
            add(f"{label}: method ≤ {t['method_share_max']:.0%} of the pipeline's time",
                f"{r['pipeline']['method_share']:.1%}", r["pipeline"]["method_share"] <= t["method_share_max"])
        vits = thr.figures.get("ViT-S/14", {}).get("pipeline")
        if vits:
            add(f"ViT-S/14-reg4 {ctx.half} eval ≥ {t['vits_img_s_min']:.0f} img/s (H100)",
                f"{vits['img_s']:.0f} img/s on {ctx.env['device_name']}", vits["img_s"] >= t["vits_img_s_min"])
    tc = ctx.done.get("tokencut")
    if tc and tc.status == "ok":
        add(f"TokenCut batched ≥ {t['tokencut_speedup_min']:.0f}× the reference solver", f"{tc.figures['speedup']:.0f}×",
            tc.figures["speedup"] >= t["tokencut_speedup_min"])
    sv = ctx.done.get("service")
    r64 = sv.figures.get("64 clients") if sv and sv.status == "ok" else None
    if r64:
        add(f"service ≥ {t['service_req_s_min']:.0f} req/s at p95 ≤ {t['service_p95_ms_max']:.0f} ms, 64 clients",
            f"{r64['req_s']:.0f} req/s, p95 {r64['p95_ms']:.0f} ms",
            r64["req_s"] >= t["service_req_s_min"] and r64["p95_ms"] <= t["service_p95_ms_max"])
    return Section("targets", "Targets", table=markdown(["target", "measured", ""], rows), figures={"met": met})


SECTIONS: dict[str, Callable[[Context], Section]] = {
    "environment": environment, "equality": equality, "throughput": throughput, "tokencut": tokencut_speed,
    "service": service_load, "memory": memory, "targets": targets,
}


# ------------------------------------------------------------------------------------------------- main


def versions() -> dict[str, str]:
    import importlib

    out = {"python": platform.python_version()}
    for name in ("torch", "timm", "numpy", "scipy", "cv2", "PIL", "fastapi", "uvicorn", "httpx"):
        try:
            out[name] = str(importlib.import_module(name).__version__)
        except ImportError:
            out[name] = "not installed"
    return out


def describe(device: Any, quick: bool, half: str, plan: Any) -> dict[str, Any]:
    import torch

    from lost_reg.devices import bf16_hardware, resolve_dtype
    from lost_reg.recipes import RECIPES
    from lost_reg.recipes import resolve_dtype as recipe_dtype

    if device.type == "cuda":
        props = torch.cuda.get_device_properties(device)
        name, extra = props.name, {"gpu_memory_gb": round(props.total_memory / 2**30, 1),
                                   "compute_capability": f"{props.major}.{props.minor}",
                                   "cuda": torch.version.cuda, "cudnn": torch.backends.cudnn.version(),
                                   "tf32_matmul": torch.backends.cuda.matmul.allow_tf32,
                                   "tf32_cudnn": torch.backends.cudnn.allow_tf32}
    else:
        name, extra = platform.processor() or platform.machine(), {}
        try:
            name = next(line.split(":", 1)[1].strip() for line in Path("/proc/cpuinfo").read_text().splitlines()
                        if line.startswith("model name"))
        except (OSError, StopIteration):
            pass
    try:
        commit = subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=ROOT, capture_output=True, text=True,
                                timeout=10).stdout.strip() or "unknown (no git here)"
    except (OSError, subprocess.SubprocessError):
        commit = "unknown (no git here)"
    return {"date": dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds"), "device": str(device),
            "device_name": name, **extra, "cpu_cores": os.cpu_count(), "torch_threads": torch.get_num_threads(),
            "half_dtype": half, "native_bf16": bf16_hardware(device),
            "auto_dtype": {"device": resolve_dtype(device), **{f: recipe_dtype(f, device) for f in RECIPES}},
            "plan": asdict(plan) | {"of": "cuda" if device.type == "cpu" else device.type},
            "quick": quick, "commit": commit, **versions()}


def run_section(fn: Callable[[Context], Section], name: str, ctx: Context) -> Section:
    """One section, whatever happens in it: a missing package or the end of the time budget skips it,
    an error fails it; the next one runs either way."""
    start = time.monotonic()
    if start > ctx.deadline and name not in ("memory", "targets"):
        section = Section(name, name, status="skipped", reason="out of time (--budget-s)")
    else:
        try:
            section = fn(ctx)
        except ModuleNotFoundError as e:
            section = Section(name, name, status="skipped", reason=f"package {e.name!r} is not installed here")
        except Exception as e:  # noqa: BLE001  (a failed section must not stop the others)
            section = Section(name, name, status="failed", reason=f"{type(e).__name__}: {e}",
                              figures={"traceback": traceback.format_exc()})
    section.env = {k: ctx.env[k] for k in ("date", "device", "device_name", "torch", "timm", "python", "half_dtype",
                                           "auto_dtype", "quick", "commit")}
    section.env["date"] = dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds")
    section.seconds = time.monotonic() - start
    return section


def render(sections: list[Section], ctx: Context) -> str:
    e = ctx.env
    lines = [f"## Device check: {e['device_name']} ({e['device']}), {e['date'][:10]}",
             f"torch {e['torch']}, timm {e['timm']}, Python {e['python']}; {e['half_dtype']}; "
             f"--dtype auto: {e['auto_dtype']['device']} where a recipe allows bfloat16, per recipe "
             f"{', '.join(f'{k} {v}' for k, v in e['auto_dtype'].items() if k != 'device')} "
             f"(native bfloat16: {e['native_bf16'] or 'no'}); "
             f"{'--quick' if e['quick'] else 'full sizes'}; commit {e['commit']}"]
    for s in sections:
        lines += ["", f"### {s.title}", f"*{s.status}, {s.seconds:.0f} s, {s.env['date']}*"
                  + (f": {s.reason}" if s.reason else "")]
        if s.table:
            lines += ["", s.table]
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0], epilog=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--device", default="cuda", help="cuda, cuda:N or cpu")
    ap.add_argument("--out", type=Path, required=True, help="folder for report.md, report.json, results.jsonl")
    ap.add_argument("--quick", action="store_true", help="small sizes (a 2-core CPU in under 5 minutes)")
    ap.add_argument("--dtype", default=None, help="16-bit dtype (default: bfloat16, or float16 where unsupported)")
    ap.add_argument("--sections", default=",".join(SECTIONS), help=f"comma-separated subset of {','.join(SECTIONS)}")
    ap.add_argument("--budget-s", type=float, default=300, help="sections not started by then are skipped")
    args = ap.parse_args(argv)
    started = time.monotonic()
    names = [n for n in args.sections.split(",") if n]
    if unknown := [n for n in names if n not in SECTIONS]:
        ap.error(f"unknown section(s) {', '.join(unknown)}: use {', '.join(SECTIONS)}")

    import torch

    from lost_reg.devices import DevicePlan, half_dtype
    from lost_reg.devices import resolve_device
    from make_images import make_images

    device = resolve_device(args.device)
    plan = DevicePlan.of("cuda" if device.type == "cpu" else device)
    half = args.dtype or half_dtype(device)
    sizes = QUICK if args.quick else FULL
    args.out.mkdir(parents=True, exist_ok=True)
    sections = []
    with tempfile.TemporaryDirectory(prefix="lost_reg_device_check_") as tmp:  # the images stay out of DIR
        folder = make_images(Path(tmp), sizes.images)
        images = sorted(folder.glob("*.jpg"))
        ctx = Context(args, sizes, device, plan, half, describe(device, args.quick, half, plan), images,
                      deadline=started + args.budget_s - (20 if args.quick else 40))
        torch.manual_seed(0)
        for name in names:
            section = run_section(SECTIONS[name], name, ctx)
            ctx.done[name] = section
            sections.append(section)
            print(f"{name}: {section.status} in {section.seconds:.0f} s"
                  f"{': ' + section.reason if section.reason else ''}", flush=True)
    report = render(sections, ctx)
    (args.out / "report.md").write_text(report)
    (args.out / "report.json").write_text(json.dumps({"env": ctx.env, "sections": [asdict(s) for s in sections],
                                                      "seconds": time.monotonic() - started}, indent=1, default=str))
    with (args.out / "results.jsonl").open("w") as f:
        for s in sections:
            f.write(json.dumps({"bench": f"device_check/{s.name}", **s.env, "status": s.status, "reason": s.reason,
                                "figures": s.figures, "seconds": round(s.seconds, 1)}, default=str) + "\n")
    print(report)
    print(f"{time.monotonic() - started:.0f} s; written to {args.out}/report.md, report.json, results.jsonl")
    return 1 if any(s.status == "failed" for s in sections) else 0


if __name__ == "__main__":
    sys.exit(main())
