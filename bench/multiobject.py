"""Every object, with its mask: lost_reg's multi-object modes and refiners against MaskCut, on the same features.

Class-agnostic box AP / AP50 / AR@100 and mask AP (pycocotools ``COCOeval``, ``useCats = 0``) on coco_dev (80
COCO 2017 images with masks), box figures on voc12_dev (50 VOC12 images), and time per image after the forward
pass, for each setting of ``--settings`` (MODE:N:REFINER, e.g. ``prompts:100:guided``). One forward pass per image
(the offline ViT-S/14, the default recipe: TokenCut τ 0.5 on the last block's values, images resized onto the
grid), kept in ``--cache``.

MaskCut runs from CutLER's own code (CC BY-NC: never copied here) given a checkout with ``--cutler DIR``
(facebookresearch/CutLER with its ``third_party/TokenCut`` submodule, and ``pip install pydensecrf2``): its
``maskcut_forward`` (τ 0.5, N cuts) on the same backbone's values for CutLER's input (the image resized to
480 × 480, then to 476 × 476, both LANCZOS, as ``maskcut.py`` does), then its ``densecrf`` and the post-processing
of ``maskcut.py``'s main loop (holes filled, a mask whose CRF result has IoU < 0.5 with it dropped, resized to
the original size and cut at half its maximum). MaskCut gives no score: its k-th mask of N scores 1 − k/N.

coco_dev's 1st, 3rd, 5th… images by id chose the settings of lost_reg/multiobject.py (with voc12_dev); the 2nd,
4th… were not looked at while choosing: both halves are reported. Run under ``flock /tmp/lostreg-heavy.lock`` on a
shared machine::

    python bench/multiobject.py --cutler /work/scratch/multi/CutLER --cache runs/cache
"""

from __future__ import annotations

import argparse
import contextlib
import io
import json
import platform
import sys
import time
from dataclasses import dataclass
from datetime import date
from pathlib import Path

import cv2
import numpy as np
import pycocotools.mask as mask_util
import torch
from PIL import Image
from pycocotools.coco import COCO
from pycocotools.cocoeval import COCOeval
from torchvision import transforms

from lost_reg import create_backbone
from lost_reg.cache import Cached, FeatureCache
from lost_reg.datasets import VOCDataset
from lost_reg.images import Prepared, decode_image, normalize, prepare
from lost_reg.multiobject import MULTI_MODES
from lost_reg.recipes import resolve
from lost_reg.refine import refine_masks

HERE = Path(__file__).resolve().parent
SHARED = HERE.parent.parent / "shared" / "data"
SETTINGS = "iterative:3:guided,iterative:6:guided,prompts:3:guided,prompts:6:guided,prompts:100:none," \
           "prompts:100:bilinear,prompts:100:guided"
CUTLER_SIZE, CUTLER_GRID_SIZE = 480, 476


def rle(mask: np.ndarray) -> dict:
    out = mask_util.encode(np.asfortranarray(mask.astype(np.uint8)))
    out["counts"] = out["counts"].decode("ascii")
    return out


@dataclass
class BenchImage:
    """One benchmark image: its name, its id in the ground truth, its file."""

    name: str
    gt_id: int
    path: Path


def coco_set(root: Path) -> tuple[COCO, list[BenchImage]]:
    with contextlib.redirect_stdout(io.StringIO()):
        gt = COCO(str(root / "annotations" / "instances_train2017.json"))
    images = [BenchImage(Path(im["file_name"]).stem, im["id"], root / "train2017" / im["file_name"])
              for im in sorted(gt.dataset["images"], key=lambda im: im["id"])]
    return gt, [im for im in images if im.path.exists()]


def voc_set(root: Path) -> tuple[COCO, list[BenchImage]]:
    images, anns, out = [], [], []
    for i, s in enumerate(VOCDataset(root, "2012"), 1):
        w, h = Image.open(s.path).size
        images.append({"id": i, "file_name": s.image_id, "width": w, "height": h})
        out.append(BenchImage(s.image_id, i, Path(s.path)))
        for x0, y0, x1, y1 in s.gt_boxes.tolist():
            anns.append({"id": len(anns) + 1, "image_id": i, "category_id": 1, "bbox": [x0, y0, x1 - x0, y1 - y0],
                         "area": (x1 - x0) * (y1 - y0), "iscrowd": 0})
    gt = COCO()
    gt.dataset = {"images": images, "annotations": anns, "categories": [{"id": 1, "name": "object"}]}
    with contextlib.redirect_stdout(io.StringIO()):
        gt.createIndex()
    return gt, out


def evaluate(gt: COCO, results: list[dict], image_ids: list[int], masks: bool) -> dict[str, float]:
    """Class-agnostic box AP, AP50, AR@100 (and mask AP, AP50 when ``masks``), in percent."""
    out: dict[str, float] = {}
    for kind in ("bbox", "segm") if masks else ("bbox",):
        dets = [{k: v for k, v in r.items() if kind == "segm" or k != "segmentation"} for r in results
                if r["image_id"] in image_ids]
        with contextlib.redirect_stdout(io.StringIO()):
            if dets:
                res = gt.loadRes(dets)
            else:
                res = COCO()
                res.dataset = {**gt.dataset, "annotations": []}
                res.createIndex()
            e = COCOeval(gt, res, kind)
            e.params.useCats, e.params.imgIds = 0, image_ids
            e.evaluate(), e.accumulate(), e.summarize()
        if kind == "bbox":
            out.update(AP=100 * e.stats[0], AP50=100 * e.stats[1], AR100=100 * e.stats[8])
        else:
            out.update(mask_AP=100 * e.stats[0], mask_AP50=100 * e.stats[1])
    return out


class Features:
    """Backbone features of both inputs, from the cache or one forward pass each (timed)."""

    def __init__(self, cache: Path | None) -> None:
        self.backbone = create_backbone("dinov2_vits14_imgfocus", features="v", layer=-1)
        self.setting = resolve(self.backbone.family, "auto", {}, "v", -1, "auto")
        self.cache = FeatureCache(cache, dict(self.backbone.source)) if cache else None
        self.tap = ("v", -1)
        self.forward_s: list[float] = []
        b = self.backbone
        self.to_tensor = transforms.Compose([transforms.ToTensor(), transforms.Normalize(b.mean, b.std)])

    def _cached(self, prep: str, name: str, p: Prepared, run) -> tuple[torch.Tensor, tuple[int, int]]:
        hit = self.cache.load(prep, self.tap, name) if self.cache else None
        if hit is not None:
            return hit.patches.float(), hit.grid
        start = time.perf_counter()
        f = run()
        self.forward_s.append(time.perf_counter() - start)
        if self.cache:
            entry = Cached(f.patches[0], f.grid, p.valid, p.size, self.backbone.patch_size)
            self.cache.save(prep, self.tap, name, entry)
        return f.patches[0].float(), f.grid

    def recipe(self, image: BenchImage) -> tuple[Prepared, torch.Tensor, tuple[int, int]]:
        b = self.backbone
        p = prepare(decode_image(image.path), b.patch_size, None, self.setting.prep, image.name)
        f, grid = self._cached(self.setting.prep, image.name, p,
                               lambda: b(normalize(p.pixels[None], [p.valid], b.mean, b.std)))
        return p, f, grid

    def cutler(self, image: BenchImage) -> tuple[np.ndarray, torch.Tensor, tuple[int, int]]:
        """CutLER's input: 480 × 480, then 476 × 476 (LANCZOS); features [D, N] as maskcut_forward takes them."""
        i_new = Image.open(image.path).convert("RGB").resize((CUTLER_SIZE, CUTLER_SIZE), Image.LANCZOS)
        resized = i_new.resize((CUTLER_GRID_SIZE, CUTLER_GRID_SIZE), Image.LANCZOS)
        p = Prepared(pixels=torch.empty(0), valid=(CUTLER_GRID_SIZE,) * 2, size=(CUTLER_GRID_SIZE,) * 2)
        f, grid = self._cached("cutler-480-476", image.name, p, lambda: self.backbone(self.to_tensor(resized)[None]))
        return np.array(i_new), f.T.contiguous(), grid


def run_lost_reg(setting: str, images: list[BenchImage], features: Features) -> tuple[list[dict], float, float]:
    """Detections (with masks) of one MODE:N:REFINER setting, and the mean find and refine seconds per image."""
    mode, n, refiner = setting.split(":")
    method, ps = features.setting.method, features.backbone.patch_size
    results, find_s, refine_s = [], 0.0, 0.0
    for image in images:
        p, f, grid = features.recipe(image)
        start = time.perf_counter()
        (found,) = MULTI_MODES[mode](method, f[None], grid, max_objects=int(n))
        mid = time.perf_counter()
        masks = refine_masks(p, [r.mask for r, _ in found], ps, refiner)
        refine_s += time.perf_counter() - mid
        find_s += mid - start
        vh, vw = p.valid
        for (r, s), m in zip(found, masks):
            x0, y0, x1, y1 = p.to_original(r.box_pixels(ps, vw, vh))
            results.append({"image_id": image.gt_id, "category_id": 1, "bbox": [x0, y0, x1 - x0, y1 - y0],
                            "score": s, "segmentation": rle(m)})
    return results, find_s / len(images), refine_s / len(images)


def run_maskcut(cutler: Path, n: int, images: list[BenchImage], features: Features, tau: float = 0.5):
    """MaskCut from CutLER's code on the same backbone's values: detections, mean cut and CRF seconds per image."""
    for sub in ("maskcut", "third_party", ""):
        if str(cutler / sub) not in sys.path:
            sys.path.insert(0, str(cutler / sub))
    from crf import densecrf  # CutLER's
    from maskcut import maskcut_forward  # CutLER's
    from scipy import ndimage
    from TokenCut.unsupervised_saliency_detection import metric  # CutLER's TokenCut submodule

    results, cut_s, crf_s = [], 0.0, 0.0
    for image in images:
        i_new, feats, grid = features.cutler(image)
        width, height = Image.open(image.path).size
        start = time.perf_counter()
        _, bipartitions, _ = maskcut_forward(feats, list(grid), [14, 14], [CUTLER_SIZE, CUTLER_SIZE], tau, N=n,
                                             cpu=True)
        mid = time.perf_counter()
        for k, bipartition in enumerate(bipartitions):
            crf = ndimage.binary_fill_holes(densecrf(i_new, bipartition) >= 0.5)
            if metric.IoU(torch.from_numpy(bipartition), torch.from_numpy(crf)) < 0.5:
                continue  # maskcut.py zeroes it
            big = np.asarray(Image.fromarray(np.uint8(crf * 255)).resize((width, height)))
            mask = big > big.max() / 2.0
            if mask.sum() < 1:
                continue
            encoded = mask_util.encode(np.asfortranarray(mask.astype(np.uint8)))
            results.append({"image_id": image.gt_id, "category_id": 1, "bbox": mask_util.toBbox(encoded).tolist(),
                            "score": 1.0 - k / n, "segmentation": rle(mask)})
        crf_s += time.perf_counter() - mid
        cut_s += mid - start
    return results, cut_s / len(images), crf_s / len(images)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--coco-root", type=Path, default=SHARED / "coco_dev")
    ap.add_argument("--voc-root", type=Path, default=SHARED / "voc12_dev")
    ap.add_argument("--settings", default=SETTINGS, help="comma list of MODE:N:REFINER")
    ap.add_argument("--cutler", type=Path, default=None, help="a CutLER checkout (with third_party/TokenCut): adds "
                                                               "MaskCut N 3 and N 6")
    ap.add_argument("--maskcut-n", default="3,6")
    ap.add_argument("--maskcut-sets", default="coco,voc", help="the sets MaskCut runs on (its cuts are slow)")
    ap.add_argument("--cache", type=Path, default=None, help="feature cache folder")
    ap.add_argument("--limit", type=int, default=None, help="first N images of each set (a quick look)")
    ap.add_argument("--out", type=Path, default=None, help="write every figure as JSON here")
    args = ap.parse_args()
    torch.set_num_threads(2)

    features = Features(args.cache)
    sets = {}
    if args.coco_root.exists():
        sets["coco"] = coco_set(args.coco_root)
    if args.voc_root.exists():
        sets["voc"] = voc_set(args.voc_root)
    if not sets:
        sys.exit(f"neither {args.coco_root} nor {args.voc_root} exists")
    rows = []
    for name, (gt, images) in sets.items():
        images = images[:args.limit] if args.limit else images
        maskcut = args.cutler is not None and name in args.maskcut_sets.split(",")
        runs = [("lost_reg", s) for s in args.settings.split(",") if s] + \
               ([("maskcut", int(n)) for n in args.maskcut_n.split(",")] if maskcut else [])
        for im in images:  # every forward first, so the settings below time their own work only
            features.recipe(im)
            if maskcut:
                features.cutler(im)
        ids = [im.gt_id for im in images]
        parts = {"all": ids}
        if name == "coco":
            ordered = sorted(ids)  # every other image by id chose the settings, the rest were held out
            parts |= {"1st, 3rd… (chose)": ordered[0::2], "2nd, 4th… (held out)": ordered[1::2]}
            parts = {k: v for k, v in parts.items() if v}
        for kind, setting in runs:
            if kind == "lost_reg":
                results, t1, t2 = run_lost_reg(setting, images, features)
                label, times = f"lost_reg {setting}", {"find_s": t1, "refine_s": t2}
            else:
                results, t1, t2 = run_maskcut(args.cutler, setting, images, features)
                label, times = f"MaskCut N {setting} + CRF", {"find_s": t1, "refine_s": t2}
            for part, part_ids in parts.items():
                figures = evaluate(gt, results, part_ids, masks=name == "coco")
                count = len([r for r in results if r["image_id"] in part_ids])
                rows.append({"set": name, "part": part, "images": len(part_ids), "setting": label, **figures, **times,
                             "objects_per_image": count / len(part_ids)})
                print(json.dumps(rows[-1]), flush=True)
    forward = float(np.mean(features.forward_s)) if features.forward_s else float("nan")
    print(f"\n{date.today()}, {platform.machine()} CPU, {torch.get_num_threads()} threads; forward (uncached) "
          f"{forward:.2f} s per input ({len(features.forward_s)} timed)\n")
    print("| set | images | setting | box AP | AP50 | AR@100 | mask AP | objects / image | s / image after the "
          "forward (find + refine) |\n|---|---|---|---|---|---|---|---|---|")
    for r in rows:
        mask = f"{r['mask_AP']:.1f}" if "mask_AP" in r else "—"
        print(f"| {r['set']} {r['part']} | {r['images']} | {r['setting']} | {r['AP']:.1f} | {r['AP50']:.1f} | "
              f"{r['AR100']:.1f} | {mask} | {r['objects_per_image']:.1f} | {r['find_s'] + r['refine_s']:.2f} "
              f"({r['find_s']:.2f} + {r['refine_s']:.2f}) |")
    if args.out:
        args.out.write_text(json.dumps({"date": str(date.today()), "forward_s": forward, "rows": rows}, indent=1))


if __name__ == "__main__":
    main()
