"""A confidence for discovered boxes, and further boxes while confident.

LOST and TokenCut always return a box, even on a texture where nothing stands out. The
evidence is in their graphs, though. Each score below reads a
:class:`~lost_reg.methods.Discovery` (plus, for ``ncut``, the image's patch features and the
method) over the patches still in the graph, and returns a float; higher means more object-like.

``ncut`` (the default)
    1 − Ncut/2 of the partition {mask, rest} on the method's own graph
    (:meth:`~lost_reg.methods.Method.cut_graph`): Ncut = cut/assoc(mask) + cut/assoc(rest). For
    TokenCut that is the graph it cut; LOST's graph is not built for cutting, so for LOST it is
    the positive cosine similarities of the mean-centred features, as in TokenCut. In [0, 1]: 1
    when the mask shares no edge with the rest, ≤ 0.5 for a single patch on LOST's graph, 0 when
    the mask takes every patch left.
``seed``, ``neighbourhood``, ``mask`` (LOST only: they read its degree map)
    (median degree − seed degree) / n; the same with the mean degree of the seed's 3×3
    neighbourhood; (median degree outside the mask − mean degree inside) / n.
``fill``
    mask area / box area: compact masks score high, thin or ragged ones low.

Measured with the offline DINOv2 ViT-S/14 and LOST's ``cosine-mean`` graph on 19 real photos
(bench/real_photos.json, data/sample_voc, three more scikit-image photos boxed by hand, five
textures with no object; 42 boxes), counting a box correct at IoU ≥ 0.5: ``ncut`` ranks LOST's
box with AUC 0.89 (10 correct, 9 wrong) and the boxes of ``max_objects=5`` with AUC 0.78 (18
correct, 77 wrong); the degree scores reach 0.23–0.60. Few images: ``--min-score`` drops clear
misses, it is not a calibrated probability.

:func:`find_objects` goes beyond one box: after each box it removes the box's mask from the graph
(``method(..., exclude=...)``, as MaskCut does in CutLER) and looks for the next object among
the remaining patches, until ``max_objects`` boxes are found or the score drops below ``min_score``.
"""

from __future__ import annotations

from collections.abc import Callable

import numpy as np
import torch

from .methods import Discovery, Method

ScoreFn = Callable[[Discovery, np.ndarray, "torch.Tensor | None", "Method | None"], float]


def ncut_score(result: Discovery, active: np.ndarray, features: torch.Tensor | None = None,
               method: Method | None = None) -> float:
    """1 − Ncut/2 of {mask, rest of the active patches} on ``method``'s cut graph of ``features`` [N, D]."""
    if features is None or method is None:
        raise ValueError("the ncut score needs the image's patch features and its method")
    act = torch.from_numpy(active.reshape(-1)).to(features.device)
    inside = torch.from_numpy(result.mask.reshape(-1)).to(features.device)[act]
    if inside.all():
        return 0.0
    w = method.cut_graph(features[act])
    from_mask, from_rest = w[inside].sum(), w[~inside].sum()
    cut = w[inside][:, ~inside].sum()
    if from_mask == 0 or from_rest == 0:
        return 0.0
    return float(1 - (cut / from_mask + cut / from_rest) / 2)


def _degree(result: Discovery, kind: str, active: np.ndarray) -> tuple[np.ndarray, int]:
    """LOST's degree map, and what the degree scores divide by: the active patches less one (at least 1)."""
    degree = getattr(result, "degree", None)
    if degree is None:
        raise ValueError(f"the {kind!r} score reads LOST's degree map, which {type(result).__name__} lacks; "
                         "use ncut or fill")
    return degree, max(int(active.sum()) - 1, 1)


def seed_contrast(result: Discovery, active: np.ndarray, features: torch.Tensor | None = None,
                  method: Method | None = None) -> float:
    """(median degree − seed degree) / n over the ``active`` patches."""
    degree, n = _degree(result, "seed", active)
    return float(np.median(degree[active]) - degree[result.seed]) / n


def neighbourhood_contrast(result: Discovery, active: np.ndarray, features: torch.Tensor | None = None,
                           method: Method | None = None) -> float:
    """(median degree − mean degree of the seed's active 3×3 neighbourhood) / n."""
    degree, n = _degree(result, "neighbourhood", active)
    r, c = result.seed
    window = (slice(max(r - 1, 0), r + 2), slice(max(c - 1, 0), c + 2))
    near = degree[window][active[window]]
    return float(np.median(degree[active]) - near.mean()) / n


def mask_contrast(result: Discovery, active: np.ndarray, features: torch.Tensor | None = None,
                  method: Method | None = None) -> float:
    """(median degree of the active patches outside the mask − mean degree inside) / n."""
    degree, n = _degree(result, "mask", active)
    outside = active & ~result.mask
    if not outside.any():
        return 0.0
    return float(np.median(degree[outside]) - degree[result.mask].mean()) / n


def mask_fill(result: Discovery, active: np.ndarray, features: torch.Tensor | None = None,
              method: Method | None = None) -> float:
    """Mask area / box area, in (0, 1]."""
    x0, y0, x1, y1 = result.box
    return float(result.mask.sum()) / ((x1 - x0) * (y1 - y0))


SCORES: dict[str, ScoreFn] = {
    "ncut": ncut_score,
    "seed": seed_contrast,
    "neighbourhood": neighbourhood_contrast,
    "mask": mask_contrast,
    "fill": mask_fill,
}
DEFAULT_SCORE = "ncut"


def score(result: Discovery, active: np.ndarray | None = None, kind: str = DEFAULT_SCORE,
          features: torch.Tensor | None = None, method: Method | None = None) -> float:
    """The ``kind`` score of one result; ``features`` [N, D] are the image's patch features, ``active``
    (bool [rows, cols] or [N]) the patches still in the graph (default: all)."""
    if kind not in SCORES:
        raise ValueError(f"unknown score {kind!r}: use one of {', '.join(SCORES)}")
    act = np.ones_like(result.mask, dtype=bool) if active is None else active.reshape(result.mask.shape)
    return SCORES[kind](result, act, features, method)


def find_objects(
    method: Method,
    features: torch.Tensor,
    grid: tuple[int, int],
    max_objects: int = 1,
    min_score: float | None = None,
    kind: str = DEFAULT_SCORE,
) -> list[list[tuple[Discovery, float]]]:
    """Up to ``max_objects`` (result, score) pairs per image of a batch [B, rows*cols, D], best first.

    Each round runs ``method`` on the patches no earlier mask took; an image stops at the first
    result scoring below ``min_score`` (that result is dropped, so an image may get none) or when
    no patch is left. The first result of every image equals plain ``method(features, grid)``'s.
    """
    if max_objects < 1:
        raise ValueError("max_objects must be at least 1")
    b, n, _ = features.shape
    exclude = np.zeros((b, n), dtype=bool)
    out: list[list[tuple[Discovery, float]]] = [[] for _ in range(b)]
    alive = list(range(b))
    for round_ in range(max_objects):
        if not alive:
            break
        # later rounds rebuild the graph from the patches left: else the removed object still
        # shifts the graph's reference, every background patch looks alike and the next seed is
        # whatever odd patch is left (an image border, say)
        rest = None if round_ == 0 else torch.from_numpy(exclude[alive]).to(features.device)
        results = method(features[alive], grid, exclude=rest)
        still = []
        for i, r in zip(alive, results):
            s = score(r, ~exclude[i], kind, features[i], method)
            if min_score is not None and s < min_score:
                continue
            out[i].append((r, s))
            exclude[i] |= r.mask.reshape(-1)
            if not exclude[i].all():
                still.append(i)
        alive = still
    return out
