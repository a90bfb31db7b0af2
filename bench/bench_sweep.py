"""What a sweep costs: one forward per image plus N × the post-processing, with and without the cache.

Runs ``lost-reg sweep`` twice on the same settings (default: 100, LOST and TokenCut on the last
layer's keys and values) over a VOC devkit: first with an empty ``--cache`` (the backbone runs and
fills it), then again (every feature read from the cache, the backbone never loaded). Prints wall
time, forward time, method time per setting and image, and appends a JSON record to
bench/results.jsonl.

    python bench/bench_sweep.py --voc-root ../shared/data/voc12_dev
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import subprocess
import sys
import tempfile
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
SETTINGS = ["--features", "k,v", "--method", "lost,tokencut", "--affinity", "raw,centered,cosine-mean,cos:0:0.9:0.1",
            "--k-patches", "50,100,200", "--tau", "0.05:0.95:0.1", "--prep", "resize", "--layers=-1"]
"""(13 graphs × 3 k + 10 τ) × 2 features = 98 settings, one forward per image."""


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--voc-root", type=Path, default=HERE.parent.parent / "shared" / "data" / "voc12_dev")
    ap.add_argument("--year", choices=("2007", "2012"), default="2012")
    ap.add_argument("--backbone", default="dinov2_vits14_imgfocus")
    ap.add_argument("--limit", type=int, default=None)
    ap.add_argument("--results", type=Path, default=HERE / "results.jsonl")
    ap.add_argument("--no-record", action="store_true")
    args = ap.parse_args()

    record = {"bench": "sweep", "date": dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds"),
              "backbone": args.backbone, "voc_root": str(args.voc_root), "settings_args": SETTINGS, "runs": {}}
    with tempfile.TemporaryDirectory(prefix="lost_reg_sweep_bench_") as tmp:
        for run in ("cold", "cached"):
            out = Path(tmp) / run
            command = [sys.executable, "-c", "import sys; from lost_reg.cli import main; sys.exit(main(sys.argv[1:]))",
                       "sweep", "--dataset", f"voc{args.year[2:]}",
                       "--root", str(args.voc_root), "--backbone", args.backbone, "--device", "cpu", "--quiet",
                       "--cache", str(Path(tmp) / "cache"), "--out", str(out), *SETTINGS,
                       *(["--limit", str(args.limit)] if args.limit else [])]
            start = time.perf_counter()
            subprocess.run(command, check=True, stdout=subprocess.DEVNULL)
            wall = time.perf_counter() - start
            summary = json.loads((out / "summary.json").read_text())
            n, settings, t = summary["images"], summary["settings"], summary["timings"]
            record["runs"][run] = {"process_wall_s": wall, **t, "images": n, "settings": settings,
                                   "from_cache": summary["images_from_cache"]}
            print(f"{run:>7}: {settings} settings × {n} images in {wall:.1f} s (process), "
                  f"forward {t['forward_s']:.1f} s, "
                  f"methods {t['methods_s']:.1f} s = {1000 * t['methods_s'] / (settings * n):.2f} ms per setting "
                  f"and image; {summary['images_from_cache']} images from the cache")
    if not args.no_record:
        with args.results.open("a") as f:
            f.write(json.dumps(record) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
