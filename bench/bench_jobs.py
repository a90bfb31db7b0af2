"""Every job on the CPU, ``--dtype float32`` against ``--dtype bfloat16``, side by side in one run.

Each job runs as its own ``lost-reg`` process (model loading included: what a user waits for), once per
precision per round, the two alternating (float32 first in odd rounds, bfloat16 first in even ones), and
ONE table is printed with the medians over the rounds:

- ``eval``: ``lost-reg eval`` on the VOC devkit (default: voc12_dev, 50 images); boxes identical between
  the precisions, CorLoc of each;
- ``discover``: ``lost-reg discover`` on the same JPEGs with ``--max-objects 1`` and ``5``; boxes identical;
- ``sweep``: ``lost-reg sweep`` of :data:`SWEEP` (14 settings, one forward per image), per setting;
- ``serve``: a real ``lost-reg serve`` (``bench/bench_service.py``'s server and clients), single-image
  requests of the devkit's JPEGs at 1, 4 and 16 concurrent clients: req/s, p50 / p95 latency;
- ``eval --compile`` (``--compile``): the eval job in bfloat16 with the backbone compiled, first in each round,
  once with an empty compile cache (a first run on a machine: inductor compiles) and once with the cache the
  first round's empty-cache run left.

Times are wall seconds of the whole process, from its start to its exit. The machine may be shared:
before each run the benchmark waits (up to ``--wait-s``) until the other processes use under
``--idle`` of the CPUs, and it records the share of CPU time other processes took during each run
(``others``, from ``/proc/stat`` less this benchmark's children), so a disturbed run can be seen.
Appends one JSON record (date, machine, versions, every run) to ``bench/results.jsonl``. Run it alone:

    flock /tmp/lostreg-heavy.lock python bench/bench_jobs.py --rounds 3 --compile
"""

from __future__ import annotations

import argparse
import asyncio
import datetime as dt
import json
import os
import platform
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent
sys.path[:0] = [str(ROOT), str(HERE)]  # run from a checkout without installing

CLI = [sys.executable, "-c", "import sys; from lost_reg.cli import main; sys.exit(main(sys.argv[1:]))"]
SWEEP = ["--method", "tokencut,lost", "--tau", "0:0.7:0.1", "--affinity", "cos:0:0.5:0.1"]
"""8 TokenCut τ and 6 LOST graphs on the recipe's features (the last block's values, resized): 14 settings."""
DTYPES = ("float32", "bfloat16")
CLIENTS = (1, 4, 16)


def parse_args() -> argparse.Namespace:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0], epilog=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--voc-root", type=Path, default=ROOT.parent / "shared" / "data" / "voc12_dev")
    ap.add_argument("--dataset", default="voc12")
    ap.add_argument("--backbone", default="dinov2_vits14_imgfocus")
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--images", type=int, default=0,
                    help="eval, discover, sweep: the devkit's first N images only (default: all)")
    ap.add_argument("--jobs", default="eval,discover,sweep,serve", help="comma-separated subset")
    ap.add_argument("--compile", action="store_true", help="also eval --compile in bfloat16, cold and warm cache")
    ap.add_argument("--requests", type=int, default=32, help="serve: requests per client count")
    ap.add_argument("--idle", type=float, default=0.1, help="start a run once others use under this share of CPUs")
    ap.add_argument("--wait-s", type=float, default=900, help="longest wait for that before each run")
    ap.add_argument("--results", type=Path, default=HERE / "results.jsonl")
    ap.add_argument("--no-record", action="store_true")
    ap.add_argument("--note", default="")
    return ap.parse_args()


def busy_jiffies() -> tuple[int, int]:
    """(busy, total) CPU time of the whole machine so far, in clock ticks (``/proc/stat``)."""
    user, nice, system, idle, iowait, irq, softirq, steal = map(int, Path("/proc/stat").read_text().split()[1:9])
    busy = user + nice + system + irq + softirq + steal
    return busy, busy + idle + iowait


def children_s() -> float:
    """CPU seconds of this process's finished children (the runs)."""
    import resource

    r = resource.getrusage(resource.RUSAGE_CHILDREN)
    return r.ru_utime + r.ru_stime


class Meter:
    """The CPU share other processes take: waits for a quiet machine, measures what others took during a run."""

    def __init__(self, idle: float, wait_s: float) -> None:
        self.idle, self.wait_s, self.log = idle, wait_s, []

    def others(self, start: tuple[int, int, float], end: tuple[int, int, float]) -> float:
        """Share of all CPUs others used between two readings of (busy, total, our children's seconds)."""
        hz = os.sysconf("SC_CLK_TCK")
        busy, total = end[0] - start[0], end[1] - start[1]
        return max(0.0, busy - (end[2] - start[2]) * hz) / total if total else 0.0

    def reading(self) -> tuple[int, int, float]:
        return (*busy_jiffies(), children_s() + self_s())

    def wait_quiet(self) -> float:
        """Seconds waited until others used under ``idle`` of the CPUs for 2 s."""
        start = time.monotonic()
        while time.monotonic() - start < self.wait_s:
            a = self.reading()
            time.sleep(2)
            if self.others(a, self.reading()) < self.idle:
                break
        return time.monotonic() - start


def self_s() -> float:
    """CPU seconds of this process itself (the service clients run in it)."""
    t = os.times()
    return t.user + t.system


def timed(command: list[str], env: dict[str, str] | None = None) -> float:
    """Wall seconds of ``command`` (its output discarded); a failure stops the benchmark with its output."""
    start = time.perf_counter()
    proc = subprocess.run(command, cwd=ROOT, capture_output=True, text=True, env={**os.environ, **(env or {})})
    wall = time.perf_counter() - start
    if proc.returncode:
        sys.exit(f"{' '.join(command[3:])} failed ({proc.returncode}):\n{proc.stdout[-3000:]}{proc.stderr[-3000:]}")
    return wall


def read_jsonl(path: Path) -> dict[str, list]:
    """image id (or file) → boxes, from predictions.jsonl or discover's JSON lines."""
    out = {}
    for line in path.read_text().splitlines():
        r = json.loads(line)
        out[r.get("image_id") or r["file"]] = r["box"] if "box" in r else [o["box"] for o in r["objects"]]
    return out


def same(a: dict, b: dict) -> str:
    return f"{sum(a[k] == b.get(k) for k in a)}/{len(a)}"


class Jobs:
    """One run of each job at one precision; what it measured, and the boxes it gave."""

    def __init__(self, args: argparse.Namespace, tmp: Path) -> None:
        self.args, self.tmp = args, tmp
        self.common = ["--backbone", args.backbone, "--device", "cpu"]
        self.data = ["--dataset", args.dataset, "--root", str(args.voc_root),
                     *(["--limit", str(args.images)] if args.images else [])]
        devkit = args.voc_root / f"VOC20{args.dataset[3:]}"
        ids = (devkit / "ImageSets" / "Main" / "trainval.txt").read_text().split()
        self.jpegs = [devkit / "JPEGImages" / f"{i}.jpg" for i in ids[:args.images or None]]
        self.runs = 0

    def out(self, name: str) -> Path:
        """A fresh output path for each run: no run reads or resumes another's."""
        self.runs += 1
        return self.tmp / f"{self.runs}-{name}"

    def eval(self, dtype: str, extra: tuple[str, ...] = (), env: dict[str, str] | None = None) -> dict:
        out = self.out(f"eval-{dtype}{'-'.join(extra)}")
        wall = timed([*CLI, "eval", *self.data, *self.common, "--dtype", dtype, "--quiet", "--out", str(out), *extra],
                     env)
        summary = json.loads((out / "summary.json").read_text())
        return {"wall_s": wall, "dtype": summary["backbone"]["dtype"], "corloc": summary["corloc"],
                "found": summary["found"], "total": summary["total"], "timings": summary["timings"],
                "boxes": read_jsonl(out / "predictions.jsonl")}

    def discover(self, dtype: str, objects: int) -> dict:
        out = self.out(f"discover{objects}-{dtype}.jsonl")
        wall = timed([*CLI, "discover", *map(str, self.jpegs), *self.common, "--dtype", dtype, "--quiet",
                      "--format", "jsonl", "--max-objects", str(objects), "--out", str(out)])
        boxes = read_jsonl(out)
        return {"wall_s": wall, "boxes": boxes, "objects": sum(len(b) for b in boxes.values())}

    def sweep(self, dtype: str) -> dict:
        out = self.out(f"sweep-{dtype}")
        wall = timed([*CLI, "sweep", *self.data, *self.common, "--dtype", dtype, "--quiet", "--out", str(out),
                      *SWEEP])
        summary = json.loads((out / "summary.json").read_text())
        boxes = {f"{d.name}/{k}": v for d in sorted((out / "settings").iterdir())
                 for k, v in read_jsonl(d / "predictions.jsonl").items()}
        return {"wall_s": wall, "settings": summary["settings"], "images": summary["images"],
                "dtype": summary["dtype"], "timings": summary["timings"], "boxes": boxes}

    def serve(self, dtype: str) -> dict:
        from bench_service import measure, server

        payloads = [p.read_bytes() for p in self.jpegs]
        spec = argparse.Namespace(root=ROOT, backbone=self.args.backbone, weights=None, model_arg=[], device="cpu",
                                  dtype=dtype, max_wait_ms=5.0)
        out, start = {}, time.perf_counter()
        with server(spec, 16) as (base, model, _):
            out["dtype"] = model["dtype"]
            for c in CLIENTS:
                m = asyncio.run(measure(base, payloads, self.args.requests, c))
                out[c] = {k: m[k] for k in ("req_s", "p50_ms", "p95_ms")}
        out["wall_s"] = time.perf_counter() - start
        return out


def median(runs: list[dict], *keys) -> float:
    values = []
    for r in runs:
        for k in keys:
            r = r[k]
        values.append(r)
    return statistics.median(values)


def table(runs: dict[str, dict[str, list[dict]]]) -> str:
    """The README's table: medians over the rounds, float32 | bfloat16 | ratio | boxes identical."""
    lines = ["| job | `--dtype float32` | `--dtype bfloat16` | speed-up | boxes identical |", "|---|---|---|---|---|"]

    def row(name: str, a: float, b: float, unit: str, boxes: str, higher_better: bool = False) -> None:
        ratio = a / b if not higher_better else b / a
        lines.append(f"| {name} | {a:.1f} {unit} | {b:.1f} {unit} | **{ratio:.2f}×** | {boxes} |")

    if "eval" in runs:
        f, a = runs["eval"]["float32"], runs["eval"]["bfloat16"]
        n = f[0]["total"]
        corloc = " / ".join(f"{100 * r[0]['corloc']:.1f} %" for r in (f, a))
        row(f"`eval`, {n} images (CorLoc {corloc})", median(f, "wall_s"), median(a, "wall_s"), "s",
            same(f[0]["boxes"], a[0]["boxes"]))
        for key, what in (("compile_cold", "empty compile cache"), ("compile_warm", "compile cache warm")):
            if key in runs:
                c = runs[key]["bfloat16"]
                lines.append(f"| `eval --compile`, {n} images, {what} | — | {median(c, 'wall_s'):.1f} s | "
                             f"{median(f, 'wall_s') / median(c, 'wall_s'):.2f}× float32, "
                             f"{median(a, 'wall_s') / median(c, 'wall_s'):.2f}× bfloat16 | "
                             f"{same(a[0]['boxes'], c[0]['boxes'])} of bfloat16's |")
    for objects in (1, 5):
        key = f"discover{objects}"
        if key in runs:
            f, a = runs[key]["float32"], runs[key]["bfloat16"]
            pairs = f"{same(f[0]['boxes'], a[0]['boxes'])} images ({f[0]['objects']} / {a[0]['objects']} boxes)"
            row(f"`discover --max-objects {objects}`, {len(f[0]['boxes'])} images", median(f, "wall_s"),
                median(a, "wall_s"), "s", pairs)
    if "sweep" in runs:
        f, a = runs["sweep"]["float32"], runs["sweep"]["bfloat16"]
        s, n = f[0]["settings"], f[0]["images"]
        row(f"`sweep`, {s} settings × {n} images", median(f, "wall_s"), median(a, "wall_s"), "s",
            f"{same(f[0]['boxes'], a[0]['boxes'])} (setting × image)")
        lines.append(f"| … per setting | {median(f, 'wall_s') / s:.2f} s | {median(a, 'wall_s') / s:.2f} s | "
                     f"{median(f, 'wall_s') / median(a, 'wall_s'):.2f}× | |")
    if "serve" in runs:
        f, a = runs["serve"]["float32"], runs["serve"]["bfloat16"]
        for c in CLIENTS:
            fr, ar = median(f, c, "req_s"), median(a, c, "req_s")
            lines.append(f"| `serve`, {c} client{'s' if c > 1 else ''}: req/s, p50 / p95 ms | {fr:.2f}, "
                         f"{median(f, c, 'p50_ms'):.0f} / {median(f, c, 'p95_ms'):.0f} | {ar:.2f}, "
                         f"{median(a, c, 'p50_ms'):.0f} / {median(a, c, 'p95_ms'):.0f} | **{ar / fr:.2f}×** | |")
    return "\n".join(lines)


def environment() -> dict:
    import timm
    import torch

    from lost_reg.devices import bf16_hardware, resolve_dtype
    from lost_reg.recipes import RECIPES
    from lost_reg.recipes import resolve_dtype as recipe_dtype

    cpu = torch.device("cpu")
    try:
        name = next(line.split(":", 1)[1].strip() for line in Path("/proc/cpuinfo").read_text().splitlines()
                    if line.startswith("model name"))
    except (OSError, StopIteration):
        name = platform.processor()
    return {"date": dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds"), "cpu": name,
            "cores": os.cpu_count(), "torch": torch.__version__, "timm": timm.__version__,
            "python": platform.python_version(), "native_bf16": bf16_hardware(cpu),
            "auto_dtype": {"device": resolve_dtype(cpu), **{f: recipe_dtype(f, cpu) for f in RECIPES}}}


def main() -> int:
    args = parse_args()
    env = environment()
    jobs = [j for j in args.jobs.split(",") if j]
    plan: list[tuple[str, Callable[[str], dict]]] = []
    with tempfile.TemporaryDirectory(prefix="lost_reg_jobs_") as tmp:
        run = Jobs(args, Path(tmp))
        for job in jobs:
            if job == "discover":
                plan += [("discover1", lambda d: run.discover(d, 1)), ("discover5", lambda d: run.discover(d, 5))]
            else:
                plan.append((job, getattr(run, job)))
        runs: dict[str, dict[str, list[dict]]] = {}
        load = [os.getloadavg()]
        print(f"{env['cpu']}, {env['cores']} cores, torch {env['torch']}; native bfloat16: {env['native_bf16']}; "
              f"--dtype auto runs {env['auto_dtype']}; {args.rounds} rounds", flush=True)
        meter = Meter(args.idle, args.wait_s)

        def record_run(r: int, name: str, dtype: str, fn: Callable[[], dict]) -> None:
            waited = meter.wait_quiet()
            before = meter.reading()
            result = fn()
            result["others"], result["waited_s"] = meter.others(before, meter.reading()), waited
            runs.setdefault(name, {}).setdefault(dtype, []).append(result)
            print(f"round {r + 1}: {name} {dtype}: {result.get('wall_s', 0):.1f} s; others took "
                  f"{100 * result['others']:.0f} % of the CPUs (waited {waited:.0f} s before)", flush=True)

        for r in range(args.rounds):
            if args.compile:  # first in the round: a compiler failure stops the benchmark early
                warm = Path(tmp) / "inductor"  # the cache round 1's cold run leaves (inductor's own, per machine)
                cold = warm if r == 0 else Path(tmp) / f"inductor-{r}"
                for key, cache in (("compile_cold", cold), ("compile_warm", warm)):
                    record_run(r, key, "bfloat16", lambda: run.eval("bfloat16", ("--compile",),
                                                                 {"TORCHINDUCTOR_CACHE_DIR": str(cache)}))
            for name, fn in plan:
                for dtype in DTYPES if r % 2 == 0 else DTYPES[::-1]:
                    record_run(r, name, dtype, lambda: fn(dtype))
            load.append(os.getloadavg())
    text = table(runs)
    others = [r["others"] for job in runs.values() for rs in job.values() for r in rs]
    print(f"\n{env['date'][:10]}, {env['cpu']} ({env['cores']} cores), torch {env['torch']}, timm {env['timm']}, "
          f"Python {env['python']}; {args.backbone}; medians of {args.rounds} rounds; other processes took "
          f"{100 * statistics.median(others):.0f} % of the CPUs during the median run, {100 * max(others):.0f} % at "
          f"most\n")
    print(text)
    if not args.no_record:
        drop = ("boxes",)
        record = {"bench": "jobs", **env, "rounds": args.rounds, "backbone": args.backbone,
                  "voc_root": str(args.voc_root), "sweep": SWEEP, "requests": args.requests, "load": load,
                  "note": args.note, "table": text,
                  "runs": {j: {d: [{k: v for k, v in r.items() if k not in drop} for r in rs] for d, rs in x.items()}
                           for j, x in runs.items()}}
        with args.results.open("a") as f:
            f.write(json.dumps(record, default=str) + "\n")
        print(f"\nappended to {args.results}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
