"""A confidence for LOST's boxes, and further boxes while confident.

LOST has no score: it always returns a box, even on a texture where nothing stands out. The
evidence is in its graph, though. Each candidate below reads a :class:`~lost_reg.lost.LostResult`
(plus, for ``ncut``, the image's patch features) over the patches still in the graph, and
returns a float; higher means more object-like.

``ncut`` (the default)
    1 − Ncut/2 of the partition {mask, rest}, as in TokenCut: W = positive cosine similarities
    of the patch features after subtracting their mean, Ncut = cut/assoc(mask) + cut/assoc(rest).
    In [0, 1]: 1 when the mask shares no edge with the rest, ≤ 0.5 for a single patch, 0 when
    the mask takes every patch left.
``seed``
    (median degree − seed degree) / n: how far the seed alone stands out.
``neighbourhood``
    (median degree − mean degree of the seed's 3×3 neighbourhood) / n: as ``seed``, with a lone
    odd patch averaged with its ordinary neighbours.
``mask``
    (median degree outside the mask − mean degree inside) / n: contrast of the whole object.
``fill``
    mask area / box area: compact masks score high, thin or ragged ones low.

Measured with the offline DINOv2 ViT-S/14 and the default ``cosine-mean`` graph on 19 real
photos (bench/real_photos.json, data/sample_voc, three more scikit-image photos boxed by hand,
five textures with no object; 42 boxes), counting a box correct at IoU ≥ 0.5: ``ncut`` ranks
LOST's box with AUC 0.89 (10 correct, 9 wrong) and the boxes of ``max_objects=5`` with AUC
0.78 (18 correct, 77 wrong); the degree scores reach 0.23–0.60. With three random crops of
every photo added (76 images) ``ncut`` gives 0.80 and 0.84. Few images: ``--min-score`` drops
clear misses (most extra boxes score about 0.5), it is not a calibrated probability.

:func:`lost_objects` goes beyond LOST: after each box it removes the box's mask from the graph
(``lost(..., exclude=...)``) and looks for the next seed among the remaining patches, until
``max_objects`` boxes are found or the score drops below ``min_score``.
"""

from __future__ import annotations

from collections.abc import Callable

import numpy as np
import torch

from .lost import LostResult, lost

ScoreFn = Callable[[LostResult, "np.ndarray | None", "torch.Tensor | None"], float]


def _active(result: LostResult, active: np.ndarray | None) -> np.ndarray:
    return np.ones_like(result.mask, dtype=bool) if active is None else active.reshape(result.mask.shape)


def ncut_score(result: LostResult, active: np.ndarray | None = None, features: torch.Tensor | None = None) -> float:
    """1 − Ncut/2 of {mask, rest of the active patches} on the positive cosine graph of ``features`` [N, D]."""
    if features is None:
        raise ValueError("the ncut score needs the image's patch features")
    act = torch.from_numpy(_active(result, active).reshape(-1)).to(features.device)
    inside = torch.from_numpy(result.mask.reshape(-1)).to(features.device)[act]
    if inside.all():
        return 0.0
    f = features[act].float()
    f = torch.nn.functional.normalize(f - f.mean(0), dim=1)
    w = (f @ f.T).clamp_(min=0).fill_diagonal_(0)
    from_mask, from_rest = w[inside].sum(), w[~inside].sum()
    cut = w[inside][:, ~inside].sum()
    if from_mask == 0 or from_rest == 0:
        return 0.0
    return float(1 - (cut / from_mask + cut / from_rest) / 2)


def seed_contrast(result: LostResult, active: np.ndarray | None = None, features: torch.Tensor | None = None) -> float:
    """(median degree − seed degree) / n over the ``active`` patches (default: all)."""
    act = _active(result, active)
    n = int(act.sum())
    return float(np.median(result.degree[act]) - result.degree[result.seed]) / max(n - 1, 1)


def neighbourhood_contrast(result: LostResult, active: np.ndarray | None = None,
                           features: torch.Tensor | None = None) -> float:
    """(median degree − mean degree of the seed's active 3×3 neighbourhood) / n."""
    act = _active(result, active)
    n = int(act.sum())
    r, c = result.seed
    window = (slice(max(r - 1, 0), r + 2), slice(max(c - 1, 0), c + 2))
    near = result.degree[window][act[window]]
    return float(np.median(result.degree[act]) - near.mean()) / max(n - 1, 1)


def mask_contrast(result: LostResult, active: np.ndarray | None = None, features: torch.Tensor | None = None) -> float:
    """(median degree of the active patches outside the mask − mean degree inside) / n."""
    act = _active(result, active)
    n = int(act.sum())
    outside = act & ~result.mask
    if not outside.any():
        return 0.0
    return float(np.median(result.degree[outside]) - result.degree[result.mask].mean()) / max(n - 1, 1)


def mask_fill(result: LostResult, active: np.ndarray | None = None, features: torch.Tensor | None = None) -> float:
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


def score(result: LostResult, active: np.ndarray | None = None, kind: str = DEFAULT_SCORE,
          features: torch.Tensor | None = None) -> float:
    """The ``kind`` score of one LOST result; ``features`` [N, D] are the image's patch features."""
    if kind not in SCORES:
        raise ValueError(f"unknown score {kind!r}: use one of {', '.join(SCORES)}")
    return SCORES[kind](result, active, features)


def lost_objects(
    features: torch.Tensor,
    grid: tuple[int, int],
    k_patches: int = 100,
    affinity: str = "raw",
    max_objects: int = 1,
    min_score: float | None = None,
    kind: str = DEFAULT_SCORE,
    components: str = "scipy",
) -> list[list[tuple[LostResult, float]]]:
    """Up to ``max_objects`` (result, score) pairs per image of a batch [B, rows*cols, D], best first.

    Each round runs LOST on the patches no earlier mask took; an image stops at the first result
    scoring below ``min_score`` (that result is dropped, so an image may get none) or when no
    patch is left. The first result of every image equals plain :func:`~lost_reg.lost.lost`'s.
    """
    if max_objects < 1:
        raise ValueError("max_objects must be at least 1")
    b, n, _ = features.shape
    exclude = np.zeros((b, n), dtype=bool)
    out: list[list[tuple[LostResult, float]]] = [[] for _ in range(b)]
    alive = list(range(b))
    for round_ in range(max_objects):
        if not alive:
            break
        # later rounds rebuild the graph from the patches left (affinity_matrix's ``keep``): else
        # the removed object still shifts the graph's reference, every background patch looks
        # alike and the next seed is whatever odd patch is left (an image border, say)
        rest = None if round_ == 0 else torch.from_numpy(exclude[alive]).to(features.device)
        results = lost(features[alive], grid, k_patches, affinity, exclude=rest, components=components)
        still = []
        for i, r in zip(alive, results):
            s = score(r, ~exclude[i], kind, features[i])
            if min_score is not None and s < min_score:
                continue
            out[i].append((r, s))
            exclude[i] |= r.mask.reshape(-1)
            if not exclude[i].all():
                still.append(i)
        alive = still
    return out

