"""What one cell of ``lost-reg table`` costs: the backbone forward per image (ViT-S/14 and ViT-L/14, one feature map
or the 12 of the ``best`` grid from the same pass) and LOST's step per setting and image, batched as the sweep runs it.

Random weights (speed does not depend on them), VOC-sized inputs (500×375 zero-padded to 504×378: a 27×36 grid,
as ``paper`` and ``best`` prepare them). The README turns these figures and the device check's throughput target
into an estimate of a cell's time on a GPU. Appends a JSON record to bench/results.jsonl.

    python bench/bench_table.py --device cpu
    python bench/bench_table.py --device cuda --dtype bfloat16 --batch 64
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import os
import platform
import statistics
import sys
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parent))  # run from a checkout


def main() -> int:
    import timm
    import torch

    from lost_reg import create_backbone
    from lost_reg.devices import synchronize
    from lost_reg.images import prepare
    from lost_reg.methods import Lost
    from lost_reg.pipeline import Localizer
    from lost_reg.table.protocols import BEST_FEATURES, BEST_LAYERS, K_PATCHES

    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--dtype", default="float32")
    ap.add_argument("--batch", type=int, default=4)
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--models", default="vit_small_patch14_dinov2,vit_large_patch14_dinov2")
    ap.add_argument("--results", type=Path, default=HERE / "results.jsonl")
    ap.add_argument("--no-record", action="store_true")
    args = ap.parse_args()

    g = torch.Generator().manual_seed(0)
    image = torch.randint(0, 256, (375, 500, 3), dtype=torch.uint8, generator=g).numpy()
    taps = {"one map (k, last block)": [("k", -1)],
            "best's 12 maps (k/q/v × last 4 blocks)": [(f, layer) for f in BEST_FEATURES for layer in BEST_LAYERS]}
    rows, record = [], {"date": dt.datetime.now().isoformat(timespec="seconds"), "bench": "bench_table",
                        "device": args.device, "dtype": args.dtype, "batch": args.batch, "torch": torch.__version__,
                        "timm": timm.__version__, "python": platform.python_version(), "cpus": os.cpu_count(),
                        "loadavg": os.getloadavg(), "figures": {}}
    for name in args.models.split(","):
        bb = create_backbone(name, "random")
        loc = Localizer(bb, prep="pad", device=args.device, dtype=args.dtype)
        batch = [prepare(image, bb.patch_size, None, "pad")] * args.batch
        for what, tap_list in taps.items():
            loc.forward_taps(batch, tap_list)  # warm-up
            times = []
            for _ in range(args.rounds):
                t = time.perf_counter()
                feats = loc.forward_taps(batch, tap_list)
                synchronize(loc.device)
                times.append((time.perf_counter() - t) / args.batch)
            ms = 1000 * statistics.median(times)
            rows.append((name, what, f"{ms:.1f} ms/img"))
            record["figures"][f"{name} forward, {what}"] = ms
        patches, grid = feats[("k", -1)].patches.float(), feats[("k", -1)].grid
        lost = Lost(K_PATCHES, "cos:0.3")
        lost(patches, grid)
        times = []
        for _ in range(args.rounds):
            t = time.perf_counter()
            lost(patches, grid)
            synchronize(loc.device)
            times.append((time.perf_counter() - t) / args.batch)
        ms = 1000 * statistics.median(times)
        rows.append((name, f"LOST cos:T, one setting ({grid[0]}×{grid[1]} patches, {patches.shape[-1]}-d)",
                     f"{ms:.2f} ms/img"))
        record["figures"][f"{name} LOST per setting"] = ms
    width = max(len(r[1]) for r in rows)
    print(f"{args.device}, {args.dtype}, batch {args.batch}, median of {args.rounds}, load {os.getloadavg()[0]:.1f}")
    for name, what, value in rows:
        print(f"{name:28} {what:{width}}  {value}")
    if not args.no_record:
        with args.results.open("a") as f:
            f.write(json.dumps(record) + "\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
