"""LOST (Siméoni et al., BMVC 2021): one object box per image from ViT patch features.

Patches are nodes of a graph whose edges are positive feature correlations, A = F Fᵀ. Objects
cover less of an image than background, so a patch with few positive edges (low degree) likely
lies on an object: the lowest-degree patch is the *seed*. Among the ``k`` lowest-degree patches,
those correlated with the seed vote for their own positive neighbours (M = sum of their rows of
A); the object is the 4-connected component of ``M > 0`` holding the seed, and its box is the
box of that component.

Pure tensor code: features in, :class:`LostResult` out, no I/O. The heavy steps (Gram matrix,
degree, ranking, expansion) run batched on the features' device; the seed's connected component
is found by ``scipy.ndimage.label`` on the CPU, or by a batched flood fill on the device
(``components="torch"``; same masks, see :func:`seed_components`).

Ties are broken deterministically: patches of equal degree are ranked by flattened index
(row-major), lowest first, through a stable sort; the seed is the first patch of that ranking.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch
from scipy import ndimage

COMPONENTS = ("scipy", "torch")
"""How the seed's 4-connected component of ``M > 0`` is found: ``ndimage.label`` per image on
the CPU, or :func:`seed_components` batched on the features' device (bench/bench_pipeline.py)."""

AFFINITIES = ("raw", "centered", "cosine-mean")
"""How the graph's edge weights A are built from patch features F (``bias:VALUE`` too).

``raw``: A = F Fᵀ, the paper's graph; an edge is a positive correlation.
``centered``: (F − mean patch)(F − mean patch)ᵀ: only above-average correlation counts.
``cosine-mean``: cosine similarity minus its mean over the image, a per-image scalar bias on
the (normalised) Gram matrix: two patches are linked when they are more alike than an average
pair of the image. On DINOv2 every raw key similarity is positive, so raw LOST sees a complete
graph and returns the whole image; the registers paper "manually adds a bias to the gram
matrix" without giving it; this is the bias that measured best here (README, "Affinity").
``bias:VALUE``: A = F Fᵀ − VALUE, a fixed manual bias.
"""


def resolve_affinity(affinity: str, backbone: str) -> str:
    """``auto`` → ``raw`` for DINO (v1) ViTs, where LOST was designed and published with it,
    and ``cosine-mean`` for every other backbone (DINOv2, CLIP, DeiT-III…)."""
    if affinity != "auto":
        return affinity
    return "raw" if backbone.endswith(".dino") else "cosine-mean"


@dataclass
class LostResult:
    """LOST's answer for one image, on the patch grid."""

    seed: tuple[int, int]
    """(row, col) of the seed patch."""
    box: tuple[int, int, int, int]
    """(x0, y0, x1, y1) in patch units, max exclusive."""
    mask: np.ndarray
    """bool [rows, cols]: the connected component of M > 0 holding the seed."""
    degree: np.ndarray
    """int [rows, cols]: positive edges of each patch (diagonal excluded); lower = more object-like."""
    expansion: np.ndarray
    """bool [rows, cols]: the patches that voted for M (seed included)."""

    def box_pixels(self, patch_size: int, width: int, height: int) -> tuple[int, int, int, int]:
        """Box in pixels of the (padded) network input, clipped to a ``width`` × ``height`` image."""
        x0, y0, x1, y1 = (v * patch_size for v in self.box)
        return x0, y0, min(x1, width), min(y1, height)


def affinity_matrix(features: torch.Tensor, affinity: str = "raw", keep: torch.Tensor | None = None) -> torch.Tensor:
    """A [B, N, N] from patch features [B, N, D] (float32, whatever the input dtype).

    ``keep`` (bool [B, N]) restricts the graph to some patches: the others lose every edge, and
    the data-driven references (``centered``'s mean patch, ``cosine-mean``'s mean similarity)
    are taken over the kept patches alone, so a removed object no longer shifts them.
    """
    f = features.float()
    w = None if keep is None else keep.to(f.dtype)  # [B, N]: 1 = in the graph
    if affinity == "centered":
        f = f - (f.mean(1, keepdim=True) if w is None else _weighted_mean(f, w[..., None], dims=(1,)))
    elif affinity == "cosine-mean":
        f = torch.nn.functional.normalize(f, dim=-1)
    a = f @ f.transpose(1, 2)
    if affinity == "cosine-mean":
        a = a - (a.mean((1, 2), keepdim=True) if w is None else _weighted_mean(a, w[:, :, None] * w[:, None, :]))
    elif affinity.startswith("bias:"):
        a = a - float(affinity.split(":", 1)[1])
    elif affinity not in ("raw", "centered"):
        raise ValueError(f"unknown affinity {affinity!r}: use auto, {', '.join(AFFINITIES)} or bias:VALUE")
    return a if w is None else a * w[:, :, None] * w[:, None, :]


def _weighted_mean(x: torch.Tensor, w: torch.Tensor, dims: tuple[int, ...] = (1, 2)) -> torch.Tensor:
    """Mean of ``x`` over ``dims`` with 0/1 weights ``w`` (broadcast), dimensions kept."""
    w = w.expand_as(x)
    return (x * w).sum(dims, keepdim=True) / w.sum(dims, keepdim=True)


def lost(
    features: torch.Tensor,
    grid: tuple[int, int],
    k_patches: int = 100,
    affinity: str = "raw",
    exclude: torch.Tensor | None = None,
    components: str = "scipy",
) -> list[LostResult]:
    """Run LOST on a batch of patch features [B, rows*cols, D] that share one grid shape.

    ``exclude`` (bool [B, N]) removes patches from the graph (no edges, never a seed); it lets
    callers find further objects after the first. Every image must keep at least one patch.
    ``components`` picks how the seed's component is found (:data:`COMPONENTS`).
    """
    if components not in COMPONENTS:
        raise ValueError(f"components must be one of {', '.join(COMPONENTS)}, got {components!r}")
    rows, cols = grid
    b, n, _ = features.shape
    if n != rows * cols:
        raise ValueError(f"features hold {n} patches but the grid is {rows}x{cols}")
    a = affinity_matrix(features, affinity, keep=None if exclude is None else ~exclude)

    positive = a > 0
    degree = positive.sum(-1) - positive.diagonal(dim1=1, dim2=2).long()
    rank_key = degree if exclude is None else degree.masked_fill(exclude, n + 1)
    order = torch.sort(rank_key, dim=1, stable=True).indices
    seed = order[:, 0]

    candidates = order[:, : min(k_patches, n)]
    seed_row = a[torch.arange(b, device=a.device), seed]
    voters = torch.gather(seed_row, 1, candidates) > 0
    votes = torch.gather(a, 1, candidates[:, :, None].expand(-1, -1, n))
    m = (votes * voters[:, :, None]).sum(1)

    expansion = torch.zeros_like(positive[:, 0]).scatter_(1, candidates, voters)
    fg = seed_components((m > 0).view(b, rows, cols), seed) if components == "torch" else m > 0
    cpu = {k: v.cpu().numpy() for k, v in dict(fg=fg, degree=degree, seed=seed, expansion=expansion).items()}
    return [
        (_mask_box if components == "torch" else _component_box)(
            cpu["fg"][i].reshape(rows, cols),
            divmod(int(cpu["seed"][i]), cols),
            cpu["degree"][i].reshape(rows, cols),
            cpu["expansion"][i].reshape(rows, cols),
        )
        for i in range(b)
    ]


def seed_components(fg: torch.Tensor, seed: torch.Tensor) -> torch.Tensor:
    """bool [B, rows, cols]: the 4-connected component of ``fg`` [B, rows, cols] holding each seed.

    ``seed`` [B] is a flattened (row-major) index; a seed outside ``fg`` gets itself alone, as in
    :func:`_component_box`. A batched flood fill on ``fg``'s device: each step marks every
    horizontal run of ``fg`` that touches a marked patch, then every vertical run, until nothing
    changes (a handful of steps: one per turn of the component, not one per patch).
    """
    b, rows, cols = fg.shape
    start = torch.zeros(b, rows * cols, dtype=torch.bool, device=fg.device)
    start.scatter_(1, seed.view(b, 1), True)
    start = start.view(b, rows, cols)
    marked = start & fg
    while True:
        before = marked
        marked = _fill_runs(fg, marked)
        marked = _fill_runs(fg.transpose(1, 2), marked.transpose(1, 2)).transpose(1, 2)
        if torch.equal(marked, before):
            return marked | start


def _fill_runs(fg: torch.Tensor, marked: torch.Tensor) -> torch.Tensor:
    """Marks every run of ``fg`` along the last axis that holds a marked patch."""
    fg = fg.contiguous()
    flat = fg.view(-1)
    starts = fg & torch.nn.functional.pad(~fg[..., :-1], (1, 0), value=True)  # a run begins here
    run = torch.where(flat, starts.view(-1).cumsum(0), 0)  # run number (from 1) of each fg patch
    hit = torch.zeros(flat.numel() + 1, dtype=torch.bool, device=fg.device)
    hit.index_fill_(0, torch.where(marked.reshape(-1), run, 0), True)  # slot 0 collects the rest
    return (hit[run] & flat).view(fg.shape)


def _component_box(fg: np.ndarray, seed: tuple[int, int], degree: np.ndarray, expansion: np.ndarray) -> LostResult:
    """The 4-connected component of ``fg`` holding the seed, and its box (max exclusive)."""
    labels, _ = ndimage.label(fg)
    if labels[seed]:
        mask = labels == labels[seed]
    else:  # the seed got no vote (a zero feature vector): the object is the seed patch alone
        mask = np.zeros_like(fg)
        mask[seed] = True
    return _mask_box(mask, seed, degree, expansion)


def _mask_box(mask: np.ndarray, seed: tuple[int, int], degree: np.ndarray, expansion: np.ndarray) -> LostResult:
    """LostResult of an object mask: its box (max exclusive)."""
    ys, xs = np.nonzero(mask)
    box = (int(xs.min()), int(ys.min()), int(xs.max()) + 1, int(ys.max()) + 1)
    return LostResult(seed=seed, box=box, mask=mask, degree=degree, expansion=expansion)
