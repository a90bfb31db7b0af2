"""TokenCut against a faithful numpy/scipy statement of the reference, on real DINOv2 features.

The reference (github.com/YangtaoWANG95/TokenCut, ``object_discovery.py``, ``ncut``) solves the
dense generalised problem with ``scipy.linalg.eigh(D - A, D, subset_by_index=[1, 2])``
(:mod:`.tokencut_reference`). Images where λ₂ is degenerate (λ₃ − λ₂ ≈ 0, e.g. a complete graph) have
no unique answer and are only reported; on the others the boxes must be identical on ≥ 95 % of images.
Also here: a batch solved at once (a GPU's path) against one image at a time, on the same features.
"""

from __future__ import annotations

from collections import defaultdict
from pathlib import Path

import numpy as np
import torch

from lost_reg.backbone import Backbone, Features, Tap
from lost_reg.datasets import VOCDataset
from lost_reg.images import decode_image, normalize, prepare
from lost_reg.methods import tokencut

from .conftest import ROOT, VOC12_DEV
from .tokencut_reference import DEGENERATE, reference_tokencut


def real_images() -> list[tuple[str, np.ndarray]]:
    paths = sorted((ROOT / "data" / "sample_voc" / "VOC2007" / "JPEGImages").glob("*.jpg"))
    images = [(p.stem, decode_image(p)) for p in paths]
    if VOC12_DEV.is_dir():
        images += [(s.image_id, decode_image(s.path)) for s in VOCDataset(VOC12_DEV, "2012")]
    return images


NEAR_TIE = 1e-3
"""Seeds of the two paths may differ only between patches whose |x| is this close (relative): the solvers'
precision (batched and one-image Lanczos vectors differ by ~6e-6 of max |x| in the median)."""
SETTINGS = [("tokens", 0.2), ("v", 0.5)]
"""The issue's measured setting (output tokens at the paper's τ) and the DINOv2 recipe's default."""

_TAPS: dict[int, list] = {}


def taps_of(bb: Backbone, image: np.ndarray) -> dict[Tap, Features]:
    """The features of every setting of :data:`SETTINGS` for one image, zero-padded as the reference, one forward."""
    p = prepare(image, bb.patch_size)
    return bb.taps(normalize(p.pixels[None], [p.valid], bb.mean, bb.std), [(kind, -1) for kind, _ in SETTINGS])


def real_taps(bb: Backbone, quokka: Path) -> list[tuple[str, np.ndarray, dict[Tap, Features]]]:
    """(name, image, features) of the quokka, the data/ photos and voc12_dev (when present), computed once."""
    if id(bb) not in _TAPS:
        _TAPS[id(bb)] = [(name, image, taps_of(bb, image))
                         for name, image in [("quokka", decode_image(quokka)), *real_images()]]
    return _TAPS[id(bb)]


def test_boxes_match_the_reference_on_real_features(offline_backbone, quokka):
    same = dict.fromkeys(SETTINGS, 0)
    others: dict = {s: [] for s in SETTINGS}
    degenerate: dict = {s: [] for s in SETTINGS}
    for name, _, taps in real_taps(offline_backbone, quokka[0]):
        for kind, tau in SETTINGS:
            feats = taps[(kind, -1)]
            (got,) = tokencut(feats.patches, feats.grid, tau=tau)
            want, (l2, l3) = reference_tokencut(feats.patches[0].double().numpy(), feats.grid, tau=tau)
            if l3 - l2 < DEGENERATE:
                degenerate[kind, tau].append(name)
            elif got.box == want:
                same[kind, tau] += 1
            else:
                others[kind, tau].append(f"{name}: ours {got.box} vs {want}, gap {l3 - l2:.2e}")
    for setting in SETTINGS:
        judged = same[setting] + len(others[setting])
        print(f"\n{setting}: identical boxes on {same[setting]}/{judged} images with a unique cut; "
              f"{len(degenerate[setting])} degenerate (lambda3 - lambda2 < {DEGENERATE:g}): "
              f"{', '.join(degenerate[setting])}")
        print("\n".join(others[setting]))
        assert judged >= 5 and same[setting] == judged, others[setting]


def test_a_batch_solved_at_once_equals_one_image_at_a_time_on_real_features(offline_backbone, quokka):
    # the GPU's path (every image of a grid in one Lanczos batch) on the CPU; an image alone on its grid
    # goes with its mirror image, so every image is solved in a batch of two or more
    bb = offline_backbone
    by_grid: dict[tuple[int, int], list] = defaultdict(list)
    for name, image, taps in real_taps(bb, quokka[0]):
        by_grid[taps[SETTINGS[0][0], -1].grid].append((name, taps))
    for items in by_grid.values():
        if len(items) == 1:
            name, image, _ = next(t for t in real_taps(bb, quokka[0]) if t[0] == items[0][0])
            items.append((f"{name} mirrored", taps_of(bb, image[:, ::-1].copy())))
    for kind, tau in SETTINGS:
        judged, degenerate, boxes, seeds, voc = 0, [], [], [], [0, 0, 0]
        for grid, items in by_grid.items():
            features = torch.cat([taps[kind, -1].patches for _, taps in items])
            batched = tokencut(features, grid, tau=tau, batched=True)
            alone = tokencut(features, grid, tau=tau, batched=False)
            for (name, _), a, b in zip(items, batched, alone):
                gap = b.eigenvalues[1] - b.eigenvalues[0]
                if name.startswith("20") and " " not in name:  # voc12_dev itself: same box, other, near-degenerate
                    voc[2 if gap < DEGENERATE else 0 if a.box == b.box else 1] += 1
                if gap < DEGENERATE:
                    degenerate.append(f"{name} ({'same box' if a.box == b.box else 'other box'})")
                    continue
                judged += 1
                if a.box != b.box:
                    boxes.append(f"{name}: batched {a.box} vs alone {b.box}, gap {gap:.2e}")
                elif (a.mask != b.mask).any():
                    boxes.append(f"{name}: {(a.mask != b.mask).sum()} patches of the mask differ, gap {gap:.2e}")
                elif a.seed != b.seed:  # patches with the same edges share |x| in exact arithmetic: rounding picks
                    x = np.abs(b.eigenvector)
                    seeds.append(f"{name}: seed {a.seed} vs {b.seed}, |x| {x[a.seed]:.6g} vs {x[b.seed]:.6g}")
                    assert x[a.seed] >= (1 - NEAR_TIE) * x[b.seed], seeds[-1]
        print(f"\n{kind}, tau {tau}: {len(by_grid)} grids; identical boxes on {judged - len(boxes)}/{judged} images "
              f"with lambda3 - lambda2 >= {DEGENERATE:g} (of the voc12_dev images: {voc[0]}/{voc[0] + voc[1]}), of which "
              f"{len(seeds)} with another seed or mask; {len(degenerate)} near-degenerate, not judged (of voc12_dev: "
              f"{voc[2]}): {', '.join(degenerate)}")
        print("\n".join(boxes + seeds))
        assert not boxes and judged >= 5 and all(len(items) >= 2 for items in by_grid.values())
