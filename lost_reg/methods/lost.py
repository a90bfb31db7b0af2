"""LOST (Siméoni et al., BMVC 2021): one object box per image from ViT patch features.

Patches are nodes of a graph whose edges are positive feature correlations, A = F Fᵀ. Objects
cover less of an image than background, so a patch with few positive edges (low degree) likely
lies on an object: the lowest-degree patch is the *seed*. Among the ``k`` lowest-degree patches,
those correlated with the seed vote for their own positive neighbours (M = sum of their rows of
A); the object is the 4-connected component of ``M > 0`` holding the seed, and its box is the
box of that component.

Pure tensor code: features in, :class:`LostResult` out, no I/O. The heavy steps (Gram matrix,
degree, ranking, expansion) run batched on the features' device; the seed's component is found
as :mod:`.components` says.

Ties are broken deterministically: patches of equal degree are ranked by flattened index
(row-major), lowest first, through a stable sort; the seed is the first patch of that ranking.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

import numpy as np
import torch

from ..devices import graph_code
from .base import Discovery, Method, option
from .components import COMPONENTS, check_components, mask_box, seed_masks

AFFINITIES = ("raw", "centered", "cosine-mean")
"""How the graph's edge weights A are built from patch features F (``cos:T``, ``bias:VALUE`` too).

``raw``: A = F Fᵀ, the paper's graph; an edge is a positive correlation.
``centered``: (F − mean patch)(F − mean patch)ᵀ: only above-average correlation counts.
``cosine-mean``: cosine similarity minus its mean over the image, a per-image scalar bias on
the (normalised) Gram matrix: two patches are linked when they are more alike than an average
pair of the image. On DINOv2 every raw key similarity is positive, so raw LOST sees a complete
graph and returns the whole image; the registers paper "manually adds a bias to the gram
matrix" without giving it (README, "Affinity").
``cos:T``: A = cos(F, F) − T, a fixed bias on the normalised Gram matrix, T in [−1, 1]. Its
follow-up ("Vision Transformers Don't Need Trained Registers") advises L2-normalised features
and a bias b swept over [−1, 0]: that is ``cos:T`` with T = −b. Two patches are linked when
their cosine exceeds T, the same edges as TokenCut's graph at τ = T.
``bias:VALUE``: A = F Fᵀ − VALUE, a fixed manual bias on the raw Gram matrix.
"""
AFFINITY_PATTERN = r"^(raw|centered|cosine-mean|cos:-?(0(\.[0-9]+)?|\.[0-9]+|1(\.0+)?)|bias:-?[0-9]{1,6}(\.[0-9]+)?)$"
"""Every accepted ``affinity``: the named graphs, ``cos:T`` with T in [−1, 1] and ``bias:VALUE`` with
|VALUE| < 1e6 (beyond any feature product: only typos, nan and inf are refused), plain decimals."""


def check_affinity(affinity: str) -> None:
    """ValueError unless ``affinity`` matches :data:`AFFINITY_PATTERN`."""
    if not re.fullmatch(AFFINITY_PATTERN, affinity):
        raise ValueError(f"affinity must be one of {', '.join(AFFINITIES)}, cos:T with T a decimal in [-1, 1], or "
                         f"bias:VALUE with VALUE a decimal under 1e6 in magnitude; got {affinity!r}")


@dataclass
class LostResult(Discovery):
    """LOST's answer for one image, on the patch grid."""

    degree: np.ndarray
    """int [rows, cols]: positive edges of each patch (diagonal excluded); lower = more object-like."""
    expansion: np.ndarray
    """bool [rows, cols]: the patches that voted for M (seed included)."""

    HEAT = "1/degree"

    @property
    def heat(self) -> np.ndarray:
        return 1.0 / np.maximum(self.degree, 1)

    @property
    def marks(self) -> np.ndarray:
        return self.expansion


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
    elif affinity == "cosine-mean" or affinity.startswith("cos:"):
        f = torch.nn.functional.normalize(f, dim=-1)
    a = f @ f.transpose(1, 2)
    if affinity == "cosine-mean":
        a = a - (a.mean((1, 2), keepdim=True) if w is None else _weighted_mean(a, w[:, :, None] * w[:, None, :]))
    elif affinity.startswith(("bias:", "cos:")):
        a = a - float(affinity.split(":", 1)[1])
    elif affinity not in ("raw", "centered"):
        raise ValueError(f"unknown affinity {affinity!r}: use {', '.join(AFFINITIES)}, cos:T or bias:VALUE")
    return a if w is None else a * w[:, :, None] * w[:, None, :]


def _weighted_mean(x: torch.Tensor, w: torch.Tensor, dims: tuple[int, ...] = (1, 2)) -> torch.Tensor:
    """Mean of ``x`` over ``dims`` with 0/1 weights ``w`` (broadcast), dimensions kept."""
    w = w.expand_as(x)
    return (x * w).sum(dims, keepdim=True) / w.sum(dims, keepdim=True)


@graph_code
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
    check_components(components)
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
    masks = seed_masks((m > 0).view(b, rows, cols), seed, components)
    degree, expansion, seed = degree.cpu().numpy(), expansion.cpu().numpy(), seed.cpu().numpy()
    return [
        LostResult(seed=divmod(int(s), cols), box=mask_box(mask), mask=mask,
                   degree=d.reshape(rows, cols), expansion=e.reshape(rows, cols))
        for mask, s, d, e in zip(masks, seed, degree, expansion)
    ]


@dataclass(frozen=True)
class Lost(Method):
    """LOST with its options; ``Lost(k_patches=100, affinity="raw")`` is the paper's setting."""

    name = "lost"

    k_patches: int = option(100, "expansion over the k lowest-degree patches", minimum=1)
    affinity: str = option("raw", "graph edges: raw (the paper), centered, cosine-mean, cos:T or bias:VALUE "
                                  "(README, LOST's graphs)", pattern=AFFINITY_PATTERN)
    components: str = option("scipy", "how the seed's component is found: scipy (CPU) or torch (on the device)",
                             COMPONENTS)

    def __post_init__(self) -> None:
        if self.k_patches < 1:
            raise ValueError("k_patches must be at least 1")
        check_affinity(self.affinity)
        check_components(self.components)

    def __call__(self, features: torch.Tensor, grid: tuple[int, int],
                 exclude: torch.Tensor | None = None) -> list[LostResult]:
        return lost(features, grid, self.k_patches, self.affinity, exclude, self.components)

    def cut_graph(self, features: torch.Tensor) -> torch.Tensor:
        """LOST's graph is not built for cutting: positive cosine similarities of the mean-centred
        features (as TokenCut's score, on a graph that needs no threshold), no self-loops."""
        f = features.float()
        f = torch.nn.functional.normalize(f - f.mean(0), dim=1)
        return (f @ f.T).clamp_(min=0).fill_diagonal_(0)

    def reference_graph(self) -> bool:
        return self.affinity == "raw"
