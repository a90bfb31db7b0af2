"""Every object in an image, from one forward pass: prompts on the patch graph, scored by their cut, deduplicated.

A discovery method finds one object per image, the one its graph singles out. The others are regions that
hang together in feature space, as ProMerge (Li & Shin, ECCV 2024) prompts them: every :data:`STRIDE`-th
patch of the grid is a *prompt*; for each threshold t of :data:`THRESHOLDS` its region is the 4-connected
component holding it of the patches whose feature cosine to it exceeds t, and once more with the mean
feature of that region in place of the prompt's own (one step of mean shift, so a noisy prompt patch
does not decide the region). Each distinct region is scored by how cleanly it is cut from the rest of
the image on the method's own graph (:func:`lost_reg.scores.ncut_score`, 1 − Ncut/2) less :data:`BORDER`
times the share of the image's border patches it covers (background, such as sky, floor and walls, is cut as
cleanly as objects, but it runs along the image's edges: MaskCut flips a cut that holds three corners for
the same reason), plus :data:`VOTES` times the log of its votes: how many prompts' regions (of any
threshold) overlap it at mask IoU > :data:`VOTE_IOU`, since an object is found from many of its
patches at many thresholds where a chance region is found once (in the spirit of CuVLER's VoteCut, which
scores masks by agreement).

Regions are kept best first in two tiers (class-agnostic non-maximum suppression, where ProMerge merges):
the first drops any region whose mask or box overlaps a kept one at IoU > :data:`NMS_IOU`; the second
then adds those whose mask overlaps no kept one at IoU > :data:`SECOND_NMS_IOU` (an object inside another
one's box, a part beside its whole), scored :data:`SECOND_TIER` lower, so they rank after the first tier
of every image: recall without duplicates at the top of the ranking.

The method's own object (today's single-object answer) always leads, so ``max_objects=1`` is exactly
the method's box and score. With more objects it is scored like the regions, then raised to the best
region's where lower, so it also ranks first by score.

Modes, by name (:data:`MULTI_MODES`): ``prompts`` (this), ``iterative`` (the method again on the patches
earlier objects left, :func:`lost_reg.scores.find_objects`, as MaskCut does). Settings chosen on half of
coco_dev (its 1st, 3rd… images by id) and voc12_dev; README, Every object, with its mask.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import numpy as np
import torch

from .methods import Discovery, Method
from .methods.components import mask_box, seed_masks
from .scores import DEFAULT_SCORE, find_objects, score as score_of

STRIDE = 2
"""A prompt every this many patches, along rows and columns."""
THRESHOLDS = (0.4, 0.5, 0.6, 0.7)
"""Cosine thresholds of the prompts' regions: several, so objects of several granularities come out."""
BORDER = 0.5
"""Score taken off per unit share of the image's border patches a region covers."""
VOTES = 0.025
"""Score added per unit log of a region's votes."""
VOTE_IOU = 0.5
"""A prompt's region overlapping a region at mask IoU above this is a vote for it."""
NMS_IOU = 0.5
"""First tier: a region whose mask or box overlaps a better one's at IoU above this is a duplicate."""
SECOND_NMS_IOU = 0.7
"""Second tier: a region whose mask overlaps a kept one's at IoU above this is a duplicate."""
SECOND_TIER = 2.0
"""Score taken off second-tier regions: more than any first-tier score's range, so they rank after all of them."""
MIN_PATCHES = 2
"""Regions of fewer patches are dropped (one stray patch is no object)."""


@dataclass
class PromptedObject(Discovery):
    """A region grown from a prompt patch, on the patch grid."""

    similarity: np.ndarray
    """float [rows, cols]: each patch's feature cosine to the region's mean feature."""

    HEAT = "similarity to the object"

    @property
    def heat(self) -> np.ndarray:
        return self.similarity


def prompt_regions(features: torch.Tensor, grid: tuple[int, int], stride: int = STRIDE,
                   thresholds: tuple[float, ...] = THRESHOLDS,
                   components: str = "scipy") -> list[tuple[torch.Tensor, torch.Tensor]]:
    """Per image of a batch [B, rows*cols, D]: its distinct prompt regions, bool [C, rows*cols] (C ≥ 0), and how
    many prompts (over all thresholds) gave each, int [C]."""
    b, n, _ = features.shape
    rows, cols = grid
    f = torch.nn.functional.normalize(features.float(), dim=-1)
    r, c = torch.meshgrid(torch.arange(0, rows, stride), torch.arange(0, cols, stride), indexing="ij")
    prompts = (r * cols + c).reshape(-1).to(f.device)  # [S]
    s = len(prompts)
    seeds = prompts.repeat(b)  # [B*S]
    regions = []
    for t in thresholds:
        proto = f[:, prompts]  # [B, S, D]
        for _ in range(2):  # the prompt's own feature, then its region's mean feature
            near = torch.bmm(proto, f.transpose(1, 2)) > t  # [B, S, N]
            near.view(b * s, n)[torch.arange(b * s, device=f.device), seeds] = True
            region = torch.from_numpy(seed_masks(near.view(b * s, rows, cols), seeds, components)).to(f.device)
            region = region.reshape(b, s, n)
            proto = torch.nn.functional.normalize(torch.bmm(region.float(), f), dim=-1)
        regions.append(region)
    every = torch.cat(regions, 1)  # [B, S * len(thresholds), N]
    return [torch.unique(m[m.sum(1) >= MIN_PATCHES], dim=0, return_counts=True) for m in every]


def ncut_scores(masks: torch.Tensor, w: torch.Tensor) -> torch.Tensor:
    """1 − Ncut/2 of {mask, rest} on the graph ``w`` [N, N] for each mask of ``masks`` bool [C, N] (0 where one
    side is empty): :func:`lost_reg.scores.ncut_score` for many masks at once."""
    m = masks.float()
    degree = w.sum(1)
    assoc = m @ degree
    cut = assoc - ((m @ w) * m).sum(1)
    rest = degree.sum() - assoc
    ncut = cut / assoc.clamp_min(1e-12) + cut / rest.clamp_min(1e-12)
    return torch.where((assoc > 0) & (rest > 0), 1 - ncut / 2, torch.zeros_like(ncut))


def border_share(masks: torch.Tensor, grid: tuple[int, int]) -> torch.Tensor:
    """Share of the image's border patches (first and last rows and columns) each mask [C, N] covers."""
    m = masks.view(-1, *grid)
    return torch.cat([m[:, 0], m[:, -1], m[:, :, 0], m[:, :, -1]], 1).float().mean(1)


def mask_iou(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """IoU [A, B] of bool masks [A, N] and [B, N]."""
    af, bf = a.float(), b.float()
    inter = af @ bf.T
    return inter / (af.sum(1)[:, None] + bf.sum(1)[None] - inter).clamp_min(1)


def box_iou(masks: torch.Tensor, grid: tuple[int, int]) -> torch.Tensor:
    """IoU [C, C] of the boxes (on the grid) of non-empty bool masks [C, rows*cols]."""
    m = masks.view(-1, *grid)
    boxes = []
    for on in (m.any(2), m.any(1)):  # rows, then columns, that the mask touches
        at = torch.arange(on.shape[1], device=m.device)
        boxes.append((torch.where(on, at, on.shape[1]).amin(1), torch.where(on, at, -1).amax(1) + 1))
    (y0, y1), (x0, x1) = boxes
    inter = ((torch.minimum(x1[:, None], x1) - torch.maximum(x0[:, None], x0)).clamp_min(0)
             * (torch.minimum(y1[:, None], y1) - torch.maximum(y0[:, None], y0)).clamp_min(0)).float()
    area = ((x1 - x0) * (y1 - y0)).float()
    return inter / (area[:, None] + area - inter)


def suppress(order: list[int], overlap: np.ndarray, keep: int, kept: list[int]) -> list[int]:
    """Greedy NMS: of ``order`` (best first), the indices that ``overlap`` (bool [C, C]) marks as duplicating no
    earlier one nor any of ``kept``, at most ``keep``."""
    alive = ~overlap[kept].any(0)
    new: list[int] = []
    for i in order:
        if len(new) == keep:
            break
        if alive[i]:
            new.append(i)
            alive &= ~overlap[i]
    return new


def find_prompted(method: Method, features: torch.Tensor, grid: tuple[int, int], max_objects: int = 1,
                  min_score: float | None = None, kind: str = DEFAULT_SCORE) -> list[list[tuple[Discovery, float]]]:
    """Up to ``max_objects`` (object, score) pairs per image of a batch [B, rows*cols, D], best first.

    ``max_objects=1``: the method's object with its ``kind`` score, exactly as :func:`~lost_reg.scores.find_objects`.
    Beyond: every object is scored as the module says (the method's object by its ``kind`` score, less the border
    term, plus the votes term, then raised to the best first-tier region's where lower), and none below
    ``min_score`` is kept; an image whose first object's score less its votes term falls below it gets none.
    """
    if max_objects < 1:
        raise ValueError("max_objects must be at least 1")
    firsts = method(features, grid)
    if max_objects == 1:
        singles = [(r, score_of(r, None, kind, features[i], method)) for i, r in enumerate(firsts)]
        return [[] if min_score is not None and s < min_score else [(r, s)] for r, s in singles]
    regions = prompt_regions(features, grid, components=getattr(method, "components", "scipy"))
    return [_objects(method, features[i], grid, first, *candidates, max_objects, min_score, kind)
            for i, (first, candidates) in enumerate(zip(firsts, regions))]


def _objects(method: Method, features: torch.Tensor, grid: tuple[int, int], first: Discovery, candidates: torch.Tensor,
             counts: torch.Tensor, max_objects: int, min_score: float | None,
             kind: str) -> list[tuple[Discovery, float]]:
    """One image's objects: ``first`` (the method's), then the best prompt regions in two tiers."""
    own = torch.from_numpy(first.mask.reshape(1, -1)).to(features.device)
    masks = torch.cat([own, candidates])  # the method's object is mask 0
    iou = mask_iou(masks, masks)
    votes = (iou[:, 1:] > VOTE_IOU).float() @ counts.float()
    cut = ncut_scores(masks, method.cut_graph(features).float())
    if kind != "ncut":
        cut[0] = score_of(first, None, kind, features, method)
    cut -= BORDER * border_share(masks, grid)
    floor = min_score if min_score is not None else -np.inf
    if cut[0] < floor:  # nothing stands out: a texture's regions are found by many prompts too, so votes don't count
        return []
    scores = (cut + VOTES * votes.clamp_min(1).log()).cpu().numpy()
    order = [int(i) for i in np.argsort(-scores, kind="stable") if i > 0 and scores[i] >= floor]
    iou = iou.cpu().numpy()
    duplicate = (iou > NMS_IOU) | (box_iou(masks, grid).cpu().numpy() > NMS_IOU)
    first_tier = suppress(order, duplicate, max_objects - 1, [0])
    taken = {0, *first_tier}
    rest = [i for i in order if i not in taken and scores[i] - SECOND_TIER >= floor]
    second_tier = suppress(rest, iou > SECOND_NMS_IOU, max_objects - len(taken), list(taken))
    kept = first_tier + second_tier
    kept_scores = [float(scores[i]) for i in first_tier] + [float(scores[i]) - SECOND_TIER for i in second_tier]
    out = [(first, max([float(scores[0])] + kept_scores[:len(first_tier)]))]
    f = torch.nn.functional.normalize(features.float(), dim=-1)
    similarity = f @ torch.nn.functional.normalize(masks[kept].float() @ f, dim=-1).T  # [N, K]: to each mask's mean
    rows, cols = grid
    for j, i in enumerate(kept):
        sim, m = similarity[:, j], masks[i].view(rows, cols).cpu().numpy()
        seed = divmod(int(torch.argmax(torch.where(masks[i], sim, -2.0))), cols)
        out.append((PromptedObject(seed=seed, box=mask_box(m), mask=m, similarity=sim.view(rows, cols).cpu().numpy()),
                    kept_scores[j]))
    return out


Finder = Callable[..., list[list[tuple[Discovery, float]]]]
MULTI_MODES: dict[str, Finder] = {"prompts": find_prompted, "iterative": find_objects}
"""How ``max_objects`` > 1 objects are found, by name: called as ``finder(method, features, grid, max_objects=…,
min_score=…, kind=…)``."""
DEFAULT_MULTI = "prompts"
