"""Time each discovery step against the backbone forward, on the same real features.

For every image of a VOC devkit (default: ``../shared/data/voc12_dev``) the backbone runs once;
then LOST (the backbone recipe's), TokenCut with each solver, and the TokenCut reference's dense scipy solver (the
faithful statement in tests/tokencut_reference.py) run on the same features. Prints ms per
image (mean and median), each step's share of the forward, the speed-up over the reference, and
how often the boxes agree with the reference (on images whose λ₂ is not degenerate). Appends a
JSON record to bench/results.jsonl.

    python bench/bench_methods.py --features tokens --tau 0.2
    python bench/bench_methods.py --voc-root ../shared/data/voc12_dev --device cuda
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import platform
import statistics
import sys
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parent))  # run from a checkout: lost_reg and tests importable


def main() -> int:
    import torch

    from lost_reg import TokenCut, create_backbone
    from lost_reg.datasets import VOCDataset
    from lost_reg.images import decode_image, normalize, prepare
    from lost_reg.devices import resolve_device
    from lost_reg.recipes import resolve_method
    from tests.tokencut_reference import DEGENERATE, reference_tokencut

    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--backbone", default="dinov2_vits14_imgfocus")
    ap.add_argument("--weights", default=None)
    ap.add_argument("--features", default="k")
    ap.add_argument("--layer", type=int, default=-1)
    ap.add_argument("--tau", type=float, default=0.2)
    ap.add_argument("--voc-root", type=Path, default=HERE.parent.parent / "shared" / "data" / "voc12_dev")
    ap.add_argument("--year", default="2012")
    ap.add_argument("--limit", type=int, default=None)
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--results", type=Path, default=HERE / "results.jsonl")
    ap.add_argument("--no-record", action="store_true")
    args = ap.parse_args()

    device = resolve_device(args.device)
    bb = create_backbone(args.backbone, args.weights, features=args.features, layer=args.layer).to(device)
    samples = list(VOCDataset(args.voc_root, args.year))[: args.limit]
    steps = {"lost": resolve_method(bb.family, "lost"), "tokencut_lanczos": TokenCut(tau=args.tau),
             "tokencut_eigh": TokenCut(tau=args.tau, solver="eigh")}

    def sync() -> None:
        if device.type == "cuda":
            torch.cuda.synchronize(device)

    ms: dict[str, list[float]] = {name: [] for name in ("forward", *steps, "reference_scipy")}
    agree = {name: 0 for name in steps if name.startswith("tokencut")}
    judged = degenerate = 0
    for i, s in enumerate(samples):
        p = prepare(decode_image(s.path), bb.patch_size)
        x = normalize(p.pixels[None].to(device), [p.valid], bb.mean, bb.std)
        if i == 0:  # warm-up
            for step in steps.values():
                step(bb(x).patches, bb(x).grid)
        t = time.perf_counter()
        feats = bb(x)
        sync()
        ms["forward"].append(1000 * (time.perf_counter() - t))
        boxes = {}
        for name, step in steps.items():
            t = time.perf_counter()
            (r,) = step(feats.patches, feats.grid)
            sync()
            ms[name].append(1000 * (time.perf_counter() - t))
            boxes[name] = r.box
        t = time.perf_counter()
        want, (l2, l3) = reference_tokencut(feats.patches[0].double().cpu().numpy(), feats.grid, tau=args.tau)
        ms["reference_scipy"].append(1000 * (time.perf_counter() - t))
        if l3 - l2 < DEGENERATE:
            degenerate += 1
            continue
        judged += 1
        for name in agree:
            agree[name] += boxes[name] == want

    n = len(samples)
    forward = statistics.mean(ms["forward"])
    reference = statistics.mean(ms["reference_scipy"])
    print(f"{args.backbone}, {args.features} of layer {args.layer}, tau {args.tau}, {n} images of {args.voc_root}, "
          f"{device}, torch threads {torch.get_num_threads()}")
    print("| step | mean ms | median ms | share of forward | reference / step |\n|---|---|---|---|---|")
    for name, values in ms.items():
        mean = statistics.mean(values)
        print(f"| {name} | {mean:.1f} | {statistics.median(values):.1f} | {100 * mean / forward:.1f} % | "
              f"{reference / mean:.1f}× |")
    print(f"boxes identical to the reference on {judged} images with a unique cut ({degenerate} degenerate): "
          + ", ".join(f"{k} {v}/{judged}" for k, v in agree.items()))
    if not args.no_record:
        record = {"bench": "methods", "date": dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds"),
                  "device": str(device), "torch": torch.__version__, "python": platform.python_version(),
                  "torch_threads": torch.get_num_threads(),
                  "config": {"backbone": args.backbone, "features": args.features, "layer": args.layer,
                             "tau": args.tau, "voc_root": str(args.voc_root), "n": n},
                  "ms_mean": {k: statistics.mean(v) for k, v in ms.items()},
                  "ms_median": {k: statistics.median(v) for k, v in ms.items()},
                  "agree_with_reference": agree, "judged": judged, "degenerate": degenerate}
        with args.results.open("a") as f:
            f.write(json.dumps(record) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
