"""Which LOST graph localises real objects? CorLoc of each affinity on boxed real photos.

Raw LOST (A = F Fᵀ) fails on DINOv2 keys, whose similarities are all positive. This study runs
the backbone once per photo and LOST with every affinity and several k on the same keys, and
prints CorLoc, mean best IoU and how many boxes cover (almost) the whole image.

Photos: ``bench/real_photos.json`` (files shipped inside PyPI packages; install them with
``pip install --no-deps imgaug scikit-learn matplotlib``) plus, with ``--voc-root``, a VOC-style
set such as ``data/sample_voc``.

    python bench/affinity_study.py --backbone dinov2_vits14_imgfocus --voc-root data/sample_voc
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import time
from pathlib import Path

import numpy as np
import torch
from torchvision.ops import box_iou

from lost_reg import create_backbone
from lost_reg.images import decode_image, normalize, prepare
from lost_reg.methods.lost import affinity_matrix, lost

HERE = Path(__file__).resolve().parent
WHOLE = 0.9  # a box covering ≥ 90 % of the image counts as "whole image"


def photos(voc_root: Path | None, lists: tuple[str, ...] = ("real_photos.json",)) -> list[tuple[str, Path, np.ndarray]]:
    """(name, path, GT boxes [n, 4]) of every available boxed photo in ``lists`` (files in bench/)."""
    out = []
    for p in (p for name in lists for p in json.loads((HERE / name).read_text())["photos"]):
        spec = importlib.util.find_spec(p["package"])
        if spec is None:
            print(f"missing package {p['package']}: pip install --no-deps {p['package']}")
            continue
        path = Path(spec.submodule_search_locations[0]) / p["path"]
        out.append((path.stem, path, np.array(p["boxes"], np.float32).reshape(-1, 4)))
    if voc_root:
        from lost_reg.datasets import VOCDataset

        ds = VOCDataset(voc_root, "2007")
        out += [(s.image_id, s.path, s.gt_boxes) for s in ds]
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--backbone", default="dinov2_vits14_imgfocus")
    ap.add_argument("--weights", default=None)
    ap.add_argument("--voc-root", type=Path, default=None)
    ap.add_argument("--max-side", type=int, default=None)
    ap.add_argument("--features", default="k")
    ap.add_argument("--dtype", choices=("float32", "bfloat16"), default="float32", help="backbone autocast")
    ap.add_argument("--affinities", default="raw,centered,cosine-mean")
    ap.add_argument("--k", default="25,50,100,200")
    ap.add_argument("--json", type=Path, default=None, help="append the results as one JSON record")
    args = ap.parse_args()

    bb = create_backbone(args.backbone, args.weights, features=args.features)
    affinities = args.affinities.split(",")
    ks = [int(k) for k in args.k.split(",")]
    rows: dict[tuple[str, int], list[tuple[float, bool]]] = {(a, k): [] for a in affinities for k in ks}
    stats = []
    for name, path, gt in photos(args.voc_root):
        image = decode_image(path)
        p = prepare(image, bb.patch_size, args.max_side)
        t = time.perf_counter()
        with torch.autocast("cpu", dtype=torch.bfloat16, enabled=args.dtype == "bfloat16"):
            feats = bb(normalize(p.pixels[None], [p.valid], bb.mean, bb.std))
        a = affinity_matrix(feats.patches, "raw")
        stats.append({"image": name, "positive_share": float((a > 0).float().mean()), "forward_s": time.perf_counter() - t})
        w, h = p.size
        for aff in affinities:
            for k in ks:
                (r,) = lost(feats.patches, feats.grid, k_patches=k, affinity=aff)
                x0, y0, x1, y1 = (v / p.scale for v in r.box_pixels(bb.patch_size, p.valid[1], p.valid[0]))
                box = torch.tensor([[x0, y0, min(x1, w), min(y1, h)]])
                iou = float(box_iou(box, torch.from_numpy(gt)).max())
                whole = (box[0, 2] - box[0, 0]) * (box[0, 3] - box[0, 1]) >= WHOLE * w * h
                rows[(aff, k)].append((iou, bool(whole)))
    n = len(stats)
    print(f"\n{args.backbone}, features {args.features}, {args.dtype}, {n} photos; share of positive raw similarities: "
          f"{np.mean([s['positive_share'] for s in stats]):.3f} (min {min(s['positive_share'] for s in stats):.3f})")
    print("| affinity | k | CorLoc | mean IoU | whole-image boxes |\n|---|---|---|---|---|")
    table = []
    for (aff, k), res in rows.items():
        ious = np.array([r[0] for r in res])
        whole = sum(r[1] for r in res)
        table.append({"affinity": aff, "k": k, "corloc": float((ious >= 0.5).mean()), "mean_iou": float(ious.mean()),
                      "whole": int(whole), "n": n})
        print(f"| {aff} | {k} | {100 * (ious >= 0.5).mean():.1f}% ({int((ious >= 0.5).sum())}/{n}) | "
              f"{ious.mean():.3f} | {whole}/{n} |")
    if args.json:
        with args.json.open("a") as f:
            f.write(json.dumps({"date": time.strftime("%Y-%m-%d"), "backbone": args.backbone, "features": args.features,
                                "dtype": args.dtype, "max_side": args.max_side, "images": stats, "table": table}) + "\n")


if __name__ == "__main__":
    main()
