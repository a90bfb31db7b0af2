"""The method step on the CPU, quiet and with another busy torch process, before and after giving the graph
code its own small thread count (``lost_reg.devices.GRAPH_THREADS``), side by side in one run.

The features of every image are computed once (the backbone's recipe; offline DINOv2 ViT-S/14 on
voc12_dev by default). Then the method runs on each image's features, quiet and while a second process
runs a ViT-S/14 forward loop at torch's default thread count (another ``lost-reg eval``, say), round by
round *before* (the graph code at torch's own thread count, a plan with ``graph_threads=0``) and *after* (the
library's default). The other process runs throughout and is stopped (SIGSTOP) for the quiet rounds, so
quiet and busy rounds interleave and the machine's own load weighs on both alike. Prints ms per image
(median over rounds of each round's mean) and the busy/quiet ratios; the target is busy ≤ 2× quiet.
Appends a JSON record to bench/results.jsonl.

    python bench/bench_contention.py                          # offline ViT-S/14, voc12_dev, TokenCut
    python bench/bench_contention.py --method lost --rounds 7
"""

from __future__ import annotations

import argparse
import dataclasses
import datetime as dt
import json
import os
import platform
import signal
import statistics
import subprocess
import sys
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parent))  # run from a checkout without installing

BUSY = """
import sys, torch
sys.path.insert(0, {root!r})
from lost_reg import create_backbone
bb = create_backbone("vit_small_patch14_reg4_dinov2", "random", features="v")
x = torch.randn(4, 3, 378, 504)
bb(x)
print("ready", flush=True)
while True:
    bb(x)
"""
"""The other process: a ViT-S/14-reg4 forward loop on VOC-sized inputs, at torch's default thread count."""


def main() -> int:
    import torch

    from lost_reg import Localizer, create_backbone
    from lost_reg.datasets import VOCDataset
    from lost_reg.devices import GRAPH_THREADS, DevicePlan, using
    from lost_reg.images import decode_image

    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--backbone", default="dinov2_vits14_imgfocus")
    ap.add_argument("--weights", default=None)
    ap.add_argument("--method", default="auto", help="auto (the recipe's), lost or tokencut")
    ap.add_argument("--voc-root", type=Path, default=HERE.parent.parent / "shared" / "data" / "voc12_dev")
    ap.add_argument("--year", default="2012")
    ap.add_argument("--limit", type=int, default=None)
    ap.add_argument("--rounds", type=int, default=8, help="rounds of each condition and variant (interleaved)")
    ap.add_argument("--results", type=Path, default=HERE / "results.jsonl")
    ap.add_argument("--no-record", action="store_true")
    args = ap.parse_args()

    from lost_reg.models import resolve_source
    from lost_reg.recipes import resolve

    source = resolve_source(args.backbone, args.weights)
    setting = resolve(source.family, args.method, {}, "auto", None, "auto")
    bb = create_backbone(source, features=setting.features, layer=setting.layer)
    localizer = Localizer(bb, setting.method, prep=setting.prep, device="cpu")
    samples = list(VOCDataset(args.voc_root, args.year))[: args.limit]
    features, tap = [], (bb.features, bb.layer)
    for s in samples:
        f = localizer.forward_taps([localizer.prepare(decode_image(s.path))], [tap])[tap]
        features.append((f.patches, f.grid))
    method = localizer.method
    variants = {"before": 0, "after": GRAPH_THREADS}

    def one_round(threads: int) -> tuple[float, float]:
        """Wall and CPU time (this process's, all its threads) per image, in ms."""
        with using(dataclasses.replace(DevicePlan.of("cpu"), graph_threads=threads)):
            start, start_cpu = time.perf_counter(), time.process_time()
            for patches, grid in features:
                method(patches, grid)
            n = len(features)
            return 1000 * (time.perf_counter() - start) / n, 1000 * (time.process_time() - start_cpu) / n

    for threads in variants.values():  # warm-up
        one_round(threads)
    # the other process runs throughout, stopped (SIGSTOP) for the quiet rounds: quiet and busy rounds
    # alternate, so a change in the machine's own load during the run weighs on both alike
    busy = subprocess.Popen([sys.executable, "-c", BUSY.format(root=str(HERE.parent))], stdout=subprocess.PIPE,
                            text=True)
    ms: dict[str, dict[str, list[float]]] = {c: {name: [] for name in variants} for c in ("quiet", "busy")}
    cpu: dict[str, dict[str, list[float]]] = {c: {name: [] for name in variants} for c in ("quiet", "busy")}
    load = []
    try:
        assert busy.stdout is not None and busy.stdout.readline().strip() == "ready"
        for _ in range(args.rounds):
            for condition in ("quiet", "busy"):
                busy.send_signal(signal.SIGSTOP if condition == "quiet" else signal.SIGCONT)
                time.sleep(0.5)
                for name, threads in variants.items():
                    wall, used = one_round(threads)
                    ms[condition][name].append(wall)
                    cpu[condition][name].append(used)
            load.append(os.getloadavg()[0])
    finally:
        busy.kill()
        busy.wait()

    median = {c: {v: statistics.median(x) for v, x in by.items()} for c, by in ms.items()}
    print(f"{method.describe()} on {len(features)} images of {args.voc_root} ({args.backbone}, {bb.features}, "
          f"{localizer.prep}); CPU: {os.cpu_count()} cores, torch threads {torch.get_num_threads()}, "
          f"graph threads before: torch's ({torch.get_num_threads()}), after: {GRAPH_THREADS}; {args.rounds} rounds")
    cpu_ms = {c: {v: statistics.median(x) for v, x in by.items()} for c, by in cpu.items()}
    print("| graph code | quiet ms/img | busy ms/img | busy / quiet | busy / quiet before | CPU ms/img quiet / busy |"
          "\n|---|---|---|---|---|---|")
    for name in variants:
        q, b = median["quiet"][name], median["busy"][name]
        print(f"| {name} | {q:.1f} | {b:.1f} | {b / q:.2f}× | {b / median['quiet']['before']:.2f}× | "
              f"{cpu_ms['quiet'][name]:.1f} / {cpu_ms['busy'][name]:.1f} |")
    print("rounds (ms/img): " + json.dumps({c: {v: [round(t, 1) for t in x] for v, x in by.items()}
                                            for c, by in ms.items()}))
    print(f"1-minute load average after each round: {', '.join(f'{v:.1f}' for v in load)}")
    ok = median["busy"]["after"] <= 2 * median["quiet"]["after"]
    print(f"target (after: busy <= 2x quiet): {'met' if ok else 'NOT met'}")
    if not args.no_record:
        record = {"bench": "contention", "date": dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds"),
                  "device": "cpu", "cpu_count": os.cpu_count(), "torch": torch.__version__,
                  "python": platform.python_version(), "torch_threads": torch.get_num_threads(),
                  "config": {"backbone": args.backbone, "method": method.describe(), "features": bb.features,
                             "prep": localizer.prep, "voc_root": str(args.voc_root), "n": len(features),
                             "rounds": args.rounds, "graph_threads": variants},
                  "ms_per_image": ms, "median": median, "cpu_ms_per_image": cpu_ms, "loadavg": load,
                  "target_met": ok}
        with args.results.open("a") as f:
            f.write(json.dumps(record) + "\n")
        print(f"recorded in {args.results}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
