"""Benchmark the inference pipeline (backbone + discovery method) against its upper bound and a naive loop.

Three modes, each in a fresh subprocess (so peak memory is per mode and nothing is shared):

``bare``      the upper bound: a batched backbone forward on images already decoded, padded,
              normalised and on the device; nothing else (on the CPU split into calls of
              ``devices.CPU_CHUNK`` images, as ``Localizer`` does, since that is faster there). Also times the
              method (``--method``, LOST by default) alone on the resulting features, with both
              connected-component back ends (scipy, torch).
``pipeline``  what ``lost-reg eval`` runs: ``loop.inference_on_dataset`` (decoding in the decoding
              workers, shape buckets, pinned memory on CUDA) + the method + a sink writing JSON lines.
``naive``     one image at a time in one process: decode, ``Localizer.localize([image])``, write.

Warm-up (one batch per padded shape, run before the clock starts) is excluded; on CUDA every
timed section ends with a synchronisation. Each run appends one JSON record (date, device,
versions, CPU count, load average, every figure) to ``bench/results.jsonl``.

    python bench/bench_pipeline.py --n 96 --device cpu                     # random ViT-S/14-reg4
    python bench/bench_pipeline.py --n 16 --backbone dinov2_vits14_imgfocus # real DINOv2 weights
    python bench/bench_pipeline.py --n 5000 --device cuda --dtype bfloat16 --batch-size 64 --workers 12

Images come from ``--image-dir`` (any folder of images, first N in sorted order) or are generated
with ``bench/make_images.py`` (VOC-sized 500×375 / 375×500 JPEGs) into ``--gen-dir``.
"""

from __future__ import annotations

import argparse
import dataclasses
import datetime as dt
import functools
import json
import os
import platform
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parent))  # run from a checkout without installing

MODES = ("bare", "pipeline", "naive")
SAMPLER = None  # the child's MemorySampler
TARGETS = {"pipeline_over_bare_min": 0.85, "discovery_share_of_wall_max": 0.05, "images_per_s_min": 1000.0}
"""The README's: the pipeline ≥ 85 % of the bare forward and the method ≤ 5 % of its time (any device);
ViT-S/14-reg4 in 16-bit ≥ 1,000 img/s on an H100 (judged on CUDA only)."""


# ----------------------------------------------------------------------------------- arguments


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    from lost_reg.cli.options import add_options
    from lost_reg.config import LocalizerOptions

    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                formatter_class=argparse.RawDescriptionHelpFormatter, epilog=__doc__)
    add_options(p, LocalizerOptions)
    p.set_defaults(backbone="vit_small_patch14_reg4_dinov2", device="auto")
    b = p.add_argument_group("benchmark")
    b.add_argument("--n", type=int, default=96, help="number of images")
    b.add_argument("--image-dir", type=Path, default=None, help="folder of images (default: generate them)")
    b.add_argument("--gen-dir", type=Path, default=Path(tempfile.gettempdir()) / "lost_reg_bench",
                   help="where generated images go (VOC layout; reused across runs)")
    b.add_argument("--batch-size", type=int, default=16)
    b.add_argument("--workers", type=int, default=None, help="decoding workers (default: as lost-reg eval, the device plan's)")
    b.add_argument("--modes", default=",".join(MODES), help=f"comma-separated subset of {','.join(MODES)}")
    b.add_argument("--threads", type=int, default=None, help="torch.set_num_threads in every mode")
    b.add_argument("--discovery-batches", type=int, default=4, help="bare mode: batches the method alone is timed on")
    b.add_argument("--results", type=Path, default=HERE / "results.jsonl", help="JSON-lines record of runs")
    b.add_argument("--no-record", action="store_true", help="do not append to --results")
    b.add_argument("--note", default="", help="free text stored with the record")
    b.add_argument("--child", choices=MODES, help=argparse.SUPPRESS)
    b.add_argument("--child-out", type=Path, help=argparse.SUPPRESS)
    args = p.parse_args(argv)
    if args.weights is None:  # offline by default: random weights, or the packaged offline ones
        from lost_reg.models import OFFLINE_MODELS

        args.weights = None if args.backbone in OFFLINE_MODELS else "random"
    elif args.weights == "pretrained":
        args.weights = None
    modes = [m for m in args.modes.split(",") if m]
    if not modes or any(m not in MODES for m in modes):
        p.error(f"--modes takes a comma-separated subset of {','.join(MODES)}")
    args.mode_list = modes
    args.components = args.components or "scipy"  # every method's default
    return args


def image_paths(args: argparse.Namespace) -> list[Path]:
    """The first ``n`` images of ``--image-dir`` (sorted), generating them when no folder is given."""
    from lost_reg.datasets import IMAGE_EXTENSIONS

    if args.image_dir is None:
        from make_images import make_images

        folder = make_images(args.gen_dir, args.n)
    else:
        folder = args.image_dir
    paths = sorted(p for p in folder.rglob("*") if p.suffix.lower() in IMAGE_EXTENSIONS and p.is_file())
    if len(paths) < args.n:
        sys.exit(f"{folder} holds {len(paths)} images, fewer than --n {args.n}")
    return paths[: args.n]


# -------------------------------------------------------------------------------------- children


def _sync(device) -> None:
    import torch

    if device.type == "cuda":
        torch.cuda.synchronize(device)


def _setup(args: argparse.Namespace):
    """The localizer every mode uses: same seed, so random weights are the same in each process."""
    import torch

    from lost_reg.cli.options import from_args
    from lost_reg.config import LocalizerOptions
    from lost_reg.pipeline import build_localizer, plan_run

    if args.threads:
        torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    return build_localizer(plan_run(from_args(LocalizerOptions, args)))  # --compile: warm-up compiles, before the clock


def _decode_all(localizer, paths: list[Path]):
    from lost_reg.images import decode_image

    return [localizer.prepare(decode_image(p)) for p in paths]


def _warm_up(localizer, prepared, batch_size: int) -> None:
    """One full batch (or what there is) of every padded shape, untimed."""
    from lost_reg.pipeline import group_by_shape

    for indices in group_by_shape(prepared).values():
        batch = [prepared[i] for i in indices[:batch_size]]
        while len(batch) < batch_size:
            batch = (batch * 2)[:batch_size]
        localizer.localize_prepared(batch)
    _sync(localizer.device)


def _status_kb(pid: int | str, field: str, file: str = "status") -> int:
    """A ``VmRSS``/``VmHWM`` line of /proc/PID/status (or ``Pss`` of smaps_rollup) in KiB; 0 if unreadable."""
    try:
        for line in Path(f"/proc/{pid}/{file}").read_text().splitlines():
            if line.startswith(field + ":"):
                return int(line.split()[1])
    except (OSError, ValueError, IndexError):
        pass
    return 0


def _child_pids(pid: int) -> list[int]:
    out = []
    try:
        for task in Path(f"/proc/{pid}/task").iterdir():
            for c in (task / "children").read_text().split():
                out += [int(c), *_child_pids(int(c))]
    except OSError:
        pass
    return out


class MemorySampler:
    """Peak RSS of this process (VmHWM, exact) and of its children (the decoding processes), sampled.

    ``ru_maxrss`` would not do: Linux carries it over ``execve``, so a child reports at least its
    parent's size. Forked workers share the parent's pages (torch, the model) copy-on-write, so
    their figure is the largest sum of PSS (shared pages split between the processes mapping
    them) seen every 50 ms, plus the largest single worker's own RSS peak (shared pages counted).
    """

    def __init__(self) -> None:
        import threading

        self.children_total_kb = 0
        self.children_max_kb = 0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()

    def _run(self) -> None:
        me = os.getpid()
        while not self._stop.wait(0.05):
            kids = _child_pids(me)
            self.children_total_kb = max(self.children_total_kb,
                                         sum(_status_kb(k, "Pss", "smaps_rollup") for k in kids))
            self.children_max_kb = max([self.children_max_kb, *(_status_kb(k, "VmHWM") for k in kids)])

    def result(self, device) -> dict:
        import torch

        self._stop.set()
        self._thread.join()
        hwm = _status_kb("self", "VmHWM") or resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
        out = {"peak_rss_mb": hwm / 1024, "peak_pss_workers_total_mb": self.children_total_kb / 1024,
               "peak_rss_worker_max_mb": self.children_max_kb / 1024}
        if device.type == "cuda":
            out["peak_gpu_mb"] = torch.cuda.max_memory_allocated(device) / 2**20
        return out


def run_bare(args: argparse.Namespace, paths: list[Path]) -> dict:
    import torch

    from lost_reg.images import normalize
    from lost_reg.devices import CPU_CHUNK
    from lost_reg.devices import DTYPES
    from lost_reg.pipeline import group_by_shape

    localizer = _setup(args)
    device, backbone = localizer.device, localizer.backbone
    prepared = _decode_all(localizer, paths)
    batches = []  # normalised inputs on the device, one padded shape per batch
    for indices in group_by_shape(prepared).values():
        for s in range(0, len(indices), args.batch_size):
            chunk = [prepared[i] for i in indices[s: s + args.batch_size]]
            pixels = torch.stack([p.pixels for p in chunk]).to(device)
            batches.append(normalize(pixels, [p.valid for p in chunk], backbone.mean, backbone.std))
    del prepared
    amp = dict(device_type=device.type, dtype=DTYPES[localizer.dtype], enabled=localizer.dtype != "float32")

    chunk = CPU_CHUNK if device.type == "cpu" else None

    def forward(x):  # as Localizer._forward: on the CPU in chunks of CPU_CHUNK images (faster there)
        with torch.autocast(**amp):
            if chunk and len(x) > chunk:
                return [backbone(c) for c in x.split(chunk)]
            return backbone(x)

    for x in {tuple(x.shape): x for x in batches}.values():  # warm-up: every batch shape
        forward(x)
    _sync(device)
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)
    start = time.perf_counter()
    for x in batches:
        forward(x)
    _sync(device)
    seconds = time.perf_counter() - start
    n = sum(len(x) for x in batches)

    alone_s = {"scipy": 0.0, "torch": 0.0}
    alone_images = 0
    identical = True
    for x in batches[: args.discovery_batches]:
        with torch.autocast(**amp):
            features = backbone(x)
        _sync(device)
        results = {}
        for backend in alone_s:
            method = dataclasses.replace(localizer.method, components=backend)
            run = functools.partial(method, features.patches, features.grid)
            run()  # warm-up
            _sync(device)
            t = time.perf_counter()
            results[backend] = run()
            _sync(device)
            alone_s[backend] += time.perf_counter() - t
        identical &= all(a.box == b.box and (a.mask == b.mask).all() for a, b in zip(*results.values()))
        alone_images += len(x)
    return {
        "images": n, "seconds": seconds, "images_per_s": n / seconds, "forward_ms": 1000 * seconds / n,
        "batches": len(batches), "cpu_chunk": chunk,
        "discovery_alone_ms": {k: 1000 * v / max(alone_images, 1) for k, v in alone_s.items()},
        "discovery_alone_images": alone_images, "components_identical": bool(identical),
        **SAMPLER.result(device),
    }


def _sink(path: Path):
    f = path.open("w")

    def write(image_id: str, det) -> None:
        f.write(json.dumps({"image_id": image_id, "box": list(det.box), "seed": list(det.seed),
                            "width": det.width, "height": det.height}) + "\n")

    return f, write


def run_pipeline(args: argparse.Namespace, paths: list[Path], out: Path) -> dict:
    import torch

    from lost_reg.datasets import ImageFolder
    from lost_reg.loop import DatasetEvaluator, build_loader, inference_on_dataset, shape_order

    class Sink(DatasetEvaluator):
        def process(self, batch, outputs) -> None:
            for sample, det in zip(batch.samples, outputs):
                write(sample.image_id, det)

    localizer = _setup(args)
    device = localizer.device
    warm = _decode_all(localizer, _warm_up_paths(paths))
    _warm_up(localizer, warm, args.batch_size)
    del warm
    dataset = ImageFolder([str(p) for p in paths])
    order = shape_order(dataset, range(len(dataset)), localizer)
    f, write = _sink(out)
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)
    forward, discovery = localizer.timings.forward, localizer.timings.discovery  # after the warm-up
    start = time.perf_counter()
    with f:
        loader = build_loader(localizer, dataset, order, batch_size=args.batch_size, workers=args.workers)
        stats = inference_on_dataset(localizer.localize_prepared, loader, [Sink()])
    _sync(device)
    wall = time.perf_counter() - start
    n = stats.processed
    forward, discovery = localizer.timings.forward - forward, localizer.timings.discovery - discovery
    return {
        "images": n, "failed": stats.failed, "seconds": wall, "images_per_s": n / wall,
        "ms": {"decode_wait": 1000 * stats.wait / n, "forward": 1000 * forward / n,
               "discovery": 1000 * discovery / n, "write": 1000 * stats.process / n,
               "other": 1000 * (wall - stats.wait - forward - discovery - stats.process) / n,
               "total": 1000 * wall / n},
        **SAMPLER.result(device),
    }


def run_naive(args: argparse.Namespace, paths: list[Path], out: Path) -> dict:
    import torch

    from lost_reg.images import decode_image

    localizer = _setup(args)
    device = localizer.device
    warm = _warm_up_paths(paths)
    for p in warm:
        localizer.localize([decode_image(p)])
    _sync(device)
    f, write = _sink(out)
    decode = forward = disc = other = w_t = 0.0
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)
    start = time.perf_counter()
    with f:
        for p in paths:
            t0 = time.perf_counter()
            image = decode_image(p, name=p.name)
            t1 = time.perf_counter()
            f0, l0 = localizer.timings.forward, localizer.timings.discovery
            (det,) = localizer.localize([image])
            t2 = time.perf_counter()
            write(p.name, det)
            t3 = time.perf_counter()
            decode += t1 - t0
            forward += localizer.timings.forward - f0
            disc += localizer.timings.discovery - l0
            other += (t2 - t1) - (localizer.timings.forward - f0) - (localizer.timings.discovery - l0)
            w_t += t3 - t2
    _sync(device)
    wall = time.perf_counter() - start
    n = len(paths)
    return {
        "images": n, "seconds": wall, "images_per_s": n / wall,
        "ms": {"decode_wait": 1000 * decode / n, "forward": 1000 * forward / n, "discovery": 1000 * disc / n,
               "write": 1000 * w_t / n, "other": 1000 * other / n, "total": 1000 * wall / n},
        **SAMPLER.result(device),
    }


def _warm_up_paths(paths: list[Path]) -> list[Path]:
    """Up to two images of each size among the first 64 (decoding them costs little)."""
    import cv2

    seen: dict[tuple, list[Path]] = {}
    for p in paths[:64]:
        im = cv2.imread(str(p), cv2.IMREAD_REDUCED_GRAYSCALE_8)
        key = None if im is None else im.shape
        seen.setdefault(key, [])
        if len(seen[key]) < 2:
            seen[key].append(p)
    return [p for ps in seen.values() for p in ps]


def child_main(args: argparse.Namespace) -> int:
    global SAMPLER
    SAMPLER = MemorySampler()
    paths = image_paths(args)
    out = args.child_out
    if args.child == "bare":
        result = run_bare(args, paths)
    elif args.child == "pipeline":
        result = run_pipeline(args, paths, out.with_suffix(".jsonl"))
    else:
        result = run_naive(args, paths, out.with_suffix(".jsonl"))
    out.write_text(json.dumps(result))
    return 0


# ---------------------------------------------------------------------------------------- parent


def _device_name(device: str) -> str:
    import torch

    if device.startswith("cuda") and torch.cuda.is_available():
        return torch.cuda.get_device_name(torch.device(device))
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def _boxes(path: Path) -> dict[str, tuple]:
    if not path.is_file():
        return {}
    out = {}
    for line in path.read_text().splitlines():
        r = json.loads(line)
        out[Path(r["image_id"]).name] = tuple(r["box"])
    return out


def fmt(v, spec=".1f") -> str:
    return "—" if v is None else format(v, spec)


def report(args, results: dict, device: str, agree: dict | None) -> tuple[str, dict]:
    bare, pipe, naive = results.get("bare"), results.get("pipeline"), results.get("naive")
    lines = [f"{'mode':<9} {'img/s':>8} {'decode/wait':>11} {'forward':>9} {'method':>7} {'write':>7} "
             f"{'other':>7} {'total':>9}  {'RSS MB':>7} {'workers MB':>10} {'GPU MB':>7}",
             "" + "-" * 104]
    for name in MODES:
        r = results.get(name)
        if r is None:
            continue
        ms = r.get("ms", {"forward": r.get("forward_ms"), "total": r.get("forward_ms")})
        lines.append(
            f"{name:<9} {r['images_per_s']:>8.2f} {fmt(ms.get('decode_wait'), '.2f'):>11} {fmt(ms.get('forward')):>9} "
            f"{fmt(ms.get('discovery'), '.2f'):>7} {fmt(ms.get('write'), '.3f'):>7} {fmt(ms.get('other'), '.2f'):>7} "
            f"{fmt(ms.get('total')):>9}  {r['peak_rss_mb']:>7.0f} {r['peak_pss_workers_total_mb']:>10.0f} "
            f"{fmt(r.get('peak_gpu_mb'), '.0f'):>7}")
    lines.append("(ms per image; RSS MB = peak resident memory of the mode's main process; workers MB = peak sum of the "
                 "decoding processes' PSS (pages shared with the main process split between them))")
    ratios = {}
    if pipe and bare:
        ratios["pipeline_over_bare"] = pipe["images_per_s"] / bare["images_per_s"]
    if pipe and naive:
        ratios["pipeline_over_naive"] = pipe["images_per_s"] / naive["images_per_s"]
    if pipe:
        ratios["pipeline_discovery_share_of_forward"] = pipe["ms"]["discovery"] / pipe["ms"]["forward"]
        ratios["pipeline_discovery_share_of_wall"] = pipe["ms"]["discovery"] / pipe["ms"]["total"]
    if naive:
        ratios["naive_discovery_share_of_forward"] = naive["ms"]["discovery"] / naive["ms"]["forward"]
    if bare:
        la = bare["discovery_alone_ms"]
        ratios["bare_discovery_alone_share_of_forward"] = la[args.components] / bare["forward_ms"]
        lines.append(f"{args.method} alone on the bare features ({bare['discovery_alone_images']} images): "
                     f"scipy components {la['scipy']:.2f} ms/img, torch flood fill {la['torch']:.2f} ms/img "
                     f"(identical boxes and masks: {bare['components_identical']})")
    for k, v in ratios.items():
        lines.append(f"{k:<36} {v:.3f}")
    if agree:
        lines.append(f"boxes identical pipeline vs naive: {agree['same']}/{agree['total']}")

    kind = "cuda" if device.startswith("cuda") else "cpu"
    t, checks = TARGETS, {}
    if pipe:
        checks["method <= 5% of the pipeline's time"] = ratios["pipeline_discovery_share_of_wall"] <= t[
            "discovery_share_of_wall_max"]
    if "pipeline_over_bare" in ratios:
        checks["pipeline >= 85% of the bare forward"] = ratios["pipeline_over_bare"] >= t["pipeline_over_bare_min"]
    if kind == "cuda" and pipe:
        checks["gpu: pipeline >= 1000 img/s (ViT-S/14-reg4, 16-bit, H100)"] = pipe["images_per_s"] >= t[
            "images_per_s_min"]
    lines.append("targets: " + "; ".join(f"{k}: {'met' if v else 'NOT met'}" for k, v in checks.items()))
    if kind != "cuda":
        lines.append("GPU target (>= 1000 img/s): not measured (no CUDA device in this run)")
    return "\n".join(lines), {"ratios": ratios, "targets": {k: bool(v) for k, v in checks.items()}}


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    if args.child:
        return child_main(args)
    import timm
    import torch

    from lost_reg.devices import DevicePlan, resolve_device, resolve_dtype
    from lost_reg.methods import all_option_specs

    device = str(resolve_device(args.device))
    args.dtype = resolve_dtype(resolve_device(device), args.dtype)  # auto: what runs, in every mode
    paths = image_paths(args)  # generate once, before the children
    argv = list(sys.argv[1:] if argv is None else argv)
    if "--device" not in argv:
        argv += ["--device", device]
    argv += ["--dtype", args.dtype]
    if args.workers is None:  # as lost-reg eval
        args.workers = DevicePlan.of(device).workers
        argv += ["--workers", str(args.workers)]
    load_before = os.getloadavg()
    results: dict[str, dict] = {}
    with tempfile.TemporaryDirectory(prefix="lost_reg_bench_") as tmp:
        for mode in args.mode_list:
            out = Path(tmp) / f"{mode}.json"
            cmd = [sys.executable, str(Path(__file__).resolve()), *argv, "--child", mode, "--child-out", str(out)]
            t = time.perf_counter()
            proc = subprocess.run(cmd)
            if proc.returncode != 0:
                print(f"{mode}: child failed (exit {proc.returncode})", file=sys.stderr)
                return proc.returncode
            results[mode] = json.loads(out.read_text())
            results[mode]["process_s"] = time.perf_counter() - t
            print(f"{mode}: {results[mode]['images_per_s']:.2f} img/s ({results[mode]['process_s']:.0f} s with set-up)",
                  flush=True)
        agree = None
        a, b = _boxes(Path(tmp) / "pipeline.jsonl"), _boxes(Path(tmp) / "naive.jsonl")
        if a and b:
            agree = {"same": sum(a[k] == b.get(k) for k in a), "total": len(a)}
    load_after = os.getloadavg()
    text, summary = report(args, results, device, agree)
    header = (f"{args.backbone} (weights {args.weights or 'pretrained/packaged'}) on {_device_name(device)} [{device}], "
              f"{args.dtype}, n={len(paths)}, batch {args.batch_size}, workers {args.workers}, "
              f"torch threads {args.threads or torch.get_num_threads()}, components {args.components}"
              f"{', compiled' if args.compile else ''}; load avg {load_before[0]:.1f} -> {load_after[0]:.1f}")
    print(header)
    print(text)
    if not args.no_record:
        record = {
            "date": dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds"),
            "device": device, "device_name": _device_name(device),
            "torch": torch.__version__, "timm": timm.__version__, "python": platform.python_version(),
            "cpu_count": os.cpu_count(), "torch_threads": args.threads or torch.get_num_threads(),
            "loadavg_before": load_before, "loadavg_after": load_after,
            "fused_attn": _fused_attn(),
            "config": {"backbone": args.backbone, "weights": args.weights, "model_args": args.model_args,
                       "dtype": args.dtype, "batch_size": args.batch_size, "workers": args.workers, "n": len(paths),
                       "image_dir": str(paths[0].parent), "method": args.method,
                       **{k: getattr(args, k) for k in all_option_specs() if getattr(args, k) is not None},
                       "max_side": args.max_side, "compile": args.compile, "components": args.components},
            "modes": results, "boxes_identical_pipeline_vs_naive": agree, **summary, "note": args.note,
        }
        args.results.parent.mkdir(parents=True, exist_ok=True)
        with args.results.open("a") as f:
            f.write(json.dumps(record) + "\n")
        print(f"recorded in {args.results}")
    return 0


def _fused_attn() -> bool:
    from timm.layers import use_fused_attn

    return bool(use_fused_attn())


if __name__ == "__main__":
    sys.exit(main())
